"""The reads of every connect and every authenticated request, in threads of their own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import sqlalchemy as sa

from .db import CATE_FRIEND, CATE_MEMBER, contacts, make_sync_engine, now_ms, sessions

THREADS = 2
A = TypeVar("A")
T = TypeVar("T")

_SESSION = sa.select(sessions.c.userid).where(
    sessions.c.token_hash == sa.bindparam("digest"),
    sessions.c.expireat > sa.bindparam("now"),
)
_CONTACTS = sa.select(contacts.c.dstobj, contacts.c.cate).where(
    contacts.c.ownerid == sa.bindparam("uid"),
    contacts.c.cate.in_([CATE_FRIEND, CATE_MEMBER]),
)


class Lookups:
    """The user behind a token (on every /chat upgrade and every authenticated request) and
    a connecting user's friend and community ids.

    They run on the driver's blocking connections (pysqlite, pymysql) in a small pool of
    threads: one hand-off to a thread and one back per lookup. Through the async engine every
    driver call (cursor, execute, fetch, close, rollback) was a hand-off of its own, and on
    SQLite a lookup cost about 1.5 ms of CPU; a node that 10,000 clients reconnected to at once
    spent most of its time there. The connections only read: on SQLite they begin no write
    transaction (`query_only`), so they never wait for the message writer, nor it for them.
    Errors are SQLAlchemy's, as from the async engine (a database that is down is a 503).
    """

    def __init__(self, url: str, threads: int = THREADS) -> None:
        self.engine = make_sync_engine(url, pool_size=threads, read_only=True)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lookup")

    async def session_user(self, digest: str) -> int | None:
        """The user of a live session, or None for an unknown, revoked or expired token."""
        return await self._run(self._session_user, digest)

    async def contact_ids(self, uid: int) -> tuple[list[int], list[int]]:
        """The user's friends and the communities the user belongs to."""
        return await self._run(self._contact_ids, uid)

    def close(self) -> None:
        self._pool.shutdown()
        self.engine.dispose()

    async def _run(self, fn: Callable[[A], T], arg: A) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, arg)

    def _session_user(self, digest: str) -> int | None:
        with self.engine.connect() as conn:
            row = conn.execute(_SESSION, {"digest": digest, "now": now_ms()}).first()
        return int(row[0]) if row else None

    def _contact_ids(self, uid: int) -> tuple[list[int], list[int]]:
        friends: list[int] = []
        groups: list[int] = []
        with self.engine.connect() as conn:
            for dstobj, cate in conn.execute(_CONTACTS, {"uid": uid}):
                (friends if cate == CATE_FRIEND else groups).append(int(dstobj))
        return friends, groups
