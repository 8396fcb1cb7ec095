"""The writer's batch store on the real databases: numbering, resends within and across
batches, and a connection the database dropped."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pymysql
import pytest

from node import db
from node.checkpoint import Checkpointer
from node.db import make_engine, make_sync_engine, upgrade
from node.dispatch import Chat
from node.hub import Conn
from node.messages import BatchStore, Pending, Row, Writer
from node.packets import Packet

from .conftest import MYSQL_HOST, MYSQL_PORT, fresh_mysql_database, need_mysql
from .dbproxy import MariaDBProxy


async def open_store(url: str) -> BatchStore:
    engine = make_engine(url)
    await upgrade(engine)
    await engine.dispose()
    return BatchStore(make_sync_engine(url))


@pytest.fixture
async def store(db_url):
    batches = await open_store(db_url)
    yield batches
    batches.close()


@pytest.fixture
async def mysql_store():
    need_mysql()
    url, drop = fresh_mysql_database()
    batches = await open_store(url)
    yield batches, url
    batches.close()
    drop()


PAIR = (10, 1, 2)
OTHER = (10, 1, 3)


def row(client_id, conv=PAIR, body="b"):
    return Row(1, client_id, conv, f'{{"content":"{body}"}}')


def test_batches_number_each_conversation_without_gaps(store):
    first = store.store([row("a"), row("b"), row("c", OTHER), row(None)])
    assert [s.seq for s in first] == [1, 2, 1, 3]
    assert all(s.fresh for s in first)
    assert len({s.mid for s in first}) == 4
    second = store.store([row("d", OTHER), row("e")])
    assert [s.seq for s in second] == [2, 4]


def test_resends_in_a_batch_with_new_messages(store):
    """A resend of a stored message, twice the same new id and new messages in one batch:
    the resend gets its first number back, the repeated id is stored once, and the new
    messages take the next numbers with no gap."""
    (earlier,) = store.store([row("x")])
    out = store.store([row("y"), row("x", body="changed"), row("z", OTHER), row("y")])
    assert [(s.seq, s.fresh) for s in out] == [(2, True), (1, False), (1, True), (2, False)]
    assert (out[1].mid, out[1].createat) == (earlier.mid, earlier.createat)
    assert out[3].mid == out[0].mid
    nxt = store.store([row("w")])
    assert [s.seq for s in nxt] == [3]


def test_a_batch_of_only_resends_stores_nothing(store):
    stored = store.store([row("p"), row("q")])
    again = store.store([row("q"), row("p")])
    assert [(s.mid, s.fresh) for s in again] == [(stored[1].mid, False), (stored[0].mid, False)]
    assert [s.seq for s in store.store([row("r")])] == [3]


def test_a_connection_the_database_dropped_is_replaced(mysql_store):
    """MariaDB ends the writer's connection (as on a restart or wait_timeout): the next
    batch is stored on a new connection instead of failing."""
    store, db_url = mysql_store
    store.store([row("before")])
    thread_id = store._raw.dbapi_connection.thread_id()
    parts = urlsplit(db_url)
    admin = pymysql.connect(host=parts.hostname, port=parts.port, user="root", autocommit=True)
    with admin.cursor() as cur:
        cur.execute("KILL %s", (thread_id,))
    admin.close()
    out = store.store([row("after")])
    assert [(s.seq, s.fresh) for s in out] == [(2, True)]
    assert store._raw.dbapi_connection.thread_id() != thread_id


async def test_the_writer_connects_when_it_starts_not_on_the_first_message():
    """The writer opens its connection as it starts, so the first messages after a node
    starts do not wait for it (on MariaDB 40-60 ms: SQLAlchemy asks a new server about
    itself first)."""
    need_mysql()
    url, drop = fresh_mysql_database()
    engine = make_engine(url)
    await upgrade(engine)
    await engine.dispose()
    name = urlsplit(url).path.lstrip("/")
    admin = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", autocommit=True)
    count = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s"
    writer = Writer(make_sync_engine(url), Recorder())
    try:
        with admin.cursor() as cur:
            cur.execute(count, (name,))
            assert cur.fetchone() == (0,)
            writer.start()
            for _ in range(200):  # 10 s at most
                cur.execute(count, (name,))
                if cur.fetchone()[0]:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the writer has not connected within 10 s of starting")
        assert writer.stats["commits"] == 0  # nothing was sent
    finally:
        await writer.close()
        admin.close()
        drop()


async def test_a_writer_that_cannot_connect_at_start_refuses_messages_and_keeps_going(caplog):
    """No database at the writer's start: a warning, and each message gets an 'unavailable'
    error (its sender may send it again) instead of the writer's thread ending."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    writer = Writer(make_sync_engine(f"mysql://root:@127.0.0.1:{port}/none"), Recorder())
    conn = Conn("test/1", 1, "hash", 100, 10**6)
    writer.start()
    try:
        for n in (1, 2):
            fields = {"cmd": 10, "dstid": 2, "media": 1, "content": "x", "userid": 1}
            writer.submit(Pending(Chat(10, 2, n, str(n), fields), conn))
        for _ in range(400):  # 20 s at most
            if len(conn.queue) == 2:
                break
            await asyncio.sleep(0.05)
        frames = [orjson.loads(frame) for frame in conn.queue]
        assert [(f["cmd"], f["id"], f["error"]) for f in frames] == [
            (21, 1, "unavailable"),
            (21, 2, "unavailable"),
        ]
        assert "the message writer could not connect yet" in caplog.text
    finally:
        await writer.close()


def test_a_server_that_stops_answering_costs_a_batch_the_timeout(mysql_store, monkeypatch):
    """The writer's server stops answering with the socket still open: the batch gives the
    connection up after the timeout and is stored on a new one, instead of the writer (every
    message after it, and the node's shutdown) waiting for ever."""
    monkeypatch.setattr(db, "DB_TIMEOUT_S", 1.0)
    _, db_url = mysql_store
    proxy = MariaDBProxy()
    proxied = BatchStore(make_sync_engine(proxy.url(db_url)))
    try:
        proxied.store([row("before")])
        thread_id = proxied._raw.dbapi_connection.thread_id()
        proxy.freeze()
        out: list = []
        batch = threading.Thread(target=lambda: out.extend(proxied.store([row("after")])))
        batch.start()
        batch.join(20)  # without a timeout it would never return
        assert not batch.is_alive()
        assert [(s.seq, s.fresh) for s in out] == [(2, True)]
        assert proxied._raw.dbapi_connection.thread_id() != thread_id
    finally:
        proxy.close()  # first: a batch still waiting on it then ends
        proxied.close()


@pytest.mark.parametrize("carried_out", [True, False], ids=["committed", "not-committed"])
def test_a_commit_whose_answer_was_lost_is_neither_repeated_nor_taken_for_resends(
    mysql_store, carried_out
):
    """The connection is lost during the batch's COMMIT. If MariaDB carried it out, the batch
    is not stored again (a message without a client id would be there twice) and its messages
    stay fresh, so the node delivers them (stored again, they would come back as resends of
    themselves, acked but delivered to nobody); if not, the batch is stored on a new
    connection. Either way each message is there once, with the numbers it was acked with."""
    direct, db_url = mysql_store
    proxy = MariaDBProxy()
    proxied = BatchStore(make_sync_engine(proxy.url(db_url)))
    try:
        proxied.store([row("first")])
        proxy.cut_next_commit(carried_out)
        out = proxied.store([row("a"), row(None), row("b", OTHER)])
        assert proxy.cut.is_set()  # the COMMIT or its answer really was swallowed
        assert [(s.seq, s.fresh) for s in out] == [(2, True), (3, True), (1, True)]
        assert [s.seq for s in proxied.store([row("c")])] == [4]
    finally:
        proxy.close()  # first: a batch still waiting on it then ends
        proxied.close()
    cursor = direct.connection().cursor()
    cursor.execute("SELECT client_id, seq FROM message ORDER BY conv_id, seq")
    assert [tuple(r) for r in cursor.fetchall()] == [
        ("first", 1),
        ("a", 2),
        (None, 3),
        ("c", 4),
        ("b", 1),
    ]
    cursor.close()


async def test_the_log_is_checkpointed_beside_the_commits_and_starts_over(tmp_path):
    """On SQLite no commit checkpoints; the checkpointer thread does, and under constant
    writes the writer lets the log start over, so it stays short while messages keep coming,
    and every message is in the database afterwards."""
    path = tmp_path / "lanchat.db"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    await upgrade(engine)
    await engine.dispose()
    writer = Writer(make_sync_engine(url), Recorder())
    checkpointer = writer.checkpointer
    assert checkpointer is not None
    checkpointer.restart_pages = 100
    writer.start()
    conn = Conn("test/1", 1, "hash", 10**6, 10**9)
    wal = Path(f"{path}-wal")
    pages_seen = []
    sent = 0
    try:
        while writer.stats["commits"] < 400:
            for _ in range(20):  # the next batch comes in while this one commits
                sent += 1
                dstid = 2 + sent % 50
                fields = {"cmd": 10, "dstid": dstid, "media": 1, "content": "x" * 200, "userid": 1}
                chat = Chat(10, dstid, sent, str(sent), fields)
                writer.submit(Pending(chat, conn))
            while len(conn.queue) < sent - 20:
                await asyncio.sleep(0.001)
            pages_seen.append(wal.stat().st_size // 4096 if wal.exists() else 0)
    finally:
        await writer.close()
    assert len(conn.queue) == sent
    assert all(orjson.loads(frame)["cmd"] == 20 for frame in conn.queue)
    # 400 commits wrote thousands of pages, and the log was never allowed to keep them
    assert checkpointer.stats["checkpoints"] > 0
    assert checkpointer.stats["restarts"] > 0
    # The file never shrinks, so a checkpointer thread stalled by a busy machine leaves it at
    # its longest: 4-6 restart_pages in most runs here, 36 in the worst of about 60; about
    # 120 without the restarts.
    assert max(pages_seen) < 60 * checkpointer.restart_pages
    with sqlite3.connect(path) as db:
        per_conv = db.execute("SELECT conv_id, COUNT(*), MAX(seq) FROM message GROUP BY conv_id")
        counts = [(n, last) for _, n, last in per_conv]
    assert sum(n for n, _ in counts) == sent
    assert all(n == last for n, last in counts)


async def test_commits_leave_checkpoints_to_the_checkpointer(tmp_path):
    store = await open_store(f"sqlite:///{tmp_path}/lanchat.db")
    try:
        cursor = store.connection().cursor()
        cursor.execute("PRAGMA wal_autocheckpoint")
        assert cursor.fetchone() == (0,)
    finally:
        store.close()


async def test_every_sqlite_connection_flushes_each_commit_to_the_disk(tmp_path):
    """An acked message survives a power cut: the writer's, the reads' and the API's
    connections all commit with synchronous=FULL (2), and checkpoints stay with the thread."""
    url = f"sqlite:///{tmp_path}/lanchat.db"
    store = await open_store(url)
    reads = make_sync_engine(url, read_only=True)
    api = make_engine(url)
    try:
        cursor = store.connection().cursor()
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone() == (2,)
        cursor.close()
        with reads.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        async with api.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 2
            assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
    finally:
        store.close()
        reads.dispose()
        await api.dispose()


class Recorder:
    """The writer's node: keeps what the writer emits instead of routing it."""

    def __init__(self) -> None:
        self.packets: list[Packet] = []

    def emit(self, packet: Packet) -> None:
        self.packets.append(packet)


async def test_a_checkpointer_that_cannot_open_the_database_keeps_going(tmp_path):
    """A failed checkpoint, or a connection that cannot be opened, is logged and counted; it
    ends neither the checkpointer's thread nor the writer's restart call."""
    folder = tmp_path / "gone"
    engine = make_sync_engine(f"sqlite:///{folder}/lanchat.db")  # creates the folder
    folder.rmdir()  # SQLite: "unable to open database file"
    checkpointer = Checkpointer(engine)
    checkpointer.start()
    try:
        checkpointer.committed()
        for _ in range(500):
            if checkpointer.stats["errors"]:
                break
            await asyncio.sleep(0.01)
        assert checkpointer.stats["errors"] == 1
        assert checkpointer._thread is not None and checkpointer._thread.is_alive()
        checkpointer.restart(engine.raw_connection)  # raises nothing
        assert checkpointer.stats["errors"] == 2
        assert checkpointer.stats["restarts"] == 0
    finally:
        checkpointer.close()
        engine.dispose()
