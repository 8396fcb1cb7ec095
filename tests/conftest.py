"""Shared fixtures: a real store (SQLite file or a fresh MariaDB database) and a real server."""

from __future__ import annotations

import dataclasses
import itertools
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pymysql
import pytest
import uvloop
from aiohttp.test_utils import TestClient, TestServer

from node.app import create_app
from node.db import make_engine, upgrade
from node.settings import Settings


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Every async test runs on uvloop, the loop lanchat serves on."""
    return {"uvloop": uvloop.new_event_loop}


CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MYSQL_HOST = os.environ.get("LANCHAT_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("LANCHAT_TEST_MYSQL_PORT", "3306"))

# The server reads LANCHAT_* from the environment; tests build Settings directly.
for _key in [
    k for k in os.environ if k.startswith("LANCHAT_") and not k.startswith("LANCHAT_TEST")
]:
    del os.environ[_key]


def mysql_available() -> bool:
    try:
        pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", connect_timeout=3).close()
        return True
    except pymysql.err.MySQLError:
        return False


def need_mysql() -> None:
    """Skip without MariaDB on a developer machine; under CI its absence is a failure."""
    if not mysql_available():
        if CI:
            pytest.fail(f"MariaDB is required under CI and does not answer on {MYSQL_PORT}")
        pytest.skip("MariaDB is not running")


def fresh_mysql_database() -> tuple[str, Callable[[], None]]:
    name = f"lanchat_t_{secrets.token_hex(6)}"
    conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    conn.close()

    def drop() -> None:
        c = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", autocommit=True)
        with c.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        c.close()

    return f"mysql://root:@{MYSQL_HOST}:{MYSQL_PORT}/{name}", drop


@pytest.fixture
def mysql_url() -> Any:
    """A fresh database on the real MariaDB, dropped afterwards."""
    need_mysql()
    url, drop = fresh_mysql_database()
    yield url
    drop()


@pytest.fixture(params=["sqlite", "mysql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """Every storage test runs on the embedded SQLite and on the real MariaDB."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/lanchat.db"
        return
    need_mysql()
    url, drop = fresh_mysql_database()
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def settings(db_url: str, tmp_path: Any) -> Settings:
    return Settings(
        db=db_url,
        upload_dir=str(tmp_path / "mnt"),
        node_id="test-node",
        send_rate_per_s=1000.0,
        send_burst=1000,
    )


ServerFactory = Callable[..., Awaitable["Api"]]


@pytest.fixture
async def make_server(settings: Settings) -> AsyncIterator[ServerFactory]:
    """Start a real lanchat app on a real socket; keyword arguments change settings."""
    started: list[Api] = []
    migrated = False

    async def factory(**changes: Any) -> Api:
        nonlocal migrated
        conf = dataclasses.replace(settings, **changes)
        if not migrated:
            engine = make_engine(conf.db)
            await upgrade(engine)
            await engine.dispose()
            migrated = True
        server = TestServer(create_app(conf))
        client = TestClient(server, cookie_jar=aiohttp.DummyCookieJar())
        await client.start_server()
        api = Api(client, conf)
        started.append(api)
        return api

    yield factory
    for api in reversed(started):
        await api.close()


@pytest.fixture
async def api(make_server: ServerFactory) -> Api:
    return await make_server()


_mobiles = itertools.count(13_900_000_000)


class Api:
    """A thin client of the public HTTP contract, for tests."""

    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._sockets: list[aiohttp.ClientWebSocketResponse] = []

    @property
    def base(self) -> str:
        return str(self.client.make_url("/"))

    async def close(self) -> None:
        for ws in self._sockets:
            await ws.close()
        await self.client.close()

    async def call(
        self,
        path: str,
        token: str | None = None,
        *,
        method: str = "POST",
        status: int = 200,
        json: Any = None,
        **fields: Any,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if method == "GET":
            resp = await self.client.get(path, params=fields, headers=headers)
        elif json is not None:
            resp = await self.client.post(path, json=json, headers=headers)
        else:
            data = {k: str(v) for k, v in fields.items()}
            resp = await self.client.post(path, data=data, headers=headers)
        body = await resp.json()
        assert resp.status == status, (resp.status, body)
        return body

    async def register(
        self, nickname: str = "user", passwd: str = "secret-pass", **more: Any
    ) -> dict[str, Any]:
        mobile = str(next(_mobiles))
        body = await self.call(
            "/user/register", mobile=mobile, passwd=passwd, nickname=nickname, **more
        )
        return body["data"]

    async def friends(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        await self.call("/contact/addfriend", a["token"], dstid=b["id"])

    async def community(self, owner: dict[str, Any], *members: dict[str, Any]) -> int:
        body = await self.call("/contact/createcommunity", owner["token"], name="room", cate=1)
        cid = int(body["data"]["id"])
        for m in members:
            await self.call("/contact/joincommunity", m["token"], dstid=cid)
        return cid

    async def ws(self, user: dict[str, Any], **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        ws = await self.client.ws_connect(
            "/chat", params={"id": str(user["id"]), "token": user["token"]}, **kwargs
        )
        self._sockets.append(ws)
        return ws
