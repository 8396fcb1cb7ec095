"""Load generator worker: one process drives a share of the senders and receivers over /chat.

A sender keeps `inflight` messages on the way: each one is counted as arrived when its
receiver gets it (delivery to the other side, not the ack), then the next one goes. Every
message carries its send time, so latency is send to delivery. Duplicates and losses are
counted by message id per receiver.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


def ws_url(base: str, user: dict[str, Any]) -> str:
    return f"{base.replace('http', 'ws', 1)}/chat?id={user['id']}&token={user.get('token', '')}"


async def _pairs(job: dict[str, Any]) -> dict[str, Any]:
    """One-to-one: each (sender, receiver) pair keeps job['inflight'] messages on the way."""
    inflight, duration = job["inflight"], job["duration"]
    run_id = os.urandom(4).hex()  # client ids are idempotency keys: never reuse one
    latencies: list[float] = []
    stats = {"sent": 0, "delivered": 0, "duplicates": 0, "errors": 0}
    received: dict[int, set[str]] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        conns = []
        for pair in job["pairs"]:
            s = await http.ws_connect(ws_url(pair["sender_base"], pair["sender"]), max_msg_size=0)
            r = await http.ws_connect(
                ws_url(pair["receiver_base"], pair["receiver"]), max_msg_size=0
            )
            conns.append((pair, s, r))
        start = time.perf_counter()
        cpu_start = time.process_time()
        stop_at = start + duration

        async def run(index: int, pair, s, r) -> None:
            seen = received.setdefault(index, set())
            credit = asyncio.Semaphore(inflight)
            counter = 0

            async def reader() -> None:
                async for msg in r:
                    frame = orjson.loads(msg.data)
                    if frame.get("cmd") not in (10, None) or "content" not in frame:
                        continue
                    mid = frame["id"]
                    if mid in seen:
                        stats["duplicates"] += 1
                        continue
                    seen.add(mid)
                    latencies.append(time.perf_counter() - float(frame["content"]))
                    stats["delivered"] += 1
                    credit.release()

            async def drain_acks() -> None:
                async for msg in s:
                    frame = orjson.loads(msg.data)
                    if frame.get("cmd") == 21:
                        stats["errors"] += 1
                        credit.release()

            tasks = [asyncio.create_task(reader()), asyncio.create_task(drain_acks())]
            while time.perf_counter() < stop_at:
                try:
                    await asyncio.wait_for(credit.acquire(), 30)
                except TimeoutError:
                    break
                counter += 1
                stats["sent"] += 1
                await s.send_str(
                    orjson.dumps(
                        {
                            "id": f"{run_id}-{index}-{counter}",
                            "cmd": 10,
                            "dstid": pair["receiver"]["id"],
                            "media": 1,
                            "content": repr(time.perf_counter()),
                        }
                    ).decode()
                )
            # grace: let what is on the way arrive
            deadline = time.perf_counter() + 10
            while len(seen) < counter - stats["errors"] and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            for t in tasks:
                t.cancel()

        await asyncio.gather(*(run(i, *c) for i, c in enumerate(conns)))
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        for _, s, r in conns:
            await s.close()
            await r.close()
    stats["lost"] = stats["sent"] - stats["delivered"] - stats["errors"]
    return {**stats, "latencies": latencies, "elapsed": elapsed, "cpu_s": cpu}


class Listener(asyncio.Protocol):
    """One community member's socket, read without a WebSocket library: the server's frames
    are cut straight out of the byte stream (a burst arrives in one read), so the member
    processes are not what bounds the fan-out figure. Every frame is still decoded, checked
    for its cmd and counted once by id."""

    def __init__(self, request: bytes, stats: dict[str, int], latencies: list[float]) -> None:
        self.request = request
        self.stats = stats
        self.latencies = latencies
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.seen: set[str] = set()
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the upgrade"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded.done():
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                status = bytes(buf[: buf.find(b"\r\n")]).decode()
                self.upgraded.set_exception(ConnectionError(f"upgrade refused: {status}"))
                return
            del buf[: head_end + 4]
            self.upgraded.set_result(None)
        now = time.perf_counter()
        pos, n = 0, len(buf)
        while n - pos >= 2:
            size, head = buf[pos + 1] & 0x7F, 2
            if size == 126:
                if n - pos < 4:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif size == 127:
                if n - pos < 10:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + size
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 0x1:
                self.on_text(orjson.loads(bytes(buf[pos + head : end])), now)
            elif opcode == 0x9:  # ping: a pong, masked (with a zero key) as clients must
                payload = bytes(buf[pos + head : end])
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0" * 4 + payload)
            pos = end
        del buf[:pos]

    def on_text(self, frame: dict[str, Any], now: float) -> None:
        if frame.get("cmd") != 11:
            return
        if frame["id"] in self.seen:
            self.stats["duplicates"] += 1
            return
        self.seen.add(frame["id"])
        self.stats["delivered"] += 1
        self.latencies.append(now - float(frame["content"]))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.write(b"\x88\x82\0\0\0\0\x03\xe8")  # close 1000, masked
            self.transport.close()


async def _listeners(job: dict[str, Any]) -> dict[str, Any]:
    """Receivers only (community members): count deliveries and latencies until told."""
    latencies: list[float] = []
    stats = {"delivered": 0, "duplicates": 0}
    loop = asyncio.get_running_loop()
    url = urlsplit(job["base"])
    members = []
    for user in job["users"]:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /chat?id={user['id']}&token={user['token']} HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        _, member = await loop.create_connection(
            lambda r=request: Listener(r, stats, latencies), url.hostname, url.port
        )
        await member.upgraded
        members.append(member)
    job["ready"].set()
    cpu_start = time.process_time()
    while not job["stop"].is_set():
        await asyncio.sleep(0.1)
    cpu = time.process_time() - cpu_start  # while the sender ran, not the grace after it
    await asyncio.sleep(job.get("grace", 2))
    for member in members:
        member.close()
    return {**stats, "latencies": latencies, "cpu_s": cpu}


async def _idle(job: dict[str, Any]) -> dict[str, Any]:
    """Open many idle WebSockets and hold them; when told to ("again"), close them all and
    open them again at once, as clients do after a network blip or a node restart; report
    how fast they opened each time."""
    connector = aiohttp.TCPConnector(limit=0)
    sem = asyncio.Semaphore(200)
    out: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(connector=connector) as http:

            async def one(user):
                async with sem:
                    return await http.ws_connect(ws_url(job["base"], user), heartbeat=None)

            async def close(ws):
                async with sem:
                    await ws.close()

            async def open_all() -> tuple[list, float]:
                start = time.perf_counter()
                sockets = await asyncio.gather(*(one(u) for u in job["users"]))
                return sockets, time.perf_counter() - start

            sockets, out["elapsed"] = await open_all()
            out["opened"] = len(sockets)
            job["ready"].set()
            while not (job["again"].is_set() or job["stop"].is_set()):
                await asyncio.sleep(0.1)
            if job["again"].is_set():
                await asyncio.gather(*(close(ws) for ws in sockets))
                sockets, _ = await open_all()  # timed by the orchestrator, closes included
                out["reopened"] = len(sockets)
                job["reopened"].set()
            while not job["stop"].is_set():
                await asyncio.sleep(0.1)
            await asyncio.gather(*(close(ws) for ws in sockets))
    finally:
        job["ready"].set()  # never leave the orchestrator waiting, even after a failure
        job["reopened"].set()
    return out


async def _resync(job: dict[str, Any]) -> dict[str, Any]:
    """What a client does when it comes back: its conversation list, the latest page of
    history of its one-to-one conversation, and its read marker moved to the end of that page.
    job['concurrency'] clients at a time, round and round over job['users'] for
    job['duration'] seconds; every answer must be a 200 with code 0."""
    base, users, duration = job["base"], job["users"], job["duration"]
    latencies: list[float] = []
    stats = {"requests": 0, "errors": 0}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def call(method: str, path: str, user: dict[str, Any], **params: Any) -> Any:
            started = time.perf_counter()
            headers = {"Authorization": f"Bearer {user['token']}"}
            form = {"params": params} if method == "GET" else {"data": params}
            async with http.request(method, base + path, headers=headers, **form) as r:
                body = orjson.loads(await r.read())
            latencies.append(time.perf_counter() - started)
            stats["requests"] += 1
            if r.status != 200 or body.get("code") != 0:
                stats["errors"] += 1
                return {}
            return body

        start = time.perf_counter()
        cpu_start = time.process_time()
        stop_at = start + duration

        async def client(first: int) -> None:
            i = first
            while time.perf_counter() < stop_at:
                user = users[i % len(users)]
                i += job["concurrency"]
                body = await call("GET", "/message/conversations", user)
                if not body:
                    continue  # counted as an error by call
                rows = body.get("rows")
                if not rows:
                    stats["errors"] += 1  # every bench user has a conversation by now
                    continue
                chat = {"cmd": rows[0]["cmd"], "dstid": rows[0]["dstid"]}
                page = (await call("GET", "/message/history", user, **chat, limit=50)).get("rows")
                if page:  # what a browser does once it shows them
                    await call("POST", "/message/read", user, **chat, seq=page[-1]["seq"])

        await asyncio.gather(*(client(n) for n in range(job["concurrency"])))
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    return {**stats, "latencies": latencies, "elapsed": elapsed, "cpu_s": cpu}


def work(kind: str, job: dict[str, Any], out) -> None:
    """Entry point of a worker process; always answers, with the error if it failed."""
    runner = {"pairs": _pairs, "listeners": _listeners, "idle": _idle, "resync": _resync}[kind]
    try:
        result = (uvloop.run if uvloop is not None else asyncio.run)(runner(job))
    except BaseException:
        import traceback

        result = {"failed": traceback.format_exc()}
    out.put(result)
