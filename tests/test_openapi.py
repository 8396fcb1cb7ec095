"""docs/openapi.json is checked against the running server: paths, methods, statuses, bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from jsonschema import Draft202012Validator

DOC = json.loads((Path(__file__).resolve().parent.parent / "docs/openapi.json").read_text())
NOT_API = {"/", "/chat"}


def routes(app) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if path is None or path in NOT_API or "prefix" in info or route.method == "HEAD":
            continue
        found.add((path, route.method.lower()))
    return found


def test_every_route_is_documented_and_every_documented_route_exists(api):
    served = routes(api.client.server.app)
    documented = {(p, m) for p, ops in DOC["paths"].items() for m in ops}
    assert served == documented


class Checker:
    def __init__(self, client):
        self.client = client
        self.seen: set[tuple[str, str, str]] = set()

    async def __call__(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        template: str | None = None,
        form: Any = None,
        **fields: Any,
    ) -> dict:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if method == "get":
            resp = await self.client.get(path, params=fields, headers=headers)
        else:
            resp = await self.client.post(
                path, data=form if form is not None else fields, headers=headers
            )
        op = DOC["paths"][template or path][method]
        status = str(resp.status)
        assert status in op["responses"], (method, path, status, await resp.text())
        spec = op["responses"][status]
        if "$ref" in spec:
            spec = DOC["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
        body: Any = None
        content = spec.get("content", {})
        if "application/json" in content:
            body = await resp.json()
            schema = {**content["application/json"]["schema"], "components": DOC["components"]}
            errors = list(Draft202012Validator(schema).iter_errors(body))
            assert not errors, (method, path, status, body, [e.message for e in errors])
        self.seen.add((template or path, method, status))
        return body


async def test_responses_match_the_document(api):
    check = Checker(api.client)
    a = (
        await check(
            "post", "/user/register", mobile="13100000001", passwd="secret-pass", nickname="A"
        )
    )["data"]
    b = (await check("post", "/user/register", mobile="13100000002", passwd="secret-pass"))["data"]
    await check("post", "/user/register", mobile="13100000001", passwd="secret-pass")  # 409
    await check("post", "/user/register", mobile="x")  # 400
    await check("post", "/user/login", mobile="13100000001", passwd="secret-pass")
    await check("post", "/user/login", mobile="13100000001", passwd="wrong-pass")  # 401
    for method in ("get", "post"):
        await check(method, "/user/find", a["token"], id=b["id"])
        await check(method, "/user/find", a["token"], id=999999)  # 404
        await check(method, "/contact/loadfriend", a["token"])
        await check(method, "/contact/loadcommunity", a["token"])
        await check(method, "/message/conversations", a["token"])
    await check("post", "/user/update", a["token"], nickname="Ann")
    await check("post", "/user/update", a["token"], passwd="new-pass-1", oldpasswd="nope")  # 403
    await check("post", "/contact/addfriend", a["token"], dstid=b["id"])
    await check("post", "/contact/addfriend", a["token"], dstid=b["id"])  # 409
    c = (await check("post", "/contact/createcommunity", a["token"], name="Doc", cate=2))["data"]
    await check("post", "/contact/joincommunity", b["token"], dstid=c["id"])
    await check("post", "/contact/joincommunity", b["token"], dstid=999999)  # 404
    for method in ("get", "post"):
        await check(method, "/contact/loadmembers", a["token"], dstid=c["id"])
    ws = await api.ws(a)
    await ws.send_str(
        json.dumps({"id": 1, "cmd": 10, "dstid": b["id"], "media": 1, "content": "x"})
    )
    await ws.receive(timeout=10)
    await ws.send_str(json.dumps({"id": 2, "cmd": 11, "dstid": c["id"], "media": 5, "amount": 100}))
    await ws.receive(timeout=10)
    for method in ("get", "post"):
        await check(method, "/message/history", b["token"], cmd=10, dstid=a["id"])
        await check(method, "/message/history", b["token"], cmd=11, dstid=c["id"], after=0)
    await check("get", "/message/conversations", b["token"])
    await check("post", "/message/read", b["token"], cmd=10, dstid=a["id"], seq=1)
    form = aiohttp.FormData()
    form.add_field("file", b"\x89PNG\r\n\x1a\n" + b"\x00" * 16, filename="a.png")
    path = (await check("post", "/attach/upload", a["token"], form=form))["data"]
    form = aiohttp.FormData()
    form.add_field("file", b"<svg/>", filename="a.png")
    await check("post", "/attach/upload", a["token"], form=form)  # 415
    await check("get", path, template="/mnt/{name}")
    await check("get", "/mnt/nothing.png", template="/mnt/{name}")
    await check("get", "/healthz")
    await check("get", "/metrics")
    await check("post", "/contact/leavecommunity", b["token"], dstid=c["id"])
    await check("post", "/contact/delfriend", a["token"], dstid=b["id"])
    await check("post", "/contact/delfriend", a["token"], dstid=b["id"])  # 404
    await check("post", "/user/logout", a["token"])
    await check("post", "/user/logout", a["token"])  # 401
    covered = {(p, m) for p, m, _ in check.seen}
    documented = {(p, m) for p, ops in DOC["paths"].items() for m in ops}
    assert covered == documented, documented - covered
