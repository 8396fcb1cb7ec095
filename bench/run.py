"""`make bench`: lanchat against a bare aiohttp relay, on this machine, over the public contract.

Starts the servers it needs (lanchat on the embedded SQLite and on MariaDB, a 3-node cluster on
the UDP bus, the bare relay), registers users over HTTP, and drives /chat from separate client
processes. Prints a table and writes the figures to artifacts/bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing as mp
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import client

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
MYSQL = {"server": "mysql://root:@127.0.0.1:3306"}  # --mysql


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()  # noqa: S310 - our own server
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_cpu_s(pid: int) -> float:
    """CPU seconds of the process's main thread (the event loop) alone; the rest of cpu_s is
    its other threads (the message writer, the async database driver's threads)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_queued_s(pid: int) -> float:
    """Seconds the process's main thread (the event loop) has waited in the kernel's run
    queue for a core, ready to run; 0 where the kernel keeps no schedstat."""
    return thread_times(pid).get("loop waiting for a core", 0.0)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


PROFILE: dict[str, str] = {}  # {"dir": ...} when --profile is given


@contextlib.contextmanager
def profiled(servers: list[Server], name: str) -> Iterator[None]:
    """With --profile, py-spy samples the servers from outside while the scenario runs (no
    code of ours in the measured process); raw stacks go to DIR/<scenario>-<port>.txt. It
    reads them without stopping the process (stopped 250 times a second, a node delivered a
    quarter of its messages), and only the thread holding the GIL: a thread waiting for a
    lock or a queue is not counted as busy, nor one running SQLite's C code."""
    if "dir" not in PROFILE:
        yield
        return
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    spies = [
        subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--format",
                "raw",
                "--rate",
                "250",
                "--nonblocking",
                "--gil",
                "--pid",
                str(s.proc.pid),
                "--output",
                str(Path(PROFILE["dir"]) / f"{slug}-{s.port}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for s in servers
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)


class Server:
    def __init__(self, command: list[str], port: int, env: dict[str, str], cwd: str) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = open(Path(cwd) / f"server-{port}.log", "w")  # closed in stop()
        self.proc = subprocess.Popen(command, env=env, cwd=cwd, stderr=self.log, stdout=self.log)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def lanchat(workdir: str, db: str, **env: str) -> Server:
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("LANCHAT_")}
    full.update(
        LANCHAT_PORT=str(port),
        LANCHAT_DB=db,
        LANCHAT_LOG_LEVEL="warning",
        LANCHAT_SEND_RATE_PER_S="100000",
        LANCHAT_SEND_BURST="100000",
        LANCHAT_PASSWORD_TIME_COST="1",  # the bench registers thousands of users
        LANCHAT_PASSWORD_MEMORY_KIB="8192",
        LANCHAT_QUEUE_MAX_FRAMES="100000",
        LANCHAT_MAX_CONNS_PER_USER="1000",
        LANCHAT_QUEUE_MAX_BYTES="67108864",
        **env,
    )
    server = Server([sys.executable, "-m", "node", "serve"], port, full, workdir)
    wait_http(server.base + "/healthz")
    return server


def relay(workdir: str) -> Server:
    port = free_port()
    server = Server(
        [sys.executable, str(ROOT / "bench/relay.py"), str(port)], port, dict(os.environ), workdir
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return server


def mysql_url(name: str) -> str:
    return f"{MYSQL['server']}/{name}"


def _mysql_admin() -> Any:
    import pymysql

    parts = urlsplit(MYSQL["server"])
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        autocommit=True,
        connect_timeout=5,
    )


def fresh_mysql() -> str:
    name = f"lanchat_bench_{secrets.token_hex(4)}"
    conn = _mysql_admin()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    conn.close()
    return name


def drop_mysql(name: str) -> None:
    conn = _mysql_admin()
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


def missing_services(only: set[str], redis_url: str, idle_conns: int) -> dict[str, str]:
    """The scenario groups this machine cannot run, each with the reason: MariaDB (one node
    on it, and both clusters) or Redis not answering, or too low an open files limit for
    the idle connections. The limit is first raised to the hard one; the servers and client
    processes started later inherit it."""
    out: dict[str, str] = {}
    if {"mariadb", "udp", "redis"} & only:
        try:
            _mysql_admin().close()
        except Exception as exc:  # whatever the failure, it is not there to use
            reason = f"MariaDB does not answer at {MYSQL['server']}: {exc}"
            out.update(dict.fromkeys({"mariadb", "udp", "redis"} & only, reason))
    if "redis" in only and "redis" not in out:
        import redis

        try:
            redis.Redis.from_url(redis_url, socket_connect_timeout=5).ping()
        except Exception as exc:
            out["redis"] = f"Redis does not answer at {redis_url}: {exc}"
    if "idle" in only:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        needed = idle_conns + 1_000  # the server's connections, its database and the rest
        if min(hard, 1 << 20) < needed:
            out["idle"] = (
                f"{idle_conns} connections need about {needed} open files and the limit is "
                f"{hard}: raise it (ulimit -n) or pass a smaller --idle"
            )
    return out


# ---- users over the public contract ---------------------------------------------------------


async def register_many(base: str, count: int, prefix: str) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as http:

        async def one(i: int) -> dict[str, Any]:
            async with (
                sem,
                http.post(
                    base + "/user/register",
                    data={"mobile": f"{prefix}{i:06d}", "passwd": "bench-pass"},
                ) as r,
            ):
                return (await r.json())["data"]

        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def befriend(base: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as http:

        async def one(a, b):
            async with (
                sem,
                http.post(
                    base + "/contact/addfriend",
                    data={"dstid": b["id"]},
                    headers={"Authorization": f"Bearer {a['token']}"},
                ) as r,
            ):
                assert r.status == 200, await r.text()

        await asyncio.gather(*(one(a, b) for a, b in pairs))


async def community(base: str, owner: dict[str, Any], members: list[dict[str, Any]]) -> int:
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            base + "/contact/createcommunity",
            data={"name": "bench"},
            headers={"Authorization": f"Bearer {owner['token']}"},
        ) as r:
            cid = (await r.json())["data"]["id"]

        async def one(m):
            async with (
                sem,
                http.post(
                    base + "/contact/joincommunity",
                    data={"dstid": cid},
                    headers={"Authorization": f"Bearer {m['token']}"},
                ) as r,
            ):
                assert r.status == 200

        await asyncio.gather(*(one(m) for m in members))
    return cid


# ---- scenarios ------------------------------------------------------------------------------


def raise_failed(results: list[dict[str, Any]]) -> None:
    """A worker that failed answers with its traceback instead of figures."""
    for r in results:
        if "failed" in r:
            raise RuntimeError(f"a client worker failed:\n{r['failed']}")


def in_workers(kind: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=client.work, args=(kind, job, out)) for job in jobs]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    raise_failed(results)
    return results


def percentile_ms(latencies: list[float], p: float) -> float:
    """The p-th quantile of sorted latencies in seconds, in milliseconds (0 for none)."""
    if not latencies:
        return 0.0
    return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)


def summarise(results: list[dict[str, Any]], elapsed: float | None = None) -> dict[str, Any]:
    latencies = sorted(x for r in results for x in r["latencies"])
    delivered = sum(r["delivered"] for r in results)
    elapsed = elapsed or max(r["elapsed"] for r in results)

    return {
        "delivered": delivered,
        "per_s": round(delivered / elapsed),
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
        "p999_ms": percentile_ms(latencies, 0.999),
        "lost": sum(r.get("lost", 0) for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "errors": sum(r.get("errors", 0) for r in results),
    }


def pairs_jobs(pairs: list[dict[str, Any]], inflight: int, duration: float) -> list[dict[str, Any]]:
    return [
        {"pairs": pairs[i::WORKERS], "inflight": inflight, "duration": duration}
        for i in range(WORKERS)
    ]


def one_to_one(
    name: str, servers: list[Server], users: list[dict[str, Any]], inflight: int, duration: float
) -> dict[str, Any]:
    """Pairs spread over the servers; also how busy the servers were (CPU seconds per second
    of the run, summed over them: 1.0 is one core kept busy)."""
    bases = [s.base for s in servers]
    pairs = [
        {
            "sender": users[2 * i],
            "receiver": users[2 * i + 1],
            "sender_base": bases[i % len(bases)],
            "receiver_base": bases[(i + 1) % len(bases)],
        }
        for i in range(len(users) // 2)
    ]
    before = sum(cpu_s(s.proc.pid) for s in servers)
    loop_before = sum(loop_cpu_s(s.proc.pid) for s in servers)
    queued_before = sum(loop_queued_s(s.proc.pid) for s in servers)
    with profiled(servers, name):
        results = in_workers("pairs", pairs_jobs(pairs, inflight, duration))
    used = sum(cpu_s(s.proc.pid) for s in servers) - before
    loop_used = sum(loop_cpu_s(s.proc.pid) for s in servers) - loop_before
    queued = sum(loop_queued_s(s.proc.pid) for s in servers) - queued_before
    summary = summarise(results)
    elapsed = max(r["elapsed"] for r in results)
    summary["server_cpu"] = round(used / elapsed, 2)
    summary["loop_cpu"] = round(loop_used / elapsed, 2)  # of server_cpu, the event loop's
    # How long the event loops were ready to run but waited in the kernel's run queue.
    summary["loop_waited_core"] = round(queued / elapsed, 2)
    # The load generator's processes, on the same cores: what is left for the servers.
    summary["client_cpu"] = round(sum(r["cpu_s"] for r in results) / elapsed, 2)
    # Messages delivered per CPU-second the servers spent: what a node achieves per core when
    # it has one to itself, which this machine cannot give three nodes at once.
    summary["per_cpu_s"] = round(summary["delivered"] / used) if used else 0
    summary["elapsed_s"] = round(elapsed, 2)
    return summary


def resync(server: Server, users: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    """Clients coming back fetch their conversation list and a page of history and move their
    read marker over HTTP, 16 at a time from two processes: requests answered per second,
    their latency, and the server's CPU per request."""
    jobs = [
        {"base": server.base, "users": users[i::WORKERS], "duration": duration, "concurrency": 8}
        for i in range(WORKERS)
    ]
    before = cpu_s(server.proc.pid)
    results = in_workers("resync", jobs)
    used = cpu_s(server.proc.pid) - before
    elapsed = max(r["elapsed"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"])
    requests = sum(r["requests"] for r in results)

    return {
        "requests": requests,
        "per_s": round(requests / elapsed),
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
        "errors": sum(r["errors"] for r in results),
        "server_cpu": round(used / elapsed, 2),
        "server_cpu_ms_per_request": round(used * 1000 / requests, 2),
        "client_cpu": round(sum(r["cpu_s"] for r in results) / elapsed, 2),
    }


def fan_out(
    name: str,
    server: Server,
    sender: dict[str, Any],
    members: list[dict[str, Any]],
    cid: int,
    inflight: int,
    duration: float,
) -> dict[str, Any]:
    base = server.base
    stop = mp.Event()
    readies = [mp.Event() for _ in range(WORKERS)]
    jobs = [
        {"base": base, "users": members[i::WORKERS], "ready": readies[i], "stop": stop}
        for i in range(WORKERS)
    ]
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=client.work, args=("listeners", job, out)) for job in jobs]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(120)
    before, sender_before = cpu_s(server.proc.pid), time.process_time()
    with profiled([server], name):
        sent = asyncio.run(_group_sender(base, sender, cid, inflight, duration))
    used = cpu_s(server.proc.pid) - before
    sender_used = time.process_time() - sender_before
    stop.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    summary = summarise([{**r, "elapsed": sent["elapsed"]} for r in results], sent["elapsed"])
    expected = sent["acked"] * len(members)
    summary["lost"] = expected - summary["delivered"]
    summary["messages"] = sent["acked"]
    summary["server_cpu"] = round(used / sent["elapsed"], 2)
    summary["members_cpu"] = round(sum(r["cpu_s"] for r in results) / sent["elapsed"], 2)
    summary["sender_cpu"] = round(sender_used / sent["elapsed"], 2)
    return summary


async def _group_sender(base, sender, cid, inflight, duration):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(client.ws_url(base, sender))
        credit = asyncio.Semaphore(inflight)
        acked = 0
        run_id = secrets.token_hex(4)  # client ids are idempotency keys: never reuse one

        async def acks():
            nonlocal acked
            async for msg in ws:
                if json.loads(msg.data).get("cmd") in (20, 21):
                    acked += 1
                    credit.release()

        task = asyncio.create_task(acks())
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < duration:
            await credit.acquire()
            n += 1
            await ws.send_str(
                json.dumps(
                    {
                        "id": f"{run_id}-{n}",
                        "cmd": 11,
                        "dstid": cid,
                        "media": 1,
                        "content": repr(time.perf_counter()),
                    }
                )
            )
        while acked < n:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        task.cancel()
        await ws.close()
    return {"acked": acked, "elapsed": elapsed}


WRITES = ("lanchat_commits_total ", "lanchat_messages_stored_total ")
HISTOGRAMS = ("lanchat_gc_pause_seconds_", "lanchat_commit_seconds_")


def node_reading(server: Server) -> dict[str, float]:
    """The node's garbage-collection pauses so far (lanchat_gc_pause_seconds in /metrics), its
    message commits and messages stored, the time its writer spent on each batch, and how
    long its writer has run on a core and waited for one."""
    url = server.base + "/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()  # noqa: S310 - our own server
    reading = {}
    for line in text.splitlines():
        if line.startswith((*HISTOGRAMS, *WRITES)):
            key, value = line.rsplit(" ", 1)
            reading[key] = float(value)
    reading.update(thread_times(server.proc.pid))
    return reading


def thread_times(pid: int) -> dict[str, float]:
    """Seconds the process's event loop (its main thread) and its message writer have spent
    on a core and waiting in the kernel's run queue for one (Linux's per-thread schedstat;
    the node names its threads for the OS). Nothing where the kernel does not keep them."""
    times: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "loop" if task.name == str(pid) else (task / "comm").read_text().strip()
            if name not in ("loop", "message-writer"):
                continue
            on_core_ns, waiting_ns = (task / "schedstat").read_text().split()[:2]
        except (OSError, ValueError):  # the thread ended, or no schedstat in this kernel
            continue
        times[f"{name} on core"] = int(on_core_ns) / 1e9
        times[f"{name} waiting for a core"] = int(waiting_ns) / 1e9
    return times


def _longest_at_most(delta: dict[str, float], histogram: str) -> float:
    """The smallest bucket bound of a histogram's growth that holds every new value (0 for
    none): a bound on the longest of them."""
    count = delta.get(f"{histogram}_count", 0.0)
    bounds = [
        float(key.split('"')[1])  # lanchat_gc_pause_seconds_bucket{le="0.005"}
        for key, seen in delta.items()
        if key.startswith(f"{histogram}_bucket") and seen == count
    ]
    return min(bounds) if count else 0.0


def node_between(
    before: dict[str, float], after: dict[str, float], elapsed_s: float | None = None
) -> dict[str, Any]:
    """Collections between two readings: how many, their pauses added up, and a bound on the
    longest (the smallest histogram bucket that holds them all); how many messages each
    commit stored, how long a batch took on average and at most; and, given the run's
    length, the share of it the message writer was busy (near 1.0: the writer sets the pace)
    and how that time went."""
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    count = delta["lanchat_gc_pause_seconds_count"]
    commits, stored = (delta.get(key.strip(), 0.0) for key in WRITES)
    batches = delta.get("lanchat_commit_seconds_count", 0.0)
    busy_s = delta.get("lanchat_commit_seconds_sum", 0.0)
    return {
        "gc_collections": int(count),
        "gc_pause_ms": round(delta["lanchat_gc_pause_seconds_sum"] * 1000, 1),
        "gc_longest_ms_at_most": round(
            _longest_at_most(delta, "lanchat_gc_pause_seconds") * 1000, 1
        ),
        "per_commit": round(stored / commits, 1) if commits else 0,
        "commit_ms": round(busy_s / batches * 1000, 2) if batches else 0,
        "commit_longest_ms_at_most": round(
            _longest_at_most(delta, "lanchat_commit_seconds") * 1000, 1
        ),
        **({"writer_busy": round(busy_s / elapsed_s, 2)} if elapsed_s else {}),
        **(_core_shares(delta, elapsed_s) if elapsed_s else {}),
    }


def _core_shares(delta: dict[str, float], elapsed_s: float) -> dict[str, float]:
    """The shares of the run the writer spent on a core and waiting for one: the time it is
    busy but neither running nor queued is its disk flushes and the GIL."""
    shares = {
        "writer_cpu": "message-writer on core",
        "writer_waited_core": "message-writer waiting for a core",
    }
    return {
        figure: round(delta[key] / elapsed_s, 2) for figure, key in shares.items() if key in delta
    }


def chat_beside_idle(
    name: str,
    server: Server,
    users: list[dict[str, Any]],
    duration: float,
    report: Callable[[str, dict[str, Any]], None],
) -> None:
    """The pairs at 1 in flight while the idle connections are open: what a node with many
    users connected, few of them talking, gives those who are."""
    before = node_reading(server)
    figures = one_to_one(name, [server], users, 1, duration)
    report(name, {**figures, **node_between(before, node_reading(server), figures["elapsed_s"])})


def idle(
    server: Server,
    users: list[dict[str, Any]],
    count: int,
    meanwhile: Callable[[], None] | None = None,
    metrics: bool = True,
) -> dict[str, Any]:
    """Open count idle WebSockets over users; with them open, memory is read and meanwhile
    runs; then all of them close and open again at once (a reconnect storm), and with
    metrics, the node's garbage collections during that are read from /metrics."""
    stop, again = mp.Event(), mp.Event()
    per = max(1, count // 4)
    targets = [users[i % len(users)] for i in range(count)]
    readies = [mp.Event() for _ in range(4)]
    reopened = [mp.Event() for _ in range(4)]
    jobs = [
        {
            "base": server.base,
            "users": targets[i * per : (i + 1) * per],
            "ready": readies[i],
            "again": again,
            "reopened": reopened[i],
            "stop": stop,
        }
        for i in range(4)
    ]
    before = rss_kib(server.proc.pid)
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=client.work, args=("idle", job, out)) for job in jobs]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for r in readies:
        r.wait(600)
    elapsed = time.perf_counter() - start
    time.sleep(1)
    after = rss_kib(server.proc.pid)
    if meanwhile is not None:
        meanwhile()
    gc_before = node_reading(server) if metrics else {}
    start = time.perf_counter()
    again.set()
    for r in reopened:
        r.wait(600)
    again_elapsed = time.perf_counter() - start
    gc_after = node_reading(server) if metrics else {}
    stop.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    raise_failed(results)
    opened = sum(r["opened"] for r in results)
    figures = {
        "connections": opened,
        "connects_per_s": round(opened / elapsed),
        "kib_per_connection": round((after - before) / opened, 1),
        "reconnects_per_s": round(sum(r["reopened"] for r in results) / again_elapsed),
    }
    if metrics:
        storm = node_between(gc_before, gc_after)
        figures |= {
            "reconnect_gc_collections": storm["gc_collections"],
            "reconnect_gc_pause_ms": storm["gc_pause_ms"],
            "reconnect_gc_longest_ms_at_most": storm["gc_longest_ms_at_most"],
        }
    return figures


GROUPS = ("relay", "sqlite", "mariadb", "community", "idle", "udp", "redis")


def ratios(scen: dict[str, dict[str, Any]], pairs: int) -> dict[str, float]:
    """lanchat against the relay and the cluster against one node, for what this run measured."""

    out: dict[str, float] = {}

    def ratio(key: str, num: str, den: str, scale: float = 1.0, figure: str = "per_s") -> None:
        a, b = (scen[n][figure] if n in scen else None for n in (num, den))
        if a is not None and b:
            out[key] = round(a / scale / b, 2)

    one = f"1:1 x{pairs}"
    for n in (1, 10):
        ratio(
            f"sqlite_{n}_vs_relay",
            f"lanchat/sqlite {one} inflight={n}",
            f"relay {one} inflight={n}",
        )
        ratio(
            f"mariadb_{n}_vs_relay",
            f"lanchat/mariadb {one} inflight={n}",
            f"relay {one} inflight={n}",
        )
    for figure in ("connects_per_s", "reconnects_per_s"):
        ratio(
            f"{figure.split('_')[0]}_vs_relay",
            "lanchat/sqlite idle connections",
            "relay idle connections",
            figure=figure,
        )
    single = f"lanchat/mariadb {one} inflight=10"
    for bus in ("udp", "redis"):
        cluster = f"lanchat/cluster3-{bus} {one} inflight=10"
        ratio(f"cluster_{bus}_per_node_vs_single_mariadb", cluster, single, 3)
        ratio(f"cluster_{bus}_total_vs_single_mariadb", cluster, single)
        ratio(f"cluster_{bus}_per_cpu_vs_single_mariadb", cluster, single, figure="per_cpu_s")
    return out


def targets(
    scen: dict[str, dict[str, Any]], rat: dict[str, float], pairs: int
) -> list[dict[str, Any]]:
    """Each performance target this run measured: the figure reached and whether it meets it."""
    out: list[dict[str, Any]] = []

    def judge(target: str, figure: float | None, meets: Callable[[float], bool], src: str) -> None:
        if figure is not None:
            out.append({"target": target, "figure": figure, "met": meets(figure), "from": src})

    one = f"lanchat/sqlite 1:1 x{pairs} inflight=1"
    first = scen.get(one, {})
    judge("one-to-one, 1 in flight: >= 24,000/s", first.get("per_s"), lambda x: x >= 24_000, one)
    key = "sqlite_1_vs_relay"
    judge("one-to-one, 1 in flight: >= 0.6 of the relay", rat.get(key), lambda x: x >= 0.6, key)
    judge("one-to-one, 1 in flight: p99 < 10 ms", first.get("p99_ms"), lambda x: x < 10, one)
    flows = [f for f in scen.values() if "lost" in f]
    if any(n.endswith("inflight=10") for n in scen):
        bad = sum(f["lost"] + f["duplicates"] for f in flows)
        every = f"every scenario, {10 * pairs} in flight included: 0 lost or duplicated"
        judge(every, bad, lambda x: x == 0, "all")
    rooms = {n: f["per_s"] for n, f in scen.items() if " community of 200 " in n}
    if rooms:
        best = max(rooms, key=rooms.__getitem__)
        judge(
            "community of 200: >= 180,000 deliveries/s", rooms[best], lambda x: x >= 180_000, best
        )
    idle = "lanchat/sqlite idle connections"
    judge(
        "idle connection: <= 20 KiB",
        scen.get(idle, {}).get("kib_per_connection"),
        lambda x: x <= 20,
        idle,
    )
    for bus in ("udp", "redis"):
        key = f"cluster_{bus}_per_node_vs_single_mariadb"
        judge(
            f"3 nodes ({bus}): per node >= 0.8 of one node", rat.get(key), lambda x: x >= 0.8, key
        )
    return out


def spread(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs in one: each numeric figure of a scenario (or ratio) that every run
    measured, as [lowest, highest]; each target, with its figure in every run and in how many
    runs it was met."""

    def ranges(tables: list[dict[str, Any]]) -> dict[str, list[float]]:
        out = {}
        for key, value in tables[0].items():
            values = [t.get(key) for t in tables]
            if isinstance(value, int | float) and all(isinstance(v, int | float) for v in values):
                out[key] = [min(values), max(values)]
        return out

    common = [name for name in runs[0]["scenarios"] if all(name in r["scenarios"] for r in runs)]
    judged: dict[str, dict[str, Any]] = {}
    for run in runs:
        for t in run["targets"]:
            seen = judged.setdefault(t["target"], {"figures": [], "met": 0})
            seen["figures"].append(t["figure"])
            seen["met"] += t["met"]
    return {
        "scenarios": {n: ranges([r["scenarios"][n] for r in runs]) for n in common},
        "ratios": ranges([r["ratios"] for r in runs]),
        "targets": judged,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--out", default=str(ROOT / "artifacts/bench.json"))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--mysql",
        default=MYSQL["server"],
        help="a MariaDB or MySQL server whose user may create and drop databases",
    )
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated scenario groups out of {','.join(GROUPS)}",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="sample every server with py-spy into DIR (raw stacks)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="run everything this many times and give each figure's lowest and highest",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    only = set(args.only.split(","))
    if only - set(GROUPS):
        parser.error(f"unknown scenario groups: {','.join(sorted(only - set(GROUPS)))}")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        PROFILE["dir"] = args.profile
    MYSQL["server"] = args.mysql.rstrip("/")
    left_out = missing_services(only, args.redis, args.idle)
    for group, reason in sorted(left_out.items()):
        print(f"left out: {group}: {reason}", flush=True)
    only -= set(left_out)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "left_out": left_out}
    runs = []
    for number in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"run {number} of {args.runs}", flush=True)
        scen = run_scenarios(args, only)
        rat = ratios(scen, args.pairs)
        print("ratios: " + "  ".join(f"{k}={v}" for k, v in rat.items()))
        judged = targets(scen, rat, args.pairs)
        for t in judged:
            print(f"target {'met    ' if t['met'] else 'NOT met'} {t['target']:62s} {t['figure']}")
        runs.append({"scenarios": scen, "ratios": rat, "targets": judged})
    if args.runs == 1:
        results |= runs[0]
    else:
        results["runs"] = runs
        results["spread"] = spread(runs)
        print(f"lowest and highest of {args.runs} runs:")
        for name, figures in results["spread"]["scenarios"].items():
            print(f"{name:38s} " + "  ".join(f"{k}={lo}..{hi}" for k, (lo, hi) in figures.items()))
        print(
            "ratios: "
            + "  ".join(f"{k}={lo}..{hi}" for k, (lo, hi) in results["spread"]["ratios"].items())
        )
        for target, seen in results["spread"]["targets"].items():
            print(
                f"target met in {seen['met']} of {args.runs} runs: {target:44s} {seen['figures']}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"figures written to {args.out}")


def run_scenarios(args: argparse.Namespace, only: set[str]) -> dict[str, dict[str, Any]]:
    """One run of the chosen scenario groups, each on servers started for it: the figures
    of each scenario by name, printed as they come."""
    scen: dict[str, dict[str, Any]] = {}
    work = tempfile.mkdtemp(prefix="lanchat-bench-")

    def report(name: str, figures: dict[str, Any]) -> None:
        scen[name] = figures
        print(f"{name:38s} " + "  ".join(f"{k}={v}" for k, v in figures.items()), flush=True)

    # Baseline: the bare relay (user ids only, no accounts).
    if {"relay", "idle"} & only:
        r = relay(work)
        try:
            if "relay" in only:
                fake = [{"id": i + 1} for i in range(2 * args.pairs)]
                for inflight in (1, 10):
                    name = f"relay 1:1 x{args.pairs} inflight={inflight}"
                    report(name, one_to_one(name, [r], fake, inflight, args.duration))
            if "idle" in only:  # the same connections, over the same 1,000 user ids
                fake = [{"id": i + 1} for i in range(1000)]
                report("relay idle connections", idle(r, fake, args.idle, metrics=False))
        finally:
            r.stop()

    # lanchat, one node, on SQLite then on MariaDB.
    for label in ("sqlite", "mariadb"):
        if label not in only and (label == "mariadb" or not {"community", "idle"} & only):
            continue
        dbname = None
        if label == "sqlite":
            db = f"sqlite:///{work}/bench-{secrets.token_hex(3)}.db"
        else:
            dbname = fresh_mysql()
            db = mysql_url(dbname)
        server = lanchat(work, db)
        try:
            users = asyncio.run(register_many(server.base, 2 * args.pairs, f"13{len(scen):02d}"))
            asyncio.run(
                befriend(server.base, [(users[2 * i], users[2 * i + 1]) for i in range(args.pairs)])
            )
            for inflight in (1, 10) if label in only else ():
                name = f"lanchat/{label} 1:1 x{args.pairs} inflight={inflight}"
                before = node_reading(server)
                figures = one_to_one(name, [server], users, inflight, args.duration)
                after = node_reading(server)
                report(name, {**figures, **node_between(before, after, figures["elapsed_s"])})
            if label in only:  # the pairs have conversations now, with history
                report(f"lanchat/{label} resync", resync(server, users, args.duration))
            if label == "sqlite" and {"community", "idle"} & only:
                members = asyncio.run(register_many(server.base, 1000, "1500"))
                for size in (200, 1000) if "community" in only else ():
                    cid = asyncio.run(community(server.base, users[0], members[:size]))
                    for inflight in (4, 16):  # messages the one sender keeps unacked
                        name = f"lanchat/{label} community of {size} inflight={inflight}"
                        figures = fan_out(
                            name, server, users[0], members[:size], cid, inflight, args.duration
                        )
                        report(name, figures)
                if "idle" in only:
                    # A fresh process: memory the earlier scenarios freed but kept would
                    # otherwise take the new connections and hide what they cost.
                    server.stop()
                    server = lanchat(work, db)
                    beside = f"lanchat/{label} 1:1 x{args.pairs} inflight=1 beside idle"
                    chat = functools.partial(
                        chat_beside_idle, beside, server, users, args.duration, report
                    )
                    report(
                        f"lanchat/{label} idle connections",
                        idle(server, members, args.idle, chat),
                    )
        finally:
            server.stop()
            if dbname:
                drop_mysql(dbname)

    # Three nodes sharing MariaDB, on the UDP bus and on the Redis bus; pairs span two nodes.
    for bus in ("udp", args.redis):
        label = "udp" if bus == "udp" else "redis"
        if label not in only:
            continue
        dbname = fresh_mysql()
        udp = str(free_port(socket.SOCK_DGRAM))
        secret = f"bench-cluster-secret-{secrets.token_hex(8)}"
        nodes = [
            lanchat(
                work,
                mysql_url(dbname),
                LANCHAT_BUS=bus,
                LANCHAT_UDP_PORT=udp,
                LANCHAT_CLUSTER_SECRET=secret,
                LANCHAT_NODE_ID=f"bench{i}",
            )
            for i in range(3)
        ]
        try:
            time.sleep(2)
            users = asyncio.run(register_many(nodes[0].base, 2 * args.pairs, f"16{len(scen):02d}"))
            asyncio.run(
                befriend(
                    nodes[0].base, [(users[2 * i], users[2 * i + 1]) for i in range(args.pairs)]
                )
            )
            name = f"lanchat/cluster3-{label} 1:1 x{args.pairs} inflight=10"
            report(name, one_to_one(name, nodes, users, 10, args.duration))
        finally:
            for n in nodes:
                n.stop()
            drop_mysql(dbname)
    return scen


if __name__ == "__main__":
    main()
