"""`archive policy publish` under certificate identities: the broker knows the connection by the
certificate's CN, so the certificate of a receiver would log in as that receiver and end its
session. It is refused before anything is signed; a certificate of its own (CN ``NAME.policy``)
publishes."""

from __future__ import annotations

import threading

from agent import config as config_mod
from agent.archive import policy as ap
from agent.wire.topics import Topics
from tests.policy.test_policy import POLICY_TOML
from tests.support.uplink import UNIT, run
from tests.wire.test_broker_auth import ACCEPTED, DEADLINE, Peer

T = Topics("edge")


class TlsPeer(Peer):
    """A Peer on the mutual-TLS listener with a client certificate and no user name; records its
    disconnects."""

    def __init__(self, port: int, ca, cert):
        super().__init__(port)
        self.c.tls_set(ca_certs=str(ca), certfile=str(cert.cert), keyfile=str(cert.key))
        self.dropped = threading.Event()
        self.c.on_disconnect = lambda *_a: self.dropped.set()


def _cert_config(tmp_path, port: int, pki, cn: str):
    """An [mqtt] section with TLS, the client certificate of ``cn`` and no user name."""
    cert = pki.issue_client(cn)
    path = tmp_path / f"{cn}.toml"
    path.write_text(config_mod.render_default({"mqtt": {
        "host": "127.0.0.1", "port": port, "tls": True, "cafile": str(pki.ca.cert),
        "certfile": str(cert.cert), "keyfile": str(cert.key)}}), encoding="utf-8")
    return path, cert


def _root(tmp_path):
    root = tmp_path / "archive"
    run(["archive", "policy", "key", "--new", "--root", str(root)], check=True)
    (tmp_path / "policy.toml").write_text(POLICY_TOML, encoding="utf-8")
    return root


def _publish(tmp_path, root, config, port: int):
    return run(["archive", "policy", "publish", "--unit", UNIT, "--file", str(tmp_path / "policy.toml"),
                "--root", str(root), "--broker", f"127.0.0.1:{port}"], config=config)


def test_a_receivers_certificate_is_refused_before_anything_is_signed(tmp_path, pki):
    root = _root(tmp_path)
    run(["archive", "receiver", "add", "archive-2", "--root", str(root)], check=True)
    for cn in ("archive", "archive-2"):  # the default receiver login, and one enrolled at this root
        config, cert = _cert_config(tmp_path, 1, pki, cn)  # refused before any connection: no broker needed
        p = _publish(tmp_path, root, config, 1)
        assert p.returncode != 0, p.stdout
        assert f"证书 {cert.cert} 是接收端 '{cn}' 的登录" in p.stderr, p.stderr
        assert f"is the login of archive receiver '{cn}'" in p.stderr and f"CN '{cn}.policy'" in p.stderr, p.stderr
        assert "nothing was signed" in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert ap.last_published(root, UNIT) is None  # no version signed or recorded


def test_a_certificate_of_its_own_publishes_beside_the_receiver(tmp_path, pki, tls_broker):
    """CN ``archive.policy`` on the certificate-identity listener: published, the device (password
    login on the loopback listener) gets its unit's signed policy, and a receiver holding the
    certificate of CN ``archive`` keeps its session."""
    tls_broker.identity("archive", "archive")
    user, password = tls_broker.identity("dock-0001", unit=UNIT)
    device = Peer(tls_broker.port, user, password)
    rx_cert = pki.issue_client("archive")
    receiver = TlsPeer(tls_broker.tls_port, pki.ca.cert, rx_cert)
    try:
        assert device.connect().value == 0
        assert receiver.connect().value == 0
        assert device.subscribe(T.unit_policy(UNIT)) == [1]
        root = _root(tmp_path)
        config, _cert = _cert_config(tmp_path, tls_broker.tls_port, pki, "archive.policy")
        p = _publish(tmp_path, root, config, tls_broker.tls_port)
        assert p.returncode == 0, p.stderr
        topic, body = device.messages.get(timeout=DEADLINE)
        assert topic == T.unit_policy(UNIT) and b'"edge-policy/1"' in body
        assert ap.last_published(root, UNIT) is not None
        assert receiver.publish(T.ack("dock-0001"), b"still-served") in ACCEPTED
        assert not receiver.dropped.is_set(), "the receiver's session was taken"
    finally:
        device.close()
        receiver.close()
