"""Node: joins the hub and the bus, so the rest of the code emits packets without knowing either."""

from __future__ import annotations

import logging

from .bus import Bus
from .hub import Hub
from .limits import TokenBucket
from .packets import Packet, state_packet
from .settings import Settings

log = logging.getLogger(__name__)

PRESENCE_CHUNK = 4000  # user ids per datagram


class Node:
    def __init__(self, settings: Settings, hub: Hub, bus: Bus) -> None:
        self.settings = settings
        self.hub = hub
        self.bus = bus
        self._buckets: dict[int, TokenBucket] = {}
        self.stats = {"frames_in": 0, "rejected_frames": 0, "rate_limited": 0}

    def emit(self, packet: Packet) -> None:
        """Deliver to this node's connections now, and to every other node through the bus."""
        self.hub.route(packet)
        self.bus.publish(packet)

    def from_bus(self, packet: Packet) -> None:
        self.hub.route(packet)

    def presence(self, uid: int, online: bool) -> None:
        """A user's first connection on this node opened, or its last one closed."""
        self.emit(state_packet("presence", node=self.settings.node_id, userid=uid, online=online))

    def on_peer(self, node: str, joined: bool) -> None:
        """A peer appeared: tell it who is connected here. A peer went silent: forget its users."""
        if not joined:
            self.hub.drop_node(node)
            return
        users = self.hub.local_users()
        for start in range(0, max(len(users), 1), PRESENCE_CHUNK):
            self.bus.publish(
                state_packet(
                    "presence_sync",
                    node=self.settings.node_id,
                    users=users[start : start + PRESENCE_CHUNK],
                    first=start == 0,
                )
            )

    def may_send(self, uid: int) -> bool:
        """The per-user send rate, shared by all of the user's connections on this node."""
        bucket = self._buckets.get(uid)
        if bucket is None:
            if len(self._buckets) > 50_000:
                self._buckets = {u: b for u, b in self._buckets.items() if self.hub.online(u)}
            bucket = TokenBucket(self.settings.send_rate_per_s, self.settings.send_burst)
            self._buckets[uid] = bucket
        if bucket.take():
            return True
        self.stats["rate_limited"] += 1
        return False
