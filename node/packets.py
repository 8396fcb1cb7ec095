"""Packets: what a node hands to its hub and to the bus. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson


class Route(IntEnum):
    """How a packet finds its recipients; nodes route on this without reading the payload."""

    USERS = 1  # payload goes to every connection of each user in targets
    GROUP = 2  # payload goes to every local member of community targets[0]
    STATE = 3  # payload is a state change every hub applies (friendship, membership, ...)


@dataclass(frozen=True, slots=True)
class Packet:
    route: Route
    targets: tuple[int, ...]
    payload: bytes  # encoded once; the same bytes go to every socket and onto the bus
    exclude: str = ""  # connection id that must not get it (the sender's own socket)


def state_packet(change: str, **fields: Any) -> Packet:
    """A state change, e.g. state_packet("friend_added", a=1, b=2)."""
    return Packet(Route.STATE, (), orjson.dumps({"type": change, **fields}))


def users_packet(targets: tuple[int, ...], frame: dict[str, Any], exclude: str = "") -> Packet:
    return Packet(Route.USERS, targets, orjson.dumps(frame), exclude)
