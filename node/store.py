"""Store: accounts, sessions, friendships and communities on SQLAlchemy Core (async)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import db
from .db import (
    CATE_FRIEND,
    CATE_MEMBER,
    communities,
    contacts,
    conversations,
    messages,
    now_ms,
    readmarks,
    sessions,
    users,
)
from .dispatch import group_key, pair_key
from .errors import BadRequest, Conflict, Forbidden, NotFound

PUBLIC_USER = (users.c.id, users.c.nickname, users.c.avatar, users.c.sex, users.c.memo)

P = ParamSpec("P")
T = TypeVar("T")


def bounded(call: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """A call on the async engine that raises TimeoutError once db.DB_TIMEOUT_S has passed.

    The async MySQL driver has no read timeout of its own: a server that stops answering with
    its sockets open (a hung host, a pulled cable) held the request, and the pool connection
    under it, for as long as the socket stayed open. Cancelled mid-statement, SQLAlchemy
    drops the connection instead of returning it to the pool, so each such request costs the
    timeout and the caller gets a 503 (app.py) or cmd 21 `unavailable` (ws.py).
    """

    @functools.wraps(call)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        async with asyncio.timeout(db.DB_TIMEOUT_S):
            return await call(*args, **kwargs)

    return run


def new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


# ---- accounts ------------------------------------------------------------------------------


@bounded
async def create_user(engine: AsyncEngine, fields: dict[str, Any]) -> dict[str, Any]:
    row = {**fields, "createat": now_ms()}
    try:
        async with engine.begin() as conn:
            result = await conn.execute(users.insert().values(**row))
    except IntegrityError:
        raise Conflict("this mobile number is already registered") from None
    return {"id": new_id(result), **row}


@bounded
async def user_by_mobile(engine: AsyncEngine, mobile: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(users.select().where(users.c.mobile == mobile))).first()
    return row._asdict() if row else None


def user_by_id(conn: sa.Connection, uid: int) -> dict[str, Any] | None:
    """A read (node.reads): the user's row."""
    row = conn.execute(users.select().where(users.c.id == uid)).first()
    return row._asdict() if row else None


@bounded
async def update_user(engine: AsyncEngine, uid: int, changes: dict[str, Any]) -> None:
    if changes:
        async with engine.begin() as conn:
            await conn.execute(users.update().where(users.c.id == uid).values(**changes))


@bounded
async def create_session(engine: AsyncEngine, uid: int, digest: str, ttl_ms: int) -> int:
    now = now_ms()
    async with engine.begin() as conn:
        await conn.execute(
            sessions.insert().values(
                userid=uid, token_hash=digest, createat=now, expireat=now + ttl_ms
            )
        )
        # Expired sessions of this user go when a new one starts: the table stays small.
        await conn.execute(
            sessions.delete().where(sessions.c.userid == uid, sessions.c.expireat <= now)
        )
    return now + ttl_ms


@bounded
async def delete_session(engine: AsyncEngine, digest: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(sessions.delete().where(sessions.c.token_hash == digest))


@bounded
async def end_other_sessions(engine: AsyncEngine, uid: int, keep: str) -> list[str]:
    """Deletes the user's sessions but the one whose token hash is `keep`; their hashes."""
    async with engine.begin() as conn:
        others = [
            row[0]
            for row in await conn.execute(
                sa.select(sessions.c.token_hash).where(
                    sessions.c.userid == uid, sessions.c.token_hash != keep
                )
            )
        ]
        await conn.execute(sessions.delete().where(sessions.c.token_hash.in_(others)))
    return others


def public_users(conn: sa.Connection, ids: list[int]) -> list[dict[str, Any]]:
    """A read (node.reads): the public fields of these users."""
    if not ids:
        return []
    rows = conn.execute(sa.select(*PUBLIC_USER).where(users.c.id.in_(ids)))
    return [r._asdict() for r in rows]


# ---- conversations and read markers (created with friendships and memberships) ----------


# (id, last_seq) of the conversation with a key, and a new one with it; the key's parts are
# bound by name (conversation_params), so the message writer compiles each statement once.
CONVERSATION_LOOKUP = sa.select(conversations.c.id, conversations.c.last_seq).where(
    conversations.c.kind == sa.bindparam("kind"),
    conversations.c.a == sa.bindparam("a"),
    conversations.c.b == sa.bindparam("b"),
)
CONVERSATION_INSERT = conversations.insert().values(
    kind=sa.bindparam("kind"), a=sa.bindparam("a"), b=sa.bindparam("b"), last_seq=0
)


def conversation_params(key: tuple[int, int, int]) -> dict[str, int]:
    kind, a, b = key
    return {"kind": kind, "a": a, "b": b}


async def ensure_conversation(conn: AsyncConnection, key: tuple[int, int, int]) -> tuple[int, int]:
    """(id, last_seq) of the conversation with this key, creating it if needed."""
    params = conversation_params(key)
    row = (await conn.execute(CONVERSATION_LOOKUP, params)).first()
    if row:
        return int(row[0]), int(row[1])
    return new_id(await conn.execute(CONVERSATION_INSERT, params)), 0


async def set_readmark(conn: AsyncConnection, uid: int, conv_id: int, read_seq: int) -> None:
    where = (readmarks.c.userid == uid, readmarks.c.conv_id == conv_id)
    found = (await conn.execute(sa.select(readmarks.c.read_seq).where(*where))).first()
    if found is None:
        await conn.execute(
            readmarks.insert().values(userid=uid, conv_id=conv_id, read_seq=read_seq)
        )
    elif found[0] < read_seq:
        await conn.execute(readmarks.update().where(*where).values(read_seq=read_seq))


# ---- friends -----------------------------------------------------------------------------


@bounded
async def add_friend(engine: AsyncEngine, uid: int, dst: int) -> None:
    if dst == uid:
        raise BadRequest("you cannot add yourself as a friend")
    now = now_ms()
    try:
        async with engine.begin() as conn:
            if (await conn.execute(sa.select(users.c.id).where(users.c.id == dst))).first() is None:
                raise NotFound("no such user")
            if await _has_contact(conn, uid, dst, CATE_FRIEND):
                raise Conflict("you are already friends")
            await conn.execute(
                contacts.insert(),
                [
                    {
                        "ownerid": uid,
                        "dstobj": dst,
                        "cate": CATE_FRIEND,
                        "memo": "",
                        "createat": now,
                    },
                    {
                        "ownerid": dst,
                        "dstobj": uid,
                        "cate": CATE_FRIEND,
                        "memo": "",
                        "createat": now,
                    },
                ],
            )
            conv_id, _ = await ensure_conversation(conn, pair_key(uid, dst))
            await set_readmark(conn, uid, conv_id, 0)
            await set_readmark(conn, dst, conv_id, 0)
    except IntegrityError:
        raise Conflict("you are already friends") from None


@bounded
async def del_friend(engine: AsyncEngine, uid: int, dst: int) -> None:
    async with engine.begin() as conn:
        result = await conn.execute(
            contacts.delete().where(
                contacts.c.cate == CATE_FRIEND,
                sa.or_(
                    sa.and_(contacts.c.ownerid == uid, contacts.c.dstobj == dst),
                    sa.and_(contacts.c.ownerid == dst, contacts.c.dstobj == uid),
                ),
            )
        )
        if result.rowcount == 0:
            raise NotFound("not a friend")


def friends(conn: sa.Connection, uid: int) -> list[dict[str, Any]]:
    """A read (node.reads): the public fields of the user's friends."""
    query = sa.select(contacts.c.dstobj).where(
        contacts.c.ownerid == uid, contacts.c.cate == CATE_FRIEND
    )
    return public_users(conn, [int(r[0]) for r in conn.execute(query)])


@bounded
async def are_friends(engine: AsyncEngine, a: int, b: int) -> bool:
    async with engine.connect() as conn:
        return await _has_contact(conn, a, b, CATE_FRIEND)


def contact_query(owner: int, dst: int, cate: int) -> sa.Select[tuple[int]]:
    """The contact row of owner to dst of this kind (friend or member), if there is one."""
    return sa.select(contacts.c.id).where(
        contacts.c.ownerid == owner, contacts.c.dstobj == dst, contacts.c.cate == cate
    )


async def _has_contact(conn: AsyncConnection, owner: int, dst: int, cate: int) -> bool:
    return (await conn.execute(contact_query(owner, dst, cate))).first() is not None


# ---- communities -------------------------------------------------------------------------

_member_count = (
    sa.select(sa.func.count())
    .where(contacts.c.dstobj == communities.c.id, contacts.c.cate == CATE_MEMBER)
    .correlate(communities)
    .scalar_subquery()
    .label("members")
)


@bounded
async def create_community(
    engine: AsyncEngine, uid: int, fields: dict[str, Any], limit: int
) -> dict[str, Any]:
    now = now_ms()
    async with engine.begin() as conn:
        owned = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(communities)
                .where(communities.c.ownerid == uid)
            )
        ).scalar_one()
        if owned >= limit:
            raise Forbidden(f"you may own at most {limit} communities")
        row = {**fields, "ownerid": uid, "createat": now}
        result = await conn.execute(communities.insert().values(**row))
        cid = new_id(result)
        await conn.execute(
            contacts.insert().values(
                ownerid=uid, dstobj=cid, cate=CATE_MEMBER, memo="", createat=now
            )
        )
        conv_id, _ = await ensure_conversation(conn, group_key(cid))
        await set_readmark(conn, uid, conv_id, 0)
    return {"id": cid, **row, "members": 1}


def load_communities(conn: sa.Connection, uid: int) -> list[dict[str, Any]]:
    """A read (node.reads): the communities the user belongs to, with their member counts."""
    query = (
        sa.select(communities, _member_count)
        .join(
            contacts, sa.and_(contacts.c.dstobj == communities.c.id, contacts.c.cate == CATE_MEMBER)
        )
        .where(contacts.c.ownerid == uid)
        .order_by(contacts.c.id)
    )
    return [r._asdict() for r in conn.execute(query)]


@bounded
async def join_community(engine: AsyncEngine, uid: int, cid: int) -> None:
    try:
        async with engine.begin() as conn:
            found = await conn.execute(sa.select(communities.c.id).where(communities.c.id == cid))
            if found.first() is None:
                raise NotFound("no such community")
            if await _has_contact(conn, uid, cid, CATE_MEMBER):
                raise Conflict("you are already a member")
            await conn.execute(
                contacts.insert().values(
                    ownerid=uid, dstobj=cid, cate=CATE_MEMBER, memo="", createat=now_ms()
                )
            )
            # The whole history is readable, but a newcomer starts with nothing unread.
            conv_id, last_seq = await ensure_conversation(conn, group_key(cid))
            await set_readmark(conn, uid, conv_id, last_seq)
    except IntegrityError:
        raise Conflict("you are already a member") from None


@bounded
async def leave_community(engine: AsyncEngine, uid: int, cid: int) -> bool:
    """Leave; ownership passes to the earliest member; the last one out deletes it (True)."""
    async with engine.begin() as conn:
        result = await conn.execute(
            contacts.delete().where(
                contacts.c.ownerid == uid, contacts.c.dstobj == cid, contacts.c.cate == CATE_MEMBER
            )
        )
        if result.rowcount == 0:
            raise NotFound("you are not a member of this community")
        heir = (
            await conn.execute(
                sa.select(contacts.c.ownerid)
                .where(contacts.c.dstobj == cid, contacts.c.cate == CATE_MEMBER)
                .order_by(contacts.c.id)
                .limit(1)
            )
        ).first()
        if heir is None:
            await _delete_community(conn, cid)
            return True
        await conn.execute(
            communities.update()
            .where(communities.c.id == cid, communities.c.ownerid == uid)
            .values(ownerid=int(heir[0]))
        )
        return False


async def _delete_community(conn: AsyncConnection, cid: int) -> None:
    kind, a, b = group_key(cid)
    conv = (
        await conn.execute(
            sa.select(conversations.c.id).where(
                conversations.c.kind == kind, conversations.c.a == a, conversations.c.b == b
            )
        )
    ).first()
    if conv is not None:
        await conn.execute(messages.delete().where(messages.c.conv_id == conv[0]))
        await conn.execute(readmarks.delete().where(readmarks.c.conv_id == conv[0]))
        await conn.execute(conversations.delete().where(conversations.c.id == conv[0]))
    await conn.execute(communities.delete().where(communities.c.id == cid))


@bounded
async def is_member(engine: AsyncEngine, uid: int, cid: int) -> bool:
    async with engine.connect() as conn:
        return await _has_contact(conn, uid, cid, CATE_MEMBER)


def member_ids(conn: sa.Connection, cid: int) -> list[int]:
    """A read (node.reads): a community's members, in the order they joined."""
    query = (
        sa.select(contacts.c.ownerid)
        .where(contacts.c.dstobj == cid, contacts.c.cate == CATE_MEMBER)
        .order_by(contacts.c.id)
    )
    return [int(r[0]) for r in conn.execute(query)]
