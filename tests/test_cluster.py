"""Three real nodes on the UDP bus sharing the real MariaDB behave as one server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import time

import aiohttp
import orjson
import pytest
import redis

from node.packets import Packet, Route
from node.wire import Kind, data_body, packet_bytes, seal

from .cluster import SECRET, Client, NodeProc, free_port, wait_healthy
from .conftest import CI
from .test_chat import closed_with, recv

DEADLINE = 20


REDIS_URL = os.environ.get("LANCHAT_TEST_REDIS", "redis://127.0.0.1:6379/0")


def need_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except (redis.RedisError, OSError):
        if CI:
            pytest.fail(f"Redis is required under CI and does not answer at {REDIS_URL}")
        pytest.skip("Redis is not running")


@pytest.fixture(params=["udp", "redis"])
def bus(request):
    """Every cross-node test runs on the LAN bus and on the Redis bus."""
    if request.param == "redis":
        need_redis()
    return request.param


@pytest.fixture
async def cluster(mysql_url, tmp_path, bus):
    """A factory: cluster(n, **env) starts n nodes and waits until they hear each other."""
    started: list[NodeProc] = []
    sessions: list[aiohttp.ClientSession] = []
    udp_port = free_port(socket.SOCK_DGRAM)
    secret = f"{SECRET}-{secrets.token_hex(8)}"  # its own Redis channel too
    on_bus = {"LANCHAT_CLUSTER_SECRET": secret}
    if bus == "redis":
        on_bus["LANCHAT_BUS"] = REDIS_URL

    async def start(n: int = 3, **extra: str) -> tuple[list[NodeProc], Client]:
        nodes = [
            NodeProc(tmp_path, f"node{i + 1}", mysql_url, udp_port, extra={**on_bus, **extra})
            for i in range(n)
        ]
        for node in nodes:
            node.start()
            started.append(node)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE))
        sessions.append(http)
        for node in nodes:
            await wait_healthy(http, node, peers=n - 1)
        return nodes, Client(http)

    start.udp_port = udp_port  # type: ignore[attr-defined]
    start.bus = bus  # type: ignore[attr-defined]
    start.secret = secret  # type: ignore[attr-defined]
    yield start
    for http in sessions:
        await http.close()
    for node in started:
        node.stop()


async def nothing_more(*sockets, wait=0.5):
    for ws in sockets:
        with pytest.raises(asyncio.TimeoutError):
            await recv(ws, timeout=wait)


async def test_messages_reach_every_recipient_once_across_nodes(cluster):
    (n1, n2, n3), c = await cluster(3)
    a = await c.register(n1, "13700000001", "A")
    b = await c.register(n2, "13700000002", "B")
    d = await c.register(n3, "13700000003", "D")
    await c.call(n1, "/contact/addfriend", a["token"], dstid=b["id"])
    cid = (await c.call(n2, "/contact/createcommunity", a["token"], name="all"))["data"]["id"]
    await c.call(n3, "/contact/joincommunity", b["token"], dstid=cid)
    await c.call(n1, "/contact/joincommunity", d["token"], dstid=cid)
    wa1, wa3 = await c.ws(n1, a), await c.ws(n3, a)
    wb2, wb3 = await c.ws(n2, b), await c.ws(n3, b)
    wd3 = await c.ws(n3, d)
    await asyncio.sleep(0.3)  # presence datagrams settle

    await wa1.send_str(
        orjson.dumps(
            {"id": "p1", "cmd": 10, "dstid": b["id"], "media": 1, "content": "one-to-one"}
        ).decode()
    )
    ack = await recv(wa1)
    assert ack["cmd"] == 20 and ack["seq"] == 1
    for ws in (wa3, wb2, wb3):
        got = await recv(ws)
        assert (got["content"], got["mid"], got["userid"]) == ("one-to-one", ack["mid"], a["id"])
    await wb3.send_str(
        orjson.dumps({"id": "g1", "cmd": 11, "dstid": cid, "media": 1, "content": "group"}).decode()
    )
    gack = await recv(wb3)
    assert gack["cmd"] == 20
    for ws in (wa1, wa3, wb2, wd3):
        got = await recv(ws)
        assert (got["content"], got["mid"]) == ("group", gack["mid"])
    await nothing_more(wa1, wa3, wb2, wb3, wd3)
    found = await c.call(n3, "/user/find", d["token"], id=a["id"])
    assert found["data"]["online"] is True


async def test_join_and_friendship_live_on_other_node(cluster):
    (n1, n2, n3), c = await cluster(3)
    a = await c.register(n1, "13700000011", "A")
    b = await c.register(n2, "13700000012", "B")
    wa, wb = await c.ws(n1, a), await c.ws(n3, b)
    cid = (await c.call(n1, "/contact/createcommunity", a["token"], name="live"))["data"]["id"]
    await c.call(n2, "/contact/joincommunity", b["token"], dstid=cid)  # through a third node
    event = await recv(wb, skip=())
    assert (event["cmd"], event["event"], event["dstid"]) == (30, "community_joined", cid)
    await wa.send_str(orjson.dumps({"cmd": 11, "dstid": cid, "media": 1, "content": "hi"}).decode())
    assert (await recv(wa))["cmd"] == 20
    assert (await recv(wb))["content"] == "hi"
    await c.call(n2, "/contact/addfriend", a["token"], dstid=b["id"])
    assert (await recv(wb, skip=()))["event"] == "friend_added"
    await wb.send_str(
        orjson.dumps({"cmd": 10, "dstid": a["id"], "media": 1, "content": "yo"}).decode()
    )
    assert (await recv(wb))["cmd"] == 20
    assert (await recv(wa))["content"] == "yo"


async def test_logout_on_one_node_closes_the_session_on_another(cluster):
    (n1, n2, _), c = await cluster(3)
    a = await c.register(n1, "13700000021")
    ws = await c.ws(n2, a)
    await ws.send_str('{"cmd":0}')
    assert await recv(ws) == {"cmd": 0}
    await c.call(n1, "/user/logout", a["token"])
    await closed_with(ws, 1008)


async def test_forged_and_corrupted_datagrams_reach_no_one(cluster):
    (n1, n2, _), c = await cluster(3)
    a = await c.register(n1, "13700000031")
    b = await c.register(n2, "13700000032")
    await c.call(n1, "/contact/addfriend", a["token"], dstid=b["id"])
    wb = await c.ws(n2, b)
    frame = orjson.dumps(
        {
            "cmd": 10,
            "dstid": b["id"],
            "userid": a["id"],
            "media": 1,
            "content": "forged",
            "mid": 1,
            "seq": 1,
            "createat": 1,
        }
    )
    body = data_body([packet_bytes(Packet(Route.USERS, (b["id"],), frame))])
    wrong_key = seal(b"not-the-cluster-secret", Kind.DATA, "intruder", 1, 1, body)
    genuine = seal(cluster.secret.encode(), Kind.DATA, "intruder", 7, 1, body)
    flipped = bytearray(genuine)
    flipped[-40] ^= 0x01
    datagrams = [wrong_key, bytes(flipped), genuine[:20], genuine[:-1], b"", b"\x00" * 100]
    if cluster.bus == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            for datagram in datagrams:
                s.sendto(datagram, ("127.255.255.255", cluster.udp_port))
    else:
        channel = "lanchat:" + hashlib.sha256(cluster.secret.encode()).hexdigest()[:16]
        client = redis.Redis.from_url(REDIS_URL)
        for datagram in datagrams:
            assert client.publish(channel, datagram) == 3
        client.close()
    end = time.monotonic() + DEADLINE
    while True:
        health = await (await c.http.get(n2.base + "/healthz")).json()
        if health["data"]["counters"]["rejected"] >= len(datagrams) - 1:
            break
        assert time.monotonic() < end, health
        await asyncio.sleep(0.1)
    await nothing_more(wb)
    assert "intruder" not in [p["node"] for p in health["data"]["peers"]]


async def test_loss_is_recovered_in_order_without_duplicates(cluster):
    """With 20% of datagrams dropped on receipt, every message still arrives, in seq order,
    exactly once (recovered by NACK)."""
    (n1, n2, n3), c = await cluster(3, LANCHAT_UDP_DROP_PERCENT="20")
    a = await c.register(n1, "13700000041", "A")
    b = await c.register(n2, "13700000042", "B")
    d = await c.register(n3, "13700000043", "D")
    await c.call(n1, "/contact/addfriend", a["token"], dstid=b["id"])
    cid = (await c.call(n1, "/contact/createcommunity", a["token"], name="lossy"))["data"]["id"]
    await c.call(n1, "/contact/joincommunity", d["token"], dstid=cid)
    wa, wb, wd = await c.ws(n1, a), await c.ws(n2, b), await c.ws(n3, d)
    # Bursts of 10, each acked before the next: a burst is committed and published as one or
    # a few datagrams, so 30 bursts make at least 30 datagrams for each receiver to drop from
    # (one burst of 300 made only a handful, and sometimes none of them was dropped).
    count, burst = 150, 5
    for start in range(0, count, burst):
        for n in range(start, start + burst):
            await wa.send_str(
                orjson.dumps(
                    {"id": f"p{n}", "cmd": 10, "dstid": b["id"], "media": 1, "content": f"p{n}"}
                ).decode()
            )
            await wa.send_str(
                orjson.dumps(
                    {"id": f"g{n}", "cmd": 11, "dstid": cid, "media": 1, "content": f"g{n}"}
                ).decode()
            )
        acks = [await recv(wa) for _ in range(2 * burst)]
        assert all(f["cmd"] == 20 for f in acks)
    got_b = [await recv(wb, timeout=DEADLINE) for _ in range(count)]
    got_d = [await recv(wd, timeout=DEADLINE) for _ in range(count)]
    assert [f["seq"] for f in got_b] == list(range(1, count + 1))
    assert [f["content"] for f in got_b] == [f"p{n}" for n in range(count)]
    assert [f["seq"] for f in got_d] == list(range(1, count + 1))
    await nothing_more(wb, wd, wait=1.5)
    counters = [
        (await (await c.http.get(n.base + "/healthz")).json())["data"]["counters"] for n in (n2, n3)
    ]
    assert sum(x["dropped_by_setting"] for x in counters) > 0
    assert sum(x["recovered"] for x in counters) > 0
    assert all(x["lost"] == 0 for x in counters)


async def test_restarted_node_is_heard_as_new(cluster):
    """Same node id, seq starting again at 1: its datagrams are new, not repeats."""
    (n1, n2), c = await cluster(2)
    a = await c.register(n1, "13700000051")
    b = await c.register(n2, "13700000052")
    await c.call(n1, "/contact/addfriend", a["token"], dstid=b["id"])
    wb = await c.ws(n2, b)
    for round_ in range(2):
        wa = await c.ws(n1, a)
        await wa.send_str(
            orjson.dumps(
                {"cmd": 10, "dstid": b["id"], "media": 1, "content": f"r{round_}"}
            ).decode()
        )
        assert (await recv(wa))["cmd"] == 20
        assert (await recv(wb))["content"] == f"r{round_}"
        await wa.close()
        if round_ == 0:
            n1.kill()
            n1.start()
            await wait_healthy(c.http, n1, peers=1)
            await wait_healthy(c.http, n2, peers=1)


async def test_killed_node_loses_nothing(cluster):
    """kill -9 of a user's node: the user reconnects to another and fetches everything acked."""
    (n1, n2, n3), c = await cluster(3)
    a = await c.register(n1, "13700000061")
    b = await c.register(n2, "13700000062")
    await c.call(n1, "/contact/addfriend", a["token"], dstid=b["id"])
    wa, wb = await c.ws(n1, a), await c.ws(n2, b)
    await wa.send_str(
        orjson.dumps(
            {"id": "k0", "cmd": 10, "dstid": b["id"], "media": 1, "content": "k0"}
        ).decode()
    )
    assert (await recv(wa))["cmd"] == 20
    assert (await recv(wb))["seq"] == 1
    n2.kill()
    acked = []
    for n in range(1, 6):
        await wa.send_str(
            orjson.dumps(
                {"id": f"k{n}", "cmd": 10, "dstid": b["id"], "media": 1, "content": f"k{n}"}
            ).decode()
        )
        ack = await recv(wa)
        assert ack["cmd"] == 20
        acked.append(ack["seq"])
    wb = await c.ws(n3, b)
    rows = (await c.call(n3, "/message/history", b["token"], cmd=10, dstid=a["id"], after=1))[
        "rows"
    ]
    assert [r["seq"] for r in rows] == acked == [2, 3, 4, 5, 6]
    await wa.send_str(
        orjson.dumps({"cmd": 10, "dstid": b["id"], "media": 1, "content": "live"}).decode()
    )
    assert (await recv(wb))["content"] == "live"


async def test_redis_restart_mid_conversation(mysql_url, tmp_path):
    """Redis goes away and comes back: everything acked is kept, delivery resumes by itself."""
    server = shutil.which("redis-server")
    if server is None:
        if CI:
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server is not installed")
    port = free_port()
    command = [
        server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            await asyncio.sleep(0.05)
    extra = {"LANCHAT_BUS": url, "LANCHAT_CLUSTER_SECRET": f"{SECRET}-restart"}
    nodes = [NodeProc(tmp_path, f"r{i}", mysql_url, 0, extra=extra) for i in (1, 2)]
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE))
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            await wait_healthy(http, node, peers=1)
        n1, n2 = nodes
        c = Client(http)
        a = await c.register(n1, "13700000071")
        b = await c.register(n2, "13700000072")
        await c.call(n1, "/contact/addfriend", a["token"], dstid=b["id"])
        wa, wb = await c.ws(n1, a), await c.ws(n2, b)

        async def say(text):
            await wa.send_str(
                orjson.dumps(
                    {"id": text, "cmd": 10, "dstid": b["id"], "media": 1, "content": text}
                ).decode()
            )
            ack = await recv(wa)
            assert ack["cmd"] == 20
            return ack["seq"]

        await say("before")
        assert (await recv(wb))["content"] == "before"
        proc.terminate()
        proc.wait(timeout=10)

        async def bus_states():
            return [
                (await (await http.get(n.base + "/healthz")).json())["data"]["counters"][
                    "connected"
                ]
                for n in nodes
            ]

        end = time.monotonic() + DEADLINE
        while await bus_states() != [0, 0]:  # /healthz shows the bus down
            assert time.monotonic() < end
            await asyncio.sleep(0.1)
        during = [await say(f"during{n}") for n in range(3)]  # stored and acked meanwhile
        health = (await (await http.get(n1.base + "/healthz")).json())["data"]
        assert health["db"] == "ok"
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        end = time.monotonic() + DEADLINE
        while not all(states := await bus_states()):  # the buses reconnect by themselves
            assert time.monotonic() < end, states
            await asyncio.sleep(0.1)
        seen = []
        after = await say("after")
        while True:
            frame = await recv(wb)
            seen.append(frame["seq"])
            if frame["content"] == "after":
                break
        assert after == during[-1] + 1
        rows = (await c.call(n2, "/message/history", b["token"], cmd=10, dstid=a["id"], after=1))[
            "rows"
        ]
        assert [r["content"] for r in rows] == ["during0", "during1", "during2", "after"]
        assert len(seen) == len(set(seen))  # never twice
    finally:
        await http.close()
        for node in nodes:
            node.stop()
        proc.terminate()
        proc.wait(timeout=10)
