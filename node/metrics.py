"""Metrics: /metrics in the Prometheus text format, read from the counters the parts keep."""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .keys import BUS, HUB, NODE, WRITER

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
ACK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
COMMIT_BUCKETS = (*ACK_BUCKETS, 10.0, 30.0)  # up to the database timeout (db.DB_TIMEOUT_S)


class Buckets:
    """A histogram in plain numbers, without prometheus_client's lock: counting a value is a
    bisect and an addition. Each one is fed from one thread only (the event loop's, the
    message writer's, or the garbage collector's callback, which may run inside another
    metric's locked section)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets, seen = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += count
            buckets.append((floatToGoString(bound), seen))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


class GcPauses(Collector):
    """A gc.callbacks entry timing each garbage collection, which holds up every thread of the
    node. A collection can start anywhere, inside a metric's own locked section too, and
    waiting for that lock there would never end: hence plain Buckets."""

    def __init__(self) -> None:
        self.pauses = Buckets(GC_BUCKETS)
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.add(time.perf_counter() - self._started)

    def collect(self) -> Iterator[Metric]:
        yield self.pauses.family(
            "lanchat_gc_pause_seconds",
            "Garbage collections, by how long each held every thread of the node up",
        )
        yield GaugeMetricFamily(
            "lanchat_gc_frozen_objects",
            "Objects left out of garbage collections (those of the node's start)",
            value=gc.get_freeze_count(),
        )
        thresholds = GaugeMetricFamily(
            "lanchat_gc_threshold",
            "Collection thresholds: new objects before a young collection (0), collections of "
            "one generation before one of the next (1, 2)",
            labels=["generation"],
        )
        for generation, threshold in enumerate(gc.get_threshold()):
            thresholds.add_metric([str(generation)], threshold)
        yield thresholds


class CommitTimes(Collector):
    """How long the message writer spent on each batch, stored or failed, fed from the
    writer's thread alone. Its sum's rate is the share of the time the writer was busy: near
    1.0, the writer sets the node's pace; its buckets show the database's slow moments."""

    def __init__(self) -> None:
        self.times = Buckets(COMMIT_BUCKETS)
        self.observe = self.times.add

    def collect(self) -> Iterator[Metric]:
        yield self.times.family(
            "lanchat_commit_seconds", "Time the message writer spent on each batch of messages"
        )


class AckLatency(Collector):
    """From a message's frame arriving to its ack being queued, for every message: counted on
    the event loop, a few per commit, so in plain Buckets rather than through a lock each."""

    def __init__(self) -> None:
        self.latencies = Buckets(ACK_BUCKETS)

    def observe(self, latencies: list[float]) -> None:
        add = self.latencies.add
        for value in latencies:
            add(value)

    def collect(self) -> Iterator[Metric]:
        yield self.latencies.family(
            "lanchat_ack_latency_seconds", "From a message's frame arriving to its ack being queued"
        )


class _Counters(Collector):
    """The hub, node, writer and bus count in plain integers; they are read at scrape time."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        app = self.app
        hub, node, writer, bus = app[HUB], app[NODE], app[WRITER], app[BUS]
        yield GaugeMetricFamily(
            "lanchat_connections", "Open WebSocket connections", value=hub.connection_count()
        )
        yield GaugeMetricFamily(
            "lanchat_users_connected", "Users with a connection here", value=len(hub.conns)
        )
        yield GaugeMetricFamily(
            "lanchat_write_backlog", "Messages waiting for their commit", value=writer.backlog()
        )
        counters = (
            ("lanchat_connects", "WebSocket connections accepted", hub.stats["connects"]),
            ("lanchat_frames_in", "Frames received from clients", node.stats["frames_in"]),
            (
                "lanchat_frames_rejected",
                "Frames answered with cmd 21",
                node.stats["rejected_frames"],
            ),
            ("lanchat_messages_stored", "Messages committed", writer.stats["stored"]),
            (
                "lanchat_messages_resent",
                "Resends answered with the first ack",
                writer.stats["resends"],
            ),
            ("lanchat_commits", "Message write transactions", writer.stats["commits"]),
            ("lanchat_frames_out", "Frames queued to client connections", hub.stats["frames_out"]),
            (
                "lanchat_queue_overflows",
                "Connections closed 1013 (too slow)",
                hub.stats["overflows"],
            ),
            (
                "lanchat_rate_limited",
                "Messages refused by the send rate",
                node.stats["rate_limited"],
            ),
            ("lanchat_db_errors", "Failed message write transactions", writer.stats["db_errors"]),
        )
        for name, text, value in counters:
            yield CounterMetricFamily(name, text, value=value)
        if (checkpointer := writer.checkpointer) is not None:
            stats = checkpointer.stats
            yield CounterMetricFamily(
                "lanchat_sqlite_checkpoints", "WAL checkpoints", value=stats["checkpoints"]
            )
            yield CounterMetricFamily(
                "lanchat_sqlite_checkpoint_errors", "Failed checkpoints", value=stats["errors"]
            )
            yield GaugeMetricFamily(
                "lanchat_sqlite_wal_pages",
                "Pages in the write-ahead log at the last checkpoint",
                value=stats["wal_pages"],
            )
        bus_family = CounterMetricFamily(
            "lanchat_bus_datagrams", "Bus datagrams by outcome", labels=["outcome"]
        )
        for outcome, value in sorted(bus.stats().items()):
            bus_family.add_metric([outcome], value)
        yield bus_family


class Metrics:
    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.ack_latency = AckLatency()
        self.registry.register(self.ack_latency)
        self.gc_pauses = GcPauses()
        self.registry.register(self.gc_pauses)
        self.commit_times = CommitTimes()
        self.registry.register(self.commit_times)
        GCCollector(registry=self.registry)  # python_gc_*: collections and objects by generation
        # process_*: CPU, memory, and open files against their limit (each connection is one)
        ProcessCollector(registry=self.registry)
        self.registry.register(_Counters(app))

    async def gc_timing(self, app: web.Application) -> AsyncIterator[None]:
        """While the node runs, every collection's pause goes into lanchat_gc_pause_seconds."""
        gc.callbacks.append(self.gc_pauses)
        yield
        gc.callbacks.remove(self.gc_pauses)

    def observe_acks(self, latencies: list[float]) -> None:
        self.ack_latency.observe(latencies)

    async def handler(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
