"""The outbox drainer: sealed items from the ledger to the archive (protocol in docs/mqtt.md).

One worker thread takes the next item (``priority`` ascending, then ``device_seq``), sends its
manifest, then the byte ranges the archive does not hold yet in chunks (offset + SHA-256 in user
properties), then ``finish``; the item is marked archived only on the archive's ``stored`` answer.
Every request waits for the archive's answer with a timeout and is retransmitted; after any
interruption the worker asks the archive which ranges it holds (``query``) and sends only the rest.
The ledger is the outbox: nothing depends on paho's in-memory session.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import itertools
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..evidence import blocks, hashing, manifest as mf
from agent.common.fs import drop_cache
from agent.wire import protocol as P
from agent.wire.mqtt import PublishError
from agent.wire.receipts import ReceiptError, new_nonce
from .trust import NO_KEY, archive_trust

log = logging.getLogger(__name__)

#: items of priority below this (room segments) preempt a running transfer of a larger number
PREEMPT_CHECK_S = 1.0


class Interrupted(Exception):
    """The connection dropped, the agent is stopping, or a more urgent item arrived."""


class _Waiter:
    """One request waiting for its answer. ``nonce`` (manifest, query, finish): only an answer
    signed by a pinned archive key, about ``item``, carrying this nonce settles it. Without
    (chunks): an unsigned ``ok``/``error`` about ``item`` does, which only paces the window."""

    __slots__ = ("event", "answer", "sent", "meta", "item", "nonce", "kind")

    def __init__(self, meta: Any = None, item: str | None = None, nonce: str | None = None, kind: str = "chunk"):
        self.event = threading.Event()
        self.answer: P.Answer | None = None
        self.sent = time.monotonic()
        self.meta = meta
        self.item = item
        self.nonce = nonce
        self.kind = kind


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


class _Prefetcher:
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


class Transfer:
    def __init__(self, uplink):
        self.up = uplink
        self.store = uplink.store
        cfg = uplink.cfg.uplink
        self.chunk_size = cfg.chunk_size
        self.ack_timeout = float(cfg.ack_timeout_s)
        self.max_inflight = cfg.max_inflight
        #: items carried at once; each lane sends one item, all share one window of chunks, so one
        #: item's start (manifest) and end (last answers, finish) overlap another's chunks
        self.lanes = cfg.parallel_items
        self.stop_event = uplink.stop_event
        self.bucket = TokenBucket(cfg.bandwidth_limit, self.stop_event)
        #: the archive keys pinned on this device: every answer that counts is signed by one
        self.trust = archive_trust(uplink.cfg)
        self._trust_checked = time.monotonic()
        #: answers not taken: unsigned, signed by another key, about another item, wrong nonce
        self.answers_ignored = 0
        self.receipts_refused = 0
        self._corr = itertools.count(1)
        self._waiters: dict[bytes, _Waiter] = {}
        self._wlock = threading.Lock()
        self._answers = threading.Condition(self._wlock)
        self._threads: list[threading.Thread] = []
        self.wake = threading.Event()
        #: items a lane is sending now (-> priority); claimed under _claim
        self._active: dict[str, int] = {}
        #: items being sent, until their finish is out (-> priority): a lane with a less urgent
        #: item takes no chunk slot meanwhile, so a live room segment is archived first
        self._publishing: dict[str, int] = {}
        self._claim = threading.RLock()
        self._inflight_total = 0  # chunks in flight over all lanes (<= window)
        # statistics
        self.items_archived = 0
        self.items_rejected = 0
        self.retransmits = 0
        self.last_answer_at: float | None = None
        self.chunk_latency: collections.deque[float] = collections.deque(maxlen=100_000)
        self.item_latency: collections.deque[float] = collections.deque(maxlen=10_000)
        self._rate: collections.deque[tuple[float, int]] = collections.deque(maxlen=4096)
        self._last_purge = 0.0
        #: item -> (correlation, waiter, started, annotations, manifest hash, files) of finishes not answered yet
        self._finishing: dict[str, tuple[bytes, _Waiter, float, int, str, list]] = {}
        self.pipeline_depth = self.lanes + 1

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        for n in range(self.lanes):
            th = threading.Thread(target=self._run, name=f"uplink-transfer-{n}", daemon=True)
            self._threads.append(th)
            th.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for th in self._threads:
            th.join(max(0.0, deadline - time.monotonic()))

    @property
    def current(self) -> str | None:
        """The item being sent (the oldest, when several lanes are busy)."""
        active = sorted(self._active)
        return active[0] if active else None

    @property
    def current_items(self) -> list[str]:
        return sorted(self._active)

    def _take_slot(self, priority: int) -> bool:
        with self._claim:
            if any(p < priority for p in self._publishing.values()):
                return False  # a more urgent item (a live room segment) is sending: it goes first
            if self._inflight_total < self.window:
                self._inflight_total += 1
                return True
            return False

    def _give_slots(self, n: int) -> None:
        if n <= 0:
            return
        with self._claim:
            self._inflight_total -= n
        with self._answers:  # a lane waiting for a free slot looks again
            self._answers.notify_all()

    @property
    def window(self) -> int:
        # leave two slots of the broker's Receive Maximum to status/health/commands
        return max(1, min(self.max_inflight, self.up.conn.receive_maximum - 2))

    def bytes_per_s(self) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._rate) if now - t <= 10]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1.0)
        return sum(n for _, n in recent) / span

    # --- answers from the archive (paho network thread) -------------------------------------
    def on_answer(self, payload: bytes, properties: Any) -> None:
        corr = getattr(properties, "CorrelationData", None)
        try:
            ans = P.parse_answer(payload)
        except P.ProtocolError as exc:
            self.ignore(f"malformed archive answer: {exc}")
            return
        corrs = [bytes(corr)] if corr is not None else []
        for extra in ans.more or []:
            try:
                corrs.append(base64.b64decode(extra, validate=True))
            except (ValueError, TypeError):
                pass
        with self._answers:
            for c in corrs:
                w = self._waiters.get(c)
                if w is None:
                    continue  # a late answer to a request already retried: harmless
                if w.nonce is not None:
                    try:
                        self.trust.check_answer(ans.raw, device=self.up.device, item=w.item, nonce=w.nonce)
                    except ReceiptError as exc:
                        self.ignore(f"answer ({ans.status}) to the {w.kind} of {w.item}: {exc}")
                        continue
                    self.last_answer_at = time.monotonic()
                elif ans.kind != "chunk":
                    # (one chunk answer may settle chunks of several items of this device: ``more``)
                    self.ignore(f"a {ans.kind} answer about {ans.item!r} for a chunk of {w.item}")
                    continue
                w.answer = ans
                w.event.set()
            self._answers.notify_all()

    def ignore(self, why: str) -> None:
        """An archive message not taken (logged, counted; the first ones in full)."""
        self.answers_ignored += 1
        if self.answers_ignored <= 20 or self.answers_ignored % 1000 == 0:
            log.warning("ignored (%d so far): %s", self.answers_ignored, why)

    def _trusted(self) -> bool:
        """Whether an archive key is pinned (re-read every 10 s while none is: `uplink trust-archive`
        takes effect without a restart)."""
        if self.trust:
            return True
        if time.monotonic() - self._trust_checked > 10:
            self._trust_checked = time.monotonic()
            try:
                self.trust = archive_trust(self.up.cfg)
            except Exception as exc:
                self.up.note_error(str(exc))
        if not self.trust and self.up.last_error_local != NO_KEY:
            self.up.note_error(NO_KEY)
        return bool(self.trust)

    # --- the worker -------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 1.0
        while not self.stop_event.is_set():
            if not self.up.conn.connected:
                with self._claim:
                    for corr, *_ in self._finishing.values():  # unanswered: resumed by query later
                        self._drop_waiter(corr)
                    self._finishing.clear()
                self.up.conn.wait_connected(1.0)
                continue
            if not self._trusted():  # no pinned archive key: send nothing, free nothing
                self.stop_event.wait(1.0)
                continue
            self._maybe_purge()
            try:
                self._reap_finishes()
            except Exception as exc:  # e.g. the ledger on a full disk: the worker must survive it
                self.up.note_error(f"recording a finished transfer failed: {exc}")
                log.exception("recording a finished transfer failed")
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 60)
                continue
            with self._claim:
                row = self._next_item()
                if row is not None:
                    self._active[row["id"]] = self._publishing[row["id"]] = row["priority"]
            if row is None:
                if self._finishing:
                    with self._answers:
                        self._answers.wait(0.05)
                    continue
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                self.send_item(row)
                backoff = 1.0
            except Interrupted as exc:
                log.info("transfer of %s paused: %s", row["id"], exc)
            except Exception as exc:  # keep draining; the item stays in the outbox
                self.up.note_error(f"transfer of {row['id']} failed: {exc}")
                log.exception("transfer of %s failed", row["id"])
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 60)
            finally:
                with self._claim:
                    self._active.pop(row["id"], None)
                    self._publishing.pop(row["id"], None)
                with self._answers:  # a lane held back by this item's priority looks again
                    self._answers.notify_all()

    def _next_item(self, below: int | None = None) -> dict | None:
        with self._claim:
            busy = list(self._finishing) + list(self._active)
        return self.store.next_to_send(below=below, exclude=busy)

    def _reap_finishes(self) -> None:
        """Settle finishes sent without waiting (the archive verifies item N while item N+1's
        chunks flow). Anything but a clear 'stored' or 'rejected' leaves the item in the outbox,
        where it is taken up again (query first)."""
        now = time.monotonic()
        with self._claim:
            done = [(item, v) for item, v in self._finishing.items() if v[1].event.is_set()]
            late = [(item, v) for item, v in self._finishing.items()
                    if not v[1].event.is_set() and now - v[1].sent > self.ack_timeout]
            for item, _ in done + late:
                del self._finishing[item]
            self._active.update((item, 0) for item, _ in done)  # no other lane takes it up meanwhile
        failed: Exception | None = None
        for item, (corr, w, started, n_anns, mhash, files) in done:
            try:  # an item whose state cannot be recorded (e.g. a full disk) stays in the outbox
                a = w.answer
                self._drop_waiter(corr)
                if a.status == P.STORED and (a.annotations or 0) >= n_anns:
                    self._archived(item, a, started, mhash, files, n_anns)
                elif a.status == P.REJECTED:
                    self._rejected(item, a)
                else:
                    log.info("finish of %s answered %s: taking it up again", item, a.status)
            except Exception as exc:
                failed = failed or exc
            finally:
                with self._claim:
                    self._active.pop(item, None)
        for item, (corr, w, started, *_rest) in late:
            self._drop_waiter(corr)
            self.retransmits += 1
            log.warning("no archive answer to the finish of %s within %.0f s: asking again", item, self.ack_timeout)
        if failed is not None:
            raise failed

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        with self._claim:
            if now - self._last_purge < 60:
                return
            self._last_purge = now
        if not self.trust:  # nothing is freed on this device without a pinned archive key
            return
        try:
            purged = self.store.purge_expired()
            if purged:
                log.info("retention: removed local copies of %d archived item(s)", len(purged))
        except Exception:
            log.exception("purge failed")

    # --- one item ---------------------------------------------------------------------------
    def send_item(self, row: dict) -> str:
        """Carry one item until the archive stores or rejects it. Returns the final status."""
        item = row["id"]
        d = Path(row["path"])
        mbytes = (d / mf.MANIFEST).read_bytes()
        sig = (d / mf.SIGNATURE).read_bytes()
        manifest = json.loads(mbytes)
        files = manifest["files"]
        anns = [(a.data, (d / mf.ANNOTATIONS_DIR / f"{a.seq:04d}.sig").read_bytes())
                for a in mf.read_annotations(d)]
        started = time.monotonic()
        if row["state"] == "sealed":
            self.store.set_state(item, "uploading", "upload", actor="agent:uplink")
            ans = self._request(item, "manifest", mbytes, P.manifest_props(sig))
        else:  # interrupted earlier: ask what the archive already holds
            ans = self._request(item, "query", b"{}")
            if ans.status == P.UNKNOWN:
                ans = self._request(item, "manifest", mbytes, P.manifest_props(sig))
        for _round in range(20):
            if ans.status == P.REJECTED:
                return self._rejected(item, ans)
            if ans.status == P.ERROR:  # not now (e.g. the archive's disk is low): the item stays, sent again later
                raise RuntimeError(f"the archive cannot take {item} now: {ans.reason}")
            if ans.status == P.STORED and (ans.annotations or 0) >= len(anns):
                return self._archived(item, ans, started, row["manifest_hash"], files, len(anns))
            if ans.status == P.UNKNOWN:
                ans = self._request(item, "manifest", mbytes, P.manifest_props(sig))
                continue
            if ans.status in (P.RECEIVING, P.INCOMPLETE):
                ans = self._send_ranges(item, d, manifest, ans.held or {}, row["priority"])
                if ans is not None:
                    continue  # the archive forgot the item mid-way (UNKNOWN) or refused it
            # all ranges held (or already stored with fewer annotations): finish
            payload = P.finish_payload(files, anns)
            with self._claim:
                pipelined = len(self._finishing) < self.pipeline_depth
            if pipelined:
                corr, w = self._new_waiter(item=item, nonce=new_nonce(), kind="finish")
                w.sent = time.monotonic()
                self._publish(self.up.topics.xfer(self.up.device, item, "finish"), payload,
                              [("proto", P.PROTO), ("nonce", w.nonce)], corr)
                with self._claim:
                    self._finishing[item] = (corr, w, started, len(anns), row["manifest_hash"], files)
                return "finishing"
            ans = self._request(item, "finish", payload)
        raise RuntimeError(f"{item}: no progress after 20 rounds with the archive (last answer {ans.status})")

    def _archived(self, item: str, ans: P.Answer, started: float, manifest_hash: str, files: list[dict],
                  annotations: int) -> str:
        """Mark ``item`` archived, only with a receipt that verifies: signed by a pinned archive key,
        this device, this item, the nonce of the request it answers, the sealed manifest's hash,
        every file's name, size and hash (agent.wire.receipts). Otherwise the item stays."""
        from agent.common.faults import crashpoint  # fault-injection tests stop here (EDGE_AGENT_CRASH_AT)
        try:
            receipt = self.trust.check_receipt(ans.receipt, device=self.up.device, item=item,
                                               nonce=(ans.raw or {}).get("nonce"), manifest_hash=manifest_hash,
                                               files=files, annotations=annotations)
        except ReceiptError as exc:
            self.receipts_refused += 1
            raise RuntimeError(f"archive receipt for {item} refused, the item stays in the outbox: {exc}") from None
        crashpoint("uplink:before-mark-archived")
        self.store.mark_archived(item, receipt)
        self.items_archived += 1
        self.item_latency.append(time.monotonic() - started)
        log.info("archived %s (receipt by archive key %s)", item, receipt.get("key_id"))
        if self.store.cfg.storage.retention_days == 0:
            self.store.purge_expired()
        return P.STORED

    def _rejected(self, item: str, ans: P.Answer) -> str:
        reason = ans.reason or "no reason given"
        self.store.set_state(item, "rejected", "reject", actor="agent:uplink", error=f"archive: {reason}")
        self.items_rejected += 1
        self.up.note_error(f"archive rejected {item}: {reason}")
        return P.REJECTED

    def _send_ranges(self, item: str, d: Path, manifest: dict, held: dict, priority: int) -> P.Answer | None:
        """Send every byte range not in ``held``; returns None when all are acknowledged, or the
        answer that stops the transfer (UNKNOWN, REJECTED)."""
        chunk = min(self.chunk_size, self.up.conn.max_payload(self.up.topics.xfer(self.up.device, item, "chunk"),
                                                          P.MAX_CHUNK_HEADER))
        table = blocks.BlockTable.from_manifest(manifest)

        def plan(held: dict) -> list[tuple[str, int, int]]:
            # one chunk per sealed block (pieces of a block larger than a chunk): the archive
            # checks each against the block's hash in the signed manifest (docs/mqtt.md, "chunk")
            return blocks.plan(table, held, chunk)

        # chunks are read and hashed ahead on another thread (hashlib releases the GIL) while
        # this one publishes; a chunk to send again is read here (``todo``)
        pf = _Prefetcher(d, plan(held), self.stop_event, self._next_corr, known=block_hashes(manifest))
        todo: collections.deque[tuple[str, int, int]] = collections.deque()
        topic = self.up.topics.xfer(self.up.device, item, "chunk")
        inflight: dict[bytes, _Waiter] = {}
        handles: dict[str, Any] = {}
        last_preempt = time.monotonic()
        errors = 0
        try:
            while todo or pf.more() or inflight:
                self._check()
                if time.monotonic() - last_preempt > PREEMPT_CHECK_S:
                    last_preempt = time.monotonic()
                    if self._next_item(below=priority) is not None:
                        raise Interrupted("a more urgent item (e.g. a live room segment) goes first")
                while (todo or pf.more()) and self._take_slot(priority):
                    try:
                        if todo:
                            name, off, n = todo.popleft()
                            fh = handles.get(name)
                            if fh is None:
                                fh = handles[name] = open(d / mf.FILES_DIR / name, "rb")
                            corr = self._next_corr()
                            payload, got = chunk_message(fh, name, off, n, corr)
                        else:
                            name, off, n, payload, got, corr = pf.next()
                    except BaseException:
                        self._give_slots(1)  # taken for a chunk that was never sent
                        raise
                    corr, w = self._new_waiter((name, off, n), corr, item=item)
                    inflight[corr] = w  # holds the slot just taken
                    self.bucket.take(got)
                    # offset, hash and correlation in a header line, no MQTT properties (protocol.py)
                    self._publish(topic, payload)
                    self._rate.append((time.monotonic(), got))
                # wait for any answer, or for the oldest to time out
                oldest = min(w.sent for w in inflight.values()) if inflight else time.monotonic()
                with self._answers:
                    if not any(w.event.is_set() for w in inflight.values()):
                        self._answers.wait(min(0.5, max(0.01, oldest + self.ack_timeout - time.monotonic())))
                now = time.monotonic()
                for corr, w in list(inflight.items()):
                    if w.event.is_set():
                        del inflight[corr]
                        self._give_slots(1)
                        self._drop_waiter(corr)
                        a = w.answer
                        if a.status == P.OK:
                            self.chunk_latency.append(now - w.sent)
                            continue
                        if a.status != P.ERROR:
                            # a chunk answer is no authority on the item (unsigned): ask the archive
                            # with a signed query, and send the chunk again unless the item is done
                            q = self._request(item, "query", b"{}")
                            if q.status in (P.UNKNOWN, P.REJECTED):
                                return q
                            todo.appendleft(w.meta)
                            continue
                        errors += 1  # ERROR: this chunk was refused (e.g. hash); send it again
                        log.warning("archive refused chunk %s@%s of %s: %s", w.meta[0], w.meta[1], item, a.reason)
                        altered = local_block_altered(d, table, w.meta[0], w.meta[1])
                        if altered:  # sending it again cannot help: the archive holds to the signed manifest
                            return P.Answer(item=item, kind="chunk", status=P.REJECTED, reason=altered)
                        if errors > 10:
                            raise RuntimeError(f"archive refused {errors} chunks of {item}; last: {a.reason}")
                        self.retransmits += 1
                        todo.appendleft(w.meta)
                self._reap_finishes()
                if inflight and now - oldest > self.ack_timeout:
                    # chunks lost somewhere (e.g. the broker's queue limit, a receiver that died):
                    # ask the archive what it has and resend only the rest
                    log.warning("no archive answer for %d chunk(s) of %s within %.0f s: querying",
                                len(inflight), item, self.ack_timeout)
                    for corr in inflight:
                        self._drop_waiter(corr)
                    self._give_slots(len(inflight))
                    inflight.clear()
                    ans = self._request(item, "query", b"{}")
                    if ans.status in (P.UNKNOWN, P.REJECTED, P.STORED):
                        return ans if ans.status != P.STORED else None
                    pf.close()
                    todo.clear()
                    todo.extend(plan(ans.held or {}))
                    self.retransmits += len(todo)
        finally:
            pf.close()
            for fh in handles.values():
                fh.close()
            for corr in inflight:
                self._drop_waiter(corr)
            self._give_slots(len(inflight))
        return None

    # --- request / answer -------------------------------------------------------------------
    def _check(self) -> None:
        if self.stop_event.is_set():
            raise Interrupted("stopping")
        if not self.up.conn.connected:
            raise Interrupted("connection lost")

    def _next_corr(self) -> bytes:
        return f"{self.up.session}-{next(self._corr)}".encode()

    def _new_waiter(self, meta: Any = None, corr: bytes | None = None, *, item: str | None = None,
                    nonce: str | None = None, kind: str = "chunk") -> tuple[bytes, _Waiter]:
        corr = corr or self._next_corr()
        w = _Waiter(meta, item, nonce, kind)
        with self._wlock:
            self._waiters[corr] = w
        return corr, w

    def _drop_waiter(self, corr: bytes) -> None:
        with self._wlock:
            self._waiters.pop(corr, None)

    def _publish(self, topic: str, payload: bytes, props: list[tuple[str, str]] | None = None,
                 corr: bytes | None = None):
        """A request; without ``corr`` a chunk, whose correlation data is in its header (no properties)."""
        try:
            if corr is None:
                return self.up.conn.publish(topic, payload, qos=1, timeout=self.ack_timeout)
            return self.up.conn.publish(topic, payload, qos=1, user_properties=props,
                                        response_topic=self.up.ack_topic, correlation=corr, timeout=self.ack_timeout)
        except PublishError as exc:
            if not self.up.conn.connected:
                raise Interrupted(str(exc)) from None
            raise

    def _request(self, item: str, kind: str, payload: bytes, props: list[tuple[str, str]] | None = None) -> P.Answer:
        """Publish one request and wait for the archive's answer; retransmit on timeout."""
        topic = self.up.topics.xfer(self.up.device, item, kind)
        props = [p for p in (props or [("proto", P.PROTO)]) if p[0] != "nonce"]
        attempt = 0
        while True:
            self._check()
            corr, w = self._new_waiter(item=item, nonce=new_nonce(), kind=kind)
            props_n = props + [("nonce", w.nonce)]
            try:
                h = self._publish(topic, payload, props_n, corr)
                deadline = time.monotonic() + self.ack_timeout
                while not w.event.wait(0.2):
                    self._check()
                    if h.event.is_set() and (h.reason or 0) >= 0x80:
                        # the broker refused it (e.g. ACL): the archive will never see it
                        raise RuntimeError(f"broker refused the {kind} of {item}: {h.error}")
                    if time.monotonic() > deadline:
                        break
                if w.answer is not None:
                    return w.answer
            finally:
                self._drop_waiter(corr)
            attempt += 1
            self.retransmits += 1
            log.warning("no archive answer to %s of %s within %.0f s (attempt %d): retransmitting",
                        kind, item, self.ack_timeout, attempt)
