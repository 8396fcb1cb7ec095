"""Faults: the database goes away and comes back; uploads meet a full disk."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pymysql
import pytest
from aiohttp.test_utils import TestClient, TestServer

from node.app import create_app
from node.db import make_engine, upgrade
from node.keys import SETTINGS
from node.settings import Settings

from .conftest import CI, MYSQL_HOST, MYSQL_PORT
from .test_lan import PrivateMariaDB


async def test_database_outage_and_recovery(tmp_path):
    """While the database is down: HTTP answers 503 with the envelope, a sent message gets
    cmd 21 `unavailable` on an open connection, /healthz says 503; when it is back, service
    resumes by itself and nothing acked before was lost."""
    if shutil.which("mariadbd") is None:
        if CI:
            pytest.fail("mariadbd is required under CI")
        pytest.skip("mariadbd is not installed")
    db = PrivateMariaDB(tmp_path, "127.0.0.1")
    db.start()
    try:
        await db.ready()
        conf = Settings(
            db=db.url,
            upload_dir=str(tmp_path / "mnt"),
            node_id="fault",
            password_time_cost=1,
            password_memory_kib=8192,
        )
        engine = make_engine(conf.db)
        await upgrade(engine)
        await engine.dispose()
        client = TestClient(TestServer(create_app(conf)), cookie_jar=aiohttp.DummyCookieJar())
        await client.start_server()
        try:
            await _outage(client, db)
        finally:
            await client.close()
    finally:
        db.stop()


async def _outage(client, db):
    async def post(path, token=None, **fields):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = await client.post(path, data={k: str(v) for k, v in fields.items()}, headers=headers)
        return resp.status, await resp.json()

    _, a = await post("/user/register", mobile="13300000001", passwd="secret-pass")
    _, b = await post("/user/register", mobile="13300000002", passwd="secret-pass")
    a, b = a["data"], b["data"]
    await post("/contact/addfriend", a["token"], dstid=b["id"])
    ws = await client.ws_connect("/chat", params={"id": str(a["id"]), "token": a["token"]})

    async def say(n):
        await ws.send_str(
            orjson.dumps(
                {"id": f"m{n}", "cmd": 10, "dstid": b["id"], "media": 1, "content": f"m{n}"}
            ).decode()
        )
        return orjson.loads((await ws.receive(timeout=30)).data)

    assert (await say(1))["cmd"] == 20
    db.stop()
    status, body = await post("/user/find", a["token"], id=b["id"])
    assert status == 503 and body == {"code": -1, "msg": body["msg"], "error": "unavailable"}
    health = await client.get("/healthz")
    assert health.status == 503 and (await health.json())["data"]["db"] == "down"
    reply = await say(2)
    assert reply["cmd"] == 21 and reply["error"] == "unavailable" and reply["id"] == "m2"
    assert not ws.closed

    db.start_again()
    await db.ready()
    for _ in range(100):  # the pool notices by itself
        status, _ = await post("/user/find", a["token"], id=b["id"])
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200
    assert (await say(2))["cmd"] == 20  # the client resends what was refused
    resp = await client.get(
        "/message/history",
        params={"cmd": 10, "dstid": a["id"]},
        headers={"Authorization": f"Bearer {b['token']}"},
    )
    assert [r["content"] for r in (await resp.json())["rows"]] == ["m1", "m2"]
    await ws.close()


async def test_full_disk_upload_is_507_or_503_and_leaves_nothing(
    make_server, settings, monkeypatch
):
    """A write error while storing an upload (disk full) answers with the envelope, no
    partial file stays behind, and the next upload works."""
    api = await make_server()
    user = await api.register()
    real_open = open
    failing = {"on": True}

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if failing["on"]:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def close(self):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullFile(f) if "w" in mode and str(path).endswith(".part") else f

    monkeypatch.setattr("builtins.open", fake_open)
    form = aiohttp.FormData()
    form.add_field("file", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, filename="a.png")
    resp = await api.client.post(
        "/attach/upload", data=form, headers={"Authorization": f"Bearer {user['token']}"}
    )
    body = await resp.json()
    assert resp.status == 507 and body["error"] == "unavailable", body
    assert os.listdir(settings.upload_dir) == []
    failing["on"] = False
    form = aiohttp.FormData()
    form.add_field("file", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, filename="a.png")
    resp = await api.client.post(
        "/attach/upload", data=form, headers={"Authorization": f"Bearer {user['token']}"}
    )
    assert resp.status == 200
    _ = dataclasses


async def test_bus_socket_errors_do_not_stop_the_node(make_server):
    """The bus socket failing to send is counted and logged; messages are still stored,
    acked and delivered on this node, and the bus carries on when the socket recovers."""
    import socket as socket_mod

    from node.keys import BUS

    from .cluster import free_port

    api = await make_server(
        bus="udp",
        cluster_secret="fault-test-secret-0123456789",
        udp_port=free_port(socket_mod.SOCK_DGRAM),
    )
    bus = api.client.server.app[BUS]
    # A real socket error: without SO_BROADCAST the kernel refuses every datagram to the
    # broadcast address (EACCES) until the option is set again.
    sock = bus._transport.get_extra_info("socket")
    sock.setsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_BROADCAST, 0)
    a, b = await api.register(), await api.register()
    await api.friends(a, b)
    wa, wb = await api.ws(a), await api.ws(b)
    await wa.send_str(
        orjson.dumps(
            {"id": 1, "cmd": 10, "dstid": b["id"], "media": 1, "content": "still works"}
        ).decode()
    )
    assert orjson.loads((await wa.receive(timeout=10)).data)["cmd"] == 20
    assert orjson.loads((await wb.receive(timeout=10)).data)["content"] == "still works"
    health = await (await api.client.get("/healthz")).json()
    assert health["data"]["counters"]["socket_errors"] > 0
    sock.setsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_BROADCAST, 1)
    before = bus.counters["sent"]
    for _ in range(50):
        if bus.counters["sent"] > before:
            break
        await asyncio.sleep(0.1)
    assert bus.counters["sent"] > before  # heartbeats go out again


async def test_sigterm_with_the_database_hung_still_exits_in_time(tmp_path, mysql_url):
    """MariaDB stops answering with its sockets open while a message waits to be stored: on
    SIGTERM the node still exits 0 within 10 s, names what it did not store, and a message it
    acked before is in the database; the one it did not ack is not."""
    from .dbproxy import MariaDBProxy
    from .test_cli import free_port, wait_http

    engine = make_engine(mysql_url)
    await upgrade(engine)
    await engine.dispose()
    proxy = MariaDBProxy()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANCHAT_")}
    env |= {"LANCHAT_PORT": str(port), "LANCHAT_DB": proxy.url(mysql_url)}
    log = open(tmp_path / "stderr.log", "w")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "serve"], cwd=str(tmp_path), env=env, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_http, f"{base}/healthz")
        async with aiohttp.ClientSession(base) as http:

            async def post(path, token=None, **fields):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                data = {k: str(v) for k, v in fields.items()}
                async with http.post(path, data=data, headers=headers) as resp:
                    return (await resp.json())["data"]

            a = await post("/user/register", mobile="13300000011", passwd="secret-pass")
            b = await post("/user/register", mobile="13300000012", passwd="secret-pass")
            await post("/contact/addfriend", a["token"], dstid=b["id"])
            ws = await http.ws_connect("/chat", params={"id": str(a["id"]), "token": a["token"]})

            async def send(n):
                frame = {"id": f"m{n}", "cmd": 10, "dstid": b["id"], "media": 1, "content": "x"}
                await ws.send_str(orjson.dumps(frame).decode())

            await send(1)
            assert orjson.loads((await ws.receive(timeout=30)).data)["cmd"] == 20
            proxy.freeze()
            await send(2)
            await asyncio.sleep(0.5)  # in the writer's hands, waiting for the database
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            closing = await ws.receive(timeout=10)
            assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1001
            await ws.close()
        code = await asyncio.to_thread(proc.wait, 10)  # the contract's bound; raises past it
        assert code == 0
        assert time.monotonic() - started < 10
    finally:
        proc.kill()
        log.close()
        proxy.close()
    err = (tmp_path / "stderr.log").read_text()
    assert "stopping with 1 messages not stored" in err, err
    conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"SELECT client_id FROM `{urlsplit(mysql_url).path[1:]}`.message")
        assert cur.fetchall() == (("m1",),)
    conn.close()


async def node_behind_a_proxy(tmp_path: Any, mysql_url: str) -> tuple[Any, TestClient]:
    """A node on a fresh MariaDB database reached through a MariaDBProxy (migrated first,
    directly), started on a real socket: the proxy, to fail the database, and its client."""
    from .dbproxy import MariaDBProxy

    engine = make_engine(mysql_url)
    await upgrade(engine)
    await engine.dispose()
    proxy = MariaDBProxy()
    conf = Settings(db=proxy.url(mysql_url), upload_dir=str(tmp_path / "mnt"), node_id="hung")
    client = TestClient(TestServer(create_app(conf)), cookie_jar=aiohttp.DummyCookieJar())
    await client.start_server()
    return proxy, client


async def test_healthz_reports_a_hung_database_down_within_seconds(tmp_path, mysql_url):
    """MariaDB stops answering, new connections included, with its sockets open: /healthz
    answers 503 "down" (bounded by its own short timeout) instead of waiting with it, and 200
    again once it answers."""
    proxy, client = await node_behind_a_proxy(tmp_path, mysql_url)
    try:
        assert (await client.get("/healthz")).status == 200
        proxy.freeze(new_too=True)
        health = await asyncio.wait_for(client.get("/healthz"), 30)  # hung before: no answer
        assert health.status == 503
        assert (await health.json())["data"]["db"] == "down"
        proxy.thaw()
        for _ in range(20):  # the check's hung connection was dropped; a new one answers
            health = await asyncio.wait_for(client.get("/healthz"), 30)
            if health.status == 200:
                break
            await asyncio.sleep(0.5)
        assert health.status == 200
    finally:
        proxy.close()  # first: what still waits on it ends
        await client.close()


async def test_api_writes_with_the_database_hung_answer_503_and_recover(
    tmp_path, mysql_url, monkeypatch
):
    """MariaDB stops answering, new connections included, with its sockets open: registration
    and login (the async engine, whose driver has no read timeout) and a contact write answer
    503 once the database timeout has passed instead of waiting with it. Once the server
    answers, every request works again, more of them than the engine's pool holds
    connections: the hung ones were dropped, not kept."""
    from node import db

    from .conftest import Api

    monkeypatch.setattr(db, "DB_TIMEOUT_S", 1.0)  # read when the node starts and per call
    proxy, client = await node_behind_a_proxy(tmp_path, mysql_url)
    api = Api(client, client.server.app[SETTINGS])
    try:
        a, b = await api.register(), await api.register()
        proxy.freeze(new_too=True)
        for path, token, fields in (
            ("/user/register", None, {"mobile": "13800000001", "passwd": "secret-pass"}),
            ("/user/login", None, {"mobile": a["mobile"], "passwd": "secret-pass"}),
            ("/contact/addfriend", a["token"], {"dstid": b["id"]}),
        ):
            body = await asyncio.wait_for(api.call(path, token, status=503, **fields), 30)
            assert body["error"] == "unavailable", body
        proxy.thaw()
        users = []
        for _ in range(40):  # pooled connections frozen while idle fail once more, then go
            resp = await asyncio.wait_for(
                client.post(
                    "/user/register",
                    data={"mobile": f"1370000{len(users):04d}", "passwd": "secret-pass"},
                ),
                30,
            )
            if resp.status == 200:
                users.append((await resp.json())["data"])
                if len(users) == 20:
                    break
            else:
                assert resp.status == 503, resp.status
        assert len(users) == 20
        await api.call("/contact/addfriend", a["token"], dstid=b["id"])
        login = await api.call("/user/login", mobile=a["mobile"], passwd="secret-pass")
        assert login["data"]["id"] == a["id"]
    finally:
        proxy.close()  # first: what still waits on it ends
        await client.close()
