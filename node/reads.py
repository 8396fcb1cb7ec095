"""The database work of every connect, every authenticated request, every resync and every
read marker, in threads of their own."""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa

from .db import CATE_FRIEND, CATE_MEMBER, contacts, make_sync_engine, now_ms, sessions
from .procnames import name_this_thread

log = logging.getLogger(__name__)

THREADS = 2
CLOSE_TIMEOUT_S = 0.5  # on shutdown, for the calls under way
HEALTH_TIMEOUT_S = 2.0  # a health check's statement, on MySQL
HEALTH_WAIT_S = 5.0  # a health check, reconnecting included
P = ParamSpec("P")
T = TypeVar("T")


class Threads:
    """Runs functions of a blocking connection (pysqlite, pymysql) in a small set of threads:
    one hand-off to a thread and one back per call, however many statements it runs, on a
    connection the thread keeps between calls. Through the async engine every driver call
    (cursor, execute, fetch, close, rollback) was a hand-off of its own: on SQLite a token
    lookup cost about 1.5 ms of CPU, and a node that 10,000 clients reconnected to at once
    spent most of its time there. Errors are SQLAlchemy's, as from the async engine (a database
    that is down is a 503), and so are lanchat's own (404, 403) raised by the function. A call
    that finds its connection closed by the database (a restart, its idle timeout) is done
    again, once, on a new one: only reads and idempotent writes go through here.

    The threads are daemons, not a ThreadPoolExecutor's: the interpreter waits at exit for
    those, and one stuck on a database that stopped answering would hold the node's exit.
    """

    autocommit = False  # the connections' statements each commit on their own (reads)

    def __init__(self, engine: sa.Engine, threads: int, name: str) -> None:
        self.engine = engine
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._local = threading.local()  # each thread's connection
        self._open: set[sa.Connection] = set()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    async def run(
        self, fn: Callable[Concatenate[sa.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """fn(connection, *args, **kwargs) in one of the threads."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, functools.partial(self._call, fn, *args, **kwargs)))
        return await future

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Let the calls under way finish, for timeout_s at most, then close the connections."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if stuck := sum(thread.is_alive() for thread in self._threads):
            log.warning("%d %s threads still wait for the database; leaving them", stuck, self.name)
            return  # their connections are theirs: closing one under a thread is unsafe
        for conn in list(self._open):
            # Closed, not handed back to the pool: that would be a ROLLBACK, a round trip to a
            # server that may not answer any more.
            conn.invalidate()
        self.engine.dispose()

    def _work(self) -> None:
        name_this_thread()
        self._warm()
        while (job := self._jobs.get()) is not None:
            loop, future, call = job
            try:
                result = call()
            except BaseException as exc:  # handed to the caller, whatever it is
                _hand_back(loop, future.set_exception, future, exc)
            else:
                _hand_back(loop, future.set_result, future, result)

    def _warm(self) -> None:
        """Connect as the thread starts, not on its first call: on MariaDB the first read after
        a node started took 69-120 ms instead of 2 (a new engine's first connection, which
        asks the server about itself), and a node restarted behind nginx gets its clients back
        at once. A failure is left to the first call, which connects again."""
        try:
            self._connection()
        except sa.exc.DBAPIError as exc:
            log.warning("%s: could not connect to the database yet: %s", self.name, exc)

    def _connect(self) -> sa.Connection:
        conn = self.engine.connect()
        return conn.execution_options(isolation_level="AUTOCOMMIT") if self.autocommit else conn

    def _execute(
        self,
        conn: sa.Connection,
        fn: Callable[Concatenate[sa.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        return fn(conn, *args, **kwargs)

    def _call(
        self, fn: Callable[Concatenate[sa.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        for attempt in range(2):
            conn = self._connection()
            try:
                return self._execute(conn, fn, *args, **kwargs)
            except sa.exc.DBAPIError as exc:
                self._drop(conn)
                if attempt or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def _connection(self) -> sa.Connection:
        conn: sa.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._open.add(conn)
        return conn

    def _drop(self, conn: sa.Connection) -> None:
        self._local.conn = None
        with self._lock:
            self._open.discard(conn)
        _close(conn)


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


def _hand_back(
    loop: asyncio.AbstractEventLoop,
    settle: Callable[[Any], None],
    future: asyncio.Future[Any],
    outcome: Any,
) -> None:
    def settle_if_waited() -> None:
        if not future.done():  # the caller may have been cancelled meanwhile
            settle(outcome)

    try:
        loop.call_soon_threadsafe(settle_if_waited)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


def _close(conn: sa.Connection) -> None:
    """Back to the pool, or thrown away if the database already dropped it."""
    try:
        conn.close()
    except sa.exc.DBAPIError:
        if not conn.closed:  # closed: SQLAlchemy already threw a lost connection away
            conn.invalidate()


class Reads(Threads):
    """The reads of a node's hot paths: the user behind a token (every /chat upgrade and
    every authenticated request), a connecting user's friend and community ids, and what a
    client fetches when it comes back (its conversations, their history).

    Each thread's connection is in autocommit: every statement sees what is committed by
    then, and a read costs no round trip to end a transaction nor one to check the connection
    first. On SQLite the connections are `query_only` and begin no write transaction, so they
    never wait for the message writer, nor it for them.
    """

    autocommit = True

    def __init__(self, url: str, threads: int = THREADS) -> None:
        super().__init__(make_sync_engine(url, pool_size=threads, read_only=True), threads, "read")

    async def session_user(self, digest: str) -> int | None:
        """The user of a live session, or None for an unknown, revoked or expired token."""
        return await self.run(session_user, digest)

    async def contact_ids(self, uid: int) -> tuple[list[int], list[int]]:
        """The user's friends and the communities the user belongs to."""
        return await self.run(contact_ids, uid)


class Health(Threads):
    """The database check of /healthz, in a thread and on a connection of its own, with a
    short timeout: a database that stops answering is reported down within seconds (through the
    async engine the check waited as long as the server did, for ever if it hung), and the
    check neither waits behind the reads of the hot paths nor holds them up."""

    autocommit = True

    def __init__(self, url: str) -> None:
        engine = make_sync_engine(url, pool_size=1, read_only=True, timeout_s=HEALTH_TIMEOUT_S)
        super().__init__(engine, 1, "health")

    async def ping(self) -> None:
        """Returns once the database answered; raises if it did not, or not in time."""
        await asyncio.wait_for(self.run(_ping), HEALTH_WAIT_S)


def _ping(conn: sa.Connection) -> None:
    conn.execute(sa.text("SELECT 1"))


class Writes(Threads):
    """Small idempotent writes clients make often: the read markers, which a browser moves for
    every message that arrives in the conversation it shows. Each call is one transaction. On
    SQLite one thread (BEGIN IMMEDIATE: it takes its turn with the message writer, and a second
    thread would only wait for the same lock); on MySQL two, so that one waiting for the server
    does not hold the other up."""

    def __init__(self, url: str) -> None:
        threads = 1 if url.startswith("sqlite:") else THREADS
        super().__init__(make_sync_engine(url, pool_size=threads), threads, "write")

    def _execute(
        self,
        conn: sa.Connection,
        fn: Callable[Concatenate[sa.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        with conn.begin():
            return fn(conn, *args, **kwargs)


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
