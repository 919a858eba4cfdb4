"""agent.common.memory: chunk-sized buffers are reused, not faulted in again for every chunk."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.common import memory

SCRIPT = r"""
import resource, sys, threading
if sys.argv[1] == "tuned":
    from agent.common.memory import keep_freed_memory
    assert keep_freed_memory()
def work():  # as a receiver thread does: a few chunk-sized buffers (received, decoded, hashed), then the next chunk
    for _ in range(200):
        bufs = [bytearray(262144 + 100 * k) for k in range(4)]
        for b in bufs:
            b[::4096] = b"x" * len(b[::4096])  # touch every page
        del bufs, b
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = threading.Thread(target=work); t.start(); t.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    p = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_chunk_sized_buffers_are_reused_once_the_thresholds_are_set():
    if not memory.keep_freed_memory():
        pytest.skip("not glibc: mallopt unavailable")
    plain, tuned = _faults("plain"), _faults("tuned")
    # plain glibc maps and faults in every 256 KiB buffer afresh (~65 faults each); tuned, it reuses them
    assert plain > 200 * 60, plain
    assert tuned < plain / 10, (tuned, plain)
