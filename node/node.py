"""Node: joins the hub and the bus, so the rest of the code emits packets without knowing either."""

from __future__ import annotations

import logging

from .bus import Bus
from .hub import Hub
from .limits import TokenBucket
from .packets import Packet
from .settings import Settings

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings, hub: Hub, bus: Bus) -> None:
        self.settings = settings
        self.hub = hub
        self.bus = bus
        self._buckets: dict[int, TokenBucket] = {}

    def emit(self, packet: Packet) -> None:
        """Deliver to this node's connections now, and to every other node through the bus."""
        self.hub.route(packet)
        self.bus.publish(packet)

    def from_bus(self, packet: Packet) -> None:
        self.hub.route(packet)

    def may_send(self, uid: int) -> bool:
        """The per-user send rate, shared by all of the user's connections on this node."""
        bucket = self._buckets.get(uid)
        if bucket is None:
            if len(self._buckets) > 50_000:
                self._buckets = {u: b for u, b in self._buckets.items() if self.hub.online(u)}
            bucket = TokenBucket(self.settings.send_rate_per_s, self.settings.send_burst)
            self._buckets[uid] = bucket
        return bucket.take()
