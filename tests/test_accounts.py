"""Accounts: register, login, logout, find, update, and the authentication rules."""

from __future__ import annotations

import aiohttp
import pytest

from node.auth import COOKIE

PUBLIC_KEYS = {"id", "nickname", "avatar", "sex", "memo", "online"}


async def test_register_returns_own_user_with_token(api):
    """Registration answers the new user's own record with a fresh token."""
    body = await api.call(
        "/user/register", mobile="13800000001", passwd="secret-pass", nickname="Ann", sex="W"
    )
    assert body["code"] == 0 and body["msg"] == ""
    user = body["data"]
    assert user["mobile"] == "13800000001" and user["nickname"] == "Ann" and user["sex"] == "W"
    assert isinstance(user["id"], int) and isinstance(user["createat"], int)
    assert user["createat"] > 1_600_000_000_000  # milliseconds
    assert len(user["token"]) >= 22 and user["online"] is False
    assert "passwd" not in user


async def test_responses_name_no_software_versions(api):
    """Every answer, an error or the client's page or a WebSocket upgrade, says only that the
    server is lanchat, not which Python and aiohttp it runs."""
    for path in ("/healthz", "/no/such/path", "/"):
        resp = await api.client.get(path)
        assert resp.headers["Server"] == "lanchat", path
    user = (await api.call("/user/register", mobile="13800000009", passwd="secret-pass"))["data"]
    ws = await api.client.ws_connect(f"/chat?id={user['id']}&token={user['token']}")
    assert ws._response.headers["Server"] == "lanchat"
    await ws.close()


async def test_register_json_body(api):
    body = await api.call("/user/register", json={"mobile": "13800000002", "passwd": "secret-pass"})
    assert body["data"]["mobile"] == "13800000002"


async def test_register_mobile_taken_is_409(api):
    await api.call("/user/register", mobile="13800000003", passwd="secret-pass")
    body = await api.call("/user/register", mobile="13800000003", passwd="other-pass", status=409)
    assert body == {"code": -1, "msg": body["msg"], "error": "conflict"}


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"passwd": "secret-pass"}, "mobile"),
        ({"mobile": "12ab5678", "passwd": "secret-pass"}, "mobile"),
        ({"mobile": "1234", "passwd": "secret-pass"}, "mobile"),
        ({"mobile": "1" * 21, "passwd": "secret-pass"}, "mobile"),
        ({"mobile": "13800000004"}, "passwd"),
        ({"mobile": "13800000004", "passwd": "short"}, "passwd"),
        ({"mobile": "13800000004", "passwd": "p" * 73}, "passwd"),
        ({"mobile": "13800000004", "passwd": "secret-pass", "sex": "X"}, "sex"),
        ({"mobile": "13800000004", "passwd": "secret-pass", "nickname": "n" * 65}, "nickname"),
        ({"mobile": "13800000004", "passwd": "secret-pass", "avatar": "javascript:x"}, "avatar"),
    ],
)
async def test_register_bad_input_is_400_naming_the_field(api, fields, name):
    body = await api.call("/user/register", status=400, **fields)
    assert body["code"] == -1 and body["error"] == "bad_request"
    assert name in body["msg"]


async def test_login_gives_fresh_token_and_keeps_old_ones(api):
    """A second login is a second device: both tokens work."""
    user = await api.register()
    body = await api.call("/user/login", mobile=user["mobile"], passwd="secret-pass")
    second = body["data"]["token"]
    assert second != user["token"]
    for token in (user["token"], second):
        assert (await api.call("/user/find", token, id=user["id"]))["data"]["id"] == user["id"]


async def test_login_failures_have_one_text(api):
    """Unknown mobile and wrong password are indistinguishable."""
    user = await api.register()
    wrong = await api.call("/user/login", mobile=user["mobile"], passwd="not-it-at-all", status=401)
    unknown = await api.call(
        "/user/login", mobile="19999999999", passwd="not-it-at-all", status=401
    )
    assert wrong == unknown == {"code": -1, "msg": wrong["msg"], "error": "unauthorized"}


async def test_login_missing_fields_is_400(api):
    assert (await api.call("/user/login", mobile="13800000001", status=400))[
        "error"
    ] == "bad_request"


async def test_login_rate_limited_per_mobile(api):
    """Five failures for one mobile within a minute: the sixth try is 429, even if right."""
    user = await api.register()
    for _ in range(5):
        await api.call("/user/login", mobile=user["mobile"], passwd="wrong-pass", status=401)
    body = await api.call("/user/login", mobile=user["mobile"], passwd="secret-pass", status=429)
    assert body["error"] == "rate_limited"


async def test_login_rate_limited_per_address(make_server):
    api = await make_server(login_fails_per_addr=3)
    for i in range(3):
        await api.call("/user/login", mobile=f"1700000000{i}", passwd="wrong-pass", status=401)
    body = await api.call("/user/login", mobile="17000000009", passwd="wrong-pass", status=429)
    assert body["error"] == "rate_limited"


async def test_login_sets_httponly_strict_cookie(api):
    user = await api.register()
    resp = await api.client.post(
        "/user/login", data={"mobile": user["mobile"], "passwd": "secret-pass"}
    )
    cookie = resp.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"


async def test_cookie_authenticates_and_foreign_origin_is_403(api):
    """The seed client sends only the cookie; a cookie from a foreign page is refused."""
    user = await api.register()
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(api.base, cookie_jar=jar) as browser:
        login = {"mobile": user["mobile"], "passwd": "secret-pass"}
        assert (await browser.post("/user/login", data=login)).status == 200
        resp = await browser.get("/user/find", params={"id": user["id"]})
        assert resp.status == 200
        resp = await browser.get(
            "/user/find", params={"id": user["id"]}, headers={"Origin": "http://evil.example"}
        )
        assert resp.status == 403 and (await resp.json())["error"] == "forbidden"
        own = api.base.rstrip("/")
        resp = await browser.get("/user/find", params={"id": user["id"]}, headers={"Origin": own})
        assert resp.status == 200
        await browser.post("/user/logout", headers={"Origin": own})
        assert (await browser.get("/user/find", params={"id": user["id"]})).status == 401


async def test_token_field_authenticates(api):
    user = await api.register()
    body = await api.call("/user/find", id=user["id"], token=user["token"])
    assert body["data"]["id"] == user["id"]


@pytest.mark.parametrize("token", [None, "", "not-a-real-token", "x" * 300])
async def test_missing_or_bad_token_is_401(api, token):
    resp = await api.client.get(
        "/contact/loadfriend", headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthorized"


async def test_logout_revokes_only_that_token(api):
    user = await api.register()
    other = (await api.call("/user/login", mobile=user["mobile"], passwd="secret-pass"))["data"]
    await api.call("/user/logout", user["token"])
    await api.call("/user/find", user["token"], id=user["id"], status=401)
    await api.call("/user/find", other["token"], id=user["id"])
    await api.call("/user/logout", user["token"], status=401)


async def test_expired_token_is_401(make_server):
    """A token dies when its lifetime is over (checked against the stored expiry)."""
    import sqlalchemy as sa

    from node.db import sessions
    from node.keys import ENGINE

    api = await make_server()
    user = await api.register()
    engine = api.client.server.app[ENGINE]
    async with engine.begin() as conn:
        await conn.execute(sessions.update().values(expireat=1))
    await api.call("/user/find", user["token"], id=user["id"], status=401)
    _ = sa


async def test_find_public_profile_only(api):
    """find never shows another user's mobile, token or password hash."""
    a = await api.register("Ann")
    b = await api.register("Bob")
    data = (await api.call("/user/find", a["token"], method="GET", id=b["id"]))["data"]
    assert set(data) == PUBLIC_KEYS and data["nickname"] == "Bob" and data["online"] is False
    own = (await api.call("/user/find", a["token"], id=a["id"]))["data"]
    assert set(own) == PUBLIC_KEYS


async def test_find_errors(api):
    a = await api.register()
    assert (await api.call("/user/find", a["token"], status=400))["error"] == "bad_request"
    assert (await api.call("/user/find", a["token"], id="abc", status=400))[
        "error"
    ] == "bad_request"
    assert (await api.call("/user/find", a["token"], id=99999, status=404))["error"] == "not_found"
    await api.call("/user/find", id=a["id"], status=401)


async def test_userid_field_must_be_the_caller(api):
    a = await api.register()
    b = await api.register()
    body = await api.call("/user/find", a["token"], id=b["id"], userid=b["id"], status=403)
    assert body["error"] == "forbidden"
    await api.call("/user/find", a["token"], id=b["id"], userid=a["id"])


async def test_update_profile(api):
    a = await api.register("Ann")
    b = await api.register()
    body = await api.call(
        "/user/update", a["token"], nickname="Anna", memo="hi", sex="W", avatar="/mnt/abc.png"
    )
    assert body["data"]["nickname"] == "Anna" and body["data"]["memo"] == "hi"
    seen = (await api.call("/user/find", b["token"], id=a["id"]))["data"]
    assert (seen["nickname"], seen["sex"], seen["avatar"]) == ("Anna", "W", "/mnt/abc.png")


async def test_update_errors(api):
    a = await api.register()
    await api.call("/user/update", nickname="x", status=401)
    assert (await api.call("/user/update", a["token"], sex="Q", status=400))[
        "error"
    ] == "bad_request"
    body = await api.call("/user/update", a["token"], mobile="13000000000", status=400)
    assert "mobile" in body["msg"]
    body = await api.call("/user/update", a["token"], passwd="new-secret", status=400)
    assert "oldpasswd" in body["msg"]
    body = await api.call(
        "/user/update", a["token"], passwd="new-secret", oldpasswd="wrong-old", status=403
    )
    assert body["error"] == "forbidden"
    await api.call("/user/update", a["token"], userid=a["id"] + 1, nickname="z", status=403)


async def test_password_change_ends_other_sessions(api):
    a = await api.register()
    other = (await api.call("/user/login", mobile=a["mobile"], passwd="secret-pass"))["data"]
    await api.call("/user/update", a["token"], passwd="new-secret", oldpasswd="secret-pass")
    await api.call("/user/find", other["token"], id=a["id"], status=401)
    await api.call("/user/find", a["token"], id=a["id"])
    await api.call("/user/login", mobile=a["mobile"], passwd="secret-pass", status=401)
    await api.call("/user/login", mobile=a["mobile"], passwd="new-secret")


async def test_unknown_path_is_404_envelope(api):
    resp = await api.client.get("/no/such/path")
    assert resp.status == 404
    assert await resp.json() == {"code": -1, "msg": "no such path", "error": "not_found"}


async def test_wrong_method_is_envelope(api):
    resp = await api.client.get("/user/register")
    assert resp.status == 405
    body = await resp.json()
    assert body["code"] == -1 and body["error"] == "bad_request"


async def test_bad_json_body_is_400(api):
    resp = await api.client.post(
        "/user/register", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400 and (await resp.json())["error"] == "bad_request"


async def test_unsupported_body_type_is_415(api):
    resp = await api.client.post(
        "/user/register", data=b"<x/>", headers={"Content-Type": "application/xml"}
    )
    assert resp.status == 415 and (await resp.json())["error"] == "unsupported_type"


async def test_healthz(api):
    resp = await api.client.get("/healthz")
    body = await resp.json()
    assert resp.status == 200
    assert body["data"] == {
        "node": "test-node",
        "db": "ok",
        "bus": "local",
        "peers": [],
        "connections": 0,
        "counters": {},
    }
