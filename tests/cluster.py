"""Real lanchat processes for cluster tests: several nodes on one bus, one shared database."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

SECRET = "cluster-test-secret-0123456789"


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Front:
    """An address users reach lanchat at (nginx, or a node)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


class NodeProc:
    """One `lanchat serve` process."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        db: str,
        udp_port: int,
        *,
        host: str = "127.0.0.1",
        broadcast: str = "127.255.255.255",
        netns: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = free_port() if netns is None else 8080
        self.netns = netns
        self.log_path = workdir / f"{name}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LANCHAT_")}
        self.env.update(
            LANCHAT_HOST=host,
            LANCHAT_PORT=str(self.port),
            LANCHAT_DB=db,
            LANCHAT_BUS="udp",
            LANCHAT_UDP_PORT=str(udp_port),
            LANCHAT_UDP_BROADCAST=broadcast,
            LANCHAT_CLUSTER_SECRET=SECRET,
            LANCHAT_NODE_ID=name,
            LANCHAT_UPLOAD_DIR=str(workdir / "mnt"),
            LANCHAT_SEND_RATE_PER_S="2000",
            LANCHAT_SEND_BURST="2000",
        )
        self.env.update(extra or {})
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "node", "serve"]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(command, env=self.env, cwd=self.workdir, stderr=self._log)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def wait_healthy(http: aiohttp.ClientSession, node: NodeProc, peers: int, deadline_s=30.0):
    """Wait until the node answers and hears `peers` other nodes."""
    end = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < end:
        if node.proc is not None and node.proc.poll() is not None:
            raise AssertionError(f"{node.name} exited: {node.log()[-2000:]}")
        try:
            async with http.get(node.base + "/healthz") as resp:
                last = await resp.json()
                if resp.status == 200 and len(last["data"]["peers"]) >= peers:
                    return last["data"]
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"{node.name} not healthy with {peers} peers: {last}\n{node.log()[-2000:]}"
    )


class Client:
    """A user of the public contract against one node."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def call(self, node: NodeProc, path: str, token: str | None = None, **fields: Any):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.post(
            node.base + path, data={k: str(v) for k, v in fields.items()}, headers=headers
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, (path, resp.status, body)
            return body

    async def register(self, node: NodeProc, mobile: str, nickname: str = "u") -> dict[str, Any]:
        body = await self.call(
            node, "/user/register", mobile=mobile, passwd="secret-pass", nickname=nickname
        )
        return body["data"]

    async def ws(self, node: NodeProc, user: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
        return await self.http.ws_connect(
            node.base + "/chat", params={"id": str(user["id"]), "token": user["token"]}
        )
