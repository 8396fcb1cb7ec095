"""HTTP API for stored messages: history paging, the conversation list, read markers."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web

from . import messages, store
from .api import authed, ok, ok_rows
from .auth import Caller
from .db import CATE_MEMBER, users
from .dispatch import CMD_GROUP, CMD_SINGLE, group_key, pair_key, receipt_frame
from .errors import BadRequest, Forbidden, NotFound
from .keys import NODE, READS, WRITES
from .packets import users_packet
from .params import Params, get_int, need_int
from .reads import contact_ids


def conversation_id(conn: sa.Connection, uid: int, cmd: int, dst: int) -> int:
    """The conversation (cmd, dst) as user uid names it, if uid takes part; else 403/404."""
    if cmd == CMD_SINGLE:
        found = messages.find_conversation(conn, pair_key(uid, dst))
        if found is None or dst == uid:
            if conn.execute(sa.select(users.c.id).where(users.c.id == dst)).first() is None:
                raise NotFound("no such user")
            raise Forbidden("you have no conversation with this user")
    else:
        found = messages.find_conversation(conn, group_key(dst))
        if found is None:
            raise NotFound("no such community")
        if conn.execute(store.contact_query(uid, dst, CATE_MEMBER)).first() is None:
            raise Forbidden("only members can read a community's messages")
    return found[0]


async def _conversation(
    request: web.Request, params: Params, caller: Caller
) -> tuple[int, int, int]:
    """(cmd, dstid, conversation id) of a conversation the caller takes part in; else 403/404."""
    cmd = need_int(params, "cmd", lo=CMD_SINGLE, hi=CMD_GROUP)
    dst = need_int(params, "dstid")
    return cmd, dst, await request.app[READS].run(conversation_id, caller.user, cmd, dst)


@authed
async def history(request: web.Request, params: Params, caller: Caller) -> web.Response:
    _, _, conv_id = await _conversation(request, params, caller)
    before = get_int(params, "before", lo=1)
    after = get_int(params, "after", lo=0)
    if before is not None and after is not None:
        raise BadRequest("give before or after, not both")
    limit = get_int(params, "limit", lo=1, hi=100, default=50)
    assert limit is not None
    return ok_rows(await request.app[READS].run(messages.history, conv_id, before, after, limit))


def current_conversations(conn: sa.Connection, uid: int) -> list[dict[str, Any]]:
    """The user's conversations with those who are still friends and in communities the user
    still belongs to."""
    friends, groups = contact_ids(conn, uid)
    mine = {CMD_SINGLE: set(friends), CMD_GROUP: set(groups)}
    return [r for r in messages.conversation_rows(conn, uid) if r["dstid"] in mine[r["cmd"]]]


@authed
async def conversations(request: web.Request, params: Params, caller: Caller) -> web.Response:
    return ok_rows(await request.app[READS].run(current_conversations, caller.user))


@authed
async def read(request: web.Request, params: Params, caller: Caller) -> web.Response:
    cmd, dst, conv_id = await _conversation(request, params, caller)
    seq = need_int(params, "seq", lo=0)
    read_seq, moved = await request.app[WRITES].run(messages.mark_read, caller.user, conv_id, seq)
    if moved:
        node = request.app[NODE]
        mine = receipt_frame(cmd, caller.user, dst, read_seq)
        node.emit(users_packet((caller.user,), mine))
        if cmd == CMD_SINGLE:
            theirs = receipt_frame(cmd, caller.user, caller.user, read_seq)
            node.emit(users_packet((dst,), theirs))
    return ok({"cmd": cmd, "dstid": dst, "read_seq": read_seq})


def add_routes(app: web.Application) -> None:
    for method in ("GET", "POST"):
        app.router.add_route(method, "/message/history", history)
        app.router.add_route(method, "/message/conversations", conversations)
    app.router.add_post("/message/read", read)
