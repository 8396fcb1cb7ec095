"""Load generator worker: one process drives a share of the senders and receivers over /chat.

A sender keeps `inflight` messages on the way: each one is counted as arrived when its
receiver gets it (delivery to the other side, not the ack), then the next one goes. Every
message carries its send time, so latency is send to delivery. Duplicates and losses are
counted by message id per receiver.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

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


async def _listeners(job: dict[str, Any]) -> dict[str, Any]:
    """Receivers only (community members): count deliveries and latencies until told."""
    latencies: list[float] = []
    stats = {"delivered": 0, "duplicates": 0}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        sockets = [
            await http.ws_connect(ws_url(job["base"], u), max_msg_size=0) for u in job["users"]
        ]
        job["ready"].set()

        async def reader(ws) -> None:
            seen: set[str] = set()
            async for msg in ws:
                frame = orjson.loads(msg.data)
                if frame.get("cmd") != 11:
                    continue
                if frame["id"] in seen:
                    stats["duplicates"] += 1
                    continue
                seen.add(frame["id"])
                stats["delivered"] += 1
                latencies.append(time.perf_counter() - float(frame["content"]))

        tasks = [asyncio.create_task(reader(ws)) for ws in sockets]
        while not job["stop"].is_set():
            await asyncio.sleep(0.1)
        await asyncio.sleep(job.get("grace", 2))
        for t in tasks:
            t.cancel()
        for ws in sockets:
            await ws.close()
    return {**stats, "latencies": latencies}


async def _idle(job: dict[str, Any]) -> dict[str, Any]:
    """Open many idle WebSockets, hold them until told, report how fast they opened."""
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            start = time.perf_counter()
            sem = asyncio.Semaphore(200)

            async def one(user):
                async with sem:
                    return await http.ws_connect(ws_url(job["base"], user), heartbeat=None)

            sockets = await asyncio.gather(*(one(u) for u in job["users"]))
            elapsed = time.perf_counter() - start
            job["ready"].set()
            while not job["stop"].is_set():
                await asyncio.sleep(0.1)
            for ws in sockets:
                await ws.close()
    finally:
        job["ready"].set()  # never leave the orchestrator waiting, even after a failure
    return {"opened": len(sockets), "elapsed": elapsed}


def work(kind: str, job: dict[str, Any], out) -> None:
    """Entry point of a worker process; always answers, with the error if it failed."""
    runner = {"pairs": _pairs, "listeners": _listeners, "idle": _idle}[kind]
    try:
        result = (uvloop.run if uvloop is not None else asyncio.run)(runner(job))
    except BaseException:
        import traceback

        result = {"failed": traceback.format_exc()}
    out.put(result)
