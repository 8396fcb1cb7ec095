"""The outbound WebSocket framing (node/frames.py) against RFC 6455, and through a real client."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from node import frames

from .test_chat import pair, recv


def test_rfc6455_examples():
    """RFC 6455 section 5.7: a single-frame unmasked "Hello", and the 256-byte and 64 KiB
    length encodings (the RFC shows them for binary frames; ours carry opcode 1, text)."""
    assert frames.text_frames([b"Hello"]) == bytes([0x81, 0x05]) + b"Hello"
    assert frames.header(256) == bytes([0x81, 0x7E, 0x01, 0x00])
    assert frames.header(65536) == bytes([0x81, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])


@pytest.mark.parametrize(
    ("length", "size"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (1 << 20, 10)]
)
def test_header_sizes_at_the_boundaries(length, size):
    head = frames.header(length)
    assert len(head) == size and head[0] == 0x81
    assert int.from_bytes(head[2:] or head[1:2], "big") == length


def test_frames_are_back_to_back():
    payloads = [b"a", b"x" * 126, b""]
    data = frames.text_frames(payloads)
    assert data == b"\x81\x01a" + b"\x81\x7e\x00\x7e" + b"x" * 126 + b"\x81\x00"


async def test_queued_frames_arrive_whole_and_in_order(make_server):
    """A burst of messages of both header sizes, queued together and written at once,
    reaches an aiohttp client as separate, complete text messages in the order sent, and a
    ping from the client is answered between them."""
    api = await make_server()
    a, b = await pair(api)
    wa, wb = await api.ws(a), await api.ws(b)
    contents = ["x", "y" * 100, "z" * 125, "w" * 126, "é" * 2000, "😀" * 4000, "v" * 3]
    for n, content in enumerate(contents):
        await wa.send_str(
            orjson.dumps(
                {"id": f"f{n}", "cmd": 10, "dstid": b["id"], "media": 1, "content": content}
            ).decode()
        )
    await wb.ping()
    assert [(await recv(wb))["content"] for _ in contents] == contents
    acks = [await recv(wa) for _ in contents]
    assert [f["cmd"] for f in acks] == [20] * len(contents)
    assert [f["id"] for f in acks] == [f"f{n}" for n in range(len(contents))]


async def test_tests_run_on_uvloop():
    """The in-process servers of the test suite run on the loop production uses."""
    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
