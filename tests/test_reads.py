"""The reads in threads on the real databases: sessions, contacts, and on SQLite that they
never write nor wait for a write transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from urllib.parse import urlsplit

import pymysql
import pytest
import sqlalchemy as sa

from node import db
from node.db import (
    CATE_FRIEND,
    CATE_MEMBER,
    contacts,
    make_engine,
    now_ms,
    sessions,
    upgrade,
)
from node.reads import Reads

from .conftest import MYSQL_HOST, MYSQL_PORT
from .dbproxy import MariaDBProxy

DAY_MS = 86_400_000


async def prepared(url: str) -> None:
    """The schema, three sessions of user 1 (live, expired, live) and user 1's contacts."""
    engine = make_engine(url)
    await upgrade(engine)
    now = now_ms()
    async with engine.begin() as conn:
        await conn.execute(
            sessions.insert(),
            [
                {"userid": 1, "token_hash": "live", "createat": now, "expireat": now + DAY_MS},
                {"userid": 1, "token_hash": "old", "createat": now - 2, "expireat": now - 1},
                {"userid": 2, "token_hash": "other", "createat": now, "expireat": now + DAY_MS},
            ],
        )
        await conn.execute(
            contacts.insert(),
            [
                {"ownerid": 1, "dstobj": dst, "cate": cate, "memo": "", "createat": now}
                for dst, cate in ((2, CATE_FRIEND), (3, CATE_FRIEND), (7, CATE_MEMBER))
            ]
            + [{"ownerid": 2, "dstobj": 1, "cate": CATE_FRIEND, "memo": "", "createat": now}],
        )
    await engine.dispose()


async def test_sessions_and_contacts(db_url):
    await prepared(db_url)
    reads = Reads(db_url)
    try:
        assert await reads.session_user("live") == 1
        assert await reads.session_user("other") == 2
        assert await reads.session_user("old") is None  # expired
        assert await reads.session_user("unknown") is None
        friends, groups = await reads.contact_ids(1)
        assert sorted(friends) == [2, 3] and groups == [7]
        assert await reads.contact_ids(4) == ([], [])
        # several at once, as on a reconnect storm: each answered, none mixed up
        many = await asyncio.gather(
            *(reads.session_user(t) for t in ("live", "other", "old", "x") * 25)
        )
        assert many == [1, 2, None, None] * 25
    finally:
        reads.close()


def connection_id(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one())


async def test_a_kept_connection_sees_later_commits(db_url):
    """A thread keeps its connection between reads; each read still sees every commit made
    before it (no snapshot held from an earlier read)."""
    await prepared(db_url)
    reads = Reads(db_url, threads=1)
    writer = make_engine(db_url)
    try:
        assert await reads.session_user("later") is None
        async with writer.begin() as conn:
            await conn.execute(
                sessions.insert().values(
                    userid=9, token_hash="later", createat=0, expireat=now_ms() + DAY_MS
                )
            )
        assert await reads.session_user("later") == 9
        async with writer.begin() as conn:
            await conn.execute(sessions.delete().where(sessions.c.token_hash == "later"))
        assert await reads.session_user("later") is None  # a logout, seen at once
    finally:
        reads.close()
        await writer.dispose()


async def test_a_connection_the_database_closed_is_replaced(mysql_url):
    """MariaDB ends a kept connection (a restart, its idle timeout, here KILL): the read on it
    is done again on a new connection, and the caller sees only the answer."""
    await prepared(mysql_url)
    reads = Reads(mysql_url, threads=1)
    try:
        first = await reads.run(connection_id)
        assert await reads.run(connection_id) == first  # kept between reads
        admin = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", autocommit=True)
        with admin.cursor() as cur:
            cur.execute(f"KILL {first}")
        admin.close()
        assert await reads.session_user("live") == 1
        assert await reads.run(connection_id) != first
    finally:
        reads.close()


async def test_each_thread_connects_as_it_starts_not_on_its_first_read(mysql_url):
    """The threads open their connections as they start, so the first reads after a node
    starts do not wait for them (on MariaDB 69-120 ms against 2 for the reads after)."""
    await prepared(mysql_url)
    name = urlsplit(mysql_url).path.lstrip("/")
    admin = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", autocommit=True)
    count = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s"
    reads = Reads(mysql_url, threads=2)
    try:
        with admin.cursor() as cur:
            for _ in range(200):  # 10 s at most
                cur.execute(count, (name,))
                if cur.fetchone()[0] == 2:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the two threads have not connected within 10 s of starting")
        assert await reads.session_user("live") == 1  # on a connection it already had
    finally:
        reads.close()
        admin.close()


async def test_a_server_that_stops_answering_costs_a_read_the_timeout(mysql_url, monkeypatch):
    """The kept connection's server stops answering with the socket still open (a hung host,
    a pulled cable): the read gives that connection up after the timeout and is answered on
    a new one, instead of holding the thread (and every read queued behind it) for ever."""
    monkeypatch.setattr(db, "DB_TIMEOUT_S", 1.0)
    await prepared(mysql_url)
    proxy = MariaDBProxy()
    reads = Reads(proxy.url(mysql_url), threads=1)
    try:
        first = await reads.run(connection_id)
        proxy.freeze()
        assert await asyncio.wait_for(reads.session_user("live"), 20) == 1
        assert await reads.run(connection_id) != first
    finally:
        proxy.close()  # first: a read still waiting on it then ends
        reads.close()


async def test_sqlite_lookups_only_read_and_never_wait_for_a_writer(tmp_path):
    """A write transaction held open elsewhere (the message writer's, say) neither holds a
    read up nor shows it anything uncommitted; the reads' connections refuse to write."""
    path = tmp_path / "lanchat.db"
    url = f"sqlite:///{path}"
    await prepared(url)
    reads = Reads(url)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO session (userid, token_hash, createat, expireat) VALUES (5, 'new', 0, ?)",
            (now_ms() + DAY_MS,),
        )
        # the write lock's busy timeout is 30 s: a lookup that wanted it would still wait
        assert await asyncio.wait_for(reads.session_user("live"), 10) == 1
        assert await asyncio.wait_for(reads.session_user("new"), 10) is None
        writer.execute("COMMIT")
        assert await reads.session_user("new") == 5
        with pytest.raises(sa.exc.OperationalError) as err:
            await reads.run(lambda conn: conn.execute(sessions.delete()))
        assert "readonly" in str(err.value)
    finally:
        writer.close()
        reads.close()
