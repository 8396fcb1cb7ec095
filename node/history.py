"""HTTP API for stored messages: history paging, the conversation list, read markers."""

from __future__ import annotations

from aiohttp import web

from . import messages, store
from .api import authed, ok, ok_rows
from .auth import Caller
from .dispatch import CMD_GROUP, CMD_SINGLE, group_key, pair_key, receipt_frame
from .errors import BadRequest, Forbidden, NotFound
from .keys import ENGINE, NODE
from .packets import users_packet
from .params import Params, get_int, need_int


async def _conversation(
    request: web.Request, params: Params, caller: Caller
) -> tuple[int, int, int]:
    """(cmd, dstid, conversation id) of a conversation the caller takes part in; else 403/404."""
    engine = request.app[ENGINE]
    cmd = need_int(params, "cmd", lo=CMD_SINGLE, hi=CMD_GROUP)
    dst = need_int(params, "dstid")
    if cmd == CMD_SINGLE:
        found = await messages.find_conversation(engine, pair_key(caller.user, dst))
        if found is None or dst == caller.user:
            if await store.user_by_id(engine, dst) is None:
                raise NotFound("no such user")
            raise Forbidden("you have no conversation with this user")
    else:
        found = await messages.find_conversation(engine, group_key(dst))
        if found is None:
            raise NotFound("no such community")
        if not await store.is_member(engine, caller.user, dst):
            raise Forbidden("only members can read a community's messages")
    return cmd, dst, found[0]


@authed
async def history(request: web.Request, params: Params, caller: Caller) -> web.Response:
    _, _, conv_id = await _conversation(request, params, caller)
    before = get_int(params, "before", lo=1)
    after = get_int(params, "after", lo=0)
    if before is not None and after is not None:
        raise BadRequest("give before or after, not both")
    limit = get_int(params, "limit", lo=1, hi=100, default=50)
    assert limit is not None
    return ok_rows(await messages.history(request.app[ENGINE], conv_id, before, after, limit))


@authed
async def conversations(request: web.Request, params: Params, caller: Caller) -> web.Response:
    engine = request.app[ENGINE]
    rows = await messages.conversation_rows(engine, caller.user)
    async with engine.connect() as conn:
        friends = set(await store.friend_ids(conn, caller.user))
        groups = set(await store.community_ids(conn, caller.user))
    current = [r for r in rows if r["dstid"] in (friends if r["cmd"] == CMD_SINGLE else groups)]
    return ok_rows(current)


@authed
async def read(request: web.Request, params: Params, caller: Caller) -> web.Response:
    cmd, dst, conv_id = await _conversation(request, params, caller)
    seq = need_int(params, "seq", lo=0)
    read_seq, moved = await messages.mark_read(request.app[ENGINE], caller.user, conv_id, seq)
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
