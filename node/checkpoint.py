"""SQLite only: write-ahead log checkpoints in a thread of their own, so no commit waits for one."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from .procnames import name_this_thread

log = logging.getLogger(__name__)

RESTART_PAGES = 8192  # 32 MiB of log with SQLite's 4 KiB pages
# Between two checkpoints while commits keep coming. A checkpoint copies each page once however
# often it changed since the last one (the same index pages change in every batch) and flushes
# the log and the database to disk. Every 10 ms, that was about a hundred checkpoints a second
# under load; every 0.1 s it is a sixth of them, at a third to a half of the CPU per message.
# Commits do not wait for them: each is on the disk when it returns (synchronous=FULL, db.py).
PAUSE_S = 0.1
IDLE_S = 1.0  # at the latest, for what other connections committed


class Checkpointer:
    """Copies committed pages from the write-ahead log into the database file, on a
    connection of its own, while the message writer goes on committing.

    By default SQLite checkpoints inside the commit that takes the log past 1,000 pages: that
    commit then also waits for the copying and two disk flushes (tens of milliseconds on a
    busy disk), and so does every message queued behind it. lanchat's connections turn that
    off (db.py); a PASSIVE checkpoint here waits for no reader and no writer.

    The log starts over from its beginning only once all of it has been copied, and under
    constant writes some commit always lands during a checkpoint. So once the log is longer
    than restart_pages, the writer thread is asked to copy what is left itself, between two of
    its batches (after handing the last one back): its next commit then starts the log over.
    """

    def __init__(
        self, engine: sa.Engine, restart_pages: int = RESTART_PAGES, pause_s: float = PAUSE_S
    ) -> None:
        self.engine = engine
        self.restart_pages = restart_pages
        self.pause_s = pause_s
        dbapi: Any = engine.dialect.dbapi
        self.errors: tuple[type[BaseException], ...] = (dbapi.Error, OSError)
        self.stats = {"checkpoints": 0, "restarts": 0, "errors": 0, "wal_pages": 0}
        self.restart_due = False  # read by the writer thread after each batch
        self._committed = threading.Event()
        self._restarted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="checkpointer", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """The writer committed: there is something to copy."""
        self._committed.set()

    def restart(self, connection: Callable[[], Any]) -> None:
        """In the writer thread, on its connection, between batches: copy what is left."""
        self.restart_due = False
        try:
            checkpoint(connection())
            self.stats["restarts"] += 1
        except self.errors as exc:
            self.stats["errors"] += 1
            log.warning("checkpointing the message log before it starts over failed: %s", exc)
        finally:
            self._restarted.set()

    def close(self) -> None:
        self._stop.set()
        self._committed.set()
        self._restarted.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        name_this_thread()
        raw: Any = None
        while not self._stop.is_set():
            self._committed.wait(IDLE_S)
            self._committed.clear()
            if self._stop.is_set():
                break
            try:
                raw = raw or self.engine.raw_connection()
                pages = checkpoint(raw)
            except self.errors as exc:
                self.stats["errors"] += 1
                log.warning("checkpointing the message log failed: %s", exc)
                if raw is not None:
                    raw.invalidate()
                    raw = None
                self._stop.wait(IDLE_S)  # a disk that is full or failing: not in a tight loop
                continue
            self.stats["checkpoints"] += 1
            self.stats["wal_pages"] = pages
            if pages > self.restart_pages:
                self._restarted.clear()
                self.restart_due = True
                self._restarted.wait(IDLE_S)  # no second checkpoint to collide with the writer's
            self._stop.wait(self.pause_s)
        if raw is not None:
            raw.close()


def checkpoint(raw: Any) -> int:
    """A PASSIVE checkpoint on a driver connection; the pages in the log."""
    cursor = raw.cursor()
    try:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        _busy, pages, _copied = cursor.fetchone()
        return int(pages)
    finally:
        cursor.close()
