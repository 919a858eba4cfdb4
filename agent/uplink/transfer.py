"""The outbox drainer: sealed items from the ledger to the archive (protocol in docs/mqtt.md).

One worker thread takes the next item (``priority`` ascending, then ``device_seq``), sends its
manifest, then the byte ranges the archive does not hold yet in chunks (offset + SHA-256 in user
properties), then ``finish``; the item is marked archived only on the archive's ``stored`` answer.
Every request waits for the archive's answer with a timeout and is retransmitted; after any
interruption the worker asks the archive which ranges it holds (``query``) and sends only the rest.
The ledger is the outbox: nothing depends on paho's in-memory session.
"""


from __future__ import annotations

import collections
import itertools
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from ..evidence import blocks, manifest as mf
from agent.wire import protocol as P
from agent.wire.receipts import new_nonce
from .answers import Answers, _Waiter
from .chunks import Interrupted, Prefetcher, TokenBucket, block_hashes, chunk_message, local_block_altered
from .trust import archive_trust

log = logging.getLogger(__name__)

#: items of priority below this (room segments) preempt a running transfer of a larger number
PREEMPT_CHECK_S = 1.0


class Transfer(Answers):
    """The sending lanes: each takes the next item and carries it until the archive answers."""

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

    @property
    def idle(self) -> bool:
        """No item being sent or waiting for its finish: the connection's safe point to move."""
        with self._claim:
            return not self._active and not self._finishing

    def _next_item(self, below: int | None = None) -> dict | None:
        if self.up.conn.failback_pending:  # moving back to the primary: no new item until then
            return None
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
            # a finish unanswered past the timeout, or sent on an earlier connection (its answer
            # went to the broker the device left): asked again
            epoch = self.up.conn.connects
            late = [(item, v) for item, v in self._finishing.items() if not v[1].event.is_set()
                    and (now - v[1].sent > self.ack_timeout or v[1].epoch != epoch)]
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
            log.warning("no archive answer to the finish of %s within %.0f s or on this connection: asking again",
                        item, self.ack_timeout)
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
                w.epoch = self.up.conn.connects
                self._publish(self.up.topics.xfer(self.up.device, item, "finish"), payload,
                              [("proto", P.PROTO), ("nonce", w.nonce)], corr)
                with self._claim:
                    self._finishing[item] = (corr, w, started, len(anns), row["manifest_hash"], files)
                return "finishing"
            ans = self._request(item, "finish", payload)
        raise RuntimeError(f"{item}: no progress after 20 rounds with the archive (last answer {ans.status})")

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
        pf = Prefetcher(d, plan(held), self.stop_event, self._next_corr, known=block_hashes(manifest))
        todo: collections.deque[tuple[str, int, int]] = collections.deque()
        topic = self.up.topics.xfer(self.up.device, item, "chunk")
        inflight: dict[bytes, _Waiter] = {}
        handles: dict[str, Any] = {}
        last_preempt = time.monotonic()
        errors = 0
        epoch = self.up.conn.connects
        try:
            while todo or pf.more() or inflight:
                self._check(epoch)
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
                    self._check(epoch)  # (the bucket may have waited through a change of broker)
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
                # the oldest chunk still unanswered (``oldest`` above may be one answered since: a
                # burst at the bandwidth cap can take longer than the timeout to go out)
                if inflight and now - min(w.sent for w in inflight.values()) > self.ack_timeout:
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
