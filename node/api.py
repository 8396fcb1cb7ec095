"""HTTP API: accounts and contacts (SPEC section 2), as aiohttp handlers over the store."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from ipaddress import ip_address
from typing import Any

import orjson
import sqlalchemy as sa
from aiohttp import web

from . import security, store
from .auth import COOKIE, Caller, authenticate, check_acting_user
from .errors import BadRequest, Forbidden, NotFound, RateLimited, Unauthorized
from .keys import ENGINE, LOGIN_FAILS_ADDR, LOGIN_FAILS_MOBILE, NODE, PASSWORDS, READS, SETTINGS
from .packets import state_packet
from .params import Params, get_str, media_url, need_int, read_params

log = logging.getLogger(__name__)

Handler = Callable[[web.Request, Params, Caller], Awaitable[web.Response]]


def ok(data: Any = None) -> web.Response:
    return web.json_response({"code": 0, "msg": "", "data": data}, dumps=_dumps)


def ok_rows(rows: list[Any]) -> web.Response:
    return web.json_response({"code": 0, "msg": "", "rows": rows, "total": len(rows)}, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def authed(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Read the parameters, find the caller (401/403), check userid/ownerid, then run."""
    return _authed(handler, body=True)


def authed_stream(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Like authed, but leaves the body unread for the handler to stream (uploads)."""
    return _authed(handler, body=False)


def _authed(handler: Handler, body: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.Response:
        params = await read_params(request) if body else dict(request.query)
        caller = await authenticate(request, params)
        check_acting_user(params, caller)
        return await handler(request, params, caller)

    return wrapper


def public_user(row: dict[str, Any], online: bool) -> dict[str, Any]:
    return {
        "id": row["id"],
        "nickname": row["nickname"],
        "avatar": row["avatar"],
        "sex": row["sex"],
        "memo": row["memo"],
        "online": online,
    }


def own_user(row: dict[str, Any], online: bool, token: str | None = None) -> dict[str, Any]:
    data = {**public_user(row, online), "mobile": row["mobile"], "createat": row["createat"]}
    if token is not None:
        data["token"] = token
    return data


def _profile_fields(params: Params, *, creating: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, limit in (("nickname", 64), ("memo", 255), ("avatar", 255)):
        if creating or params.get(name) is not None:
            fields[name] = get_str(params, name, max_len=limit)
    if "avatar" in fields:
        media_url(fields["avatar"], "avatar")
    if creating or params.get("sex") not in (None, ""):
        fields["sex"] = get_str(params, "sex", max_len=1, default="U", pattern="[MWU]")
    return fields


async def _start_session(request: web.Request, user: dict[str, Any]) -> web.Response:
    settings = request.app[SETTINGS]
    token = security.new_token()
    ttl_ms = settings.token_ttl_days * 86_400_000
    await store.create_session(request.app[ENGINE], user["id"], security.token_hash(token), ttl_ms)
    response = ok(own_user(user, request.app[NODE].hub.online(user["id"]), token))
    response.set_cookie(
        COOKIE,
        token,
        max_age=settings.token_ttl_days * 86_400,
        httponly=True,
        samesite="Strict",
        path="/",
    )
    return response


# ---- accounts ------------------------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    params = await read_params(request)
    mobile = get_str(params, "mobile", min_len=5, max_len=20, required=True, pattern=r"\d+")
    passwd = get_str(params, "passwd", min_len=6, max_len=72, required=True)
    fields = _profile_fields(params, creating=True)
    fields["nickname"] = fields["nickname"] or mobile[-4:]
    fields["passwd"] = await request.app[PASSWORDS].hash(passwd)
    user = await store.create_user(request.app[ENGINE], {"mobile": mobile, **fields})
    log.info("registered user=%s", user["id"])
    return await _start_session(request, user)


def _client_address(request: web.Request) -> str:
    """The peer address; behind an nginx on this host, the X-Real-IP it sets."""
    remote = request.remote or ""
    real = request.headers.get("X-Real-IP")
    try:
        if real and ip_address(remote).is_loopback:
            return real
    except ValueError:
        pass
    return remote


async def login(request: web.Request) -> web.Response:
    params = await read_params(request)
    mobile = get_str(params, "mobile", max_len=20, required=True)
    passwd = get_str(params, "passwd", max_len=72, required=True)
    by_mobile, by_addr = request.app[LOGIN_FAILS_MOBILE], request.app[LOGIN_FAILS_ADDR]
    addr = _client_address(request)
    if by_mobile.blocked(mobile) or by_addr.blocked(addr):
        raise RateLimited("too many failed logins; wait a minute and try again")
    user = await store.user_by_mobile(request.app[ENGINE], mobile)
    stored = user["passwd"] if user else None
    if not await request.app[PASSWORDS].verify(stored, passwd) or not user:
        by_mobile.record(mobile)
        by_addr.record(addr)
        log.warning("failed login from %s", addr)
        raise Unauthorized("wrong mobile number or password")
    by_mobile.clear(mobile)
    log.info("login user=%s", user["id"])
    return await _start_session(request, user)


@authed
async def logout(request: web.Request, params: Params, caller: Caller) -> web.Response:
    await store.delete_session(request.app[ENGINE], caller.token_hash)
    request.app[NODE].emit(
        state_packet("session_revoked", userid=caller.user, token_hash=caller.token_hash)
    )
    log.info("logout user=%s", caller.user)
    response = ok()
    response.del_cookie(COOKIE, path="/")
    return response


@authed
async def find(request: web.Request, params: Params, caller: Caller) -> web.Response:
    uid = need_int(params, "id")
    user = await request.app[READS].run(store.user_by_id, uid)
    if user is None:
        raise NotFound("no such user")
    return ok(public_user(user, request.app[NODE].hub.online(uid)))


@authed
async def update(request: web.Request, params: Params, caller: Caller) -> web.Response:
    engine = request.app[ENGINE]
    user = await request.app[READS].run(store.user_by_id, caller.user)
    if user is None:
        raise Unauthorized("this account no longer exists")
    mobile = params.get("mobile")
    if mobile not in (None, "") and str(mobile) != user["mobile"]:
        raise BadRequest("mobile cannot be changed")
    changes = _profile_fields(params, creating=False)
    new_passwd = get_str(params, "passwd", min_len=6, max_len=72)
    if new_passwd:
        old = get_str(params, "oldpasswd", max_len=72, required=True)
        if not await request.app[PASSWORDS].verify(user["passwd"], old):
            raise Forbidden("the current password is wrong")
        changes["passwd"] = await request.app[PASSWORDS].hash(new_passwd)
    await store.update_user(engine, caller.user, changes)
    if new_passwd:
        await _end_other_sessions(request, caller)
    request.app[NODE].emit(state_packet("profile_updated", userid=caller.user))
    user.update(changes)
    return ok(own_user(user, request.app[NODE].hub.online(caller.user)))


async def _end_other_sessions(request: web.Request, caller: Caller) -> None:
    """A new password ends every other session of the user, on every node."""
    others = await store.end_other_sessions(request.app[ENGINE], caller.user, caller.token_hash)
    for digest in others:
        request.app[NODE].emit(
            state_packet("session_revoked", userid=caller.user, token_hash=digest)
        )


# ---- friends -------------------------------------------------------------------------------


@authed
async def addfriend(request: web.Request, params: Params, caller: Caller) -> web.Response:
    dst = need_int(params, "dstid")
    await store.add_friend(request.app[ENGINE], caller.user, dst)
    request.app[NODE].emit(state_packet("friend_added", a=caller.user, b=dst))
    return ok()


@authed
async def delfriend(request: web.Request, params: Params, caller: Caller) -> web.Response:
    dst = need_int(params, "dstid")
    await store.del_friend(request.app[ENGINE], caller.user, dst)
    request.app[NODE].emit(state_packet("friend_removed", a=caller.user, b=dst))
    return ok()


@authed
async def loadfriend(request: web.Request, params: Params, caller: Caller) -> web.Response:
    hub = request.app[NODE].hub
    rows = await request.app[READS].run(store.friends, caller.user)
    return ok_rows([public_user(r, hub.online(r["id"])) for r in sorted(rows, key=_by_id)])


def _by_id(row: dict[str, Any]) -> int:
    return int(row["id"])


# ---- communities ---------------------------------------------------------------------------


@authed
async def createcommunity(request: web.Request, params: Params, caller: Caller) -> web.Response:
    fields = {
        "name": get_str(params, "name", min_len=1, max_len=30, required=True).strip(),
        "icon": media_url(get_str(params, "icon", max_len=255), "icon"),
        "cate": need_int(params, "cate", lo=0, hi=4) if params.get("cate") not in (None, "") else 0,
        "memo": get_str(params, "memo", max_len=255),
    }
    if not fields["name"]:
        raise BadRequest("name must not be blank")
    limit = request.app[SETTINGS].max_communities
    community = await store.create_community(request.app[ENGINE], caller.user, fields, limit)
    request.app[NODE].emit(
        state_packet("community_created", userid=caller.user, dstid=community["id"])
    )
    return ok(community)


@authed
async def loadcommunity(request: web.Request, params: Params, caller: Caller) -> web.Response:
    return ok_rows(await request.app[READS].run(store.load_communities, caller.user))


@authed
async def joincommunity(request: web.Request, params: Params, caller: Caller) -> web.Response:
    cid = need_int(params, "dstid")
    await store.join_community(request.app[ENGINE], caller.user, cid)
    request.app[NODE].emit(state_packet("community_joined", userid=caller.user, dstid=cid))
    return ok()


@authed
async def leavecommunity(request: web.Request, params: Params, caller: Caller) -> web.Response:
    cid = need_int(params, "dstid")
    deleted = await store.leave_community(request.app[ENGINE], caller.user, cid)
    request.app[NODE].emit(
        state_packet("community_left", userid=caller.user, dstid=cid, deleted=deleted)
    )
    return ok()


@authed
async def loadmembers(request: web.Request, params: Params, caller: Caller) -> web.Response:
    hub = request.app[NODE].hub
    cid = need_int(params, "dstid")
    rows = await request.app[READS].run(_members, caller.user, cid)
    return ok_rows([public_user(r, hub.online(r["id"])) for r in rows])


def _members(conn: sa.Connection, uid: int, cid: int) -> list[dict[str, Any]]:
    """A community's members in the order they joined, for one of them; else 404/403."""
    ids = store.member_ids(conn, cid)
    if not ids:
        raise NotFound("no such community")
    if uid not in ids:
        raise Forbidden("only members can see the members")
    order = {member: i for i, member in enumerate(ids)}
    return sorted(store.public_users(conn, ids), key=lambda r: order[r["id"]])


def add_routes(app: web.Application) -> None:
    for path, handler, methods in (
        ("/user/register", register, ("POST",)),
        ("/user/login", login, ("POST",)),
        ("/user/logout", logout, ("POST",)),
        ("/user/find", find, ("GET", "POST")),
        ("/user/update", update, ("POST",)),
        ("/contact/addfriend", addfriend, ("POST",)),
        ("/contact/delfriend", delfriend, ("POST",)),
        ("/contact/loadfriend", loadfriend, ("GET", "POST")),
        ("/contact/createcommunity", createcommunity, ("POST",)),
        ("/contact/loadcommunity", loadcommunity, ("GET", "POST")),
        ("/contact/joincommunity", joincommunity, ("POST",)),
        ("/contact/leavecommunity", leavecommunity, ("POST",)),
        ("/contact/loadmembers", loadmembers, ("GET", "POST")),
    ):
        for method in methods:
            app.router.add_route(method, path, handler)
