"""Message store: the grouped writer that commits, numbers and acks messages, and the reads."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from .checkpoint import Checkpointer
from .db import conversations, messages, now_ms, readmarks
from .dispatch import CMD_SINGLE, Chat, ack_frame, conversation_key, delivered, error_frame
from .hub import Conn
from .node import Node
from .packets import Packet, Route
from .procnames import name_this_thread
from .store import CONVERSATION_INSERT, CONVERSATION_LOOKUP, conversation_params

log = logging.getLogger(__name__)

MAX_BATCH = 500
CLOSE_TIMEOUT_S = 2.0  # on shutdown, for what is queued to be committed (after the drain)
NOT_STORED = "the message was not stored; send it again"  # the client resends it
RETRIES = 3


@dataclass(slots=True)
class Pending:
    chat: Chat
    conn: Conn
    received: float = 0.0  # time.monotonic() when the frame arrived


@dataclass(frozen=True, slots=True)
class Stored:
    mid: int
    seq: int
    createat: int
    fresh: bool  # False: a resend of a message stored before


@dataclass(frozen=True, slots=True)
class Row:
    """What the writer thread needs of one message: plain values, nothing of the event loop."""

    sender: int
    client_id: str | None
    conv: tuple[int, int, int]  # conversation key
    body: str


class Writer:
    """Commits messages in groups without a timer: while one commit runs, new messages queue;
    the next commit takes all of them in one transaction. A lone message waits for no batch,
    a burst costs one commit. Each message is acked and delivered only after its commit.

    The commits run in a thread of their own on a blocking connection, one after the other
    with no trip through the event loop in between: the loop hands each message over on a
    thread-safe queue, and the thread hands each committed batch back with
    call_soon_threadsafe, where it is acked and delivered while the next batch commits.
    """

    def __init__(self, engine: sa.Engine, node: Node) -> None:
        self.node = node
        self._batches = BatchStore(engine)
        self.checkpointer = Checkpointer(engine) if engine.dialect.name == "sqlite" else None
        self._inbox: queue.SimpleQueue[tuple[Pending, Row] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self.stats = {"stored": 0, "resends": 0, "commits": 0, "db_errors": 0}
        self.on_acked: Callable[[list[float]], None] | None = None  # ack latencies, seconds
        self._committing = 0  # messages in the batch the thread is storing
        # Called in the writer's thread with the seconds each batch took, stored or failed.
        self.on_batch: Callable[[float], None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        self._thread = threading.Thread(
            target=self._work, args=(loop, self._stopped), name="message-writer", daemon=True
        )
        self._thread.start()
        if self.checkpointer is not None:
            self.checkpointer.start()

    def submit(self, pending: Pending) -> None:
        chat = pending.chat
        row = Row(
            pending.conn.user,
            chat.client_id,
            conversation_key(chat),
            orjson.dumps(chat.fields).decode(),
        )
        self._inbox.put((pending, row))

    def backlog(self) -> int:
        return self._inbox.qsize()

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Commit everything already submitted, then stop; for timeout_s at most. A database
        that does not answer by then keeps what is left: unacked, those messages are sent
        again by their clients, and the node's exit does not wait for it."""
        if self._thread is None or self._stopped is None:
            return
        self._inbox.put(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), timeout_s)
        except TimeoutError:
            left = self._committing + self._inbox.qsize() - 1  # the stop mark is no message
            log.warning(
                "the database did not answer within %.0f s: stopping with %d messages not "
                "stored (not acked either: their senders send them again)",
                timeout_s,
                left,
            )
            return
        self._thread.join()  # it has nothing left to do but return
        self._thread = None

    def _work(self, loop: asyncio.AbstractEventLoop, stopped: asyncio.Future[None]) -> None:
        """The writer thread: take what is queued, commit it, hand the outcome to the loop."""
        name_this_thread()
        self._batches.warm()
        inbox, checkpointer = self._inbox, self.checkpointer
        try:
            while (item := inbox.get()) is not None:
                batch = [item]
                while len(batch) < MAX_BATCH:
                    try:
                        more = inbox.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        inbox.put(None)  # stop after this batch
                        break
                    batch.append(more)
                pendings = [p for p, _ in batch]
                started = time.monotonic()
                self._committing = len(batch)
                try:
                    results = self._batches.store([row for _, row in batch])
                except Exception as exc:  # reported on the loop, where the senders are told
                    loop.call_soon_threadsafe(self._failed, pendings, exc)
                else:
                    loop.call_soon_threadsafe(self._finish, pendings, results)
                    if checkpointer is not None:
                        checkpointer.committed()
                        if checkpointer.restart_due:
                            checkpointer.restart(self._batches.connection)
                finally:
                    self._committing = 0
                    if self.on_batch is not None:
                        self.on_batch(time.monotonic() - started)
        finally:
            if checkpointer is not None:
                checkpointer.close()
            self._batches.close()
            with contextlib.suppress(RuntimeError):  # the loop is gone: close() gave up on us
                loop.call_soon_threadsafe(stopped.set_result, None)

    def _failed(self, batch: list[Pending], exc: Exception) -> None:
        if isinstance(exc, self._batches.errors):
            log.warning("storing %d messages failed: %s", len(batch), exc)
            self._refuse(batch, "unavailable", NOT_STORED)
        else:
            log.error("storing %d messages failed", len(batch), exc_info=exc)
            self._refuse(batch, "internal", "the message was not stored")

    def _refuse(self, batch: list[Pending], code: str, text: str) -> None:
        self.stats["db_errors"] += 1
        for pending in batch:
            pending.conn.send(error_frame(code, text, pending.chat.frame_id))

    def _finish(self, batch: list[Pending], results: list[Stored]) -> None:
        self.stats["commits"] += 1
        for pending, stored in zip(batch, results, strict=True):
            chat, conn = pending.chat, pending.conn
            self.stats["stored" if stored.fresh else "resends"] += 1
            if stored.fresh:
                frame = delivered(chat.fields, stored.mid, stored.seq, stored.createat)
                payload = orjson.dumps(frame)
                if chat.cmd == CMD_SINGLE:
                    packet = Packet(Route.USERS, (chat.dstid, conn.user), payload, conn.id)
                else:
                    packet = Packet(Route.GROUP, (chat.dstid,), payload, conn.id)
                self.node.emit(packet)
            conn.send(ack_frame(chat.frame_id, stored.mid, stored.seq, stored.createat))
        if self.on_acked is not None:
            now = time.monotonic()
            self.on_acked([now - p.received for p in batch])


class BatchStore:
    """The writer thread's side: stores a batch in one transaction. Used from that one thread.

    It holds one driver connection from the engine's pool (so the engine's connect-time
    settings apply) and talks to it directly with plain SQL: the statements change shape with
    every batch (a multi-row VALUES, a CASE, IN lists), and the SQLAlchemy layer around each
    one cost more than the database did. A connection the driver reports lost is dropped and
    the batch tried again on a new one; if it was lost during the COMMIT, the new one first
    looks whether that commit was carried out.

    A batch is first written without looking for resends: the unique (sender, client_id)
    index refuses a message stored before, and only then is the batch written again with the
    lookup. Resends are rare (a client that reconnected before its ack came), so nearly every
    batch saves that query.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        dbapi: Any = dialect.dbapi  # the driver module: sqlite3 or pymysql
        # Driver errors: the pool and the raw cursor raise the driver's own, unwrapped.
        self.errors: tuple[type[BaseException], ...] = (dbapi.Error, OSError)
        self._integrity: type[BaseException] = dbapi.IntegrityError
        self._sqlite = dialect.name == "sqlite"
        self._mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self._convs: dict[tuple[int, int, int], int] = {}
        # Compiled once: compiling one cost about 0.2 ms of CPU, and a node that has just
        # started meets every conversation for the first time.
        self._lookup = CONVERSATION_LOOKUP.compile(dialect=dialect)
        self._create = CONVERSATION_INSERT.compile(dialect=dialect)
        self._raw: Any = None  # the pool's connection, checked out for as long as it works

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        self.engine.dispose()

    def connection(self) -> Any:
        """The driver connection the batches are written on (opened if there is none)."""
        self._raw = self._raw or self.engine.raw_connection()
        return self._raw

    def warm(self) -> None:
        """Connect before the first batch, not during it: on MariaDB a new engine's first
        connection took 40-60 ms (SQLAlchemy asks the server about itself), and the first
        messages after a start waited for it. A failure is left to the first batch."""
        errors: tuple[type[BaseException], ...] = (*self.errors, sa.exc.DBAPIError)
        try:
            self.connection()
        except errors as exc:
            log.warning("the message writer could not connect yet: %s", exc)

    def store(self, rows: list[Row]) -> list[Stored]:
        lookup = False
        unsure: list[Stored] | None = None  # a batch whose COMMIT went out and got no answer
        for attempt in range(RETRIES):
            last = attempt == RETRIES - 1
            raw = self.connection()
            cursor = raw.cursor()
            stored: list[Stored] | None = None
            try:
                if unsure is not None:
                    landed = self._landed(cursor, unsure)
                    raw.rollback()  # the check's share locks
                    if landed:
                        return unsure
                    unsure = None
                if self._sqlite:
                    cursor.execute("BEGIN IMMEDIATE")  # take the write lock before reading
                stored = self._store(cursor, rows, lookup)
                raw.commit()
                return stored
            except self._integrity:
                # A resend of a stored message, or another node stored the same (sender, id)
                # or created the same conversation meanwhile: again, looking first.
                self._rollback()
                self._convs.clear()
                lookup = True
                if last:
                    raise
            except self.errors as exc:
                # Conversations created in the transaction that failed went with it.
                self._convs.clear()
                error: Any = exc  # a driver error (is_disconnect is typed for DBAPI's Error)
                lost = self.engine.dialect.is_disconnect(error, self._raw, None)
                if lost:
                    self._raw.invalidate()
                    self._raw = None
                    if stored is not None:
                        # Lost during the COMMIT, which may have been carried out. Stored
                        # again, the batch would find its own messages as resends (never
                        # delivered) and store those without a client id twice: the next
                        # attempt looks first.
                        unsure = stored
                else:
                    self._rollback()
                if last or not (lost or _is_deadlock(exc)):
                    raise
            finally:
                cursor.close()
        raise AssertionError("unreachable")

    def _landed(self, cursor: Any, planned: list[Stored]) -> bool:
        """Whether the batch that was to be stored as `planned` was committed. The lookup is
        a locking read (on MariaDB): it waits for the transaction that inserted those rows
        if the server has not finished it yet, so the answer is final."""
        fresh = {(s.mid, s.seq) for s in planned if s.fresh}
        if not fresh:
            return True  # only resends of messages stored before: nothing to find
        mids = tuple(mid for mid, _ in fresh)
        cursor.execute(_landed_sql(self._mark, len(mids), not self._sqlite), mids)
        found = {(int(mid), int(seq)) for mid, seq in cursor.fetchall()}
        if found and found != fresh:
            raise RuntimeError("a batch whose commit was not confirmed is only partly stored")
        return bool(found)

    def _rollback(self) -> None:
        try:
            self._raw.rollback()
        except self.errors:
            self._raw.invalidate()
            self._raw = None

    def _store(self, cursor: Any, batch: list[Row], lookup: bool) -> list[Stored]:
        known = self._known_resends(cursor, batch) if lookup else {}
        first_of: dict[tuple[int, str], int] = {}
        fresh: list[int] = []  # indexes into batch of messages to insert
        for i, row in enumerate(batch):
            if row.client_id is not None:
                key = (row.sender, row.client_id)
                if key in known or key in first_of:
                    continue
                first_of[key] = i
            fresh.append(i)
        per_conv: dict[int, list[int]] = {}
        for i in fresh:
            per_conv.setdefault(self._conversation(cursor, batch[i].conv), []).append(i)
        createat = now_ms()
        out: dict[int, Stored] = {}
        if per_conv:
            last = self._advance(cursor, {c: len(items) for c, items in per_conv.items()})
            values: list[Any] = []
            where = {}
            for conv_id, items in per_conv.items():
                for seq, i in enumerate(items, start=last[conv_id] - len(items) + 1):
                    row = batch[i]
                    values += (conv_id, seq, row.sender, row.client_id, createat, row.body)
                    where[(conv_id, seq)] = i
            # One multi-row INSERT ... RETURNING for the whole batch. The rows may come back in
            # any order; (conv_id, seq) is unique, so it says which mid is whose.
            cursor.execute(_insert_sql(self._mark, len(where)), values)
            for mid, conv_id, seq in cursor.fetchall():
                out[where[(int(conv_id), int(seq))]] = Stored(int(mid), int(seq), createat, True)
            if len(out) != len(where):
                raise RuntimeError("the database returned fewer rows than were inserted")
        results: list[Stored] = []
        for i, row in enumerate(batch):
            if i in out:
                results.append(out[i])
                continue
            assert row.client_id is not None
            key = (row.sender, row.client_id)
            earlier = known.get(key) or out[first_of[key]]
            results.append(Stored(earlier.mid, earlier.seq, earlier.createat, False))
        return results

    def _conversation(self, cursor: Any, key: tuple[int, int, int]) -> int:
        conv_id = self._convs.get(key)
        if conv_id is None:
            params = conversation_params(key)
            found = self._run(cursor, self._lookup, params).fetchone()
            if found:
                conv_id = int(found[0])
            else:
                conv_id = int(self._run(cursor, self._create, params).lastrowid)
            if len(self._convs) > 100_000:
                self._convs.clear()
            self._convs[key] = conv_id
        return conv_id

    def _run(self, cursor: Any, compiled: sa.Compiled, params: dict[str, Any]) -> Any:
        """A compiled Core statement (the shared conversation lookup and insert) on the raw
        cursor, with these values for its named parameters."""
        values: Any = compiled.construct_params(params)
        order = getattr(compiled, "positiontup", None)
        if order is not None:  # qmark (SQLite); pymysql takes the names
            values = [values[name] for name in order]
        cursor.execute(compiled.string, values)
        return cursor

    def _advance(self, cursor: Any, counts: dict[int, int]) -> dict[int, int]:
        """Add counts[c] to each conversation's last_seq under its row lock; the new last_seqs.

        One UPDATE for all conversations of the batch: the rows are locked in index order,
        so writers on several nodes never deadlock. SQLite returns the new values from the
        UPDATE itself; MariaDB has no UPDATE ... RETURNING, so a SELECT after it reads them.
        """
        ids = tuple(sorted(counts))
        steps = tuple(x for c in ids for x in (c, counts[c]))
        cursor.execute(_advance_sql(self._mark, len(ids), self._sqlite), steps + ids)
        if not self._sqlite:
            cursor.execute(_last_seqs_sql(self._mark, len(ids)), ids)
        return {int(c): int(last) for c, last in cursor.fetchall()}

    def _known_resends(self, cursor: Any, batch: list[Row]) -> dict[tuple[int, str], Stored]:
        """Messages of this batch whose (sender, id) is already stored."""
        wanted = {(r.sender, r.client_id) for r in batch if r.client_id is not None}
        if not wanted:
            return {}
        pairs = tuple(x for pair in wanted for x in pair)
        cursor.execute(_resends_sql(self._mark, len(wanted)), pairs)
        found: dict[tuple[int, str], Stored] = {}
        for sender, client_id, mid, seq, createat in cursor.fetchall():
            if (sender, client_id) in wanted:
                found[(int(sender), client_id)] = Stored(int(mid), int(seq), int(createat), False)
        return found


# The writer's statements for n items in the driver's placeholder style ("?" or "%s"), each
# built once per size and kept (sizes are at most MAX_BATCH). Only placeholders are joined
# into them; every value is bound.


def _marks(mark: str, n: int, each: str = "{m}", sep: str = ", ") -> str:
    return sep.join([each.format(m=mark)] * n)


@functools.lru_cache(maxsize=MAX_BATCH)
def _insert_sql(mark: str, n: int) -> str:
    rows = _marks(mark, n, f"({_marks(mark, 6)})")
    columns = "conv_id, seq, sender, client_id, createat, body"
    return f"INSERT INTO message ({columns}) VALUES {rows} RETURNING mid, conv_id, seq"  # noqa: S608


@functools.lru_cache(maxsize=MAX_BATCH)
def _advance_sql(mark: str, n: int, returning: bool) -> str:
    whens = _marks(mark, n, "WHEN {m} THEN {m}", " ")
    ids = _marks(mark, n)
    step = f"CASE id {whens} ELSE 0 END"
    tail = " RETURNING id, last_seq" if returning else ""
    return f"UPDATE conversation SET last_seq = last_seq + {step} WHERE id IN ({ids}){tail}"  # noqa: S608


@functools.lru_cache(maxsize=MAX_BATCH)
def _last_seqs_sql(mark: str, n: int) -> str:
    return f"SELECT id, last_seq FROM conversation WHERE id IN ({_marks(mark, n)})"  # noqa: S608


@functools.lru_cache(maxsize=MAX_BATCH)
def _landed_sql(mark: str, n: int, locking: bool) -> str:
    lock = " LOCK IN SHARE MODE" if locking else ""
    return f"SELECT mid, seq FROM message WHERE mid IN ({_marks(mark, n)}){lock}"  # noqa: S608


@functools.lru_cache(maxsize=MAX_BATCH)
def _resends_sql(mark: str, n: int) -> str:
    # An OR of exact (sender, client_id) pairs: SQLite and MariaDB look each one up in the
    # unique index, where "sender IN (..) AND client_id IN (..)" made them walk the cross.
    pairs = _marks(mark, n, "(sender = {m} AND client_id = {m})", " OR ")
    return f"SELECT sender, client_id, mid, seq, createat FROM message WHERE {pairs}"  # noqa: S608


def _is_deadlock(exc: BaseException) -> bool:
    """A driver error that another attempt can get past: a MariaDB lock wait timeout or
    deadlock, SQLite's busy timeout."""
    code = exc.args[0] if exc.args else None
    return code in (1205, 1213) or "database is locked" in str(exc)


# ---- reads, on a connection of node.reads ---------------------------------------------------


def row_message(row: Any) -> dict[str, Any]:
    """A stored row as the delivered-message object."""
    fields = orjson.loads(row.body)
    return delivered(fields, int(row.mid), int(row.seq), int(row.createat))


def find_conversation(conn: sa.Connection, key: tuple[int, int, int]) -> tuple[int, int] | None:
    """(id, last_seq) of the conversation with this key, if there is one."""
    row = conn.execute(CONVERSATION_LOOKUP, conversation_params(key)).first()
    return (int(row[0]), int(row[1])) if row else None


def history(
    conn: sa.Connection, conv_id: int, before: int | None, after: int | None, limit: int
) -> list[dict[str, Any]]:
    query = sa.select(messages).where(messages.c.conv_id == conv_id)
    if after is not None:
        query = query.where(messages.c.seq > after).order_by(messages.c.seq.asc())
    else:
        if before is not None:
            query = query.where(messages.c.seq < before)
        query = query.order_by(messages.c.seq.desc())
    rows = list(conn.execute(query.limit(limit)))
    if after is None:
        rows.reverse()
    return [row_message(r) for r in rows]


def conversation_rows(conn: sa.Connection, uid: int) -> list[dict[str, Any]]:
    """Every conversation the user has a read marker in, with unread count and last message."""
    unread = (
        sa.select(sa.func.count())
        .where(
            messages.c.conv_id == readmarks.c.conv_id,
            messages.c.seq > readmarks.c.read_seq,
            messages.c.sender != uid,
        )
        .correlate(readmarks)
        .scalar_subquery()
        .label("unread")
    )
    query = (
        sa.select(
            conversations.c.id,
            conversations.c.kind,
            conversations.c.a,
            conversations.c.b,
            conversations.c.last_seq,
            readmarks.c.read_seq,
            unread,
        )
        .join(readmarks, readmarks.c.conv_id == conversations.c.id)
        .where(readmarks.c.userid == uid)
    )
    convs = list(conn.execute(query))
    wanted = [(int(c.id), int(c.last_seq)) for c in convs if c.last_seq > 0]
    last: dict[int, dict[str, Any]] = {}
    if wanted:
        rows = conn.execute(
            sa.select(messages).where(sa.tuple_(messages.c.conv_id, messages.c.seq).in_(wanted))
        )
        last = {int(r.conv_id): row_message(r) for r in rows}
    out = []
    for c in convs:
        dstid = (int(c.b) if int(c.a) == uid else int(c.a)) if c.kind == CMD_SINGLE else int(c.a)
        out.append(
            {
                "cmd": int(c.kind),
                "dstid": dstid,
                "last_seq": int(c.last_seq),
                "read_seq": int(c.read_seq),
                "unread": int(c.unread),
                "last": last.get(int(c.id)),
            }
        )
    out.sort(key=_recent, reverse=True)
    return out


def _recent(row: dict[str, Any]) -> int:
    last = row["last"]
    return int(last["createat"]) if last else 0


def mark_read(conn: sa.Connection, uid: int, conv_id: int, seq: int) -> tuple[int, bool]:
    """A write (node.reads.Writes): move the marker forward to seq, clamped to the last
    message; (read_seq, moved). The UPDATE only ever raises the marker, so two nodes moving it
    at once never move it back."""
    last = conn.execute(
        sa.select(conversations.c.last_seq).where(conversations.c.id == conv_id)
    ).scalar_one()
    target = min(seq, int(last))
    where = (readmarks.c.userid == uid, readmarks.c.conv_id == conv_id)
    raised = conn.execute(
        readmarks.update().where(*where, readmarks.c.read_seq < target).values(read_seq=target)
    )
    if raised.rowcount:
        return target, True
    current = conn.execute(sa.select(readmarks.c.read_seq).where(*where)).scalar()
    if current is None:
        conn.execute(readmarks.insert().values(userid=uid, conv_id=conv_id, read_seq=target))
        return target, target > 0
    return int(current), False
