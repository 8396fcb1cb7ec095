"""A client that stops reading is closed with 1013; nobody else waits for it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct

import orjson
from aiohttp import web

from node import ws as node_ws
from node.hub import Conn, Hub
from node.keys import HUB, SETTINGS
from node.settings import Settings

from .test_chat import pair, recv


def _handshake(port: int, uid: int, token: str) -> socket.socket:
    """A WebSocket client with a tiny receive buffer that will not read until told."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /chat?id={uid}&token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _close_code(sock: socket.socket) -> int | None:
    """Read frames until the server's close frame; its code (None if the socket just ends)."""
    buf = b""

    def need(n: int) -> bool:
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return False
            buf += chunk
        return True

    while need(2):
        opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
        offset = 2
        if length == 126:
            if not need(4):
                return None
            length, offset = struct.unpack("!H", buf[2:4])[0], 4
        elif length == 127:
            if not need(10):
                return None
            length, offset = struct.unpack("!Q", buf[2:10])[0], 10
        if not need(offset + length):
            return None
        payload, buf = buf[offset : offset + length], buf[offset + length :]
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0]
    return None


async def test_never_reading_client_closed_1013_others_unaffected(make_server):
    # the sender's rate limit is not under test: thousands of messages may go before the cut
    api = await make_server(queue_max_frames=200, send_burst=10_000)
    a, slow = await pair(api)
    c, d = await pair(api)
    raw = await asyncio.to_thread(_handshake, api.client.port, slow["id"], slow["token"])
    wa, wc, wd = await api.ws(a), await api.ws(c), await api.ws(d)
    big = "x" * 4000
    sent = 0
    closed = False
    while not closed:
        for _ in range(100):
            await wa.send_str(
                orjson.dumps({"cmd": 10, "dstid": slow["id"], "media": 1, "content": big}).decode()
            )
        for _ in range(100):
            assert (await recv(wa))["cmd"] == 20
        sent += 100
        # the other pair chats on, undisturbed, while the slow socket's buffers fill
        await wc.send_str(
            orjson.dumps(
                {"id": sent, "cmd": 10, "dstid": d["id"], "media": 1, "content": "still here"}
            ).decode()
        )
        assert (await recv(wc))["id"] == sent
        assert (await recv(wd))["content"] == "still here"
        health = await api.call("/healthz", method="GET")
        closed = health["data"]["connections"] == 3
        assert sent < 3_000, "the slow client was never cut off"
    code = await asyncio.to_thread(_close_code, raw)
    raw.close()
    assert code == 1013
    # what it missed is stored: a reconnect fetches it by seq
    rows = (await api.call("/message/history", slow["token"], cmd=10, dstid=a["id"], limit=100))[
        "rows"
    ]
    assert rows[-1]["seq"] == sent


async def test_queue_hands_out_frames_in_order_within_the_byte_budget():
    """What the connection's writer takes at once: the oldest frames that fit, at least one
    (a frame bigger than the budget still goes), the byte count kept with the queue."""
    conn = Conn("c1", 1, "h", max_frames=10, max_bytes=10_000)
    for size in (300, 300, 500, 2_000, 100):
        conn.send(b"x" * size)
    assert conn.nbytes == 3_200
    assert [len(f) for f in conn.take(1_000)] == [300, 300]
    assert [len(f) for f in conn.take(100)] == [500]
    assert [len(f) for f in conn.take(5_000)] == [2_000, 100]
    assert conn.take(5_000) == [] and conn.nbytes == 0
    for _ in range(10):
        conn.send(b"y")
    conn.send(b"z")  # the eleventh frame: over max_frames, the connection is cut
    assert conn.close_code == 1013 and conn.queue == [] and conn.nbytes == 0


async def test_a_round_of_pings_lets_the_loop_run_between_slices(monkeypatch):
    """The keeper pings a node's connections a slice at a time and lets the event loop run
    between slices, so messages pass while it goes through thousands of connections (all
    10,000 in one turn held up every message for about 0.3 s)."""
    monkeypatch.setattr(node_ws, "PING_INTERVAL_S", 0.05)
    monkeypatch.setattr(node_ws, "KEEPER_SLICE", 2)
    monkeypatch.setattr(node_ws, "KEEPER_PAUSE_S", 0)
    app = web.Application()
    app[SETTINGS] = Settings(idle_timeout_s=60)
    hub = app[HUB] = Hub("n")
    conns = [Conn(f"n/{uid}", uid, "hash", 10, 10**6) for uid in range(1, 7)]
    for conn in conns:
        hub.conns[conn.user] = {conn}
    seen: set[int] = set()  # how many connections owed a ping, at each turn of the loop
    keeper = node_ws.keeper(app)
    await anext(keeper)
    try:
        async with asyncio.timeout(10):
            while len(seen - {0}) < 3:
                seen.add(sum(conn.ping_due for conn in conns))
                await asyncio.sleep(0)
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(keeper)
    assert seen == {0, 2, 4, 6}  # two at a time, the loop turning in between
