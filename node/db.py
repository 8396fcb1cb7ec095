"""Store plumbing: the engine for sqlite:/// or mysql:// URLs, the table definitions, migrations."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

metadata = sa.MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; MySQL gets BIGINT.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

users = sa.Table(
    "user",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("mobile", sa.String(20), nullable=False, unique=True),
    sa.Column("passwd", sa.String(255), nullable=False),
    sa.Column("nickname", sa.String(64), nullable=False, default=""),
    sa.Column("avatar", sa.String(255), nullable=False, default=""),
    sa.Column("sex", sa.String(1), nullable=False, default="U"),
    sa.Column("memo", sa.String(255), nullable=False, default=""),
    sa.Column("createat", sa.BigInteger, nullable=False),
)

sessions = sa.Table(
    "session",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("userid", sa.BigInteger, nullable=False, index=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("createat", sa.BigInteger, nullable=False),
    sa.Column("expireat", sa.BigInteger, nullable=False),
)

CATE_FRIEND = 1
CATE_MEMBER = 2

contacts = sa.Table(
    "contact",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("ownerid", sa.BigInteger, nullable=False),
    sa.Column("dstobj", sa.BigInteger, nullable=False),
    sa.Column("cate", sa.SmallInteger, nullable=False),
    sa.Column("memo", sa.String(255), nullable=False, default=""),
    sa.Column("createat", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("ownerid", "cate", "dstobj", name="uq_contact_owner_cate_dst"),
    sa.Index("ix_contact_dst_cate", "dstobj", "cate"),
)

communities = sa.Table(
    "community",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(30), nullable=False),
    sa.Column("ownerid", sa.BigInteger, nullable=False, index=True),
    sa.Column("icon", sa.String(255), nullable=False, default=""),
    sa.Column("cate", sa.SmallInteger, nullable=False, default=0),
    sa.Column("memo", sa.String(255), nullable=False, default=""),
    sa.Column("createat", sa.BigInteger, nullable=False),
)

# A conversation is a friend pair (kind 10, a < b) or a community (kind 11, a = id, b = 0).
conversations = sa.Table(
    "conversation",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.SmallInteger, nullable=False),
    sa.Column("a", sa.BigInteger, nullable=False),
    sa.Column("b", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False, default=0),
    sa.UniqueConstraint("kind", "a", "b", name="uq_conversation_key"),
)

messages = sa.Table(
    "message",
    metadata,
    sa.Column("mid", Id, primary_key=True, autoincrement=True),
    sa.Column("conv_id", sa.BigInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("sender", sa.BigInteger, nullable=False),
    sa.Column("client_id", sa.String(64), nullable=True),
    sa.Column("createat", sa.BigInteger, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.UniqueConstraint("conv_id", "seq", name="uq_message_conv_seq"),
    sa.UniqueConstraint("sender", "client_id", name="uq_message_sender_client"),
)

readmarks = sa.Table(
    "readmark",
    metadata,
    sa.Column("userid", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("conv_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("read_seq", sa.BigInteger, nullable=False, default=0),
)


DB_TIMEOUT_S = 30.0  # longest a blocking MySQL connection waits for the server to answer


def now_ms() -> int:
    return int(time.time() * 1000)


def is_mysql(engine: AsyncEngine | AsyncConnection) -> bool:
    return engine.dialect.name == "mysql"


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for the user's plain URL; lanchat picks the driver."""
    driver_url, options = _driver(url, "aiosqlite", "aiomysql")
    engine = create_async_engine(driver_url, **options, **kwargs)
    if url.startswith("sqlite:"):
        _sqlite_transactions(engine.sync_engine)
    return engine


def make_sync_engine(
    url: str, pool_size: int = 2, read_only: bool = False, timeout_s: float | None = None
) -> sa.Engine:
    """A blocking engine on the same database, for threads of their own (the message writer
    and on SQLite its checkpointer; read_only: the reads of every connect and resync): a
    batch or a read then costs one hand-off between threads instead of one per driver call."""
    driver_url, options = _driver(url, "pysqlite", "pymysql")
    if url.startswith("mysql:"):
        # A server that stops answering with its sockets still open (a hung host, a pulled
        # cable) fails the call after DB_TIMEOUT_S (or timeout_s) instead of holding the
        # thread, and the node's shutdown behind it, for ever; the connection is replaced
        # (reads.py, messages.py).
        timeout = DB_TIMEOUT_S if timeout_s is None else timeout_s
        options["connect_args"] = {
            "connect_timeout": min(10, max(1, round(timeout))),
            "read_timeout": timeout,
            "write_timeout": timeout,
        }
    engine = sa.create_engine(driver_url, pool_size=pool_size, max_overflow=0, **options)
    if url.startswith("sqlite:"):
        if read_only:
            _sqlite_pragmas(engine, "PRAGMA query_only=1")
        else:
            _sqlite_transactions(engine)
    return engine


def _driver(url: str, sqlite_driver: str, mysql_driver: str) -> tuple[str, dict[str, Any]]:
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite+{sqlite_driver}:///{path}", {}
    if url.startswith("mysql://"):
        parts = urlsplit(url)
        query = parts.query + ("&" if parts.query else "") + "charset=utf8mb4"
        driver_url = f"mysql+{mysql_driver}://{parts.netloc}{parts.path}?{query}"
        return driver_url, {"pool_recycle": 3600, "pool_pre_ping": True}
    raise ValueError(f"unsupported database URL scheme in {safe_url(url)}")


def _sqlite_transactions(engine: sa.Engine) -> None:
    """WAL, a busy timeout, and BEGIN IMMEDIATE so writers serialise instead of deadlocking."""
    _sqlite_pragmas(engine)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(engine: sa.Engine, *more: str) -> None:
    """Each new connection: WAL, a busy timeout, and the driver's own transaction handling
    off (SQLAlchemy's begin, or none, decides)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        # Each commit is flushed to the disk before it returns: a message is acked after its
        # commit, and an acked message must survive a power cut. (NORMAL would leave commits
        # in the kernel's cache until the next checkpoint, for 6-25% more messages a second
        # in four of five pairs of bench runs: README, Performance.)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA temp_store=MEMORY")  # IN lists and ORs build temporary b-trees
        # No checkpoint inside a commit: a running node checkpoints in a thread of its own
        # (checkpoint.py), and SQLite checkpoints when a process closes its last connection.
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        for pragma in more:
            cursor.execute(pragma)
        cursor.close()


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration, holding a lock so nodes starting together agree."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))

    def _run(sync_conn: Connection) -> None:
        config.attributes["connection"] = sync_conn
        command.upgrade(config, "head")

    async with engine.connect() as conn:
        if is_mysql(engine):
            got = (await conn.execute(sa.text("SELECT GET_LOCK('lanchat_schema', 120)"))).scalar()
            if got != 1:
                raise RuntimeError("timed out waiting for another node's schema upgrade")
        try:
            await conn.run_sync(_run)
            await conn.commit()
        finally:
            if is_mysql(engine):
                await conn.execute(sa.text("SELECT RELEASE_LOCK('lanchat_schema')"))
    log.info("schema is up to date")
