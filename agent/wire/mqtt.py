"""One MQTT v5 connection (paho-mqtt 2, CallbackAPIVersion.VERSION2) that reconnects by itself.

What paho does not do and this module does:

- a fresh paho client per connection (``reconnect_on_failure=False``), so that the will carries the
  new birth/death sequence number (bdseq) and paho never resends a stale queue after a reconnect
  (paho issue #492); whatever was in flight is failed back to its owner, who decides;
- backoff with jitter between attempts; refused credentials back off to the maximum at once;
- the broker's CONNACK ``Receive Maximum`` and ``Maximum Packet Size`` are read and enforced here
  (paho enforces neither): :meth:`Connection.publish` waits for a free slot and refuses packets the
  broker would drop;
- the PUBACK reason code is checked in ``on_publish`` (paho reports a QoS 1 message as published
  even when the broker answered >= 0x80);
- every wait has a timeout (paho's ``wait_for_publish`` without one can hang on a lost connection,
  #613);
- fail-over between brokers (``mqtt.fallback``): when the broker cannot be reached or the
  connection is lost, the next broker of the list is tried at once, then the primary again; only
  a whole round without a connection backs off. Brokers share nothing: whatever must survive the
  switch lives with its owner (the device's outbox, the archive's index and storage);
- fail-back (``mqtt.failback_s``): on a fallback, the primary is probed every ``failback_s``
  (a CONNECT of its own, and the owner's check of what the primary shows, e.g. an archive receiver
  online there); once it passes, the connection moves back at the owner's safe point (or after
  :data:`agent.wire.failback.FAILBACK_SETTLE_S` at most; agent/wire/failback.py decides when): new
  publishes are refused as offline (their owners keep them), the PUBACKs in flight are awaited,
  then a clean DISCONNECT (the broker drops the will);
- a session taken over (one login, one session: the broker ends a connection when another logs in
  with the same login) is told apart from a lost connection. A connection with ``claim`` (archive
  receivers, the monitor, operators' commands) ends for good (:attr:`Connection.taken_over`; its
  owner reports it and stops) instead of taking the session back, which would end the other's,
  and so on: DISCONNECT 0x8E from brokers that send it, and the login's claim read on every
  connect (agent/wire/claim.py). A device's own connection (no claim) never gives up its uplink:
  on 0x8E it notes the takeover (:attr:`Connection.last_error`, shown by ``status`` and in its
  health) and comes back only after ``max_backoff``, so two holders of one device login do not
  knock each other off in a tight loop.

What one PUBLISH is (its handle, its refusal, its size on the wire) is agent/wire/publish.py.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.common.errors import EdgeError
from .claim import (READY, TAKEN, TAKEN_BY_BROKER, UNCHECKED, SessionClaim, says_taken_over, session_login,
                    taken_over_message)
from .client import ConnSettings, new_client
from .lean import lean_client
from .failback import Failback
from .publish import PubHandle, PublishError, packet_size, properties

log = logging.getLogger(__name__)

#: the reason given to on_disconnect when the connection ended because stop() was called
STOPPED = "stopped (clean DISCONNECT)"
#: CONNACK reason codes after which retrying at once is pointless
_AUTH_REFUSED = {0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C}
#: the reason given to on_disconnect when the connection left a fallback for the primary
FAILBACK = "moved back to the primary broker"
#: how long a fail-back waits for the PUBACKs in flight before its DISCONNECT
FAILBACK_DRAIN_S = 5.0


class Connection:
    """Keeps one broker connection up; callbacks run on paho's network thread (keep them short)."""

    def __init__(self, settings: ConnSettings, *, stop_event: threading.Event | None = None,
                 will: Callable[[], tuple[str, bytes] | None] | None = None,
                 on_connect: Callable[["Connection"], None] | None = None,
                 on_disconnect: Callable[["Connection", str], None] | None = None,
                 on_message: Callable[[str, bytes, Any], None] | None = None,
                 name: str = "mqtt", manual_ack: bool = False, raw_payloads: bool = False,
                 probe: Callable[[], tuple[tuple[str, ...], Callable[[str, bytes], bool]] | None] | None = None,
                 safe_point: Callable[[], bool] | None = None, claim: str | None = None):
        self.s = settings
        #: the login's claim on its session topic (``Topics.session``; agent/wire/claim.py)
        self.claim = SessionClaim(claim, session_login(settings)) if claim else None
        self._connack_props: Any = None
        #: why the session was taken over by another process with the same login (then the connection ends)
        self.taken_over: str | None = None
        #: by whom, as far as known: "now held by HOST:PID:…" (its claim) or the broker's DISCONNECT
        self.taken_by = ""
        self._brokers = settings.brokers
        self._at = 0  # index into _brokers of the broker used now
        self.host, self.port = self._brokers[0]
        self.failovers = 0
        self.failbacks = 0
        self.raw_payloads = raw_payloads  # pass paho's payload as it is (a bytearray with the lean decoder)
        self.stop_event = stop_event or threading.Event()
        #: when to move back to the primary (``probe``, ``safe_point``: see :class:`Failback`)
        self._failback = Failback(settings, name=name, stop_event=self.stop_event, probe=probe,
                                  safe_point=safe_point)
        self._leaving = False
        self._will = will
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._on_message_cb = on_message
        self.name = name
        self.manual_ack = manual_ack
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self._slots = threading.Condition(self._lock)
        self._pending: dict[int, PubHandle] = {}
        self._early: dict[int, tuple[int, Any]] = {}
        self._qos0: set[int] = set()
        self._subs: dict[str, int] = {}
        self._subs_lock = threading.Lock()  # subscribe() from any thread vs. the resubscribe in on_connect
        self._subs_live: object = None      # the client whose on_connect has (re)subscribed everything
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None
        self._auth_refused = False
        self._got_connack = False
        self._connack_failed = False
        # what the broker told us in CONNACK
        self.receive_maximum = 65535
        self.maximum_packet_size = 268435455
        # statistics
        self.reconnects = 0
        self.connects = 0
        self.errors = 0
        self.bytes_sent = 0
        self.last_error: str | None = None
        self.connected_since: float | None = None

    # --- public -----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def broker(self) -> str:
        """HOST:PORT of the broker in use (or being tried)."""
        return f"{self.host}:{self.port}"

    @property
    def primary(self) -> str:
        return "%s:%s" % self._brokers[0]

    @property
    def failback_pending(self) -> bool:
        """The primary passed its probe: the connection moves back to it at the next safe point
        (owners start no new work meanwhile)."""
        return self._failback.pending

    @property
    def last_probe(self) -> str | None:
        """The latest fail-back probe: "ok", or why the primary was not taken back."""
        return self._failback.last_probe

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-conn", daemon=True)
        self._thread.start()

    def stop(self, final: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        """Publish ``final`` (topic, payload; retained, QoS 1), disconnect cleanly, stop the thread."""
        client = self._client
        delivered = final is None
        if client is not None and self.connected and final is not None:
            try:
                h = self.publish(final[0], final[1], qos=1, retain=True, timeout=timeout)
                delivered = h.wait(timeout) and h.ok
            except PublishError:
                pass
        self.stop_event.set()
        if client is not None and self.connected and delivered:
            # DISCONNECT (0x00) tells the broker not to send the will: only once the final message
            # is delivered; otherwise the socket just closes and the broker publishes the will
            try:
                client.disconnect()
            except Exception:  # already gone
                pass
        elif client is not None and self.connected:
            sock = client.socket()
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT: the broker publishes the will
            except OSError:
                pass
        self._lost.set()
        if self._thread:
            self._thread.join(timeout + 5)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        with self._subs_lock:
            self._subs[topic_filter] = qos
            client = self._client
            if client is not None and self._subs_live is client:
                client.subscribe(topic_filter, qos=qos)

    def max_payload(self, topic: str, props_len: int = 0) -> int:
        return self.maximum_packet_size - packet_size(topic, 0, props_len)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                user_properties: list[tuple[str, str]] | None = None, response_topic: str | None = None,
                correlation: bytes | None = None, timeout: float = 30.0) -> PubHandle:
        """Send one message; waits (at most ``timeout``) for a Receive Maximum slot when QoS > 0.

        Raises :class:`PublishError` when not connected, when the packet exceeds the broker's
        Maximum Packet Size, or when no slot frees up in time. The returned handle completes with
        the PUBACK reason code (>= 0x80 is a refusal and ``ok`` is False) or an error when the
        connection drops first.
        """
        props, plen = properties(user_properties, response_topic, correlation)
        size = packet_size(topic, len(payload), plen)
        if size > self.maximum_packet_size:
            raise PublishError(f"{topic}: packet of {size} bytes exceeds the broker's maximum packet size "
                               f"{self.maximum_packet_size}")
        handle = PubHandle(topic, len(payload))
        deadline = time.monotonic() + timeout
        with self._slots:
            while True:
                if not self.connected or self._client is None:
                    raise PublishError(f"{topic}: not connected")
                if qos == 0 or len(self._pending) < self.receive_maximum:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PublishError(f"{topic}: no free in-flight slot within {timeout:.0f} s "
                                       f"(receive maximum {self.receive_maximum})")
                self._slots.wait(min(left, 0.5))
            client = self._client
            # reserve the slot under a placeholder key until paho gives the mid
            reserve = -id(handle)
            self._pending[reserve] = handle
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        except (ValueError, OSError) as exc:
            with self._slots:
                self._pending.pop(reserve, None)
                self._slots.notify_all()
            raise PublishError(f"{topic}: {exc}") from None
        with self._slots:
            self._pending.pop(reserve, None)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self._slots.notify_all()
                raise PublishError(f"{topic}: paho refused the publish: {mqtt.error_string(info.rc)}")
            handle.mid = info.mid
            early = self._early.pop(info.mid, None)
            if early is not None and qos == 0:
                handle.complete(0)
            elif early is not None:
                self._complete(handle, *early)
            elif qos == 0:
                self._qos0.add(info.mid)
                handle.complete(0)
            else:
                self._pending[info.mid] = handle
            self.bytes_sent += len(payload)
        return handle

    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    # --- internals --------------------------------------------------------------------------
    def _complete(self, handle: PubHandle, reason: int, reason_name: str) -> None:
        if reason >= 0x80:
            self.errors += 1
            self.last_error = f"PUBACK {reason:#04x} {reason_name} for {handle.topic}"
            log.error("broker refused a publish: %s", self.last_error)
            handle.complete(reason, self.last_error)
        else:
            handle.complete(reason)

    def _make_client(self) -> mqtt.Client:
        c = new_client(self.s, reconnect=False)
        lean_client(c)  # chunks sent in place, PUBACKs settled without objects (agent/wire/lean.py)
        c.max_inflight_messages_set(65535)  # our own window (Receive Maximum) governs
        c.max_queued_messages_set(0)
        if self.manual_ack:
            c.manual_ack_set(True)
        will = self._will() if self._will else None
        if will:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def _run(self) -> None:
        delay = self.s.min_backoff
        while not self.stop_event.is_set():
            self.host, self.port = self._brokers[self._at]
            was_up = False
            self._auth_refused = False
            self._got_connack = False
            self._connack_failed = False
            self._lost.clear()
            try:
                client = self._make_client()
                self._client = client
                cprops = None
                if self.s.receive_maximum:
                    cprops = Properties(PacketTypes.CONNECT)
                    cprops.ReceiveMaximum = self.s.receive_maximum
                client.connect(self.host, self.port, keepalive=self.s.keepalive, clean_start=True,
                               properties=cprops)
                _nodelay(client)
                client.loop_start()
            except (OSError, ssl.SSLError, ValueError, EdgeError) as exc:
                self._note_error(f"cannot connect to {self.host}:{self.port}: {exc}")
                self._client = None
            else:
                # wait for CONNACK, then for the connection to end
                deadline = time.monotonic() + self.s.connect_timeout
                while not (self._connected.is_set() or self._lost.is_set() or self.stop_event.is_set()) \
                        and time.monotonic() < deadline:
                    self._lost.wait(0.05)
                if not self._connected.is_set() and not self._lost.is_set() and not self.stop_event.is_set():
                    self._note_error(f"no CONNACK from {self.host}:{self.port} within {self.s.connect_timeout:.0f} s")
                    try:
                        client.disconnect()
                    except Exception:
                        pass
                    self._lost.set()
                if self.connected:
                    delay = self.s.min_backoff
                    was_up = True
                    self._failback.connected()
                moving = False
                while not self._lost.wait(0.5):
                    if self.stop_event.is_set():
                        break
                    if self._failback.due(self._at != 0 and self.connected):
                        moving = self._leave(client)
                        break
                self._teardown(client, FAILBACK if moving else None)
                self._failback.reset()
                self._leaving = False
                if moving and not self.stop_event.is_set():
                    self._at = 0
                    self.failbacks += 1
                    log.warning("%s: broker %s:%s left; back to the primary %s", self.name, self.host, self.port,
                                self.primary)
                    continue
            if self.stop_event.is_set() or self.taken_over:
                break
            wait = self.s.max_backoff if self._auth_refused else delay
            if len(self._brokers) > 1:
                self._at = (self._at + 1) % len(self._brokers)
                self.failovers += 1
                log.warning("%s: broker %s:%s %s; trying %s:%s", self.name, self.host, self.port,
                            "lost" if was_up else "unreachable", *self._brokers[self._at])
            if len(self._brokers) > 1 and (self._at != 0 or was_up):
                wait = self.s.min_backoff  # the next broker at once; back off only after a whole round
            else:
                delay = min(delay * 2, self.s.max_backoff)
            wait = wait * (0.5 + random.random() / 2)  # jitter: spread a fleet's reconnects
            log.info("%s: reconnecting in %.1f s", self.name, wait)
            self.stop_event.wait(wait)

    def _leave(self, client: mqtt.Client) -> bool:
        """Leave this broker cleanly for the primary: refuse new publishes (their owners keep them:
        the uplink queues, the transfer asks the archive what it holds), wait for the PUBACKs in
        flight, DISCONNECT (no will)."""
        self._leaving = True
        self._connected.clear()
        deadline = time.monotonic() + FAILBACK_DRAIN_S
        with self._slots:
            while self._pending and time.monotonic() < deadline and not self._lost.is_set():
                self._slots.wait(0.1)
        try:
            client.disconnect()
        except Exception:
            pass
        self._lost.wait(2.0)
        return True

    def _teardown(self, client: mqtt.Client, reason: str | None = None) -> None:
        # connected_since, not _connected: paho's on_disconnect may already have cleared that
        # (a race that made a clean stop look like a loss in some runs and not in others)
        was = self.connected_since is not None
        self._connected.clear()
        try:
            client.loop_stop()
        except Exception:
            pass
        self._client = None
        with self._slots:
            pending = list(self._pending.values())
            self._pending.clear()
            self._early.clear()
            self._qos0.clear()
            self._slots.notify_all()
        for h in pending:
            h.complete(None, "connection lost before PUBACK")
        if was:
            self.connected_since = None
            # a stop we asked for is not a loss: the reason says so (the uplink logs it as info)
            reason = STOPPED if self.stop_event.is_set() else (reason or self.last_error or "disconnected")
            if self._on_disconnect_cb:
                try:
                    self._on_disconnect_cb(self, reason)
                except Exception:
                    log.exception("on_disconnect callback failed")

    def _note_error(self, msg: str) -> None:
        self.errors += 1
        self.last_error = msg
        log.warning("%s: %s", self.name, msg)

    # paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._got_connack = True
        if reason_code.is_failure:
            self._connack_failed = True
            self._auth_refused = reason_code.value in _AUTH_REFUSED
            self._note_error(f"connection refused by broker: {reason_code} ({reason_code.value:#04x})")
            return
        if self.claim is not None:  # read the login's claim first (agent/wire/claim.py); ready after
            self._connack_props = properties
            self.claim.begin(client, self.broker)
            return
        self._ready(client, properties)

    def _ready(self, client, properties) -> None:
        rm = getattr(properties, "ReceiveMaximum", None) if properties else None
        mps = getattr(properties, "MaximumPacketSize", None) if properties else None
        self.receive_maximum = int(rm) if rm else 65535
        self.maximum_packet_size = int(mps) if mps else 268435455
        if self.connects:
            self.reconnects += 1
        self.connects += 1
        self.connected_since = time.time()
        with self._subs_lock:
            for topic_filter, qos in self._subs.items():
                client.subscribe(topic_filter, qos=qos)
            self._subs_live = client
        log.info("%s: connected to %s:%s (receive maximum %d, maximum packet size %d)", self.name,
                 self.host, self.port, self.receive_maximum, self.maximum_packet_size)
        self._connected.set()
        if self._on_connect_cb:
            threading.Thread(target=self._safe_cb, name=f"{self.name}-onconnect", daemon=True).start()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if self.claim is not None and client is self._client \
                and self.claim.on_subscribe(mid, reason_codes) == UNCHECKED:
            self._unchecked(client, "refuses the subscription")

    def _unchecked(self, client, why: str) -> None:
        """A broker configuration older than the session topics: no check, as before."""
        log.warning("%s: the broker %s to the session topic %s (regenerate its files with `edge-agent archive "
                    "broker-config --out DIR`): a login taken over by another process is not detected", self.name, why,
                    self.claim.topic if self.claim else "")
        self._ready(client, self._connack_props)

    def _take_over(self, client, who: str = "") -> None:
        self.taken_by = who
        self.taken_over = taken_over_message(self.claim.login if self.claim else self.s.username, who)
        self.errors += 1
        self.last_error = self.taken_over
        log.error("%s: %s", self.name, self.taken_over)
        try:
            client.disconnect()  # clean: the broker drops our will (the other holds the login now)
        except Exception:
            pass
        self._lost.set()

    def _safe_cb(self) -> None:
        try:
            self._on_connect_cb(self)  # type: ignore[misc]
        except Exception:
            log.exception("on_connect callback failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if (self.claim is None or not self.claim.guarded) and not self.stop_event.is_set() \
                and says_taken_over(reason_code):
            # also a connection with a claim on a broker whose ACL lets anyone write it: a stranger
            # with our client id could cause this DISCONNECT, and must not stop us
            # a device's uplink never stops for good: note it, come back after max_backoff (_run)
            self._auth_refused = True
            self._note_error(f"{TAKEN_BY_BROKER}: another connection logged in as {self.s.username!r}; "
                             f"reconnecting in {self.s.max_backoff:.0f} s")
        elif self.taken_over is None and not self.stop_event.is_set() and says_taken_over(reason_code):
            self.taken_by = TAKEN_BY_BROKER
            if self.claim is not None:
                self.claim.taken_by = TAKEN_BY_BROKER
            self.taken_over = taken_over_message(self.claim.login if self.claim else self.s.username, self.taken_by)
            self.errors += 1
            self.last_error = self.taken_over
            log.error("%s: %s", self.name, self.taken_over)
        elif self.taken_over:
            pass
        elif not self._got_connack:
            self._note_error(f"connection to {self.host}:{self.port} closed before CONNACK "
                             f"(TLS client certificate refused or broker unreachable): {reason_code}")
        elif not self.stop_event.is_set() and not self._connack_failed and not self._leaving:  # keep the refusal
            self._note_error(f"connection lost: {reason_code}")
        self._connected.clear()
        self._lost.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        rc = getattr(reason_code, "value", reason_code) or 0
        name = str(reason_code)
        if self.claim is not None and client is self._client:
            ours, outcome = self.claim.on_publish(mid, rc)
            if outcome == UNCHECKED:
                self._unchecked(client, f"refuses our publish (PUBACK {rc:#04x})")
            if ours:
                return
        with self._slots:
            if mid in self._qos0:
                self._qos0.discard(mid)
                return
            handle = self._pending.pop(mid, None)
            if handle is None:
                self._early[mid] = (rc, name)
                return
            self._slots.notify_all()
        self._complete(handle, rc, name)

    def _on_message(self, client, userdata, msg) -> None:
        if self.claim is not None and msg.topic == self.claim.topic:
            outcome = self.claim.on_message(client, msg.retain, msg.payload) if client is self._client else None
            if self.manual_ack:
                _ack(client, msg.mid, msg.qos)
            if outcome == READY:
                if self.claim.unguarded_seen:
                    self.claim.unguarded_seen = False
                    self._note_error(
                        f"another holder's claim on {self.claim.topic}, but this broker lets any client write it (no "
                        "per-login ACL: regenerate it with `edge-agent archive broker-config --out DIR`): not taken "
                        "as a takeover, going on")
                self._ready(client, self._connack_props)
            elif outcome == TAKEN:
                self._take_over(client, self.claim.taken_by or "")
            return
        if self._on_message_cb:
            payload = msg.payload
            if not self.raw_payloads and not isinstance(payload, bytes):
                payload = bytes(payload)
            try:
                if self.manual_ack:
                    # the PUBACK goes out only when the handler calls ack(): after the work is done
                    self._on_message_cb(msg.topic, payload, msg.properties,
                                        lambda c=client, m=msg.mid, q=msg.qos: _ack(c, m, q))
                else:
                    self._on_message_cb(msg.topic, payload, msg.properties)
            except Exception:
                log.exception("message handler failed for %s", msg.topic)


def _nodelay(client: mqtt.Client) -> None:
    """Small packets (PUBACKs, archive answers) must not wait for Nagle + delayed ACK (~40 ms
    each); paho does not set TCP_NODELAY itself."""
    sock = client.socket()
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _ack(client: mqtt.Client, mid: int, qos: int) -> None:
    if qos:
        try:
            client.ack(mid, qos)
        except Exception:  # the connection this message came on is gone: the broker resends it
            pass
