"""The bus datagram format (node/wire.py): sealing, opening, and the unchecked sender peek."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.packets import Packet, Route
from node.wire import (
    Kind,
    WireError,
    claimed_sender,
    data_body,
    open_datagram,
    packet_bytes,
    parse_data,
    seal,
)

SECRET = b"wire-test-secret-0123456789"


def _datagram(node: str = "n1", boot: int = 77, seq: int = 5) -> bytes:
    packet = Packet(Route.USERS, (1, 2), b'{"cmd":10}', "n1/3")
    return seal(SECRET, Kind.DATA, node, boot, seq, data_body([packet_bytes(packet)]))


def test_sealed_datagram_opens_with_its_header():
    got = open_datagram(SECRET, _datagram())
    assert (got.kind, got.node, got.boot, got.seq) == (Kind.DATA, "n1", 77, 5)


def test_claimed_sender_reads_the_header_without_checking():
    """The peek names the sender of any well-formed datagram, authentic or not, which is why
    the bus uses it only to drop its own broadcasts."""
    data = _datagram("node-é", 2**62 + 1)
    assert claimed_sender(data) == ("node-é", 2**62 + 1)
    forged = data[:-1] + bytes([data[-1] ^ 1])
    assert claimed_sender(forged) == ("node-é", 2**62 + 1)
    with pytest.raises(WireError, match="HMAC"):
        open_datagram(SECRET, forged)


# too short for a header, a node and a MAC; a node name running into the MAC
OVERLONG_NODE = b"LC\x01\x01" + bytes(16) + b"\xff" + b"x" * 40


@pytest.mark.parametrize("data", [b"", b"LC", b"x" * 40, OVERLONG_NODE])
def test_claimed_sender_of_junk_is_none(data):
    assert claimed_sender(data) is None


def test_one_datagram_carries_several_packets_in_order():
    packets = [
        Packet(Route.USERS, (1, 2), b'{"n":1}', "n1/3"),
        Packet(Route.GROUP, (9,), b'{"n":2}'),
        Packet(Route.STATE, (), b"{}"),
    ]
    data = seal(SECRET, Kind.DATA, "n1", 1, 1, data_body([packet_bytes(p) for p in packets]))
    assert parse_data(open_datagram(SECRET, data).body) == packets


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no count
        b"\x00\x00",  # no packets
        b"\x00\x02" + b"\x00\x00\x00\x01" + b"\x01",  # fewer packets than counted
        b"\x00\x01" + b"\x00\x00\x00\x09" + b"\x01",  # a length past the end
        data_body([packet_bytes(Packet(Route.GROUP, (9,), b"{}"))]) + b"x",  # trailing bytes
        b"\x00\x01" + b"\x00\x00\x00\x01" + b"\x07",  # an unknown route
    ],
)
def test_malformed_data_bodies_are_refused(body):
    with pytest.raises(WireError):
        parse_data(body)


VALID_BODY = data_body(
    [
        packet_bytes(Packet(Route.USERS, (1, 2), b'{"n":1}', "n1/3")),
        packet_bytes(Packet(Route.GROUP, (9,), b'{"n":2}')),
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, len(VALID_BODY) - 1), st.integers(0, 255), st.booleans())
def test_damaged_data_bodies_parse_or_are_refused(at, byte, cut):
    """A body cut short or with any one byte changed parses into packets or raises
    WireError: never another exception, never a packet reaching past its own length."""
    body = VALID_BODY[:at] if cut else VALID_BODY[:at] + bytes([byte]) + VALID_BODY[at + 1 :]
    try:
        packets = parse_data(body)
    except WireError:
        return
    assert all(len(packet_bytes(p)) <= len(body) for p in packets)


@given(st.binary(max_size=200))
def test_random_data_bodies_parse_or_are_refused(body):
    try:
        parse_data(body)
    except WireError:
        pass
