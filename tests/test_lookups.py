"""The connect-time lookups on the real databases: sessions, contacts, and on SQLite that they
only read and never wait for a write transaction."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
import sqlalchemy as sa

from node.db import (
    CATE_FRIEND,
    CATE_MEMBER,
    contacts,
    make_engine,
    now_ms,
    sessions,
    upgrade,
)
from node.lookups import Lookups

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
    lookups = Lookups(db_url)
    try:
        assert await lookups.session_user("live") == 1
        assert await lookups.session_user("other") == 2
        assert await lookups.session_user("old") is None  # expired
        assert await lookups.session_user("unknown") is None
        friends, groups = await lookups.contact_ids(1)
        assert sorted(friends) == [2, 3] and groups == [7]
        assert await lookups.contact_ids(4) == ([], [])
        # several at once, as on a reconnect storm: each answered, none mixed up
        many = await asyncio.gather(
            *(lookups.session_user(t) for t in ("live", "other", "old", "x") * 25)
        )
        assert many == [1, 2, None, None] * 25
    finally:
        lookups.close()


async def test_sqlite_lookups_only_read_and_never_wait_for_a_writer(tmp_path):
    """A write transaction held open elsewhere (the message writer's, say) neither holds a
    lookup up nor shows it anything uncommitted; the lookups' connections refuse to write."""
    path = tmp_path / "lanchat.db"
    url = f"sqlite:///{path}"
    await prepared(url)
    lookups = Lookups(url)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO session (userid, token_hash, createat, expireat) VALUES (5, 'new', 0, ?)",
            (now_ms() + DAY_MS,),
        )
        # the write lock's busy timeout is 30 s: a lookup that wanted it would still wait
        assert await asyncio.wait_for(lookups.session_user("live"), 10) == 1
        assert await asyncio.wait_for(lookups.session_user("new"), 10) is None
        writer.execute("COMMIT")
        assert await lookups.session_user("new") == 5
        with lookups.engine.connect() as conn, pytest.raises(sa.exc.OperationalError) as err:
            conn.execute(sessions.delete())
        assert "readonly" in str(err.value)
    finally:
        writer.close()
        lookups.close()
