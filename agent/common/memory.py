"""Process memory settings for the evidence streams (docs/mqtt.md, "Where the CPU goes").

Every chunk passes through buffers of 256 KiB and more (the sealed block read at the agent, the
MQTT packet paho builds and the one it receives, the block hashed at the archive's read-back).
glibc serves an allocation that large from a fresh ``mmap`` and, in a thread's arena, gives freed
memory back to the kernel as soon as more than 128 KiB lies free at the top: every chunk then pays
for faulting in and zeroing its pages again (measured on the 2-core VM: about 35 minor faults a
chunk at the archive, 29 at the agent; with :func:`keep_freed_memory` 4 and 9). Called at the
start of ``edge-agent run`` and ``edge-agent archive serve``: buffers up to ``MMAP_THRESHOLD`` come
from the heap, and up to ``TRIM_THRESHOLD`` of freed heap is kept for the next chunk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: allocations up to this size come from the heap, not from mmap (a block is at most 4 MiB)
MMAP_THRESHOLD = 8 << 20
#: freed heap kept before any is returned to the kernel (per arena)
TRIM_THRESHOLD = 64 << 20

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set the two thresholds once per process (glibc only; elsewhere nothing changes). True when set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc thresholds: mmap %d, trim %d (%s)", MMAP_THRESHOLD, TRIM_THRESHOLD, "set" if _done else "not set")
    return _done
