"""WebSocket framing for the outbound path (RFC 6455 section 5.2): pure, no I/O.

The server's frames are never masked and never compressed (lanchat does not negotiate
permessage-deflate), so a text frame is a two-, four- or ten-byte header and the payload.
Encoding them here lets a connection's writer put every frame it has queued into one write.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

FIN_TEXT = 0x81  # FIN set, opcode 1 (text)
PING = bytes((0x89, 0))  # FIN set, opcode 9 (ping), no payload
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def header(length: int) -> bytes:
    """The header of one unmasked, final text frame carrying length bytes."""
    if length < 126:
        return _SHORT.pack(FIN_TEXT, length)
    if length < 1 << 16:
        return _MEDIUM.pack(FIN_TEXT, 126, length)
    return _LONG.pack(FIN_TEXT, 127, length)


def text_frames(payloads: Iterable[bytes]) -> bytes:
    """Each payload (UTF-8 text, already encoded) as its own frame, back to back."""
    parts: list[bytes] = []
    for payload in payloads:
        parts.append(header(len(payload)))
        parts.append(payload)
    return b"".join(parts)
