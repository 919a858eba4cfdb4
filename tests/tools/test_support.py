"""The shared fixtures themselves: private Mosquitto, restart, mutual TLS with the test PKI."""
from __future__ import annotations

import signal
import ssl
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import Mosquitto, wait_port
from tools.procwait import handles


class Probe:
    """A paho-mqtt 2 client (MQTTv5, callback API v2) that records what happens."""

    def __init__(self, client_id: str | None = None) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.reason = None
        self.messages: list[mqtt.MQTTMessage] = []
        self.got = threading.Event()
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.reason = reason_code
        if not reason_code.is_failure:
            self.connected.set()
        else:
            self.disconnected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnected.set()

    def _on_message(self, client, userdata, msg):
        self.messages.append(msg)
        self.got.set()

    def tls(self, ca, cert=None, key=None) -> "Probe":
        self.client.tls_set(ca_certs=str(ca), certfile=cert and str(cert), keyfile=key and str(key))
        return self

    def connect(self, port: int, timeout: float = 5.0, login: tuple[str, str] | None = None) -> bool:
        """True if the broker accepted the session within ``timeout`` (``login``: user, password)."""
        if login:
            self.client.username_pw_set(*login)
        try:
            self.client.connect("127.0.0.1", port, keepalive=10)
        except (OSError, ssl.SSLError):
            return False
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (self.connected.is_set() or self.disconnected.is_set()):
            time.sleep(0.01)
        ok = self.connected.is_set()
        if not ok:
            self.stop()
        return ok

    def stop(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def test_broker_pub_sub(broker: Mosquitto):
    """The default broker is the shipped one: a device publishes in its own subtree, the monitor reads it."""
    assert broker.running and broker.port
    sub, pub = Probe(), Probe()
    try:
        assert sub.connect(broker.port, login=broker.identity("monitor", "monitor"))
        sub.client.subscribe("edge/dev/+/status", qos=1)
        assert sub.subscribed.wait(5)
        assert pub.connect(broker.port, login=broker.identity("dock-0001"))
        info = pub.client.publish("edge/dev/dock-0001/status", "证据 / evidence".encode(), qos=1)
        info.wait_for_publish(5)
        assert sub.got.wait(5)
        assert sub.messages[0].topic == "edge/dev/dock-0001/status"
        assert sub.messages[0].payload.decode() == "证据 / evidence"
    finally:
        sub.stop()
        pub.stop()
    assert broker.log_path.exists()


def test_default_broker_is_the_shipped_configuration(broker: Mosquitto, open_broker: Mosquitto):
    """Anonymous off, a wrong password refused, one login = one session, the ACL applied; a new
    identity is admitted once the broker has reread its files. The open broker admits anyone."""
    conf = broker.conf_path.read_text()
    assert "allow_anonymous false" in conf and "use_username_as_clientid true" in conf
    assert f"acl_file {broker.identities.acl}" in conf
    assert not Probe().connect(broker.port)
    user, password = broker.identity("room-0042")
    assert not Probe().connect(broker.port, login=(user, password + "x"))
    first, second = Probe("one"), Probe("two")
    assert first.connect(broker.port, login=(user, password))
    assert second.connect(broker.port, login=(user, password))  # the same login: the first is ended
    assert first.disconnected.wait(5)
    # the ACL: a device cannot publish in another device's subtree (PUBACK refused, nothing delivered)
    mon = Probe()
    assert mon.connect(broker.port, login=broker.identity("monitor", "monitor"))
    mon.client.subscribe("edge/dev/+/status", qos=1)
    assert mon.subscribed.wait(5)
    second.client.publish("edge/dev/dock-0001/status", b"forged", qos=1).wait_for_publish(5)
    second.client.publish("edge/dev/room-0042/status", b"own", qos=1).wait_for_publish(5)
    assert mon.got.wait(5)
    time.sleep(0.2)  # a wrongly delivered message would have come before the later own one anyway
    assert [m.payload for m in mon.messages] == [b"own"]
    for p in (second, mon):
        p.stop()
    anon = Probe()
    assert anon.connect(open_broker.port)
    anon.stop()


def test_a_broker_reloaded_the_moment_it_started_keeps_running(tmp_path):
    """Mosquitto answers on its port a moment before it handles SIGHUP; a reload in that moment
    killed the broker (CI: "dock-01 not admitted 10 s after SIGHUP"). start() returns only once
    SIGHUP is handled, so a new identity is admitted right after start, every time."""
    for i in range(15):
        mq = Mosquitto(tmp_path / f"b{i}", shipped=True).start()
        try:
            assert handles(mq.proc.pid, signal.SIGHUP)
            user, password = mq.identity(f"dock-{i:02d}", timeout=5)  # writes passwd, SIGHUP at once
            assert mq.running, mq.log_tail()
            assert user == f"dock-{i:02d}"
        finally:
            mq.stop()


def test_restart_keeps_port(broker: Mosquitto):
    port = broker.port
    broker.restart()
    assert broker.port == port and broker.running
    broker.kill()
    assert not broker.running
    assert not wait_port(port, timeout=0.3)
    broker.restart()
    assert broker.port == port
    p = Probe()
    assert p.connect(port, login=broker.identity("dock-0001"))
    p.stop()


def test_extra_config_and_persistence(make_broker, tmp_path):
    mq = make_broker(extra_config=["max_packet_size 1000"], persistence_dir=tmp_path / "db")
    assert "max_packet_size 1000" in mq.conf_path.read_text()
    # a retained message survives a clean restart when persistence is on
    p = Probe()
    assert p.connect(mq.port, login=mq.identity("dock-0001"))
    p.client.publish("edge/dev/dock-0001/status", b"x", qos=1, retain=True).wait_for_publish(5)
    p.stop()
    mq.restart()
    assert (tmp_path / "db" / "mosquitto.db").exists()
    s = Probe()
    assert s.connect(mq.port, login=mq.identity("monitor", "monitor"))
    s.client.subscribe("edge/dev/dock-0001/status", qos=1)
    assert s.got.wait(5) and s.messages[0].payload == b"x"
    s.stop()


def test_session_broker(broker_session: Mosquitto):
    assert not Probe().connect(broker_session.port)
    p = Probe()
    assert p.connect(broker_session.port, login=broker_session.identity("dock-session"))
    p.stop()


def test_pki_files(pki):
    server = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert any(str(ip) == "127.0.0.1" for ip in san.get_values_for_type(x509.IPAddress))
    dev = pki.client("dock-0001")
    cert = x509.load_pem_x509_certificate(dev.cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "dock-0001"
    ca = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    rogue = x509.load_pem_x509_certificate(pki.rogue.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    with pytest.raises(Exception):
        rogue.verify_directly_issued_by(ca)


def test_tls_accepts_valid_client(tls_broker: Mosquitto, pki):
    """Certificate identities under the shipped ACL: the CN is the user name (and the session),
    no password; a device reads its own answers only and publishes in its own subtree only."""
    dev, arch, mon = (pki.client(cn) for cn in ("dock-0001", "archive", "monitor"))
    sub, archive, monitor = (Probe().tls(pki.ca.cert, c.cert, c.key) for c in (dev, arch, mon))
    try:
        assert sub.connect(tls_broker.tls_port), tls_broker.log_tail()
        assert archive.connect(tls_broker.tls_port) and monitor.connect(tls_broker.tls_port)
        sub.client.subscribe([("edge/ack/dock-0001", 1), ("edge/ack/room-0001", 1), ("edge/dev/room-0001/cmd", 1)])
        assert sub.subscribed.wait(5)
        monitor.client.subscribe("edge/dev/+/health", qos=1)
        assert monitor.subscribed.wait(5)
        # another device's answer first, then its own: only its own arrives (in order on one connection)
        archive.client.publish("edge/ack/room-0001", b"not yours", qos=1).wait_for_publish(5)
        archive.client.publish("edge/ack/dock-0001", b"ok", qos=1)
        assert sub.got.wait(5)
        assert [(m.topic, m.payload) for m in sub.messages] == [("edge/ack/dock-0001", b"ok")]
        # dock-0001's certificate cannot publish as room-0001
        sub.client.publish("edge/dev/room-0001/health", b"forged", qos=1).wait_for_publish(5)
        sub.client.publish("edge/dev/dock-0001/health", b"own", qos=1)
        assert monitor.got.wait(5)
        assert [(m.topic, m.payload) for m in monitor.messages] == [("edge/dev/dock-0001/health", b"own")]
        # one certificate, one session: a second connection with the same CN ends the first
        again = Probe().tls(pki.ca.cert, dev.cert, dev.key)
        assert again.connect(tls_broker.tls_port)
        assert sub.disconnected.wait(5)
        again.stop()
    finally:
        for p in (sub, archive, monitor):
            p.stop()
    # identity as username: the broker logged the CN for this connection, as its client id
    log = tls_broker.log_path.read_text()
    assert "dock-0001" in log and " as dock-0001 " in log, log[-2000:]
    assert "Denied PUBLISH" in log and "edge/dev/room-0001/health" in log


def test_tls_refuses_rogue_cert(tls_broker: Mosquitto, pki):
    p = Probe().tls(pki.ca.cert, pki.rogue.cert, pki.rogue.key)
    assert not p.connect(tls_broker.tls_port, timeout=3)


def test_tls_refuses_no_cert(tls_broker: Mosquitto, pki):
    p = Probe().tls(pki.ca.cert)
    assert not p.connect(tls_broker.tls_port, timeout=3)


def test_tls_client_rejects_wrong_server_ca(tls_broker: Mosquitto, pki):
    dev = pki.client("dock-0001")
    p = Probe().tls(pki.rogue_ca.cert, dev.cert, dev.key)
    assert not p.connect(tls_broker.tls_port, timeout=3)


def test_retained_reads_exactly_what_the_broker_keeps(broker):
    """tests/support/retained.py: retained messages only, none missed, without a sleep."""
    from tests.support.health import publish
    from tests.support.retained import retained

    for i in range(50):
        publish(broker.port, f"edge/dev/d{i}/status", {"n": i}, retain=True)
    publish(broker.port, "edge/dev/d0/health", {"live": True})            # not retained
    publish(broker.port, "edge/dev/d1/ratio", b"kept", retain=True)
    got = retained(broker.port, "edge/dev/+/status")
    assert sorted(got) == sorted(f"edge/dev/d{i}/status" for i in range(50))
    assert got["edge/dev/d7/status"] == b'{"n": 7}'
    everything = retained(broker.port, "edge/dev/#")                        # covers the marker too
    assert set(everything) == set(got) | {"edge/dev/d1/ratio"}
    publish(broker.port, "edge/dev/d1/ratio", b"", retain=True)            # cleared: gone
    assert "edge/dev/d1/ratio" not in retained(broker.port, "edge/dev/+/ratio")
    assert retained(broker.port, "edge/dev/nobody/#") == {}
