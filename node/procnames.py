"""Process glue: the node's threads named where the OS shows them (top -H, ps -L, /proc)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

COMM_MAX_BYTES = 15  # Linux keeps this much of a thread's name


def name_this_thread() -> None:
    """Give the calling thread's Python name to the OS, so that top -H, ps -L, a profiler or
    the bench can tell the message writer from the checkpointer and the read threads (Python
    3.11 names its threads only for itself). Where there is no /proc, nothing happens."""
    name = threading.current_thread().name.encode()[:COMM_MAX_BYTES]
    with contextlib.suppress(OSError):
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_bytes(name)
