"""Operations: the nginx site in front of three nodes, and the systemd unit."""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from .cluster import Client, Front, NodeProc, free_port, wait_healthy
from .conftest import CI, fresh_mysql_database, need_mysql
from .test_chat import recv

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 20


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if CI:
            pytest.fail(f"{tool} is required under CI")
        pytest.skip(f"{tool} is not installed")
    return path


def nginx_config(prefix: Path, port: int, nodes: list[NodeProc], upload_dir: Path) -> Path:
    """A private nginx configuration around ops/nginx/lanchat.conf, with this test's nodes."""
    site = (ROOT / "ops/nginx/lanchat.conf").read_text()
    servers = "".join(
        f"    server {n.host}:{n.port} max_fails=1 fail_timeout=10s;\n" for n in nodes
    )
    site = re.sub(r"(    server 192\.168\.1\.\d+:8080 [^\n]*\n)+", servers, site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    site = site.replace("/var/log/nginx/lanchat.access.log", str(prefix / "access.log"))
    site = site.replace("/var/lib/lanchat/mnt/", f"{upload_dir}/")
    site = site.replace("/usr/share/lanchat/web", str(ROOT / "web"))
    assert "192.168.1." not in site
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(
        # workers run as the test's user so they can read its private temporary directories
        f"daemon off;\n{user}worker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n    include /etc/nginx/mime.types;\n{temp}\n{site}\n}}\n"
    )
    (prefix / "tmp").mkdir(exist_ok=True)
    return conf


@pytest.fixture
async def behind_nginx(tmp_path):
    """Three nodes on the UDP bus sharing MariaDB, behind a private nginx."""
    nginx = need("nginx")
    need_mysql()
    url, drop = fresh_mysql_database()
    udp = free_port(socket.SOCK_DGRAM)
    nodes = [NodeProc(tmp_path, f"node{i}", url, udp) for i in (1, 2, 3)]
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE))
    proc = None
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            await wait_healthy(http, node, peers=2)
        port = free_port()
        conf = nginx_config(tmp_path, port, nodes, tmp_path / "mnt")
        check = subprocess.run(
            [nginx, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path)])
        front = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                async with http.get(front + "/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        yield nodes, front, http, tmp_path
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        await http.close()
        for node in nodes:
            node.stop()
        drop()


def text_to(dstid: int, content: str) -> str:
    """A one-to-one text frame whose client id is its content."""
    return orjson.dumps(
        {"id": content, "cmd": 10, "dstid": dstid, "media": 1, "content": content}
    ).decode()


async def node_of(http, nodes, user_id_count_before):
    """The node whose connection count went up."""
    for node, before in zip(nodes, user_id_count_before, strict=True):
        data = (await (await http.get(node.base + "/healthz")).json())["data"]
        if data["connections"] > before:
            return node
    raise AssertionError("no node gained a connection")


async def counts(http, nodes):
    return [
        (await (await http.get(n.base + "/healthz")).json())["data"]["connections"] for n in nodes
    ]


async def test_through_nginx_and_a_node_killed(behind_nginx):
    """Users chat through nginx; kill -9 of a user's node: it reconnects through nginx to
    another node and fetches everything acked meanwhile. The access log shows no token."""
    nodes, front, http, prefix = behind_nginx
    entry = Front("127.0.0.1", int(front.rsplit(":", 1)[1]))
    c = Client(http)
    a = await c.register(entry, "13600000001", "A")
    before = await counts(http, nodes)
    wa = await c.ws(entry, a)
    await wa.send_str('{"cmd":0}')
    await recv(wa)
    a_node = await node_of(http, nodes, before)
    # a friend whose socket lands on another node
    for n in range(2, 30):
        b = await c.register(entry, f"136000000{n:02d}", "B")
        before = await counts(http, nodes)
        wb = await c.ws(entry, b)
        await wb.send_str('{"cmd":0}')
        await recv(wb)
        if await node_of(http, nodes, before) is not a_node:
            break
        await wb.close()
    else:
        raise AssertionError("every user hashed to one node")
    await c.call(entry, "/contact/addfriend", a["token"], dstid=b["id"])
    # b's node learns the friendship over the bus; its event says b may write to a now
    assert (await recv(wb, skip=()))["event"] == "friend_added"
    for n in range(3):
        await wb.send_str(text_to(a["id"], f"before{n}"))
        assert (await recv(wb))["cmd"] == 20
        assert (await recv(wa))["content"] == f"before{n}"
    last_seen = 3

    a_node.kill()
    msg = await wa.receive(timeout=DEADLINE)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    for n in range(4):
        await wb.send_str(text_to(a["id"], f"during{n}"))
        assert (await recv(wb))["cmd"] == 20

    wa = await c.ws(entry, a)  # nginx sends it to a living node
    await wa.send_str('{"cmd":0}')
    assert await recv(wa) == {"cmd": 0}
    async with http.get(
        front + "/message/history",
        params={"cmd": 10, "dstid": b["id"], "after": last_seen},
        headers={"Authorization": f"Bearer {a['token']}"},
    ) as r:
        rows = (await r.json())["rows"]
    assert [r["content"] for r in rows] == [f"during{n}" for n in range(4)]
    assert [r["seq"] for r in rows] == [4, 5, 6, 7]
    await wb.send_str(
        orjson.dumps({"cmd": 10, "dstid": a["id"], "media": 1, "content": "after"}).decode()
    )
    assert (await recv(wb))["cmd"] == 20
    assert (await recv(wa))["content"] == "after"
    await wa.close()
    await wb.close()

    access = (prefix / "access.log").read_text()
    assert "GET /chat " in access
    assert a["token"] not in access and b["token"] not in access and "token=" not in access


async def test_uploads_served_by_nginx(behind_nginx):
    _, front, http, _ = behind_nginx
    c = Client(http)
    entry = Front("127.0.0.1", int(front.rsplit(":", 1)[1]))
    user = await c.register(entry, "13600000100")
    form = aiohttp.FormData()
    form.add_field("file", b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, filename="a.html")
    async with http.post(
        front + "/attach/upload", data=form, headers={"Authorization": f"Bearer {user['token']}"}
    ) as resp:
        path = (await resp.json())["data"]
    async with http.get(front + path) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers.get("Server") == "nginx"
    for bad in ("/mnt/", "/mnt/x.html", "/mnt/" + "0" * 32 + ".svg"):
        async with http.get(front + bad) as resp:
            assert resp.status == 404, bad


def test_systemd_unit_verifies_without_warnings(tmp_path):
    """systemd-analyze verify prints warnings but exits 0: any output is a failure."""
    analyze = need("systemd-analyze")
    unit = (ROOT / "ops/systemd/lanchat@.service").read_text()
    lanchat = Path(sys.executable).parent / "lanchat"
    assert lanchat.exists()
    assert "ExecStart=/opt/lanchat/bin/lanchat serve" in unit
    (tmp_path / "lanchat@.service").write_text(
        unit.replace("/opt/lanchat/bin/lanchat", str(lanchat))
    )
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "lanchat@8080.service")], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr
    for key in (
        "EnvironmentFile=/etc/lanchat/%i.env",
        "Restart=on-failure",
        "LimitNOFILE=",
        "TimeoutStopSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ):
        assert key in unit
