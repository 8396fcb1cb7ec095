"""Hub: the node's live connections, their bounded outbound queues, and friend/group sets."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .packets import Packet, Route

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_SLOW = 1013

Loader = Callable[[int], Awaitable[tuple[list[int], list[int]]]]


class Conn:
    """One WebSocket of one user. send() never waits: frames go to a bounded queue, and
    kick() asks the socket's writer (ws.Flusher) to drain it.

    Overflow policy: when the queue holds max_frames frames or max_bytes bytes, the
    connection is closed with 1013 and its queue dropped. Nothing is lost by this: every
    frame in it is a stored message (or a notice) that the client fetches by seq when it
    reconnects. Nobody else ever waits for a slow connection.
    """

    __slots__ = (
        "close_code",
        "close_reason",
        "heard_at",
        "id",
        "kick",
        "max_bytes",
        "max_frames",
        "nbytes",
        "on_close",
        "ping_due",
        "queue",
        "stats",
        "token_hash",
        "user",
    )

    def __init__(
        self,
        cid: str,
        user: int,
        token_hash: str,
        max_frames: int,
        max_bytes: int,
        stats: dict[str, int] | None = None,
    ):
        self.id = cid
        self.stats = stats if stats is not None else {"frames_out": 0, "overflows": 0}
        self.user = user
        self.token_hash = token_hash
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        # A list, not a deque: an empty deque costs 760 bytes, an empty list 56, and most
        # connections are idle with nothing queued.
        self.queue: list[bytes] = []
        self.nbytes = 0
        self.kick: Callable[[], None] = _nothing
        self.ping_due = False
        self.heard_at = asyncio.get_running_loop().time()  # when the client last sent anything
        self.close_code: int | None = None
        self.close_reason = ""
        self.on_close: Callable[[int], None] | None = None

    def send(self, data: bytes) -> None:
        if self.close_code is not None:
            return
        if len(self.queue) >= self.max_frames or self.nbytes + len(data) > self.max_bytes:
            log.warning("conn=%s user=%s outbound queue full, closing 1013", self.id, self.user)
            self.stats["overflows"] += 1
            self.discard()
            self.close(CLOSE_TOO_SLOW, "too slow")
            return
        self.queue.append(data)
        self.nbytes += len(data)
        self.stats["frames_out"] += 1
        self.kick()

    def ping(self) -> None:
        if self.close_code is None:
            self.ping_due = True
            self.kick()

    def take(self, max_bytes: int) -> list[bytes]:
        """The oldest queued frames, as many as fit in max_bytes (at least one)."""
        queue = self.queue
        size = count = 0
        for data in queue:
            if count and size + len(data) > max_bytes:
                break
            size += len(data)
            count += 1
        frames = queue[:count]
        del queue[:count]
        self.nbytes -= size
        return frames

    def release(self) -> None:
        """The connection has ended: let go of its writer. The writer and the close hook
        refer back to this connection, and through them the socket, the request and about 40
        more objects of aiohttp's formed a cycle: each closed connection stayed in memory until
        a garbage collection found it, and a reconnect storm left hundreds of thousands of
        objects for the collector. Without the cycle they are freed as the handler returns."""
        self.on_close = None
        self.kick = _nothing

    def discard(self) -> None:
        """Drop everything queued (the client fetches stored messages by seq)."""
        self.queue.clear()
        self.nbytes = 0

    def close(self, code: int, reason: str) -> None:
        """Ask the writer task to close the socket with this code."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            if self.on_close is not None:
                self.on_close(code)
            self.kick()


def _nothing() -> None:
    pass


def event_frame(event: str, dstid: int, **extra: Any) -> bytes:
    return orjson.dumps({"cmd": 30, "event": event, "dstid": dstid, **extra})


class Hub:
    """Live connections by user, each local user's friends and communities, and each
    community's locally connected members (the fan-out index)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.conns: dict[int, set[Conn]] = {}
        self.friends: dict[int, set[int]] = {}
        self.groups: dict[int, set[int]] = {}
        self.members: dict[int, set[int]] = {}
        self.remote: dict[int, set[str]] = {}  # user -> other nodes it is connected to
        self._loading: dict[int, asyncio.Future[None]] = {}
        self._pending: dict[int, list[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.stats = {"frames_out": 0, "overflows": 0, "connects": 0}

    # ---- connections ---------------------------------------------------------------------

    def new_conn(self, user: int, token_hash: str, max_frames: int, max_bytes: int) -> Conn:
        self.stats["connects"] += 1
        cid = f"{self.node_id}/{next(self._ids)}"
        return Conn(cid, user, token_hash, max_frames, max_bytes, self.stats)

    async def attach(self, conn: Conn, loader: Loader) -> None:
        """Register a connection; the first one of a user loads its friend and group sets."""
        uid = conn.user
        self.conns.setdefault(uid, set()).add(conn)
        if uid in self.friends:
            return
        waiting = self._loading.get(uid)
        if waiting is not None:
            await asyncio.shield(waiting)
            if uid not in self.friends:
                raise RuntimeError("loading the user's contacts failed")
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loading[uid] = done
        self._pending[uid] = []
        try:
            friends, groups = await loader(uid)
            pending = self._pending.pop(uid)
            if uid in self.conns:
                self.friends[uid] = set(friends)
                self.groups[uid] = set(groups)
                for cid in groups:
                    self.members.setdefault(cid, set()).add(uid)
                for change in pending:
                    self._apply_sets(change)
        finally:
            del self._loading[uid]
            self._pending.pop(uid, None)
            done.set_result(None)

    def detach(self, conn: Conn) -> None:
        uid = conn.user
        mine = self.conns.get(uid)
        if mine is None:
            return
        mine.discard(conn)
        if mine:
            return
        del self.conns[uid]
        self.friends.pop(uid, None)
        for cid in self.groups.pop(uid, ()):
            local = self.members.get(cid)
            if local is not None:
                local.discard(uid)
                if not local:
                    del self.members[cid]

    def online(self, uid: int) -> bool:
        return uid in self.conns or uid in self.remote

    def local_users(self) -> list[int]:
        return list(self.conns)

    def _set_remote(self, node: str, uid: int, online: bool) -> None:
        nodes = self.remote.get(uid)
        if online:
            self.remote.setdefault(uid, set()).add(node)
        elif nodes is not None:
            nodes.discard(node)
            if not nodes:
                del self.remote[uid]

    def drop_node(self, node: str) -> None:
        """A node went silent: its users are no longer online through it."""
        for uid in [u for u, nodes in self.remote.items() if node in nodes]:
            self._set_remote(node, uid, False)

    def connection_count(self) -> int:
        return sum(len(c) for c in self.conns.values())

    def all_conns(self) -> list[Conn]:
        return [c for conns in self.conns.values() for c in conns]

    # ---- authorisation from the sets -----------------------------------------------------

    def is_friend(self, uid: int, other: int) -> bool:
        return other in self.friends.get(uid, ())

    def is_member(self, uid: int, cid: int) -> bool:
        return cid in self.groups.get(uid, ())

    # ---- delivery ------------------------------------------------------------------------

    def route(self, packet: Packet) -> None:
        """Deliver to local connections only; never awaits a client."""
        if packet.route is Route.USERS:
            for uid in packet.targets:
                self.send_user(uid, packet.payload, packet.exclude)
        elif packet.route is Route.GROUP:
            # The members' connections listed first, in one pass: a send can close a
            # connection, and the sets must not change under the loop that walks them.
            conns, exclude, payload = self.conns, packet.exclude, packet.payload
            local = self.members.get(packet.targets[0], ())
            for conn in [c for uid in local for c in conns.get(uid, ()) if c.id != exclude]:
                conn.send(payload)
        elif packet.route is Route.STATE:
            self.apply(orjson.loads(packet.payload))

    def send_user(self, uid: int, data: bytes, exclude: str = "") -> None:
        for conn in tuple(self.conns.get(uid, ())):
            if conn.id != exclude:
                conn.send(data)

    # ---- state changes -------------------------------------------------------------------

    def apply(self, change: dict[str, Any]) -> None:
        """Update the sets and tell the local users concerned (cmd 30), or end sessions."""
        kind = change.get("type")
        if kind == "presence":
            if change["node"] != self.node_id:
                self._set_remote(change["node"], change["userid"], change["online"])
            return
        if kind == "presence_sync":
            if change["node"] != self.node_id:
                if change.get("first"):
                    self.drop_node(change["node"])
                for uid in change["users"]:
                    self._set_remote(change["node"], uid, True)
            return
        if kind == "session_revoked":
            for conn in tuple(self.conns.get(change["userid"], ())):
                if conn.token_hash == change["token_hash"]:
                    conn.close(CLOSE_POLICY, "session ended")
            return
        self._apply_sets(change)
        if kind in ("friend_added", "friend_removed"):
            a, b = change["a"], change["b"]
            self.send_user(a, event_frame(kind, b))
            self.send_user(b, event_frame(kind, a))
        elif kind in ("community_created", "community_joined", "community_left"):
            uid, cid = change["userid"], change["dstid"]
            frame = event_frame(kind, cid, userid=uid)
            self.send_user(uid, frame)
            for member in tuple(self.members.get(cid, ())):
                if member != uid:
                    self.send_user(member, frame)
        elif kind == "profile_updated":
            uid = change["userid"]
            frame = event_frame(kind, uid, userid=uid)
            self.send_user(uid, frame)
            for other, friends in tuple(self.friends.items()):
                if uid in friends:
                    self.send_user(other, frame)

    def _apply_sets(self, change: dict[str, Any]) -> None:
        kind = change.get("type")
        if kind in ("friend_added", "friend_removed"):
            pairs = ((change["a"], change["b"]), (change["b"], change["a"]))
            for uid, other in pairs:
                if self._defer(uid, change):
                    continue
                friends = self.friends.get(uid)
                if friends is not None:
                    (friends.add if kind == "friend_added" else friends.discard)(other)
        elif kind in ("community_created", "community_joined", "community_left"):
            uid, cid = change["userid"], change["dstid"]
            if change.get("deleted"):
                self.members.pop(cid, None)
                for groups in self.groups.values():
                    groups.discard(cid)
            if self._defer(uid, change):
                return
            mine = self.groups.get(uid)
            if mine is None:
                return
            if kind == "community_left":
                mine.discard(cid)
                local = self.members.get(cid)
                if local is not None:
                    local.discard(uid)
                    if not local:
                        del self.members[cid]
            else:
                mine.add(cid)
                self.members.setdefault(cid, set()).add(uid)

    def _defer(self, uid: int, change: dict[str, Any]) -> bool:
        """A user whose sets are being loaded gets the change applied after the load."""
        pending = self._pending.get(uid)
        if pending is None:
            return False
        pending.append(change)
        return True
