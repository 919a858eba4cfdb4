"""Requests to the archive and its answers (mixed into :class:`agent.uplink.transfer.Transfer`).

Every request carries a correlation and (manifest, query, finish) a fresh nonce; only an answer
signed by a pinned archive key, about that item, with that nonce settles it. An item is marked
archived only with a receipt that verifies (agent.wire.receipts).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Any

from agent.wire import protocol as P
from agent.wire.publish import PublishError
from agent.wire.receipts import ReceiptError, new_nonce
from .chunks import Interrupted
from .trust import NO_KEY, archive_trust

log = logging.getLogger("agent.uplink.transfer")  # the same logger as before the split (log lines unchanged)


class _Waiter:
    """One request waiting for its answer. ``nonce`` (manifest, query, finish): only an answer
    signed by a pinned archive key, about ``item``, carrying this nonce settles it. Without
    (chunks): an unsigned ``ok``/``error`` about ``item`` does, which only paces the window."""

    __slots__ = ("event", "answer", "sent", "meta", "item", "nonce", "kind", "epoch")

    def __init__(self, meta: Any = None, item: str | None = None, nonce: str | None = None, kind: str = "chunk"):
        self.event = threading.Event()
        self.answer: P.Answer | None = None
        self.sent = time.monotonic()
        self.meta = meta
        self.item = item
        self.nonce = nonce
        self.kind = kind
        self.epoch: int | None = None  # the connection's ``connects`` when it went out (finishes)


class Answers:
    """The request/answer half of a transfer: waiters, the answers from the archive (paho network
    thread), the pinned archive keys, and what a verified answer does to the ledger."""

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

    def reload_trust(self) -> list[str]:
        """The pinned and revoked keys read again at once (a revocation by the unit policy)."""
        trust = archive_trust(self.up.cfg)
        self.trust, self._trust_checked = trust, time.monotonic()
        return trust.key_ids

    def _trusted(self) -> bool:
        """Whether an archive key is pinned. The pinned and revoked keys are re-read every 10 s:
        `uplink trust-archive` and `uplink revoke-archive` take effect without a restart."""
        if time.monotonic() - self._trust_checked > 10:
            self._trust_checked = time.monotonic()
            try:
                self.trust = archive_trust(self.up.cfg)
            except Exception as exc:
                self.up.note_error(str(exc))
        if not self.trust and self.up.last_error_local != NO_KEY:
            self.up.note_error(NO_KEY)
        return bool(self.trust)

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

    # --- request / answer -------------------------------------------------------------------
    def _check(self, epoch: int | None = None) -> None:
        """Raise :class:`Interrupted` when stopping, offline, or (``epoch``: the connection's
        ``connects`` when the work began) on another connection since: the archive's answers to
        what went out on the old one do not come on the new one (another broker after a fail-over
        or fail-back); the item is taken up again with a query."""
        if self.stop_event.is_set():
            raise Interrupted("stopping")
        if not self.up.conn.connected:
            raise Interrupted("connection lost")
        if epoch is not None and self.up.conn.connects != epoch:
            raise Interrupted(f"now on another connection (broker {self.up.conn.broker})")

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
            epoch = self.up.conn.connects
            corr, w = self._new_waiter(item=item, nonce=new_nonce(), kind=kind)
            props_n = props + [("nonce", w.nonce)]
            try:
                h = self._publish(topic, payload, props_n, corr)
                deadline = time.monotonic() + self.ack_timeout
                while not w.event.wait(0.2):
                    self._check(epoch)
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
