"""Sequenced bus core: numbering, HMAC sealing, repeats, gaps and NACKs, peers, heartbeats.

Shared by the UDP and Redis buses, which only move the sealed bytes. Each node numbers its DATA
datagrams 1, 2, 3, ... per boot and keeps the recent ones; a receiver delivers each peer's
datagrams in order, holds back those after a gap, asks for the missing ones by a NACK to all,
and after GIVE_UP_S counts them lost and moves on (clients still fetch those messages by seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import OrderedDict
from typing import Any

from .bus import Deliver, PeerEvent
from .packets import Packet
from .settings import Settings
from .wire import (
    DATA_OVERHEAD,
    MAX_DATAGRAM,
    PACKET_OVERHEAD,
    Kind,
    WireError,
    claimed_sender,
    data_body,
    heartbeat_body,
    nack_body,
    open_datagram,
    packet_bytes,
    parse_data,
    parse_heartbeat,
    parse_nack,
    seal,
)

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
PEER_TIMEOUT_S = 5.0
NACK_EVERY_S = 0.05
NACK_RETRY_S = 0.1
GIVE_UP_S = 3.0
RETAIN = 50_000  # datagrams kept to answer NACKs
MAX_HELD = 20_000  # datagrams held back behind a gap, per peer
NACK_BATCH = 500
IN_QUEUE = 100_000
SEND_BATCH = 256


class _Peer:
    __slots__ = ("boot", "held", "last_seen", "last_seen_ms", "missing", "next_seq", "present")

    def __init__(self, boot: int) -> None:
        self.boot = boot
        self.next_seq = 0  # the next seq to deliver; 0 until the first DATA or heartbeat
        self.held: dict[int, list[Packet]] = {}  # seq -> the packets of that datagram
        self.missing: dict[int, list[float]] = {}  # seq -> [first noticed, last asked]
        self.last_seen = time.monotonic()
        self.last_seen_ms = int(time.time() * 1000)
        self.present = True


class SeqBus:
    """The bus minus the transport: subclasses move sealed bytes with _send and feed
    received bytes to inbox."""

    name = "seq"

    def __init__(self, settings: Settings) -> None:
        self.secret = (settings.cluster_secret or "").encode()
        self.node = settings.node_id
        self.drop_share = settings.udp_drop_percent / 100.0
        self.boot = secrets.randbits(63) | 1
        self._me = (self.node, self.boot)
        self.seq = 0
        self.sent: OrderedDict[int, bytes] = OrderedDict()
        self.peers_by_node: dict[str, _Peer] = {}
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue(IN_QUEUE)
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._pending: list[bytes] = []  # packets published, not yet sealed into a datagram
        self.counters = dict.fromkeys(
            (
                "sent",
                "packets_sent",
                "received",
                "delivered",
                "rejected",
                "repeated",
                "own",
                "recovered",
                "lost",
                "nacks_sent",
                "resent",
                "overflow",
                "dropped_by_setting",
                "too_big",
                "socket_errors",
                "dropped_while_down",
            ),
            0,
        )
        self._deliver: Deliver | None = None
        self._on_peer: PeerEvent | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._warned_clash = 0.0

    # ---- Bus -----------------------------------------------------------------------------

    async def start(self, deliver: Deliver, on_peer: PeerEvent | None = None) -> None:
        self._deliver = deliver
        self._on_peer = on_peer
        await self._open()
        for coro, name in (
            (self.sendproc(), f"{self.name} sendproc"),
            (self.recvproc(), f"{self.name} recvproc"),
            (self._heartbeats(), f"{self.name} heartbeat"),
            (self._nacks(), f"{self.name} nack"),
            *self._extra_tasks(),
        ):
            self._tasks.append(asyncio.create_task(coro, name=name))

    async def _open(self) -> None:
        """Open the transport (raise OSError when it cannot be)."""
        raise NotImplementedError

    def _extra_tasks(self) -> list[tuple[Any, str]]:
        return []

    async def _send(self, datagram: bytes) -> None:
        """Put the bytes on the transport; may wait while it is down."""
        raise NotImplementedError

    async def _close_transport(self) -> None:
        raise NotImplementedError

    def publish(self, packet: Packet) -> None:
        """Queue the packet for the next DATA datagram: every packet published before the loop
        comes round (a committed batch of messages, say) travels in the same one."""
        one = packet_bytes(packet)
        if len(one) + PACKET_OVERHEAD + DATA_OVERHEAD > MAX_DATAGRAM:
            self.counters["too_big"] += 1
            log.error("bus: packet of %d bytes is too big for a datagram", len(one))
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._seal_pending)
        self._pending.append(one)

    def _seal_pending(self) -> None:
        """Number and seal what was published, in as few datagrams as fit, and send them."""
        pending, self._pending = self._pending, []
        room = MAX_DATAGRAM - DATA_OVERHEAD
        start, size = 0, 0
        for i, one in enumerate(pending):
            if i > start and size + len(one) + PACKET_OVERHEAD > room:
                self._seal(pending[start:i])
                start, size = i, 0
            size += len(one) + PACKET_OVERHEAD
        if pending:
            self._seal(pending[start:])

    def _seal(self, packets: list[bytes]) -> None:
        self.seq += 1
        body = data_body(packets)
        datagram = seal(self.secret, Kind.DATA, self.node, self.boot, self.seq, body)
        self.sent[self.seq] = datagram
        if len(self.sent) > RETAIN:
            self.sent.popitem(last=False)
        self.counters["packets_sent"] += len(packets)
        self.outbox.put_nowait(datagram)

    def peers(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {"node": node, "last_seen_ms": peer.last_seen_ms}
            for node, peer in sorted(self.peers_by_node.items())
            if now - peer.last_seen < PEER_TIMEOUT_S
        ]

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._close_transport()

    # ---- the two processes ---------------------------------------------------------------

    async def sendproc(self) -> None:
        """Drain the outbox: everything queued goes out together (one round trip on Redis)."""
        while True:
            batch = [await self.outbox.get()]
            while len(batch) < SEND_BATCH and not self.outbox.empty():
                batch.append(self.outbox.get_nowait())
            try:
                await self._send_many(batch)
                self.counters["sent"] += len(batch)
            except OSError as exc:
                self.counters["socket_errors"] += 1
                log.warning("%s bus: send failed: %s", self.name, exc)

    async def _send_many(self, datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            await self._send(datagram)

    async def recvproc(self) -> None:
        while True:
            data = await self.inbox.get()
            try:
                self.handle(data)
            except Exception:
                log.exception("bus: handling a datagram failed")

    # ---- receiving -----------------------------------------------------------------------

    def handle(self, data: bytes) -> None:
        self.counters["received"] += 1
        if claimed_sender(data) == self._me:  # our own broadcast, looped back: no HMAC to check
            self.counters["own"] += 1
            return
        if self.drop_share and random.random() < self.drop_share:
            self.counters["dropped_by_setting"] += 1
            return
        try:
            datagram = open_datagram(self.secret, data)
        except WireError:
            self.counters["rejected"] += 1
            return
        if datagram.node == self.node:
            if datagram.boot != self.boot and time.monotonic() - self._warned_clash > 10:
                self._warned_clash = time.monotonic()
                log.warning("bus: another node uses this node id %s", self.node)
            self.counters["own"] += 1
            return
        peer = self._peer(datagram.node, datagram.boot)
        try:
            if datagram.kind is Kind.DATA:
                if peer.next_seq == 0:
                    peer.next_seq = datagram.seq
                self._on_data(peer, datagram.seq, parse_data(datagram.body))
            elif datagram.kind is Kind.HEARTBEAT:
                last = parse_heartbeat(datagram.body)
                if peer.next_seq == 0:
                    peer.next_seq = last + 1
                self._note_until(peer, last)
            elif datagram.kind is Kind.NACK:
                self._on_nack(*parse_nack(datagram.body))
        except WireError:
            self.counters["rejected"] += 1

    def _peer(self, node: str, boot: int) -> _Peer:
        peer = self.peers_by_node.get(node)
        now = time.monotonic()
        if peer is None or peer.boot != boot:
            # A new node, or a restarted one: its history before now is not ours to ask for.
            peer = _Peer(boot)
            self.peers_by_node[node] = peer
            log.info("bus: peer %s joined", node)
            self._peer_event(node, True)
        elif not peer.present:
            peer.present = True
            log.info("bus: peer %s is back", node)
            self._peer_event(node, True)
        peer.last_seen = now
        peer.last_seen_ms = int(time.time() * 1000)
        return peer

    def _peer_event(self, node: str, joined: bool) -> None:
        if self._on_peer is not None:
            self._on_peer(node, joined)

    def _on_data(self, peer: _Peer, seq: int, packets: list[Packet]) -> None:
        if seq < peer.next_seq or seq in peer.held:
            self.counters["repeated"] += 1
            return
        if peer.missing.pop(seq, None) is not None:
            self.counters["recovered"] += 1
        if seq > peer.next_seq:
            peer.held[seq] = packets
            self._note_until(peer, seq - 1)
            if len(peer.held) > MAX_HELD:
                self._give_up(peer, min(peer.missing, default=peer.next_seq))
            return
        self._deliver_now(packets)
        peer.next_seq = seq + 1
        self._flush(peer)

    def _flush(self, peer: _Peer) -> None:
        while (packets := peer.held.pop(peer.next_seq, None)) is not None:
            self._deliver_now(packets)
            peer.next_seq += 1

    def _deliver_now(self, packets: list[Packet]) -> None:
        self.counters["delivered"] += len(packets)
        assert self._deliver is not None
        for packet in packets:
            self._deliver(packet)

    def _note_until(self, peer: _Peer, last: int) -> None:
        """Every seq up to last that has not arrived is missing."""
        now = time.monotonic()
        first = peer.next_seq
        for seq in range(first, min(last, first + MAX_HELD) + 1):
            if seq not in peer.held and seq not in peer.missing:
                peer.missing[seq] = [now, 0.0]

    def _give_up(self, peer: _Peer, through: int) -> None:
        """Count seqs up to through as lost; deliver what was held behind them."""
        while peer.next_seq <= through:
            seq = peer.next_seq
            if seq in peer.held:
                self._deliver_now(peer.held.pop(seq))
            else:
                peer.missing.pop(seq, None)
                self.counters["lost"] += 1
            peer.next_seq += 1
        self._flush(peer)

    def _on_nack(self, node: str, boot: int, seqs: list[int]) -> None:
        if node != self.node or boot != self.boot:
            return
        for seq in seqs:
            datagram = self.sent.get(seq)
            if datagram is not None:
                self.counters["resent"] += 1
                self.outbox.put_nowait(datagram)

    # ---- timers --------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            self.outbox.put_nowait(
                seal(self.secret, Kind.HEARTBEAT, self.node, self.boot, 0, heartbeat_body(self.seq))
            )
            now = time.monotonic()
            for node, peer in self.peers_by_node.items():
                if peer.present and now - peer.last_seen > PEER_TIMEOUT_S:
                    peer.present = False
                    log.warning("bus: peer %s went silent", node)
                    self._peer_event(node, False)
            await asyncio.sleep(HEARTBEAT_S)

    async def _nacks(self) -> None:
        while True:
            await asyncio.sleep(NACK_EVERY_S)
            now = time.monotonic()
            for node, peer in self.peers_by_node.items():
                if not peer.missing:
                    continue
                expired = [s for s, (first, _) in peer.missing.items() if now - first > GIVE_UP_S]
                if expired:
                    log.warning("bus: %d datagrams from %s lost", len(expired), node)
                    self._give_up(peer, max(expired))
                ask = [s for s, (_, asked) in peer.missing.items() if now - asked > NACK_RETRY_S]
                for start in range(0, len(ask), NACK_BATCH):
                    batch = sorted(ask[start : start + NACK_BATCH])
                    for seq in batch:
                        peer.missing[seq][1] = now
                    body = nack_body(node, peer.boot, batch)
                    self.outbox.put_nowait(
                        seal(self.secret, Kind.NACK, self.node, self.boot, 0, body)
                    )
                    self.counters["nacks_sent"] += 1
