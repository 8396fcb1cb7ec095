"""Bus interface: how a node hands packets to the other nodes of its cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .packets import Packet

Deliver = Callable[[Packet], None]
PeerEvent = Callable[[str, bool], None]  # (node id, joined) when a peer appears or goes silent


class Bus(Protocol):
    """A node delivers its own packets locally and publishes them here for the others;
    a bus hands every packet from another node to `deliver` exactly once."""

    name: str

    async def start(self, deliver: Deliver, on_peer: PeerEvent | None = None) -> None: ...

    def publish(self, packet: Packet) -> None: ...

    def peers(self) -> list[dict[str, Any]]: ...

    def stats(self) -> dict[str, int]: ...

    async def close(self) -> None: ...


class LocalBus:
    """One node alone: nothing to send, nobody to hear."""

    name = "local"

    async def start(self, deliver: Deliver, on_peer: PeerEvent | None = None) -> None:
        return None

    def publish(self, packet: Packet) -> None:
        return None

    def peers(self) -> list[dict[str, Any]]:
        return []

    def stats(self) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        return None
