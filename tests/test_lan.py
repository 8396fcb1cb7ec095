"""Three hosts on one LAN: network namespaces on a bridge, a node on each, MariaDB across it."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import aiohttp
import orjson
import pymysql
import pytest

from .cluster import Client, NodeProc, free_port, wait_healthy
from .conftest import CI
from .test_chat import recv

DEADLINE = 30


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


def need_netns() -> None:
    problem = None
    if os.geteuid() != 0:
        problem = "network namespaces need root"
    elif shutil.which("ip") is None or shutil.which("mariadbd") is None:
        problem = "ip (iproute2) and mariadbd are needed"
    if problem:
        if CI:
            pytest.fail(problem)
        pytest.skip(problem)


class Lan:
    """A bridge with three namespaces (hosts) on it; the host side holds .254."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.net = f"10.{77 + int(tag[:1], 16)}.{int(tag[1:], 16) % 250 + 1}"
        self.bridge = f"lcbr{tag}"
        self.hosts = [f"lc{tag}h{i}" for i in (1, 2, 3)]
        self.veths = [f"lc{tag}v{i}" for i in (1, 2, 3)]

    @property
    def broadcast(self) -> str:
        return f"{self.net}.255"

    def address(self, i: int) -> str:
        return f"{self.net}.{i}"

    def up(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.net}.254/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, (ns, veth) in enumerate(zip(self.hosts, self.veths, strict=True), start=1):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", self.bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for veth in self.veths:
            sh("ip", "link", "del", veth, check=False)
        for ns in self.hosts:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


class PrivateMariaDB:
    """A MariaDB of the test's own, listening on the bridge address."""

    def __init__(self, workdir: Path, address: str) -> None:
        self.datadir = workdir / "mariadb"
        self.address = address
        self.port = free_port(host="127.0.0.1")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        sh(
            "mariadb-install-db",
            "--no-defaults",
            "--user=root",
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        )
        self.start_again()

    def start_again(self) -> None:
        """Start the server on the existing data directory."""
        self.log = open(self.datadir.parent / "mariadb.log", "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--user=root",
                f"--bind-address={self.address}",
                f"--port={self.port}",
                f"--socket={self.datadir}/mysqld.sock",
                "--skip-grant-tables",
                "--innodb-buffer-pool-size=64M",
            ],
            stdout=self.log,
            stderr=self.log,
        )

    async def ready(self) -> None:
        for _ in range(300):
            try:
                conn = pymysql.connect(host=self.address, port=self.port, user="root")
                with conn.cursor() as cur:
                    cur.execute("CREATE DATABASE IF NOT EXISTS lanchat CHARACTER SET utf8mb4")
                conn.close()
                return
            except pymysql.err.MySQLError:
                await asyncio.sleep(0.1)
        raise AssertionError("the private MariaDB did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.log.close()

    @property
    def url(self) -> str:
        return f"mysql://root:@{self.address}:{self.port}/lanchat"


async def test_three_hosts_on_a_bridge(tmp_path):
    """Each node binds its own address in its own namespace and broadcasts on the subnet;
    messages cross hosts exactly once and a join on one host is live on another."""
    need_netns()
    lan = Lan()
    db = PrivateMariaDB(tmp_path, f"{lan.net}.254")
    nodes: list[NodeProc] = []
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE))
    try:
        lan.up()
        db.start()
        await db.ready()
        for i, ns in enumerate(lan.hosts, start=1):
            node = NodeProc(
                tmp_path,
                f"host{i}",
                db.url,
                3000,
                host=lan.address(i),
                broadcast=lan.broadcast,
                netns=ns,
            )
            node.start()
            nodes.append(node)
        for node in nodes:
            await wait_healthy(http, node, peers=2, deadline_s=DEADLINE)
        h1, h2, h3 = nodes
        c = Client(http)
        a = await c.register(h1, "13500000001", "A")
        b = await c.register(h2, "13500000002", "B")
        d = await c.register(h3, "13500000003", "D")
        await c.call(h3, "/contact/addfriend", a["token"], dstid=b["id"])
        wa, wb, wd = await c.ws(h1, a), await c.ws(h2, b), await c.ws(h3, d)
        cid = (await c.call(h2, "/contact/createcommunity", a["token"], name="lan"))["data"]["id"]
        await c.call(h1, "/contact/joincommunity", d["token"], dstid=cid)
        event = await recv(wd, skip=())
        assert (event["event"], event["dstid"]) == ("community_joined", cid)

        await wa.send_str(
            orjson.dumps(
                {"id": 1, "cmd": 10, "dstid": b["id"], "media": 1, "content": "across hosts"}
            ).decode()
        )
        assert (await recv(wa))["cmd"] == 20
        assert (await recv(wb))["content"] == "across hosts"
        await wa.send_str(
            orjson.dumps(
                {"id": 2, "cmd": 11, "dstid": cid, "media": 1, "content": "to the room"}
            ).decode()
        )
        assert (await recv(wa))["cmd"] == 20
        assert (await recv(wd))["content"] == "to the room"
        for ws in (wa, wb, wd):
            with pytest.raises(asyncio.TimeoutError):
                await recv(ws, timeout=0.5)
        health = (await (await http.get(h2.base + "/healthz")).json())["data"]
        assert sorted(p["node"] for p in health["peers"]) == ["host1", "host3"]
        for ws in (wa, wb, wd):
            await ws.close()
    finally:
        await http.close()
        for node in nodes:
            node.stop()
        db.stop()
        lan.down()
