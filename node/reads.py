"""The reads of every connect, every authenticated request and every resync, in threads of
their own."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa

from .db import CATE_FRIEND, CATE_MEMBER, contacts, make_sync_engine, now_ms, sessions

THREADS = 2
P = ParamSpec("P")
T = TypeVar("T")


class Reads:
    """Runs a function of a blocking connection (pysqlite, pymysql) in a small pool of
    threads: the user behind a token (every /chat upgrade and every authenticated request), a
    connecting user's friend and community ids, and what a client fetches when it comes back
    (its conversations, their history).

    One hand-off to a thread and one back per read, however many statements it runs, on a
    connection the thread keeps (see _connection). Through
    the async engine every driver call (cursor, execute, fetch, close, rollback) was a hand-off
    of its own: on SQLite a token lookup cost about 1.5 ms of CPU, and a node that 10,000
    clients reconnected to at once spent most of its time there. The connections only read:
    on SQLite they begin no write transaction (`query_only`), so they never wait for the
    message writer, nor it for them. Errors are SQLAlchemy's, as from the async engine (a
    database that is down is a 503), and so are lanchat's own (404, 403) raised by a read.
    """

    def __init__(self, url: str, threads: int = THREADS) -> None:
        self.engine = make_sync_engine(url, pool_size=threads, read_only=True)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="read")
        self._local = threading.local()  # each thread's connection
        self._open: set[sa.Connection] = set()
        self._lock = threading.Lock()

    async def run(
        self, read: Callable[Concatenate[sa.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """read(connection, *args, **kwargs) in one of the threads."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(self._call, read, *args, **kwargs)
        )

    def _call(
        self, read: Callable[Concatenate[sa.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        for attempt in range(2):
            conn = self._connection()
            try:
                return read(conn, *args, **kwargs)
            except sa.exc.DBAPIError as exc:
                self._drop(conn)
                # A connection the database closed meanwhile (a restart, its idle timeout):
                # the read is tried once more on a new one.
                if attempt or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def _connection(self) -> sa.Connection:
        """This thread's connection, kept open between reads. In autocommit every statement
        sees what is committed by then, and a read costs no round trip to end a transaction
        nor one to check the connection first."""
        conn: sa.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        return conn

    def _drop(self, conn: sa.Connection) -> None:
        self._local.conn = None
        with self._lock:
            self._open.discard(conn)
        try:
            conn.close()
        except sa.exc.DBAPIError:
            conn.invalidate()

    async def session_user(self, digest: str) -> int | None:
        """The user of a live session, or None for an unknown, revoked or expired token."""
        return await self.run(session_user, digest)

    async def contact_ids(self, uid: int) -> tuple[list[int], list[int]]:
        """The user's friends and the communities the user belongs to."""
        return await self.run(contact_ids, uid)

    def close(self) -> None:
        self._pool.shutdown()  # every read has returned
        for conn in list(self._open):
            try:
                conn.close()
            except sa.exc.DBAPIError:
                conn.invalidate()
        self.engine.dispose()


_SESSION = sa.select(sessions.c.userid).where(
    sessions.c.token_hash == sa.bindparam("digest"),
    sessions.c.expireat > sa.bindparam("now"),
)
_CONTACTS = sa.select(contacts.c.dstobj, contacts.c.cate).where(
    contacts.c.ownerid == sa.bindparam("uid"),
    contacts.c.cate.in_([CATE_FRIEND, CATE_MEMBER]),
)


def session_user(conn: sa.Connection, digest: str) -> int | None:
    row = conn.execute(_SESSION, {"digest": digest, "now": now_ms()}).first()
    return int(row[0]) if row else None


def contact_ids(conn: sa.Connection, uid: int) -> tuple[list[int], list[int]]:
    friends: list[int] = []
    groups: list[int] = []
    for dstobj, cate in conn.execute(_CONTACTS, {"uid": uid}):
        (friends if cate == CATE_FRIEND else groups).append(int(dstobj))
    return friends, groups
