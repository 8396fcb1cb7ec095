"""App factory: wires settings, store, hub, bus and message writer into one aiohttp app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
from aiohttp import hdrs, web
from sqlalchemy.exc import DBAPIError, OperationalError

from . import api, history, uploads, ws
from .bus import Bus, LocalBus
from .db import make_engine, make_sync_engine
from .errors import LanchatError, NotFound, TooLarge, Unavailable, envelope
from .hub import Hub
from .keys import (
    BUS,
    ENGINE,
    HEALTH,
    HUB,
    LOGIN_FAILS_ADDR,
    LOGIN_FAILS_MOBILE,
    METRICS,
    NODE,
    PASSWORDS,
    READS,
    SETTINGS,
    WRITER,
    WRITES,
)
from .limits import FailureWindow
from .messages import Writer
from .metrics import Metrics
from .node import Node
from .reads import Health, Reads, Writes
from .security import Passwords
from .settings import Settings

log = logging.getLogger(__name__)


def _error_response(exc: LanchatError) -> web.Response:
    return web.json_response(
        envelope(exc), status=exc.status, dumps=lambda v: orjson.dumps(v).decode()
    )


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure leaves as the {code:-1,msg,error} envelope; never a stack trace."""
    try:
        return await handler(request)
    except LanchatError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return _error_response(NotFound("no such path"))
        if exc.status == 413:
            return _error_response(TooLarge("request body too large"))
        error = LanchatError(exc.reason)
        error.status = exc.status
        error.code = "bad_request" if exc.status < 500 else "internal"
        return _error_response(error)
    except (OperationalError, DBAPIError, ConnectionError) as exc:
        log.warning("database unavailable on %s %s: %s", request.method, request.path, exc)
        return _error_response(Unavailable("the database is unavailable; try again shortly"))
    except TimeoutError:  # a database call bounded by store.bounded
        log.warning("database did not answer in time on %s %s", request.method, request.path)
        return _error_response(Unavailable("the database is unavailable; try again shortly"))
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        error = LanchatError("internal server error", "internal")
        error.status = 500
        return _error_response(error)


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    bus = app[BUS]
    data = {
        "node": app[SETTINGS].node_id,
        "db": "ok",
        "bus": bus.name,
        "peers": bus.peers(),
        "connections": app[HUB].connection_count(),
        "counters": bus.stats(),
    }
    try:
        await app[HEALTH].ping()
    except Exception as exc:  # any failure to reach the database is "down"
        log.warning("healthz: database down: %s", exc)
        data["db"] = "down"
        body = {
            "code": -1,
            "msg": "the database is unavailable",
            "error": "unavailable",
            "data": data,
        }
        return web.json_response(body, status=503)
    return web.json_response({"code": 0, "msg": "", "data": data})


def web_root() -> Path:
    """The browser client: inside the installed package, or web/ of a source checkout."""
    packaged = Path(__file__).parent / "web"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "web"


# Vue compiles the page's template in the browser, hence 'unsafe-eval'; nothing inline runs.
CLIENT_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' http: https: data: blob:; media-src 'self' http: https: blob:; "
        "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
}


def _add_client(app: web.Application) -> None:
    root = web_root()

    async def index(request: web.Request) -> web.FileResponse:
        if not (root / "index.html").is_file():
            raise NotFound("the browser client is not installed")
        return web.FileResponse(root / "index.html", headers=CLIENT_HEADERS)

    app.router.add_get("/", index)
    for sub in ("asset", "js", "css"):
        if (root / sub).is_dir():
            app.router.add_static(f"/{sub}/", root / sub, show_index=False, follow_symlinks=False)


def make_bus(settings: Settings) -> Bus:
    if settings.bus == "local":
        return LocalBus()
    if settings.bus == "udp":
        from .udp import UdpBus

        return UdpBus(settings)
    from .redisbus import RedisBus

    return RedisBus(settings)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Name the product, not the versions of Python and aiohttp a node runs (aiohttp's
    default): a scanner on the LAN learns nothing to match against known flaws."""
    response.headers[hdrs.SERVER] = "lanchat"


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=1024 * 1024)
    app.on_response_prepare.append(_server_header)
    app[SETTINGS] = settings
    hub = Hub(settings.node_id)
    bus = make_bus(settings)
    app[HUB] = hub
    app[BUS] = bus
    app[NODE] = Node(settings, hub, bus)
    app[PASSWORDS] = Passwords(settings.password_time_cost, settings.password_memory_kib)
    app[LOGIN_FAILS_MOBILE] = FailureWindow(
        settings.login_fails_per_mobile, settings.login_fail_window_s
    )
    app[LOGIN_FAILS_ADDR] = FailureWindow(
        settings.login_fails_per_addr, settings.login_fail_window_s
    )
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_bus_ctx)
    app.cleanup_ctx.append(ws.keeper)
    app.on_shutdown.append(ws.close_all)
    api.add_routes(app)
    history.add_routes(app)
    uploads.add_routes(app)
    app.router.add_get("/chat", ws.chat)
    app.router.add_get("/healthz", healthz)
    metrics = Metrics(app)
    app[METRICS] = metrics
    app.cleanup_ctx.append(metrics.gc_timing)
    app.router.add_get("/metrics", metrics.handler)
    _add_client(app)
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = make_engine(app[SETTINGS].db)
    app[ENGINE] = engine
    app[READS] = reads = Reads(app[SETTINGS].db)
    app[WRITES] = writes = Writes(app[SETTINGS].db)
    app[HEALTH] = health = Health(app[SETTINGS].db)
    writer = Writer(make_sync_engine(app[SETTINGS].db), app[NODE])
    writer.on_acked = app[METRICS].observe_acks
    writer.on_batch = app[METRICS].commit_times.observe
    app[WRITER] = writer
    writer.start()
    yield
    await writer.close()
    reads.close()
    writes.close()
    health.close()
    await engine.dispose()


async def _bus_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    await app[BUS].start(node.from_bus, node.on_peer)
    yield
    await app[BUS].close()
