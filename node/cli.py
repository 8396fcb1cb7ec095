"""Command line: `lanchat serve` runs a node, `lanchat db upgrade` migrates the schema."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from . import settings as settings_mod
from .db import make_engine, safe_url, upgrade
from .settings import Settings, SettingsError

log = logging.getLogger("node")

EXIT_USAGE = 2


class StartupError(Exception):
    """Start-up cannot go on; the message is the last line the operator sees."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lanchat", description="LAN instant-messaging server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one node")
    settings_mod.add_arguments(serve)
    db = commands.add_parser("db", help="database tasks")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    up = db_commands.add_parser("upgrade", help="create or upgrade the schema, then exit")
    settings_mod.add_arguments(up, ["db", "log_level"])
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiohttp's access log: one line per request, with the path but never the query string
    # (it carries /chat's token) nor any header.
    logging.getLogger("aiohttp.access").setLevel(max(logging.INFO, logging.getLogger().level))
    # Driver and migration chatter carries SQL parameters (hashes among them): never below INFO.
    for noisy in ("aiosqlite", "aiomysql", "sqlalchemy", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


GC_YOUNG_OBJECTS = 10_000
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tf'


async def _migrate(settings: Settings) -> None:
    engine = make_engine(settings.db)
    try:
        await upgrade(engine)
    except Exception as exc:
        raise StartupError(
            f"cannot use the database {safe_url(settings.db)}: {_reason(exc)}"
        ) from None
    finally:
        await engine.dispose()


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


FEW_FILES = 4096  # below this many open files, say how few connections the node can hold


def _raise_open_files_limit() -> None:
    """Every connection is an open file. A login shell's soft limit (often 1,024) would
    refuse connections long before the node is busy, so the node raises it to the hard
    limit, as nginx and Go programs do (the systemd unit sets both with LimitNOFILE=)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, wanted, exc)
    if soft < FEW_FILES:
        log.warning(
            "the open files limit is %d: the node can hold fewer than that many connections; "
            "raise it (ulimit -n, or LimitNOFILE= in the systemd unit)",
            soft,
        )
    else:
        log.info("open files limit: %d", soft)


async def _serve(settings: Settings) -> None:
    from .app import create_app

    _raise_open_files_limit()
    await _migrate(settings)
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=QuietAccessLogger,
        access_log_format=ACCESS_LOG_FORMAT,
        shutdown_timeout=settings.drain_timeout_s,
    )
    try:
        await runner.setup()
    except Exception as exc:
        raise StartupError(f"cannot start: {_reason(exc)}") from None
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
        log.info(
            "lanchat node %s serving on http://%s:%d (bus %s)",
            settings.node_id,
            settings.host,
            settings.port,
            settings.bus
            if settings.bus != "udp"
            else f"udp {settings.udp_broadcast}:{settings.udp_port}",
        )
        # What is loaded by now (modules, classes, the app: about 100,000 objects) lives as
        # long as the process. Out of the collector's sight, a full collection scans only what
        # serving creates: with them in it, each one held the GIL for 40-160 ms under load.
        gc.collect()
        gc.freeze()
        # A young collection every GC_YOUNG_OBJECTS new objects instead of CPython's 700: the
        # full collections, which scan every open connection, come as often in proportion,
        # and a storm of reconnects made dozens of them (10,000 reconnects: 3.5-3.6 s of
        # pauses against 1.0-1.2 s, and 742 against 973-1,301 reconnects/s).
        gc.set_threshold(GC_YOUNG_OBJECTS, *gc.get_threshold()[1:])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down: draining connections")
    finally:
        await runner.cleanup()
    log.info("stopped")


class QuietAccessLogger(web.AccessLogger):
    """The access log without query strings: /chat carries the token there."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %s %.6f',
            request.remote,
            request.method,
            request.path,
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k in settings_mod.OPTIONS}
    try:
        settings = settings_mod.build(flags, os.environ)
    except SettingsError as exc:
        print(f"lanchat: {exc}", file=sys.stderr)  # noqa: T201 - the one line the operator reads
        return EXIT_USAGE
    _configure_logging(settings.log_level)
    import uvloop

    try:
        uvloop.run(_migrate(settings) if args.command == "db" else _serve(settings))
    except StartupError as exc:
        print(f"lanchat: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    return 0
