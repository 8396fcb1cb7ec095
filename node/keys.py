"""Typed application keys: where the app factory puts each shared object."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from .settings import Settings

if TYPE_CHECKING:
    from .bus import Bus
    from .hub import Hub
    from .limits import FailureWindow
    from .messages import Writer
    from .metrics import Metrics
    from .node import Node
    from .reads import Health, Reads, Writes
    from .security import Passwords

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
HUB: web.AppKey[Hub] = web.AppKey("hub")
BUS: web.AppKey[Bus] = web.AppKey("bus")
NODE: web.AppKey[Node] = web.AppKey("node")
WRITER: web.AppKey[Writer] = web.AppKey("writer")
READS: web.AppKey[Reads] = web.AppKey("reads")
WRITES: web.AppKey[Writes] = web.AppKey("writes")
HEALTH: web.AppKey[Health] = web.AppKey("health")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
PASSWORDS: web.AppKey[Passwords] = web.AppKey("passwords")
LOGIN_FAILS_MOBILE: web.AppKey[FailureWindow] = web.AppKey("login_fails_mobile")
LOGIN_FAILS_ADDR: web.AppKey[FailureWindow] = web.AppKey("login_fails_addr")
