"""Reading and pacing the chunks of one item (the uplink's sending side, agent/uplink/transfer.py).

Each chunk is read straight into the buffer that is published (header line + bytes); the
planned chunks are read and hashed ahead on their own thread; a token bucket caps the bandwidth.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..evidence import blocks, hashing, manifest as mf
from agent.common.fs import drop_cache
from agent.wire import protocol as P


class Interrupted(Exception):
    """The connection dropped, the agent is stopping, or a more urgent item arrived."""


def chunk_message(fh, name: str, off: int, n: int, corr: bytes, known: str | None = None) -> tuple[bytearray, int]:
    """The payload of one chunk message (header line + bytes), read straight into place: the
    header's length is known before the bytes are hashed (the SHA-256 is always 64 hex digits),
    so the bytes are read once into the buffer that is published, never copied to join them.

    ``known``: the SHA-256 the sealed manifest lists for exactly these bytes (a chunk that is one
    hash-chain block): sent as it is, the bytes are not hashed here. Should the local copy have
    changed since sealing, the archive refuses the chunk and it is sent again hashed (``known``
    None), so what reaches the archive is then refused at finish as content altered."""
    hlen = len(P.chunk_header(name, off, "0" * 64, corr))
    buf = bytearray(hlen + n)
    mv = memoryview(buf)
    fh.seek(off)
    got = 0
    while got < n:
        k = fh.readinto(mv[hlen + got:])
        if not k:
            break
        got += k
    if got < n:  # the local copy is shorter than planned: send what is there, the archive decides
        mv.release()
        del buf[hlen + got:]
        mv = memoryview(buf)
    digest = known if known is not None and got == n else hashlib.sha256(mv[hlen:]).hexdigest()
    buf[:hlen] = P.chunk_header(name, off, digest, corr)
    mv.release()
    return buf, got


def block_hashes(manifest: dict) -> dict[tuple[str, int, int], str]:
    """(file name, offset, size) -> SHA-256 of each hash-chain block, from the sealed manifest; a
    chunk that is exactly one block carries this hash instead of hashing its bytes again. Empty
    for other hash algorithms (SM3 blocks, where the chunk still needs its SHA-256)."""
    if manifest.get("hash_alg") != "sha256":
        return {}
    names = [f["name"] for f in manifest["files"]]
    return {(names[s["file"]], s["offset"], s["size"]): s["hash"] for s in manifest["segments"]}


def local_block_altered(d: Path, table: blocks.BlockTable, name: str, off: int) -> str | None:
    """Why the local copy of the block holding ``name``@``off`` is not what was sealed, or None."""
    b = table.at(name, off)
    if b is None:
        return None
    try:
        with open(d / mf.FILES_DIR / name, "rb") as fh:
            fh.seek(b.offset)
            data = fh.read(b.size)
    except OSError as exc:
        return f"local copy of {name} unreadable: {exc}"
    if len(data) == b.size and hashing.hexdigest(table.alg, data) == b.hash:
        return None
    return (f"local copy altered after sealing: {name} bytes [{b.offset}, {b.end}) do not match the signed "
            "manifest (the archive accepts only the sealed bytes)")


class Prefetcher:
    """Reads and hashes the planned chunks ahead, in order, on its own thread (bounded)."""

    DROP_EVERY = 16 << 20

    def __init__(self, d: Path, plan: list[tuple[str, int, int]], stop: threading.Event,
                 make_corr: Callable[[], bytes], depth: int = 8, known: dict | None = None):
        self.d, self.plan, self.stop = d, plan, stop
        self.known = known or {}
        self.make_corr = make_corr
        self.left = len(plan)
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.closed = threading.Event()
        self.th = threading.Thread(target=self._run, name="uplink-read", daemon=True)
        if plan:
            self.th.start()

    def _run(self) -> None:
        handles: dict[str, Any] = {}
        read: dict[str, int] = {}  # bytes read of each file since its pages were last dropped
        try:
            for name, off, n in self.plan:
                fh = handles.get(name)
                if fh is None:
                    fh = handles[name] = open(self.d / mf.FILES_DIR / name, "rb")
                corr = self.make_corr()
                payload, got = chunk_message(fh, name, off, n, corr, self.known.get((name, off, n)))
                read[name] = read.get(name, 0) + got
                if read[name] >= self.DROP_EVERY:  # read once: keep the page cache for what is used
                    drop_cache(fh.fileno())
                    read[name] = 0
                rec = (name, off, n, payload, got, corr)
                while not self.closed.is_set() and not self.stop.is_set():
                    try:
                        self.q.put(rec, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                else:
                    return
        except OSError as exc:
            self.q.put(exc)
        finally:
            for fh in handles.values():
                drop_cache(fh.fileno())
                fh.close()

    def more(self) -> bool:
        return self.left > 0 and not self.closed.is_set()

    def next(self):
        while True:
            try:
                rec = self.q.get(timeout=0.5)
                break
            except queue.Empty:
                if self.stop.is_set():
                    raise Interrupted("stopping") from None
        if isinstance(rec, Exception):
            raise rec
        self.left -= 1
        return rec

    def close(self) -> None:
        self.closed.set()


class TokenBucket:
    """Bandwidth cap in bytes/s (0 = none); ``take`` sleeps on the stop event, never busy-waits."""

    def __init__(self, rate: int, stop: threading.Event):
        self.rate = rate
        self.stop = stop
        self.tokens = float(rate)
        self.t = time.monotonic()
        self._lock = threading.Lock()  # shared by the transfer lanes

    def take(self, n: int) -> None:
        if not self.rate:
            return
        while True:
            with self._lock:
                now = time.monotonic()
                self.tokens = min(float(self.rate), self.tokens + (now - self.t) * self.rate)
                self.t = now
                if self.tokens >= min(n, self.rate):
                    self.tokens -= n
                    return
                wait = (min(n, self.rate) - self.tokens) / self.rate
            if self.stop.wait(wait):
                raise Interrupted("stopping")

