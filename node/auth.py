"""Who is calling: bearer token, token field or session cookie, and the Origin rule."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from .errors import Forbidden, Unauthorized
from .keys import READS, SETTINGS
from .params import Params
from .security import token_hash

COOKIE = "lanchat_session"


@dataclass(frozen=True, slots=True)
class Caller:
    user: int
    token_hash: str
    by_cookie: bool


def request_token(request: web.Request, params: Params) -> tuple[str | None, bool]:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None, False
    field = params.get("token")
    if isinstance(field, str) and field:
        return field, False
    cookie = request.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


def origin_allowed(request: web.Request) -> bool:
    """No Origin (a non-browser client), the node's own host, or one of --allowed-origins."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in request.app[SETTINGS].allowed_origins:
        return True
    host = request.headers.get("X-Forwarded-Host") or request.headers.get("Host") or ""
    try:
        return bool(host) and urlsplit(origin).netloc.lower() == host.split(",")[0].strip().lower()
    except ValueError:
        return False


async def authenticate(request: web.Request, params: Params) -> Caller:
    """The caller's session, or 401; a cookie from a foreign page is refused (403)."""
    token, by_cookie = request_token(request, params)
    if not token or len(token) > 256:
        raise Unauthorized("please log in")
    digest = token_hash(token)
    user = await request.app[READS].session_user(digest)
    if user is None:
        raise Unauthorized("your session has expired or was ended; please log in again")
    if by_cookie and not origin_allowed(request):
        raise Forbidden("request from a foreign origin refused")
    return Caller(user, digest, by_cookie)


def check_acting_user(params: Params, caller: Caller) -> None:
    """A seed client names itself in userid/ownerid; it must be the token's user."""
    for name in ("userid", "ownerid"):
        value = params.get(name)
        if value is None or value == "":
            continue
        if str(value).strip() != str(caller.user):
            raise Forbidden(f"{name} does not match the logged-in user")
