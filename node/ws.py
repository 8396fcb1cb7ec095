"""WebSocket glue: /chat authentication, each connection's recvproc and its writer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractStreamWriter
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from . import dispatch, frames, store
from .auth import origin_allowed, request_token
from .errors import Forbidden, RateLimited, Unauthorized
from .hub import CLOSE_GOING_AWAY, CLOSE_TOO_SLOW, Conn
from .keys import ENGINE, HUB, NODE, READS, SETTINGS, WRITER
from .messages import NOT_STORED, Pending, Writer
from .node import Node
from .security import token_hash

log = logging.getLogger(__name__)

PING_INTERVAL_S = 20.0
# Connections the keeper pings (or closes) in one turn of the event loop, and the pause
# before the next ones: a round of 10,000 takes a second. All of them in one turn held up
# every message on the node for 0.27-0.34 s, every round of pings, and then their pongs
# came back at once.
KEEPER_SLICE = 100
KEEPER_PAUSE_S = 0.01
CLOSE_TIMEOUT_S = 5.0
CLOSE_UNSUPPORTED = 1003
SLOW_GRACE_S = 30.0


async def chat(request: web.Request) -> web.StreamResponse:
    """Upgrade an authenticated request to a chat connection and serve it until it ends."""
    app = request.app
    settings = app[SETTINGS]
    token, _ = request_token(request, request.query)
    if not token or len(token) > 256:
        raise Unauthorized("a token is required")
    digest = token_hash(token)
    user = await app[READS].session_user(digest)
    if user is None or request.query.get("id", "").strip() != str(user):
        raise Unauthorized("the token is not valid for this user")
    if not origin_allowed(request):
        raise Forbidden("connections from this origin are not allowed")
    if len(app[HUB].conns.get(user, ())) >= settings.max_conns_per_user:
        raise RateLimited(f"at most {settings.max_conns_per_user} connections per user")

    # aiohttp refuses a frame whose length reaches max_msg_size; the limit itself is allowed.
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_frame_bytes + 1,
        autoping=False,  # recvproc answers pings itself and counts pongs as signs of life
        compress=False,  # chat frames are small; deflating each one costs more than it saves
        timeout=CLOSE_TIMEOUT_S,
    )
    hub = app[HUB]
    conn = hub.new_conn(user, digest, settings.queue_max_frames, settings.queue_max_bytes)
    # The hub knows the connection (and its friends and groups) before the client sees the
    # upgrade: anything sent to the user from then on is queued for it, nothing slips by.
    try:
        await hub.attach(conn, app[READS].contact_ids)
    except BaseException:
        hub.detach(conn)
        raise
    log.info("connect conn=%s user=%s", conn.id, user)
    flusher = Flusher(ws, conn)
    closer: list[asyncio.Task[None]] = []

    def on_close(code: int) -> None:
        if code == CLOSE_TOO_SLOW:
            closer.append(asyncio.create_task(_close_slow(request, ws, flusher.stop())))

    conn.on_close = on_close
    try:
        stream = await ws.prepare(request)
        assert request.transport is not None
        flusher.start(stream, request.transport)
        if len(hub.conns.get(user, ())) == 1:
            app[NODE].presence(user, True)
        await recvproc(request, ws, conn)
    finally:
        try:
            hub.detach(conn)
            if not hub.conns.get(user):
                app[NODE].presence(user, False)
            for task in closer:
                await task
            conn.close(1000, "")  # what is queued goes out first; a no-op if already closing
            if (writing := flusher.task) is not None:
                try:
                    await asyncio.wait_for(writing, CLOSE_TIMEOUT_S)
                except (TimeoutError, asyncio.CancelledError):
                    pass
            log.info("disconnect conn=%s user=%s code=%s", conn.id, user, ws.close_code)
        finally:
            conn.release()
    return ws


async def recvproc(request: web.Request, ws: web.WebSocketResponse, conn: Conn) -> None:
    """Read frames until the socket closes; each frame is answered or handed to the writer."""
    app = request.app
    node, writer = app[NODE], app[WRITER]
    clock = asyncio.get_running_loop().time
    while True:
        msg = await ws.receive()  # no timer per frame: the keeper finds idle connections
        conn.heard_at = clock()
        if msg.type is WSMsgType.TEXT:
            refused = _on_text(msg.data, conn, node, writer)
            if refused is not None:  # later frames of this connection wait: order is kept
                await _confirm(app[ENGINE], *refused, conn, writer)
        elif msg.type is WSMsgType.PING:
            await ws.pong(msg.data)
        elif msg.type is WSMsgType.PONG:
            pass
        elif msg.type is WSMsgType.BINARY:
            conn.close(CLOSE_UNSUPPORTED, "binary frames are not supported")
            return
        else:  # CLOSE, CLOSING, CLOSED or ERROR (too big, bad UTF-8): aiohttp has closed
            return


def _on_text(
    text: str, conn: Conn, node: Node, writer: Writer
) -> tuple[dispatch.Chat, dispatch.FrameError] | None:
    """Answer or submit the frame; a message to someone this node does not know as the
    sender's friend (or to a community it does not know the sender in) is returned instead,
    with the refusal, for the database to decide."""
    node.stats["frames_in"] += 1
    try:
        frame = dispatch.parse(text, conn.user)
        if isinstance(frame, dispatch.Heartbeat):
            conn.send(dispatch.HEARTBEAT_REPLY)
            return None
        if not node.may_send(conn.user):
            raise dispatch.FrameError(
                "rate_limited", "too many messages; slow down", frame.frame_id
            )
        hub = node.hub
        try:
            dispatch.check_allowed(
                frame, hub.friends.get(conn.user, ()), hub.groups.get(conn.user, ())
            )
        except dispatch.FrameError as refusal:
            return frame, refusal
    except dispatch.FrameError as exc:
        _refuse(conn, node, exc)
        return None
    writer.submit(Pending(frame, conn, time.monotonic()))
    return None


async def _confirm(
    engine: AsyncEngine,
    chat: dispatch.Chat,
    refusal: dispatch.FrameError,
    conn: Conn,
    writer: Writer,
) -> None:
    """The node's sets say no, but a friendship or membership made through another node
    reaches this one over the bus a little later: the database has the last word. The sets
    are left to the bus (changing them here could undo a removal that overtook this read)."""
    received = time.monotonic()
    node = writer.node
    try:
        if chat.cmd == dispatch.CMD_SINGLE:
            allowed = await store.are_friends(engine, conn.user, chat.dstid)
        else:
            allowed = await store.is_member(engine, conn.user, chat.dstid)
    except (OSError, DBAPIError) as exc:
        log.warning("conn=%s checking who may receive a message failed: %s", conn.id, exc)
        _refuse(conn, node, dispatch.FrameError("unavailable", NOT_STORED, chat.frame_id))
        return
    if allowed:
        writer.submit(Pending(chat, conn, received))
    else:
        _refuse(conn, node, refusal)


def _refuse(conn: Conn, node: Node, exc: dispatch.FrameError) -> None:
    log.debug("conn=%s rejected frame: %s", conn.id, exc.code)
    node.stats["rejected_frames"] += 1
    conn.send(dispatch.error_frame(exc.code, exc.msg, exc.frame_id))


WRITE_MAX_BYTES = 64 * 1024  # frames joined into one write at most


class Flusher:
    """The connection's only writer; an idle connection costs it no task and no timer (the
    node's keeper asks each connection for a ping every PING_INTERVAL_S).

    Frames queued during one turn of the event loop go out at the end of it in one write to
    the transport (a community's burst of messages reaches each member in one system call,
    not one per message), and so does a ping. That needs no task while the transport has
    room; a close, or a client reading too slowly to keep up, hands over to a task that also
    waits for the transport to drain. Every frame is written whole, so the pongs and the
    close that aiohttp's own writer sends fall between frames.
    """

    __slots__ = ("_high", "_loop", "_on", "_scheduled", "conn", "stream", "task", "transport", "ws")

    def __init__(self, ws: web.WebSocketResponse, conn: Conn) -> None:
        self.ws = ws
        self.conn = conn
        # Kept: asyncio.get_running_loop() asks the kernel for the process id on every call.
        self._loop = asyncio.get_running_loop()
        self.task: asyncio.Task[None] | None = None
        self.stream: AbstractStreamWriter | None = None
        self.transport: asyncio.Transport | None = None
        self._on = False
        self._scheduled = False
        self._high = 0

    def start(self, stream: AbstractStreamWriter, transport: asyncio.Transport) -> None:
        """The upgrade is done: write what was queued meanwhile and whatever comes later."""
        self.stream, self.transport = stream, transport
        self._high = transport.get_write_buffer_limits()[1]
        self._on = True
        self.conn.kick = self.kick
        self.kick()

    def stop(self) -> asyncio.Task[None] | None:
        """Write nothing more; the running task (perhaps stuck in a write), for the caller."""
        self._on = False
        return self.task

    def kick(self) -> None:
        if self.task is not None or not self._on:
            return  # a running task takes what was queued
        if self.conn.close_code is not None:
            self.task = self._loop.create_task(self._flush())
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        """End of the loop turn: write what was queued, or hand over to the task."""
        self._scheduled = False
        if self.task is not None or not self._on:
            return
        conn, transport = self.conn, self.transport
        assert transport is not None
        try:
            if (
                conn.close_code is None
                and not self.ws.closed
                and not transport.is_closing()
                and transport.get_write_buffer_size() < self._high
            ):
                if conn.queue:
                    transport.write(frames.text_frames(conn.take(WRITE_MAX_BYTES)))
                if conn.ping_due:  # a task per ping cost the keeper 30 µs a connection
                    conn.ping_due = False
                    transport.write(frames.PING)
                if not conn.queue:
                    return
        except Exception:
            self._failed()
            return
        self.task = self._loop.create_task(self._flush())

    def _failed(self) -> None:
        conn = self.conn
        log.exception("conn=%s user=%s writing failed, dropping the connection", conn.id, conn.user)
        conn.discard()
        if self.transport is not None:
            self.transport.abort()  # recvproc sees the socket end and cleans up

    async def _flush(self) -> None:
        ws, conn, stream, transport = self.ws, self.conn, self.stream, self.transport
        assert stream is not None and transport is not None  # start() came first
        try:
            while not ws.closed:
                if conn.ping_due:
                    conn.ping_due = False
                    await ws.ping()
                elif conn.queue:
                    if transport.is_closing():
                        raise ConnectionResetError("the transport is closing")
                    if transport.get_write_buffer_size() > self._high:
                        await stream.drain()  # paused: nothing more into its buffer until then
                        continue
                    transport.write(frames.text_frames(conn.take(WRITE_MAX_BYTES)))
                elif conn.close_code is not None:
                    await ws.close(code=conn.close_code, message=conn.close_reason.encode())
                else:
                    return
        except ConnectionError:  # the peer went away mid-write; recvproc sees the close
            conn.discard()
        except Exception:
            self._failed()
        finally:
            self.task = None


async def keeper(app: web.Application) -> AsyncIterator[None]:
    """One timer for the whole node instead of one per connection (or per frame): it pings
    every connection every PING_INTERVAL_S, so proxies keep quiet sockets open and dead peers
    are found out, and closes with 1000 those that sent nothing, not even a pong, for
    idle_timeout_s (give or take a quarter of it)."""
    idle = app[SETTINGS].idle_timeout_s
    tick = min(PING_INTERVAL_S, idle / 4)
    ping_every = max(1, round(PING_INTERVAL_S / tick))
    clock = asyncio.get_running_loop().time

    async def run() -> None:
        for n in itertools.count(1):
            await asyncio.sleep(tick)
            now = clock()
            for i, conn in enumerate(app[HUB].all_conns(), 1):
                if now - conn.heard_at >= idle:
                    log.info("conn=%s idle for %.0fs, closing", conn.id, now - conn.heard_at)
                    conn.close(1000, "idle")
                elif n % ping_every == 0:
                    conn.ping()
                if i % KEEPER_SLICE == 0:
                    await asyncio.sleep(KEEPER_PAUSE_S)  # messages, and the pongs, go first

    task = asyncio.create_task(run(), name="keeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_slow(
    request: web.Request, ws: web.WebSocketResponse, writing: asyncio.Task[None] | None
) -> None:
    """A client too slow to read blocks its writer in a write: stop that task, queue the
    1013 close frame behind what is already buffered (no waiting for it to drain), and cut the
    TCP connection off if the peer still has not taken it after a grace period."""
    if writing is not None:
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
    transport = request.transport
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            ws.close(code=CLOSE_TOO_SLOW, message=b"too slow", drain=False), CLOSE_TIMEOUT_S * 2
        )
    if transport is not None:
        asyncio.get_running_loop().call_later(SLOW_GRACE_S, transport.abort)


async def close_all(app: web.Application) -> None:
    """On shutdown: every connection flushes its queue and closes with 1001."""
    for conn in app[HUB].all_conns():
        conn.close(CLOSE_GOING_AWAY, "server shutting down")
