"""UDP bus: sealed datagrams broadcast on the LAN (one broadcast domain).

udpsendproc drains the outbox onto the broadcast socket; the socket's protocol callback only
enqueues into the bounded inbox that udprecvproc drains. Sequencing, HMAC, repeats and NACK
recovery are the sequenced bus core's (node/seqbus.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from .seqbus import SeqBus
from .settings import Settings

log = logging.getLogger(__name__)

SOCKET_BUFFER = 8 * 1024 * 1024


class _Protocol(asyncio.DatagramProtocol):
    """Only enqueues: every datagram is handled by udprecvproc."""

    def __init__(self, bus: UdpBus) -> None:
        self.bus = bus

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self.bus.inbox.put_nowait(data)
        except asyncio.QueueFull:
            self.bus.counters["overflow"] += 1

    def error_received(self, exc: Exception) -> None:
        self.bus.counters["socket_errors"] += 1
        log.warning("bus socket error: %s", exc)


class UdpBus(SeqBus):
    name = "udp"

    def __init__(self, settings: Settings) -> None:
        assert settings.cluster_secret, "the UDP bus needs a cluster secret"
        super().__init__(settings)
        self.port = settings.udp_port
        self.address = (settings.udp_broadcast, settings.udp_port)
        self._transport: asyncio.DatagramTransport | None = None

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self),
                local_addr=("0.0.0.0", self.port),  # noqa: S104 - broadcasts arrive on any address
                reuse_port=True,
                allow_broadcast=True,
            )
        except OSError as exc:
            raise OSError(f"cannot bind the bus on UDP port {self.port}: {exc.strerror}") from exc
        sock = transport.get_extra_info("socket")
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        self._transport = transport
        log.info("bus: udp %s:%d as node %s", self.address[0], self.port, self.node)

    async def _send(self, datagram: bytes) -> None:
        assert self._transport is not None
        self._transport.sendto(datagram, self.address)

    async def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # The two processes the LAN bus is known by.
    udpsendproc = SeqBus.sendproc
    udprecvproc = SeqBus.recvproc
