"""The archive receiver (``edge-agent archive serve``): subscribes to every device's transfer
topics (optionally as ``$share/GROUP/...`` so several receivers split the work), hands each
message to :class:`ArchiveStore`, and answers on the request's response topic with its
correlation data. The broker gets its PUBACK only after the message has been handled (manual
acknowledgement), so a receiver killed mid-message leaves the message to be redelivered or
retransmitted by the agent; receivers deduplicate.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agent.wire import protocol as P
from agent.wire.claim import session_login
from agent.wire.client import ConnSettings
from agent.wire.lean import install_lean_decoder
from agent.wire.mqtt import Connection
from agent.wire.publish import PublishError
from agent.wire.receipts import STATUS_INTERVAL_S, ArchiveSigner, valid_nonce
from agent.wire.topics import Topics, safe_segment
from agent.common.faults import faultpoint
from . import receivers
from .storage import ArchiveStore
from .upkeep import Coalescer

log = logging.getLogger(__name__)

#: successful chunk answers of one device sent as one message (at most this many: the agent's
#: window is the broker's Receive Maximum less two, 18 with Mosquitto's defaults, and a batch must
#: not hold it up)...
ANSWER_BATCH = 8
#: ... gathered while the next chunk arrives within this long of the batch's first answer. Sent
#: as soon as the queue was empty, one answer message and one index commit went out for every
#: 1.5 chunks (measured: 338 answers for 512 chunks); waiting a few ms for the next chunk makes
#: it one for several, at the cost of those ms of acknowledgement latency
ANSWER_WAIT_S = 0.004
#: abandoned partial transfers are looked for this often (and at start)
SWEEP_S = 3600
#: chain gap and silence (agent/archive/chain.py) are evaluated this often
CHAIN_S = 60
#: the archive signs a checkpoint over its whole store this often (archive.checkpoint_every_h)
CHECKPOINT_S = 3600
#: ... and the first one this soon after start
FIRST_CHECKPOINT_S = 30.0


class Receiver:
    name = "archive-receiver"

    def __init__(self, store: ArchiveStore, settings: ConnSettings, *, prefix: str = "edge",
                 share: str | None = None, receiver_id: str | None = None, receiver_key: Path | None = None):
        self.store = store
        store.batch_ranges = True
        self.topics = Topics(prefix)
        self.share = share
        self.rid = receiver_id or settings.client_id
        #: answers, receipts and status are signed with this receiver's own key when it is enrolled
        #: (agent/archive/receivers.py; a revoked one refuses to start), else the root's key
        key = receivers.signing_key(store.root, self.rid, receiver_key)
        self.signer = ArchiveSigner(key if key is not None else store.signing_key, self.rid)
        self.stop_event = threading.Event()
        self.lean_decoder = install_lean_decoder()  # every chunk arrives through it: one copy, not four
        # one login, one session: a second receiver logging in with this login is detected, not fought
        # (with a client certificate and no user name, the certificate's CN: certificate identities)
        login = session_login(settings)
        claim = self.topics.session(login) if login and safe_segment(login) else None
        self.conn = Connection(settings, stop_event=self.stop_event, will=self._will, on_connect=self._on_connect,
                               on_message=self._on_message, name="archive", manual_ack=True, raw_payloads=True,
                               claim=claim)
        self._q: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self._fq: collections.deque = collections.deque()
        self._fcv = threading.Condition()
        self._finisher: threading.Thread | None = None
        self.handled = collections.Counter()
        self.refused = 0
        self.faults = 0  # messages whose handling failed (counted, logged coalesced, on record)
        self.seen = 0    # messages handled (whatever the outcome)
        self._failure: str | None = None
        self._next_sweep = 0.0
        self._next_chain = time.monotonic() + CHAIN_S
        #: the first archive-wide checkpoint this many seconds after start(), then every checkpoint_every_s
        self.first_checkpoint_s = FIRST_CHECKPOINT_S
        self._next_merkle = time.monotonic() + self.first_checkpoint_s
        self.checkpoint_every_s = CHECKPOINT_S
        self.notes = Coalescer()
        self.busy: collections.Counter = collections.Counter()  # seconds spent per message kind
        self.started = time.time()

    def _status(self, state: str) -> bytes:
        """Signed, with the time: an agent counts a receiver online only while this is fresh, so
        receivers republish it every STATUS_INTERVAL_S (:meth:`_heartbeat`)."""
        return json.dumps(self.signer.status(state, pid=os.getpid(), share=self.share),
                          ensure_ascii=False).encode()

    def _heartbeat(self) -> None:
        while not self.stop_event.wait(STATUS_INTERVAL_S):
            if self.conn.connected:
                self._on_connect(self.conn)

    def _will(self):
        return self.topics.archive_receiver(self.rid), self._status("offline")

    def start(self) -> None:
        self._next_merkle = time.monotonic() + self.first_checkpoint_s
        self.conn.subscribe(self.topics.all_xfer(self.share), 1)
        self.conn.subscribe(self.topics.all_chains(), 1)
        self._worker = threading.Thread(target=self._work, name="archive-worker", daemon=True)
        self._worker.start()
        self._finisher = threading.Thread(target=self._work, args=(self._fq, self._fcv), name="archive-finisher",
                                          daemon=True)
        self._finisher.start()
        self._beat = threading.Thread(target=self._heartbeat, name="archive-status", daemon=True)
        self._beat.start()
        self.conn.start()

    def stop(self) -> None:
        self.stop_event.set()
        for cv in (self._cv, self._fcv):
            with cv:
                cv.notify_all()
        for th in (self._worker, self._finisher):
            if th:
                th.join(30)
        self.conn.stop(final=(self.topics.archive_receiver(self.rid), self._status("offline")))
        log.info("receiver %s stopped: answers %s, busy seconds %s, verified %s", self.rid, dict(self.handled),
                 {k: round(v, 3) for k, v in self.busy.items()}, dict(self.store.verified))

    def status(self) -> dict:
        return {"receiver": self.rid, "connected": self.conn.connected, "handled": dict(self.handled),
                "refused": self.refused, "faults": self.faults, "failure": self.failure, "queued": len(self._q),
                "last_error": self.conn.last_error,
                "verified": dict(self.store.verified)}

    def _on_connect(self, conn: Connection) -> None:
        try:
            conn.publish(self.topics.archive_receiver(self.rid), self._status("online"), retain=True, timeout=10)
        except PublishError as exc:
            log.warning("cannot publish the receiver status: %s", exc)

    def _on_message(self, topic: str, payload: bytes, props: Any, ack: Callable[[], None]) -> None:
        try:
            hashed = None
            if self.topics.kind_of(topic) == "chunk":
                # hashed here, on the network thread (the hash lets go of Python's lock), while the
                # worker writes the chunk before: the two overlap (parse_chunk checks it)
                hashed = P.chunk_digest(payload)
            elif not isinstance(payload, bytes):
                payload = bytes(payload)  # the others as bytes (a chunk's are only hashed, parsed and written: no copy)
            with self._cv:
                self._q.append((topic, payload, props, ack, hashed))
                self._cv.notify()
        except Exception as exc:  # never lose the broker's window: acknowledge what cannot be queued
            self._fault(topic, exc)
            _safe_ack(ack)

    @property
    def failure(self) -> str | None:
        """Why this receiver can no longer work (a worker or the connection thread died), or None.
        `archive serve` exits non-zero on it, so systemd restarts the process."""
        if self._failure is None and self.conn.taken_over:
            self._failure = self.taken_over_message()
        if self._failure is None and not self.stop_event.is_set():
            th = getattr(self.conn, "_thread", None)
            if th is not None and not th.is_alive():
                self._failure = f"{th.name}: the MQTT connection thread ended"
        return self._failure

    def taken_over_message(self) -> str:
        login = (self.conn.claim.login if self.conn.claim else None) or self.conn.s.username or "archive"
        return (f"另一个接收端以同一登录名登录 / another receiver logged in as {login!r} and took this one's session "
                f"({self.conn.taken_by or 'the broker closed this connection'}); give each receiver its own login (`edge-agent archive receiver add NAME`"
                + (", and with certificate identities a client certificate of its own whose CN is that NAME" if not self.conn.s.username else "")
                + "); "
                "this receiver stops rather than take it back (every item stays with its device until a receiver "
                "answers stored)")

    def _fail(self, exc: BaseException) -> None:
        name = threading.current_thread().name
        log.critical("%s died: %r; the receiver stops (the process exits non-zero)", name, exc, exc_info=exc)
        self._failure = f"{name}: {exc!r}"
        self.stop_event.set()
        for cv in (self._cv, self._fcv):
            with cv:
                cv.notify_all()

    def _fault(self, topic: str, exc: BaseException) -> None:
        """A message that made a handler fail: counted, logged (coalesced) and on record."""
        with self._cv:
            self.faults += 1
        self.notes.log(log, "fault", "handling a message on %s failed: %r", ascii(topic), exc, exc_info=exc)
        self.store.note_refusal(None, None, f"message on {ascii(topic)[:200]} failed: {exc!r}")

    def _work(self, q: collections.deque | None = None, cv: threading.Condition | None = None) -> None:
        """The worker threads' body: whatever escapes per-message handling ends the receiver."""
        try:
            self._work_loop(q, cv)
        except BaseException as exc:
            self._fail(exc)

    def _work_loop(self, q: collections.deque | None = None, cv: threading.Condition | None = None) -> None:
        """Handle messages in order; ``finish`` (verification, fsync: the slow part) goes to its
        own thread so the chunks of the next item keep flowing meanwhile. Successful chunk
        answers of one device are batched, up to ANSWER_BATCH or until no chunk has come within
        ANSWER_WAIT_S (one answer message carries the others' correlation data in ``more``; their
        ranges are committed to the index before it is sent). Every message is acknowledged to the
        broker once handled, whatever happened; a failure is counted and the next message goes on."""
        q = self._q if q is None else q
        cv = self._cv if cv is None else cv
        batch: list[tuple[str, Any, P.Answer]] = []
        batch_since = 0.0
        while True:
            with cv:
                if not q and batch:  # the next chunk usually comes within a few ms: answer them together
                    left = batch_since + ANSWER_WAIT_S - time.monotonic()
                    if left > 0 and not self.stop_event.is_set():
                        cv.wait(left)
                else:
                    while not q and not self.stop_event.is_set():
                        cv.wait(0.5)
                        if q is self._q and time.monotonic() >= min(self._next_merkle, self._next_chain,
                                                                      self._next_sweep):
                            break  # an idle archive still sweeps _tmp (at start), signs its checkpoint, evaluates chains
                nxt = q.popleft() if q else None
            if q is self._q and time.monotonic() >= self._next_sweep:  # at start, then hourly
                self._next_sweep = time.monotonic() + SWEEP_S
                self._guarded("sweep", self.store.sweep)
            if q is self._q and time.monotonic() >= self._next_merkle:  # the archive-wide checkpoint
                self._next_merkle = time.monotonic() + self.checkpoint_every_s
                self._guarded("checkpoint", self.publish_store_checkpoint)
            if q is self._q and time.monotonic() >= self._next_chain:  # chain gap and silence, every minute
                self._next_chain = time.monotonic() + CHAIN_S
                self._guarded("chain", self.store.evaluate_chains)
            if nxt is None:
                self._guarded("answers", self._flush, batch)
                self.notes.flush(log)
                self.store.notes.flush(log)
                if self.stop_event.is_set():
                    return
                continue
            topic, payload, props, ack, hashed = nxt
            faultpoint("archive:worker")  # fault-injection tests kill this thread here
            acked = routed = False
            try:
                kind = self.topics.kind_of(topic)
                if q is self._q and kind == "finish":
                    with self._fcv:
                        self._fq.append((topic, payload, props, ack, None))
                        self._fcv.notify()
                    acked = routed = True  # the finisher handles and acknowledges it
                    continue
                t0 = time.perf_counter()
                try:
                    res = self.handle(topic, payload, props, hashed)
                except Exception as exc:
                    self._fault(topic, exc)
                    res = None
                acked = True
                ack()  # PUBACK to the broker only now that the message is handled
                with self._cv:
                    self.busy[kind] += time.perf_counter() - t0
                if res is None:
                    continue
                dev, answer = res
                if batch and batch[0][0] != dev:
                    self._flush(batch)
                if kind == "chunk" and answer.status == P.OK:
                    if not batch:
                        batch_since = time.monotonic()
                    batch.append((dev, props, answer))
                    if len(batch) < ANSWER_BATCH:
                        continue  # answered with the next ones, or when none comes within ANSWER_WAIT_S
                    self._flush(batch)
                else:
                    self._flush(batch)
                    self._answer(dev, props, answer)
            except Exception as exc:
                batch.clear()  # those requests are answered by the agent's timeout and query
                self._fault(topic, exc)
                if not acked:
                    _safe_ack(ack)
            finally:
                if not routed:
                    with self._cv:
                        self.seen += 1

    def publish_store_checkpoint(self) -> dict:
        """Sign a checkpoint over the whole store (agent/archive/merkle.py) and publish it retained,
        with the consistency proof from the checkpoint published before (``edge-archive-consistency/1``)."""
        cp = self.store.make_checkpoint()
        rec = self.store.published_record(cp)  # with the proof from the one published before
        try:
            self.conn.publish(self.topics.archive_checkpoint(), json.dumps(rec, ensure_ascii=False, sort_keys=True).encode(),
                              retain=True, timeout=30)
            self.store.note_published(cp)
        except PublishError as exc:
            log.warning("cannot publish the archive's checkpoint: %s (kept under %s)", exc, self.store.root / "_merkle")
        log.info("archive checkpoint: %d leaves, root %s", cp["size"], cp["root"])
        return cp

    def _guarded(self, what: str, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self._fault(what, exc)

    def _flush(self, batch: list) -> None:
        if not batch:
            return
        self.store.commit_ranges()  # recorded before we say "ok"
        dev, props, answer = batch[0]
        more = []
        for _, p, a in batch[1:]:
            corr = a.corr or getattr(p, "CorrelationData", None)
            if corr:
                more.append(base64.b64encode(bytes(corr)).decode())
        if more:
            answer.more = more
        batch.clear()
        self._answer(dev, props, answer)

    def handle(self, topic: str, payload: bytes, props: Any, hashed: str | None = None) -> tuple[str, P.Answer] | None:
        """Handle one message; returns (device, answer) to send, or None."""
        parsed = self.topics.parse_xfer(topic)
        if parsed is None:
            dev = self.topics.parse_dev(topic)
            if dev and dev[1] == "chain":
                self.store.on_checkpoint(dev[0], payload)
            else:
                self.notes.log(log, "topic", "ignoring a message on %s: not a valid transfer topic", ascii(topic)[:300])
            return None
        dev, item, kind = parsed
        try:
            answer = self.store.handle(dev, item, kind, payload, P.user_props(props), hashed)
        except Exception as exc:  # a fault of ours (disk, database) or input nobody foresaw: the agent retries later
            self._fault(topic, exc)
            answer = P.Answer(item=item, kind=kind, status=P.ERROR, reason=f"archive error: {exc!r}"[:500])
        answer.reason = printable(answer.reason)
        answer.file = printable(answer.file)
        with self._cv:
            self.handled[answer.status] += 1
            if answer.status in (P.ERROR, P.REJECTED):
                self.refused += 1
        if kind == "finish":
            self._answer(dev, props, answer)
            return None
        return dev, answer

    def encode_answer(self, dev: str, props: Any, answer: P.Answer) -> bytes:
        """An answer as sent: signed and bound to the device, the item and the request's nonce
        (user property ``nonce``), except chunk answers, which only pace the agent's window."""
        if answer.kind == "chunk":
            return answer.encode()
        nonce = valid_nonce(P.user_props(props).get("nonce"))
        d = answer.to_dict()
        if isinstance(d.get("reason"), str):  # text from the wire may hold what JSON cannot sign
            d["reason"] = d["reason"].encode("utf-8", "backslashreplace").decode("utf-8")[:1000]
        return json.dumps(self.signer.answer(d, device=dev, nonce=nonce), ensure_ascii=False,
                          separators=(",", ":")).encode()

    def _answer(self, dev: str, props: Any, answer: P.Answer, qos: int = 1) -> None:
        # answers go only to the device's own ack topic, whatever the request claims
        want = self.topics.ack(dev)
        rt = getattr(props, "ResponseTopic", None)
        if rt and rt != want:
            self.notes.log(log, "response topic", "request from %s asked for answers on %r: answering on %s", dev, rt, want)
        corr = answer.corr or getattr(props, "CorrelationData", None)  # a chunk's is in its header
        try:
            payload = self.encode_answer(dev, props, answer)
        except Exception as exc:
            self.notes.log(log, "sign", "cannot sign the answer to %s of %s/%s: %r", answer.kind, dev, answer.item, exc,
                           exc_info=exc)
            return
        try:
            self.conn.publish(want, payload, qos=qos, correlation=bytes(corr) if corr else None, timeout=30)
        except PublishError as exc:
            self.notes.log(log, "answer", "cannot answer %s: %s (the agent will retransmit)", dev, exc)


def _safe_ack(ack: Callable[[], None]) -> None:
    try:
        ack()
    except Exception:
        log.exception("cannot acknowledge a message")


def printable(text: str | None) -> str | None:
    """Text from the wire made safe to send and to store (a lone surrogate becomes ``\\udxxx``)."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def new_receiver_id() -> str:
    return f"archive-{os.uname().nodename[:20]}-{secrets.token_hex(3)}"
