"""The monitor's subscriber: ``P/dev/#`` in, verified state out.

A device's state is only what that device signed: every message on a device-state topic is a
signed envelope (agent/wire/envelope.py; docs/mqtt.md "Signed device state") verified against the
key the device is enrolled with (:mod:`agent.monitor.enrolment`, read from the archive's
enrolment), and the device's unit is the enrolled one, never the message's. In order, a message
is refused (counted by reason in ``counters`` as ``rejected.REASON``, per enrolled device in
``rejections``, logged for the first few of each reason and then once per 1,000, never applied)
when its topic is not a device topic (``bad_topic``), it is too large (``oversized``), the
device is not enrolled (``unknown_device``), it is not an envelope (``unsigned``; this includes
the empty payload that deletes a retained topic), the envelope or the body breaks its schema
(``invalid``), the envelope names another topic or device (``wrong_topic``), another key
(``wrong_key``), the signature does not verify (``bad_signature``), the sender sends more than
its rate (``flood``: a token bucket per *verified* sender, so forgeries in a device's name never
use up that device's allowance), it is older than what the topic already showed (``replayed``),
or its body names another device or unit (``device_mismatch``, ``unit_mismatch``). A genuine
message seen again (a retained re-delivery) is counted as ``duplicate`` and changes nothing.

Connections: one subscribes ``P/dev/#`` (it sees devices that are not enrolled, to count and
refuse them; only when the monitor connects anonymously, or with ``catch_all``: through the
shipped broker configuration nobody can publish there but an enrolled device, in its own subtree,
which its share carries, and the copy would double the receive work); ``connections - 1`` more share the enrolled devices (``P/dev/D/#`` each, by CRC-32
of the id), so the broker keeps a queue per share: a flood too fast for the monitor to read
fills its own share's queue, not the one other devices' messages wait in. With several brokers
(independent ones, each device on its primary or its fallback: docs/scaling.md) the monitor keeps
this set of connections to every broker; a device is heard through whichever broker it uses, and
the order rules (epoch, bdseq) make a message seen through two brokers count once.

Threads: paho's network threads only file each message into a queue per device of the topic
(:mod:`agent.monitor.lanes`: in arrival order, bounded; when full, the oldest message that does
not continue the sequence the device signed is dropped as ``overload``, so forgeries in a known
device's name faster than the checks do not push out its genuine messages); the workers (two
by default) take one message per device in turn (a flood in one device's name waits behind
itself, never in front of another device's messages; a device's messages one at a time, in
arrival order), verify it (with the state lock released: libsodium runs without the GIL, so two
workers use two cores) and apply it; a flusher writes the state in one database transaction every
``flush_s`` and re-reads the enrolment every ``reload_s``. A worker that dies sets ``failed``
(the CLI then exits non-zero so systemd restarts the monitor).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from agent.evidence.keys import SODIUM
from agent.wire import envelope as sealed, health as pl, health_parse as hp
from agent.wire.topics import Topics
from .connections import Connections
from .devstate import DeviceState, signed_at
from .enrolment import Enrolment
from .lanes import Expect, Lanes
from .state import MonitorDB, PgMonitorDB
from .witness import Witness

log = logging.getLogger(__name__)

RATE_PER_DEVICE = 20.0     # messages per second a device may send on average
BURST_PER_DEVICE = 100.0   # ... and in a burst
MAX_DEVICES = 100_000      # distinct device ids kept (beyond: refused, counted)
QUEUE_PER_DEVICE = 1000    # messages waiting per device of the topic (beyond: refused as overload)
JUNK = ""                  # the queue of messages for topics of no enrolled device


@dataclass
class _Bucket:
    tokens: float
    t: float


@dataclass
class IngestSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edge"
    client_id: str = ""
    username: str = ""
    password: str = ""
    tls: bool = False
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    keepalive: int = 30
    flush_s: float = 1.0
    #: a change of a device's state or an alarm raised or cleared is written within this long
    #: (the flusher is woken early, at most once per ``prompt_s``): what an operator watches
    #: shows without waiting for the next ``flush_s`` (health alone waits for it)
    prompt_s: float = 0.2
    rate: float = RATE_PER_DEVICE
    burst: float = BURST_PER_DEVICE
    queue_per_device: int = QUEUE_PER_DEVICE
    reload_s: float = 10.0
    #: worker threads that check and apply (each device's messages one at a time, in order): the
    #: signature check runs without the GIL (libsodium), so a second worker uses a second core
    workers: int = 2
    #: MQTT connections: one subscribed to P/dev/# (devices not enrolled, counted and refused) and
    #: connections - 1 sharing the enrolled devices (P/dev/D/# each), so that the broker keeps a
    #: separate queue per share: a flood too fast to read fills its own share's queue only
    connections: int = 8
    #: connection 0 also subscribes P/dev/# to count and refuse what no share carries (devices not
    #: enrolled, topics of no device); the broker then sends it a second copy of every enrolled
    #: device's message (one per matching subscription), which it drops. None (auto): only when the
    #: monitor connects anonymously; logged in, the broker is the shipped one (`archive
    #: broker-config`: a device may publish only in its own subtree, and only enrolled devices have
    #: an identity), so everything anyone can publish under P/dev/ is on a share: counted there
    catch_all: bool | None = None
    #: more brokers besides host:port (HOST, PORT): the monitor subscribes to every one
    more_brokers: tuple[tuple[str, int], ...] = ()
    #: plain MQTT allowed to a broker off the loopback (mqtt.allow_plaintext: a lab only)
    allow_plaintext: bool = False


class Ingest(DeviceState, Witness, Connections):
    """Admission (topic, size, enrolment, signature, rate, order), the queues and the MQTT client."""

    def __init__(self, db: MonitorDB | PgMonitorDB, settings: IngestSettings, enrolment: Enrolment,
                 archive_alarms: Callable[[], list[dict]] | None = None, archive_keys: Callable[[], list] | None = None):
        self.db = db
        #: loader of the archive's public keys (its checkpoints are checked with them: agent/monitor/witness.py)
        self.archive_keys = archive_keys
        #: loader of the archive's raised chain alarms (agent/archive/chain.py read_chain_alarms)
        self.archive_alarms = archive_alarms
        self.s = settings
        self.enrolment = enrolment
        self.topics = Topics(settings.prefix)
        self.lock = threading.Lock()
        self.devices: dict[str, dict] = {}
        self.dirty: set[str] = set()
        self.alarms: dict[tuple[str, str], dict] = {}
        self.alarm_rows: dict[tuple[str, str], dict] = {}
        self.events: list[tuple] = []
        self.status_events: list[tuple] = []
        self.ratio: list[dict] = []
        self.usage: dict[tuple[str, str], dict] = {}
        self.counters: dict[str, int] = {}
        self.seen: dict[str, tuple] = {}          # topic -> (key_id, order key) of the last applied message
        self._seen_dirty: dict[str, str] = {}     # topic -> device
        self.rejections: dict[tuple[str, str], list] = {}  # (device, reason) -> [count, last_at, detail]
        self._rej_dirty: set[tuple[str, str]] = set()
        self._buckets: dict[str, _Bucket] = {}
        self._logged: dict[str, int] = {}
        self._last_ratio: dict[str, tuple] = {}
        self._day_cache: tuple[int, str] = (0, "")
        self._stop = threading.Event()
        self._prompt = threading.Event()  # a state change or alarm to show: flush early
        self._flusher: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        # the queues between paho's thread and the worker
        self._cv = threading.Condition(threading.Lock())
        self._queues: dict[str, Lanes] = {}
        self.expect = Expect()  # where each device's signed sequence stands (what a full queue keeps)
        self._ready: collections.deque[str] = collections.deque()
        self._busy: set[str] = set()  # devices whose message a worker is handling (agent/monitor/ingest.py _next)
        self._qcount = {"queued": 0, "copies": 0, "rejected.overload": 0, "rejected.error": 0}
        self.failed: str | None = None
        self.client = None
        self.clients: list = []
        self._n = 1
        self._brokers: list[tuple[str, int]] = []
        self._shares: list[set[str]] = []   # devices subscribed on each share connection
        self._via_share: set[str] = set()   # devices whose messages come through their share
        self.connected = False
        self.subscribed = threading.Event()  # set once the first subscription is acknowledged
        self._load()
        self._load_witness()
        self.reload_archive_alarms()

    # --- accounting -------------------------------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def reject(self, reason: str, topic: str, detail: str, device: str | None = None, now: float | None = None) -> str:
        """Count a refusal (by reason; per device when the device is enrolled) and log the first
        few of each reason, then one in 1,000. Returns ``reason``."""
        self.count(f"rejected.{reason}")
        if device is not None and self.enrolment.get(device) is not None:
            k = (device, reason)
            r = self.rejections.get(k)
            if r is None:
                r = self.rejections[k] = [0, None, None]
            r[0] += 1
            r[1] = now or time.time()
            r[2] = detail[:200]
            self._rej_dirty.add(k)
        n = self._logged.get(reason, 0) + 1
        self._logged[reason] = n
        if n <= 5 or n % 1000 == 0:
            log.warning("rejected (%s, #%d): %s: %s", reason, n, topic[:200], detail[:200])
        return reason

    def _allow(self, key: str, now: float) -> bool:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) > MAX_DEVICES:
                return False
            b = self._buckets[key] = _Bucket(self.s.burst, now)
        if now > b.t:  # a clock stepping back never makes a device look like a flood
            b.tokens = min(self.s.burst, b.tokens + (now - b.t) * self.s.rate)
            b.t = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    # --- the queues (paho's thread in, the worker out) --------------------------------------------
    def submit(self, topic: str, payload: bytes, retained: bool = False, catch_all: bool = False) -> None:
        """File one message for the worker (called on paho's network threads: cheap, never raises).
        Messages are queued per device named in the topic; topics of no enrolled device share one
        queue. A full queue refuses the message (``rejected.overload``). On the catch-all
        connection, a device that has its share's subscription is skipped (it arrives there)."""
        try:
            parts = topic.split("/", 3)
            dev = parts[2] if len(parts) >= 3 and parts[1] == "dev" else JUNK
            if catch_all and dev in self._via_share:
                with self._cv:
                    self._qcount["copies"] += 1  # the broker's second copy (catch-all and share): dropped
                return
            key = dev if dev in self.enrolment.devices else JUNK
            with self._cv:
                q = self._queues.get(key)
                if q is None:
                    q = self._queues[key] = Lanes()
                expected = key != JUNK and self.expect.expected(key, payload)
                lost = q.put((topic, payload, retained, time.time()), expected, self.s.queue_per_device)
                if lost:
                    self._qcount["rejected.overload"] += 1  # the oldest unexpected one, or this one
                    if lost == "refused":
                        return
                self._qcount["queued"] += 1
                if len(q) == 1 and key not in self._busy:  # a busy device is queued again by _done
                    self._ready.append(key)
                    self._cv.notify()
        except Exception:  # noqa: BLE001 - paho's thread must survive every input
            with self._cv:
                self._qcount["rejected.error"] += 1

    def _next(self):
        """The next message and its queue's key, one device at a time in turn; None when stopping.
        The device is *busy* until :meth:`_done`: no other worker takes its next message meanwhile,
        so each device's messages are checked and applied one at a time, in arrival order."""
        with self._cv:
            while not self._ready or self._stop.is_set():
                if self._stop.is_set():
                    return None
                self._cv.wait(0.5)
            key = self._ready.popleft()
            q = self._queues[key]
            item = q.take()
            if not q:
                del self._queues[key]
            self._busy.add(key)
            return key, item

    def _done(self, key: str) -> None:
        """The worker is done with ``key``'s message: its next one may be taken (at the back of the turn)."""
        with self._cv:
            self._busy.discard(key)
            if self._queues.get(key):
                self._ready.append(key)
                self._cv.notify()

    def pending(self) -> int:
        with self._cv:
            return sum(len(q) for q in self._queues.values())

    def _work(self) -> None:
        try:
            while True:
                nxt = self._next()
                if nxt is None:
                    return
                key, (topic, payload, retained, _t) = nxt
                try:
                    self.handle(topic, payload, retained)
                finally:
                    self._done(key)
                # paho's network threads must drain the sockets into the per-device queues faster
                # than messages are verified, so that a flood overflows its own queue, not the
                # broker's queue for the monitor: libsodium releases the GIL while it verifies (they
                # run then); without it, hand the GIL over after each message
                if not SODIUM:
                    time.sleep(0)
        except BaseException as exc:  # a bug outside the per-message guard: the process must not stay "online"
            self.failed = f"ingest worker died: {exc!r}"
            log.critical("%s", self.failed, exc_info=True)
            self._stop.set()

    # --- messages ---------------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, retained: bool = False, now: float | None = None) -> str:
        """Verify and apply one message; returns "accepted", "ignored", "duplicate" or the
        rejection reason. Never raises."""
        now = now or time.time()
        with self.lock:
            self.count("received")
            try:
                if type(topic) is not str:
                    return self.reject("bad_topic", repr(topic)[:200], "topic is not text")
                return self._handle(topic, bytes(payload), retained, now)
            except pl.UnsignedError as exc:
                return self.reject("unsigned", topic, str(exc), self._dev_of(topic), now)
            except pl.PayloadError as exc:
                return self.reject("invalid", topic, str(exc), self._dev_of(topic), now)
            except Exception as exc:  # defensive: a bug must not stop ingest
                log.exception("unexpected error on %s", str(topic)[:200])
                return self.reject("error", str(topic), repr(exc))

    @staticmethod
    def _dev_of(topic: str) -> str | None:
        parts = topic.split("/", 3)
        return parts[2] if len(parts) >= 3 else None

    def _handle(self, topic: str, payload: bytes, retained: bool, now: float) -> str:
        if topic == self.topics.archive_checkpoint():  # the archive's log (agent/monitor/witness.py)
            return self._archive_checkpoint(payload, now)
        parsed = self.topics.parse_dev(topic)
        if parsed is None:
            return self.reject("bad_topic", topic, "not a device topic")
        dev, kind, name = parsed
        if kind in ("cmd", "chain"):
            self.count("ignored")
            return "ignored"
        if len(payload) > pl.MAX_PAYLOAD:
            return self.reject("oversized", topic, f"{len(payload)} bytes", dev, now)
        enr = self.enrolment.get(dev)
        if enr is None:
            return self.reject("unknown_device", topic, f"{dev} is not enrolled")
        env = sealed.open_envelope(payload)
        if env.topic != topic or env.kind != kind or env.device != dev:
            return self.reject("wrong_topic", topic, f"signed for {env.topic[:120]}", dev, now)
        if env.key_id != enr.key_id:
            return self.reject("wrong_key", topic, f"key {env.key_id}, enrolled {enr.key_id}", dev, now)
        last = self.seen.get(topic)
        if kind != "status" and last is not None and last[0] == env.key_id and (env.epoch, env.seq) < last[1]:
            # cheap before the signature: older than what this topic showed (a replay or a forgery)
            return self.reject("replayed", topic, f"({env.epoch}, {env.seq}) after {last[1]}", dev, now)
        if not self._verify_unlocked(env, enr):
            return self.reject("bad_signature", topic, f"not signed by the key enrolled for {dev}", dev, now)
        self.expect.note(dev, env.epoch, env.seq)  # its next messages are expected (kept when the queue is full)
        if not self._allow(dev, now):
            return self.reject("flood", topic, f"more than {self.s.rate:g} msg/s from {dev}", dev, now)
        body = env.body
        if kind == "status":
            st = hp.parse_status(body)
            order = (env.epoch, st["bdseq"], 0 if st["state"] == "online" else 1)
        else:
            order = (env.epoch, env.seq)
        if last is not None and last[0] == env.key_id:
            if order < last[1]:
                return self.reject("replayed", topic, f"{order} after {last[1]}", dev, now)
            if order == last[1]:
                self.count("duplicate")
                return "duplicate"
        self._signed_at = signed_at(env.ts, now)
        if kind == "status":
            result = self._status(dev, st, retained, now, topic)
        elif kind == "health":
            result = self._health(dev, hp.parse_health(body), retained, now, topic)
        elif kind == "alarm":
            result = self._alarm(dev, hp.parse_alarm(body, name), retained, now, topic)
        elif kind == "component":
            result = self._component(dev, hp.parse_component(body, name), retained, now, topic)
        else:
            result = self._ratio(dev, hp.parse_ratio(body, dev), retained, now, topic)
        self.seen[topic] = (env.key_id, order)  # verified and in order: later copies are duplicates
        self._seen_dirty[topic] = dev
        return result

    def _verify_unlocked(self, env, enr) -> bool:
        """The signature check, with the state lock released meanwhile (libsodium releases the GIL
        too), so that other workers check and apply other devices' messages on the other core.
        Called by :meth:`_handle` with the lock held; safe because a device's messages are handled
        by one worker at a time (:meth:`_next`), and what ``_handle`` read before (``seen``, the
        enrolment entry) belongs to this device."""
        self.lock.release()
        try:
            return sealed.verify(env, enr.raw or enr.public)
        finally:
            self.lock.acquire()

    # --- running ----------------------------------------------------------------------------------
    def _flush_loop(self) -> None:
        next_reload = time.monotonic() + self.s.reload_s
        gap = min(self.s.prompt_s, self.s.flush_s)
        while not self._stop.is_set():
            # every flush_s, or sooner when a state change or an alarm waits (at most once per gap)
            self._prompt.wait(max(0.0, self.s.flush_s - gap))
            if self._stop.wait(gap if self._prompt.is_set() else 0) or self._stop.is_set():
                break
            self._prompt.clear()
            try:
                self.flush()
            except Exception:
                log.exception("monitor flush failed (will retry)")
            if time.monotonic() >= next_reload:
                next_reload = time.monotonic() + self.s.reload_s
                self.enrolment.reload()
                self.reload_archive_alarms()
                self.reload_witness_acks()
                try:
                    self._subscribe_shares()  # devices enrolled since
                except Exception:
                    log.exception("monitor: subscribing newly enrolled devices failed (will retry)")

    def reload_archive_alarms(self) -> None:
        """The archive's chain alarms (fork, rollback, gap, silence: agent/archive/chain.py), read
        with the enrolment; a failing read keeps what was shown."""
        if self.archive_alarms is None:
            return
        try:
            rows = self.archive_alarms()
        except Exception as exc:  # noqa: BLE001 - the monitor goes on showing what it has
            log.warning("archive chain alarms unreadable, keeping the previous view: %s", exc)
            return
        self.apply_archive_alarms(rows, time.time())

    def start_workers(self) -> None:
        """The worker and the flusher (start() calls this; tests feed submit() directly)."""
        for i in range(max(1, self.s.workers)):
            th = threading.Thread(target=self._work, name=f"monitor-ingest-{i}", daemon=True)
            th.start()
            self._workers.append(th)
        self._flusher = threading.Thread(target=self._flush_loop, name="monitor-flush", daemon=True)
        self._flusher.start()

    def alive(self) -> bool:
        """False once the worker died (``failed`` says why)."""
        return self.failed is None and (all(th.is_alive() for th in self._workers) or self._stop.is_set())

    def stop(self) -> None:
        self._stop.set()
        self._prompt.set()
        with self._cv:
            self._cv.notify_all()
        for c in self.clients:
            c.disconnect()
            c.loop_stop()
        for th in (*self._workers, self._flusher):
            if th is not None:
                th.join(timeout=10)
        self.flush()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            out = {"connected": self.connected, "devices": len(self.devices), "enrolled": len(self.enrolment),
                   **self.counters}
        with self._cv:
            for k, v in self._qcount.items():
                out[k] = out.get(k, 0) + v
            out["pending"] = sum(len(q) for q in self._queues.values())
        return out
