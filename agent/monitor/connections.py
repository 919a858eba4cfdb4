"""The monitor's MQTT connections (mixed into :class:`agent.monitor.ingest.Ingest`).

Connection 0 of each broker subscribes the archive's checkpoint and, when the catch-all is on,
``P/dev/#``; connections 1 .. n-1 each subscribe the enrolled devices of their share
(``P/dev/D/#``, by CRC-32 of the id), so the broker keeps a queue per share. Every connection
reads its socket 64 KiB at a time and hands each QoS 0/1 message to :meth:`Ingest.submit` without
paho's message object (agent/wire/fastread.py); the topic is decoded here (not UTF-8: ``\ufffd``,
refused as a bad topic by the worker).

With a client certificate and no user name (``[mqtt] certfile``, no ``username``: certificate
identities, `archive broker-config --tls-identity certificate`) every connection's login is the
certificate's CN, and the broker keeps one session per login, so the connections would end each
other in turn: :func:`certificate_login` tells, and the monitor then runs one connection (the CLI
says why; asked for more, it refuses before connecting).

Each connection claims its login (agent/wire/claim.py; with a certificate, its CN): when another
monitor logs in with the same logins, the one taken over stops (``failed``, ``taken_over``; the CLI exits with status 6, which
the unit does not restart on) instead of taking its sessions back, and so on for ever.
"""

from __future__ import annotations

import logging
import time
import zlib

log = logging.getLogger("agent.monitor.ingest")


def certificate_login(s) -> str | None:
    """The one login all the monitor's connections would share, or None when each gets its own:
    with TLS, a client certificate and no user name the broker knows the monitor by the
    certificate's CN only (``use_identity_as_username``), the same for every connection. A user
    name is taken to be used (``monitor``, ``monitor.1`` …): on a listener with certificate
    identities the broker ignores it, so leave ``[mqtt] username`` empty there. "?" when the CN
    cannot be read (still one login)."""
    if not (s.tls and s.certfile) or s.username:
        return None
    from agent.wire.claim import certificate_login as cn

    return cn(s.certfile) or "?"


def one_connection_note(login: str) -> str:
    """What the monitor says when it runs one connection because of :func:`certificate_login`."""
    return (f"证书身份：所有连接共用一个登录名（证书的 CN {login!r}），监控只用一个连接 / certificate identity: every "
            f"connection would log in as the client certificate's CN {login!r}, and the broker keeps one session per "
            "login, so the monitor uses one connection (--connections 1); for more, give it password logins "
            "(monitor, monitor.1 …) in [mqtt] username/password")


class Connections:
    def start(self) -> None:
        from agent.wire.claim import SessionClaim
        from agent.wire.client import ConnSettings, TlsConfig, instance_user, new_client
        from agent.wire.topics import safe_segment

        cid = self.s.client_id or f"edge-monitor-{int(time.time())}"
        tls = TlsConfig(self.s.cafile, self.s.certfile or None, self.s.keyfile or None) if self.s.tls else None
        self.start_workers()
        cert_login = certificate_login(self.s)
        if cert_login is not None and self.s.connections > 1:  # the CLI decided already; a caller of the library
            log.warning("monitor: %s", one_connection_note(cert_login))
        n = self._n = 1 if cert_login is not None else max(1, self.s.connections)
        brokers = [(self.s.host, self.s.port), *[b for b in self.s.more_brokers if b != (self.s.host, self.s.port)]]
        self._brokers = brokers
        self._shares = [set() for _ in range(n * len(brokers))]
        self.claims: list = []
        self.taken_over: str | None = None
        for k in range(n * len(brokers)):  # connection k: broker k // n, share k % n (0: the catch-all)
            (host, port), i = brokers[k // n], k % n
            name = (cid if k < n else f"{cid}-b{k // n}") + (f"-{i}" if i else "")
            # one login per connection: the broker binds a login to one session (share i: "monitor.i")
            user = instance_user(self.s.username, i) if self.s.username else None
            c = new_client(ConnSettings(host=host, port=port, client_id=name,
                                        keepalive=self.s.keepalive, username=user,
                                        password=self.s.password or None, tls=tls,
                                        allow_plaintext=self.s.allow_plaintext), buffered=True)
            login = user or (cert_login if cert_login != "?" else None)  # with a certificate: its CN
            self.claims.append(SessionClaim(self.topics.session(login), login) if login and safe_segment(login) else None)
            c.suppress_exceptions = True  # belt and braces: _on_message never raises
            c.reconnect_delay_set(1, 30)
            c.max_queued_messages_set(0)
            c.user_data_set(k)
            c.on_connect = self._on_connect
            if k == 0:
                c.on_subscribe = lambda *_a: self.subscribed.set()
            c.on_disconnect = self._on_disconnect
            c.on_publish = self._on_publish
            c.on_message = self._on_message
            c.on_raw_message = self._raw_handler(k)  # QoS 0/1 without paho's message object (agent/wire/fastread.py)
            self.clients.append(c)
            c.connect_async(host, port, keepalive=self.s.keepalive)
            c.loop_start()
        self.client = self.clients[0]

    def _share_of(self, dev: str) -> int:
        n = self._n
        return 0 if n <= 1 else 1 + zlib.crc32(dev.encode()) % (n - 1)

    def _subscribe_shares(self, only: int | None = None) -> None:
        """Subscribe each enrolled device on its share's connection (all shares, or ``only``);
        called on every connect and after the enrolment is re-read."""
        if self._n <= 1:
            return
        by_share: dict[int, list[str]] = {}
        for dev in list(self.enrolment.devices):
            by_share.setdefault(self._share_of(dev), []).append(dev)
        for k in range(len(self._shares)):  # connection k: share k % n of broker k // n
            i = k % self._n
            if i == 0 or (only is not None and k != only) or k >= len(self.clients):
                continue  # the catch-all, another connection, or not created yet (subscribes when it connects)
            c = self.clients[k]
            if not c.is_connected():
                continue
            devs = [d for d in by_share.get(i, []) if only is not None or d not in self._shares[k]]
            for j in range(0, len(devs), 500):
                chunk = devs[j:j + 500]
                c.subscribe([(self.topics.all_of_dev(d), 1) for d in chunk])
                self._shares[k].update(chunk)
                self._via_share.update(chunk)  # the catch-all skips them from now on (a duplicate meanwhile is harmless)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            user = client.username or "(none)"
            log.error("monitor: broker refused the connection of login %s: %s%s", user, reason_code,
                      " — 监控的每个连接需要自己的登录名 / each monitor connection needs its own login: "
                      "`archive broker-config --monitor-connections N` (N >= --connections) creates them"
                      if userdata % self._n else "")
            return
        claim = self.claims[userdata]
        if claim is not None:  # read (and make) the login's claim; reading goes on meanwhile
            claim.begin(client, "%s:%s" % self._brokers[userdata // self._n])
        if userdata % self._n:  # a share: its devices again (a fresh session has no subscriptions)
            self._subscribe_shares(only=userdata)
            return
        self.connected = True
        # with shares, the catch-all only counts and refuses what no share carries (devices not
        # enrolled, bad topics) and drops the copies of enrolled devices' messages: QoS 0 spares a
        # PUBACK per copy (the broker still bounds what it holds for us: max_queued_messages)
        qos = 0 if self._n > 1 else 1
        subs = [(self.topics.archive_checkpoint(), 1)]
        if self.catch_all():
            subs.insert(0, (self.topics.all_dev(), qos))
        client.subscribe(subs)
        log.info("monitor: connected to %s:%s, subscribed %s", *self._brokers[userdata // self._n],
                 ", ".join(t for t, _q in subs) + ("" if self._n <= 1 else f" and the enrolled devices on {self._n - 1} shares"))

    def catch_all(self) -> bool:
        """Whether connection 0 subscribes ``P/dev/#`` (see :attr:`IngestSettings.catch_all`)."""
        if self._n <= 1:
            return True  # the one connection carries everything
        return self.s.catch_all if self.s.catch_all is not None else not self.s.username

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        claim = self.claims[userdata]
        if claim is not None:
            claim.on_publish(mid, getattr(reason_code, "value", reason_code) or 0)

    def _on_claim(self, k: int, retain: bool, payload) -> None:
        from agent.wire.claim import TAKEN

        if self.claims[k].on_message(self.clients[k], retain, payload) == TAKEN:
            self._taken(k)

    def _taken(self, k: int) -> None:
        """Another monitor logged in with this connection's login: stop, do not take it back."""
        claim, client = self.claims[k], self.clients[k]
        self.taken_over = (f"另一个监控以同一登录名登录 / another monitor logged in as {claim.login!r} "
                           f"({claim.taken_by}): the broker keeps one session per login, so this one stops instead of "
                           "taking it back; run one monitor per broker, or stop the other")
        self.failed = self.taken_over
        log.critical("monitor: %s", self.taken_over)
        client.disconnect()  # clean, and paho does not reconnect after it

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        claim = self.claims[userdata] if userdata < len(self.claims) else None
        if claim is not None and not self._stop.is_set() and claim.on_disconnect(reason_code):
            self._taken(userdata)
        if userdata % self._n:
            return
        # connected while the catch-all of any broker is
        self.connected = any(c.is_connected() for k, c in enumerate(self.clients)
                             if k % self._n == 0 and c is not client)
        if self._stop.is_set():
            log.info("monitor: disconnected (stopping)")
        else:
            log.warning("monitor: disconnected (%s); reconnecting", reason_code)

    def _raw_handler(self, k: int):
        catch_all = k % self._n == 0 and self._n > 1
        submit = self.submit
        claim = self.claims[k].topic.encode() if self.claims[k] is not None else None

        def on_raw(topic: bytes, payload: bytes, retain: bool) -> None:
            if topic == claim:
                self._on_claim(k, retain, payload)
                return
            try:
                t = topic.decode()
            except UnicodeDecodeError:  # a topic that is not UTF-8
                t = "\ufffd"
            submit(t, payload, retain, catch_all=catch_all)
        return on_raw

    def _on_message(self, client, userdata, msg) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # a topic that is not UTF-8 (paho decodes on access)
            topic = "\ufffd"
        if self.claims[userdata] is not None and topic == self.claims[userdata].topic:
            self._on_claim(userdata, bool(msg.retain), msg.payload)
            return
        self.submit(topic, msg.payload, bool(msg.retain), catch_all=userdata % self._n == 0 and self._n > 1)
