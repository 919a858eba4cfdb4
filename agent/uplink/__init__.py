"""The uplink component: one MQTT v5 connection to the broker, the outbox drainer (transfer), the
birth/death status, the signed chain checkpoint, and the publish/subscribe API every other
component uses (producers never touch paho).

    agent.uplink.publish(topic, payload, qos=1, retain=False)   # never blocks; queued while offline
    agent.uplink.subscribe(topic_filter, callback)               # callback(topic, payload, properties)
    agent.uplink.connected, agent.uplink.stats(), agent.uplink.rebirth()
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import threading
import time
from typing import Any, Callable

from agent.common.timeutil import now_iso
from agent.wire import checkpoint
from agent.wire.envelope import Sealer
from agent.wire.receipts import STATUS_FRESH_S, ReceiptError
from agent.wire.client import ConnSettings, settings_from_config as _settings, topic_matches
from agent.wire.mqtt import FAILBACK, STOPPED, Connection
from agent.wire.publish import PublishError
from agent.wire.topics import Topics
from .status import STATUS_FILE
from .transfer import Transfer

log = logging.getLogger(__name__)

OFFLINE_QUEUE_MAX = 10_000


def settings_from_config(cfg, client_id: str) -> ConnSettings:
    return _settings(cfg.mqtt, client_id)


class Uplink:
    name = "uplink"

    def __init__(self, agent):
        self.agent = agent
        self.cfg = agent.cfg
        self.store = agent.store
        self.device = self.cfg.device.id
        self.topics = Topics(self.cfg.mqtt.topic_prefix)
        self.ack_topic = self.topics.ack(self.device)
        self.stop_event = threading.Event()
        self.session = secrets.token_hex(4)  # makes correlation data unique across restarts
        self.conn = Connection(settings_from_config(self.cfg, self.device), stop_event=self.stop_event,
                               will=self._will, on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                               on_message=self._on_message, name="uplink", probe=self._failback_probe,
                               safe_point=lambda: self.transfer.idle)
        self.transfer = Transfer(self)
        self._queue: collections.deque[tuple] = collections.deque()
        self._qlock = threading.Condition()
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._subs: dict[str, list[Callable]] = {}
        self._inbox: collections.deque = collections.deque(maxlen=1000)
        self._inbox_cv = threading.Condition()
        self._bdseq = int(self.store.get_meta("uplink_bdseq", "0") or 0)
        self._head_published: tuple[int, str | None, int] | None = None
        self._checkpoint_at = time.monotonic()
        self.dropped = 0
        self.errors_local = 0
        self.last_error_local: str | None = None
        self._threads: list[threading.Thread] = []
        #: receiver id -> (state, when its signed status arrived): only verified, fresh ones count
        self.archive_receivers: dict[str, tuple[str, float]] = {}
        self._sealer: Sealer | None = None

    # --- the API other components use -------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.conn.connected

    def publish(self, topic: str, payload: dict | bytes | str, *, qos: int = 1, retain: bool = False,
                correlation_data: bytes | None = None, response_topic: str | None = None) -> None:
        """Queue a message (never blocks). Retained topics keep their latest value, republished on
        every (re)connect and on :meth:`rebirth`."""
        if isinstance(payload, dict):
            data = json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str).encode()
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = bytes(payload)
        extra = (bytes(correlation_data) if correlation_data is not None else None, response_topic)
        with self._qlock:
            if retain:
                self._retained[topic] = (data, qos)
            if len(self._queue) >= OFFLINE_QUEUE_MAX:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((topic, data, qos, retain, extra))
            self._qlock.notify()

    def subscribe(self, topic_filter: str, callback: Callable[[str, bytes, Any], None]) -> None:
        self._subs.setdefault(topic_filter, []).append(callback)
        self.conn.subscribe(topic_filter, 1)

    def reload_trust(self) -> list[str]:
        """Read the pinned and revoked archive keys again now (the unit policy changed them:
        agent/policy/archive_keys.py); returns the key ids trusted from now on."""
        return self.transfer.reload_trust()

    def rebirth(self) -> None:
        """Publish the online status, every retained value and the chain checkpoint again."""
        self.publish(self.topics.status(self.device), self._status_payload("online"), retain=True)
        with self._qlock:
            for topic, (data, qos) in self._retained.items():
                self._queue.append((topic, data, qos, True, (None, None)))
            self._qlock.notify()
        self._publish_checkpoint(force=True)

    def stats(self) -> dict:
        c, t = self.conn, self.transfer
        now = time.monotonic()
        reachable = bool(t.last_answer_at and now - t.last_answer_at < 3 * t.ack_timeout) \
            or any(st == "online" and now - at < STATUS_FRESH_S for st, at in self.archive_receivers.values())
        return {
            "connected": c.connected, "broker": c.broker, "primary": c.primary, "failovers": c.failovers,
            "failbacks": c.failbacks, "failback_probe": c.last_probe, "reconnects": c.reconnects, "errors": c.errors + self.errors_local,
            "bytes_sent": c.bytes_sent, "bytes_per_s": round(t.bytes_per_s()),
            "items_archived": t.items_archived, "items_rejected": t.items_rejected,
            "retransmits": t.retransmits, "current_item": t.current, "current_items": t.current_items,
            "last_error": self.last_error_local or c.last_error, "archive_reachable": reachable,
            "queued": len(self._queue), "dropped": self.dropped, "in_flight": c.in_flight(),
            "receive_maximum": c.receive_maximum, "maximum_packet_size": c.maximum_packet_size,
            "bdseq": self._bdseq, "archive_keys": t.trust.key_ids, "answers_ignored": t.answers_ignored,
            "receipts_refused": t.receipts_refused,
        }

    def status(self) -> dict:
        return self.stats()

    def note_error(self, msg: str) -> None:
        self.errors_local += 1
        self.last_error_local = msg
        log.error("%s", msg)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.conn.subscribe(self.ack_topic, 1)
        self.conn.subscribe(self.topics.cmd(self.device), 1)
        self.conn.subscribe(self.topics.all_archive_receivers(), 1)
        for fn, name in ((self._sender, "uplink-sender"), (self._dispatcher, "uplink-dispatch"),
                         (self._watch_head, "uplink-chain")):
            th = threading.Thread(target=fn, name=name, daemon=True)
            th.start()
            self._threads.append(th)
        self.conn.start()
        self.transfer.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.transfer.wake.set()
        with self._qlock:
            self._qlock.notify_all()
        with self._inbox_cv:
            self._inbox_cv.notify_all()
        self.transfer.join(10)
        # the sender first: a queued "online" must not overtake the final "offline"
        for th in self._threads:
            th.join(10)
        # explicit offline on a clean stop (the will is only for a crash)
        self.conn.stop(final=(self.topics.status(self.device), self._status_payload("offline", clean=True)))
        try:
            self.write_status()  # so that `uplink status` does not show a stale "connected"
        except OSError:
            pass

    # --- connection callbacks ---------------------------------------------------------------
    def _will(self) -> tuple[str, bytes]:
        """Called before each connect: a new birth/death sequence number, kept in the ledger."""
        self._bdseq += 1
        self.store.set_meta("uplink_bdseq", str(self._bdseq))
        return self.topics.status(self.device), self._status_payload("offline")

    def _status_payload(self, state: str, clean: bool = False) -> bytes:
        """The signed status (agent/wire/envelope.py Sealer); the will is sealed at connect time."""
        from .. import __version__

        d = {"state": state, "bdseq": self._bdseq, "device": self.device, "unit_code": self.cfg.device.unit_code,
             "unit_name": self.cfg.device.unit_name, "kind": self.cfg.device.kind, "ts": now_iso(),
             "version": __version__, "pid": os.getpid()}
        if clean:
            d["reason"] = "clean stop"
        if self._sealer is None:
            self._sealer = Sealer.for_ledger(self.store)
        return self._sealer.seal(self.topics.status(self.device), d)

    def _on_connect(self, conn: Connection) -> None:
        # birth after the subscriptions (done by the connection), then everything retained
        self.rebirth()
        self.transfer.wake.set()

    def _failback_probe(self):
        """What the primary must show before the device moves back to it: one of its archive
        receivers online (signed by a pinned key, fresh), so that the outbox does not move to a
        broker nobody archives from. Without a pinned key (nothing is sent anyway) a CONNACK does."""
        if not self.transfer.trust:
            return None

        def receiver_online(topic: str, payload: bytes) -> bool:
            rid = self.topics.is_archive_receiver(topic)
            return rid is not None and self.transfer.trust.check_status(json.loads(payload), receiver=rid) == "online"

        return (self.topics.all_archive_receivers(),), receiver_online

    def _on_disconnect(self, conn: Connection, reason: str) -> None:
        if reason == FAILBACK:
            log.info("uplink: left %s for the primary %s; items stay in the outbox", conn.broker, conn.primary)
            return
        if reason == STOPPED:  # our own clean stop, not a loss
            log.info("uplink: %s", reason)
            return
        log.warning("uplink: disconnected (%s); items stay in the outbox", reason)

    def _on_message(self, topic: str, payload: bytes, properties: Any) -> None:
        if topic == self.ack_topic:
            self.transfer.on_answer(payload, properties)
            return
        rid = self.topics.is_archive_receiver(topic)
        if rid is not None:
            # only a status signed by a pinned archive key, and fresh, says a receiver is online:
            # a forged or replayed one never silences archive_unreachable
            try:
                state = self.transfer.trust.check_status(json.loads(payload), receiver=rid)
            except (ValueError, ReceiptError) as exc:
                self.transfer.ignore(f"archive status on {topic}: {exc}")
                return
            self.archive_receivers[rid] = (state, time.monotonic())
            return
        with self._inbox_cv:
            self._inbox.append((topic, payload, properties))
            self._inbox_cv.notify()

    # --- worker threads ---------------------------------------------------------------------
    def _dispatcher(self) -> None:
        """Commands and subscriptions run here, off the network thread."""
        cmd_topic = self.topics.cmd(self.device)
        while not self.stop_event.is_set():
            with self._inbox_cv:
                while not self._inbox and not self.stop_event.is_set():
                    self._inbox_cv.wait(1.0)
                if self.stop_event.is_set():
                    return
                topic, payload, props = self._inbox.popleft()
            try:
                if topic == cmd_topic and hasattr(self.agent, "dispatch_command"):
                    self.agent.dispatch_command(payload, props)
                for flt, cbs in list(self._subs.items()):
                    if topic_matches(flt, topic):
                        for cb in cbs:
                            cb(topic, payload, props)
            except Exception:
                log.exception("handling %s failed", topic)

    def _sender(self) -> None:
        """Drains the publish queue while connected; a message whose PUBACK did not come back
        before the connection dropped is queued again (at-least-once)."""
        pending: list[tuple[Any, tuple]] = []
        while not self.stop_event.is_set():
            with self._qlock:
                while (not self._queue or not self.conn.connected) and not self.stop_event.is_set():
                    self._qlock.wait(0.5)
                    pending = self._settle(pending)
                if self.stop_event.is_set():
                    return
                msg = self._queue.popleft()
            try:
                h = self.conn.publish(msg[0], msg[1], qos=msg[2], retain=msg[3], correlation=msg[4][0],
                                      response_topic=msg[4][1], timeout=5)
                pending.append((h, msg))
            except PublishError as exc:
                if self.conn.connected:
                    self.note_error(f"publish to {msg[0]} dropped: {exc}")
                else:
                    with self._qlock:
                        self._queue.appendleft(msg)
            pending = self._settle(pending)

    def _settle(self, pending: list) -> list:
        keep = []
        for h, msg in pending:
            if not h.event.is_set():
                keep.append((h, msg))
            elif h.error and h.reason is None:  # connection lost before the PUBACK
                self._queue.appendleft(msg)
        return keep

    def _watch_head(self) -> None:
        """Publish the signed chain checkpoint at start and whenever the chain head moves; write
        the live figures for `edge-agent uplink status` every few seconds."""
        n = 0
        audit_at = time.monotonic()
        while not self.stop_event.wait(1.0):
            every = self.cfg.uplink.audit_every_s
            if every and time.monotonic() - audit_at >= every:  # the station's audit log, as an item
                audit_at = time.monotonic()
                try:
                    self.store.seal_audit_log()
                except Exception as exc:
                    self.note_error(f"cannot seal the audit log: {exc}")
            try:
                self._publish_checkpoint()
                n += 1
                if n % 3 == 0:
                    self.write_status()
            except Exception:
                log.exception("checkpoint publish failed")

    def write_status(self) -> None:
        from agent.common.fs import atomic_write

        data = dict(self.stats(), time=now_iso(), running=not self.stop_event.is_set())
        atomic_write(self.store.data_dir / STATUS_FILE,
                     json.dumps(data, ensure_ascii=False, default=str).encode())

    def _publish_checkpoint(self, force: bool = False) -> None:
        head = (*self.store.head(), self.store.annotations_total())  # a new annotation is news too
        due = time.monotonic() - self._checkpoint_at >= self.cfg.uplink.checkpoint_every_s  # "still here"
        if not force and not due and head == self._head_published:
            return
        try:
            payload = checkpoint.make(self.store)
        except Exception as exc:  # no device key yet
            self.note_error(f"cannot sign the chain checkpoint: {exc}")
            return
        self._head_published = head
        self._checkpoint_at = time.monotonic()
        self.publish(self.topics.chain(self.device), payload, retain=True)
        self.transfer.wake.set()


def make_component(agent) -> Uplink | None:
    if not agent.cfg.uplink.enabled:
        return None
    up = Uplink(agent)
    agent.uplink = up
    return up
