"""Redis bus: the same sealed datagrams over Redis pub/sub, for clusters beyond one LAN.

One channel per cluster, named from a hash of the cluster secret (so clusters sharing a Redis
never hear each other). While Redis is unreachable the node keeps serving: messages are still
stored and acked, outgoing datagrams wait in the outbox (up to OUTBOX_LIMIT), and the receiver
reconnects with backoff; what other nodes published meanwhile is a gap that NACK recovery, or
the clients' fetch by seq, fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .seqbus import SeqBus
from .settings import Settings

log = logging.getLogger(__name__)

BACKOFF_MAX_S = 5.0
OUTBOX_LIMIT = 100_000


class RedisBus(SeqBus):
    name = "redis"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.url = settings.bus
        digest = hashlib.sha256(self.secret).hexdigest()[:16]
        self.channel = f"lanchat:{digest}"
        self.subscribed = False  # the listener holds a live subscription
        self.publishing = True  # the last publish went through
        self._client: aioredis.Redis | None = None

    async def _open(self) -> None:
        self._client = aioredis.from_url(
            self.url, socket_connect_timeout=3, socket_timeout=None, health_check_interval=5
        )
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            # Start anyway: the bus reconnects by itself; /healthz shows it is down.
            log.warning("redis bus: %s is unreachable for now: %s", _safe(self.url), exc)

    def _extra_tasks(self) -> list[tuple[Any, str]]:
        return [(self._listen(), "redis listener")]

    async def _listen(self) -> None:
        """Subscribe, feed the inbox, and on any failure reconnect with backoff."""
        assert self._client is not None
        delay = 0.1
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await self._client.ping()  # subscribe alone does not prove the server is there
                await pubsub.subscribe(self.channel)
                self._set_connected(True)
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None and not pubsub.subscribed:
                        raise ConnectionError("the subscription ended")
                    if message is not None and message["type"] == "message":
                        try:
                            self.inbox.put_nowait(message["data"])
                        except asyncio.QueueFull:
                            self.counters["overflow"] += 1
            except (RedisError, OSError) as exc:
                self._set_connected(False)
                log.warning("redis bus: connection lost (%s); retrying in %.1fs", exc, delay)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(BACKOFF_MAX_S, delay * 2)

    @property
    def connected(self) -> bool:
        return self.subscribed and self.publishing

    def _set_connected(self, value: bool) -> None:
        if value and not self.subscribed:
            log.info("redis bus: subscribed to %s on %s", self.channel, _safe(self.url))
        self.subscribed = value

    async def _send(self, datagram: bytes) -> None:
        await self._send_many([datagram])

    async def _send_many(self, datagrams: list[bytes]) -> None:
        """Publish in one pipeline, in order; while Redis is away, keep trying with backoff
        (the outbox waits, bounded)."""
        assert self._client is not None
        delay = 0.05
        while True:
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for datagram in datagrams:
                        pipe.publish(self.channel, datagram)
                    await pipe.execute()
                self.publishing = True
                return
            except (RedisError, OSError) as exc:
                self.publishing = False
                self.counters["socket_errors"] += 1
                log.debug("redis bus: publish failed: %s", exc)
                while self.outbox.qsize() > OUTBOX_LIMIT:
                    self.outbox.get_nowait()
                    self.counters["dropped_while_down"] += 1
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX_S, delay * 2)

    async def _close_transport(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "connected": int(self.connected)}


def _safe(url: str) -> str:
    from .db import safe_url

    return safe_url(url)
