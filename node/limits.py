"""Rate limits: a token bucket for sends and a sliding window for login failures. Pure logic."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class TokenBucket:
    """rate tokens per second, at most burst saved up; take() spends one if there is one."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class FailureWindow:
    """Counts failures per key over a sliding window; a key at its limit is blocked."""

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def _prune(self, key: str) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        horizon = self._clock() - self.window_s
        while events and events[0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def blocked(self, key: str) -> bool:
        events = self._prune(key)
        return events is not None and len(events) >= self.limit

    def record(self, key: str) -> None:
        self._prune(key)
        self._events.setdefault(key, deque()).append(self._clock())
        if len(self._events) > 100_000:  # bound memory under a spray of keys
            for stale in list(self._events)[:50_000]:
                self._prune(stale)

    def clear(self, key: str) -> None:
        self._events.pop(key, None)
