"""Bus wire format: versioned binary datagrams with an HMAC-SHA256 trailer. Pure logic.

    magic "LC" | version u8 | kind u8 | boot u64 | seq u64 | node id (u8 length + bytes)
    | body | HMAC-SHA256(secret, everything before) (32 bytes)

Bodies by kind:
    DATA       count u16 | count x (length u32 | packet)
               packet: route u8 | exclude (u8 length + bytes) | n u16 | n x target i64 | payload
    HEARTBEAT  last seq u64 (the newest DATA seq this boot sent, 0 for none)
    NACK       boot u64 of the peer asked | peer node id (u8 length + bytes) | n u16 | n x seq u64

One DATA datagram carries every packet the node published since its last one (up to
MAX_DATAGRAM bytes), so a burst costs one seal, one send and one check per receiver. A node
answers a NACK by broadcasting the asked DATA datagrams again, byte for byte; receivers that
already have them drop them as repeats. Receivers route each packet on its header alone: the
payload stays the bytes the first node encoded.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from .packets import Packet, Route

MAGIC = b"LC"
VERSION = 2  # 2: DATA carries several packets
MAC_BYTES = 32
MAX_DATAGRAM = 65_000

_HEAD = struct.Struct("!2sBBQQ")  # magic, version, kind, boot, seq


class Kind(IntEnum):
    DATA = 1
    HEARTBEAT = 2
    NACK = 3


class WireError(ValueError):
    """A datagram that is not ours, not authentic, or not well formed."""


@dataclass(frozen=True, slots=True)
class Datagram:
    kind: Kind
    node: str
    boot: int
    seq: int
    body: bytes


def _short(data: bytes) -> bytes:
    if len(data) > 255:
        raise WireError("field longer than 255 bytes")
    return bytes([len(data)]) + data


def seal(secret: bytes, kind: Kind, node: str, boot: int, seq: int, body: bytes) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, kind, boot, seq) + _short(node.encode())
    unsigned = head + body
    return unsigned + hmac.digest(secret, unsigned, "sha256")


def open_datagram(secret: bytes, data: bytes) -> Datagram:
    """Check the HMAC first, then parse the header."""
    if len(data) < _HEAD.size + 1 + MAC_BYTES:
        raise WireError("too short")
    unsigned, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.digest(secret, unsigned, "sha256")):
        raise WireError("bad HMAC")
    magic, version, kind, boot, seq = _HEAD.unpack_from(unsigned)
    if magic != MAGIC or version != VERSION:
        raise WireError("unknown magic or version")
    try:
        kind = Kind(kind)
    except ValueError:
        raise WireError("unknown kind") from None
    node, offset = _read_short(unsigned, _HEAD.size)
    return Datagram(kind, node.decode(errors="replace"), boot, seq, unsigned[offset:])


def claimed_sender(data: bytes) -> tuple[str, int] | None:
    """The (node, boot) a datagram names as its sender, unchecked: good only for dropping a
    node's own broadcasts, which loop back to it, without paying to verify them. A forgery
    naming this node would be dropped as its own after the check anyway."""
    if len(data) < _HEAD.size + 1 + MAC_BYTES:
        return None
    boot = _HEAD.unpack_from(data)[3]
    end = _HEAD.size + 1 + data[_HEAD.size]
    if end > len(data) - MAC_BYTES:
        return None
    return data[_HEAD.size + 1 : end].decode(errors="replace"), boot


def _read_short(data: bytes, offset: int) -> tuple[bytes, int]:
    if offset >= len(data):
        raise WireError("truncated")
    end = offset + 1 + data[offset]
    if end > len(data):
        raise WireError("truncated")
    return data[offset + 1 : end], end


DATA_OVERHEAD = _HEAD.size + 256 + 2 + MAC_BYTES  # a DATA datagram around its packets
PACKET_OVERHEAD = 4  # the length before each packet


def packet_bytes(packet: Packet) -> bytes:
    """One packet as it travels inside a DATA body."""
    parts = [bytes([packet.route]), _short(packet.exclude.encode())]
    parts.append(struct.pack(f"!H{len(packet.targets)}q", len(packet.targets), *packet.targets))
    parts.append(packet.payload)
    return b"".join(parts)


def data_body(packets: Sequence[bytes]) -> bytes:
    """The DATA body for packets already encoded with packet_bytes."""
    parts = [struct.pack("!H", len(packets))]
    for one in packets:
        parts.append(struct.pack("!I", len(one)))
        parts.append(one)
    return b"".join(parts)


def parse_data(body: bytes) -> list[Packet]:
    if len(body) < 2:
        raise WireError("empty DATA")
    (count,) = _COUNT.unpack_from(body)
    offset, packets, size = 2, [], len(body)
    for _ in range(count):
        if offset + 4 > size:
            raise WireError("truncated")
        (length,) = _LENGTH.unpack_from(body, offset)
        offset += 4
        if offset + length > size:
            raise WireError("truncated")
        packets.append(_parse_packet(body, offset, offset + length))
        offset += length
    if offset != size or not packets:
        raise WireError("bad DATA")
    return packets


_COUNT = struct.Struct("!H")
_LENGTH = struct.Struct("!I")
_ROUTES = {int(route): route for route in Route}  # a dict lookup, not Route(byte)


def _parse_packet(body: bytes, start: int, end: int) -> Packet:
    """The packet in body[start:end], read in place (every DATA datagram has several, and
    every node reads every one)."""
    if start >= end:
        raise WireError("empty packet")
    route = _ROUTES.get(body[start])
    if route is None:
        raise WireError("unknown route")
    offset = start + 2 + body[start + 1] if start + 1 < end else end + 1
    if offset + 2 > end:
        raise WireError("truncated")
    exclude = body[start + 2 : offset]
    (count,) = _COUNT.unpack_from(body, offset)
    offset += 2
    targets_end = offset + 8 * count
    if targets_end > end:
        raise WireError("truncated")
    targets = struct.unpack_from(f"!{count}q", body, offset) if count else ()
    return Packet(route, targets, body[targets_end:end], exclude.decode(errors="replace"))


def heartbeat_body(last_seq: int) -> bytes:
    return struct.pack("!Q", last_seq)


def parse_heartbeat(body: bytes) -> int:
    if len(body) != 8:
        raise WireError("bad HEARTBEAT")
    return int(struct.unpack("!Q", body)[0])


def nack_body(peer: str, boot: int, seqs: list[int]) -> bytes:
    return (
        struct.pack("!Q", boot)
        + _short(peer.encode())
        + struct.pack(f"!H{len(seqs)}Q", len(seqs), *seqs)
    )


def parse_nack(body: bytes) -> tuple[str, int, list[int]]:
    if len(body) < 8:
        raise WireError("truncated")
    (boot,) = struct.unpack_from("!Q", body)
    peer, offset = _read_short(body, 8)
    if offset + 2 > len(body):
        raise WireError("truncated")
    (count,) = struct.unpack_from("!H", body, offset)
    if offset + 2 + 8 * count != len(body):
        raise WireError("bad NACK")
    seqs = struct.unpack_from(f"!{count}Q", body, offset + 2)
    return peer.decode(errors="replace"), boot, list(seqs)
