"""One login, one session (issue 14, part 1): the generated mosquitto.conf, run as is, replaces
every client id by the login's user name (``use_username_as_clientid true`` on each listener),
so a stolen device password used with another device's client id no longer takes over (and
disconnects) that device.

Mosquitto takes over a session before it sends the new client its CONNACK (2.0.11,
connect__on_authorised), so once the intruder holds its CONNACK the victim's connection is
already gone if it is going to be: each check then runs a round trip on the victim's
connection (a publish the monitor must receive, an answer the victim must receive) and looks at
the victim's disconnect events and at the broker's log.
"""

from __future__ import annotations

import getpass
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from agent.wire import broker_auth
from agent.wire.topics import Topics
from tests.support.broker import free_port, wait_port
from tests.wire.test_broker_auth import ACCEPTED, DEADLINE, Peer, nothing_between

T = Topics("edge")
DEVICES = ["dock-0001", "dock-0002"]
TAKEOVER = "already connected, closing old connection"  # Mosquitto's log line for a takeover


class Broker:
    """Mosquitto on the generated mosquitto.conf as is (a main file adds only user and log)."""

    def __init__(self, tmp: Path, conf_text: str, port: int):
        self.port = port
        self.log = tmp / "mosquitto.log"
        main = tmp / "main.conf"
        main.write_text(f"user {getpass.getuser()}\nlog_dest file {self.log}\nlog_type all\n"
                        f"connection_messages true\n{conf_text}")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(main)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        assert wait_port(port, proc=self.proc), self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def generated(tmp_path):
    port = free_port()
    files = broker_auth.generate(tmp_path / "b", DEVICES, port=port)
    return files, port, {i.name: i.password for i in files.identities}


class Watched(Peer):
    """A Peer that records its disconnects."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.dropped = threading.Event()
        self.c.on_disconnect = lambda *_a: self.dropped.set()


def _still_served(a: Watched, archive: Peer, monitor: Peer) -> None:
    """A's connection works both ways: its health reaches the monitor, its answer reaches A."""
    body = uuid.uuid4().hex.encode()
    assert a.publish(T.health("dock-0001"), body) in ACCEPTED
    assert monitor.receive_until(T.health("dock-0001"), body) == []
    assert nothing_between(a, archive, T.ack("dock-0001")) == []


def test_another_devices_password_with_this_devices_client_id_does_not_disconnect_it(tmp_path, generated):
    files, port, pw = generated
    assert "use_username_as_clientid true" in files.conf.read_text().splitlines()
    mq = Broker(tmp_path, files.conf.read_text(), port)
    peers: list[Peer] = []
    try:
        a = Watched(port, "dock-0001", pw["dock-0001"], client_id="dock-0001")
        archive, monitor = Peer(port, "archive", pw["archive"]), Peer(port, "monitor", pw["monitor"])
        peers += [a, archive, monitor]
        for p in (a, archive, monitor):
            assert p.connect().value == 0
        assert a.subscribe(T.ack("dock-0001")) == [1]
        assert monitor.subscribe(T.health("dock-0001")) == [1]
        _still_served(a, archive, monitor)

        # B's password with A's client id: admitted, as B only
        b = Watched(port, "dock-0002", pw["dock-0002"], client_id="dock-0001")
        peers.append(b)
        assert b.connect().value == 0
        _still_served(a, archive, monitor)
        assert not a.dropped.is_set(), "A was disconnected by B's CONNECT with A's client id"
        # B is confined to its own identity: it cannot speak as A nor read A's answers
        assert b.publish(T.health("dock-0001"), b"forged") == 0x87
        assert b.publish(T.health("dock-0002"), b"own") in ACCEPTED
        b.subscribe(T.ack("dock-0001"))
        assert b.subscribe(T.ack("dock-0002")) == [1]
        assert archive.publish(T.ack("dock-0001"), b"answer-for-a") in ACCEPTED
        assert nothing_between(b, archive, T.ack("dock-0002")) == []
        assert a.receive_until(T.ack("dock-0001"), b"answer-for-a") == []

        # a service login (the operators') with A's client id: the same
        ops = Peer(port, "ops", pw["ops"], client_id="dock-0001")
        peers.append(ops)
        assert ops.connect().value == 0
        _still_served(a, archive, monitor)
        assert not a.dropped.is_set()

        log = mq.text()
        assert TAKEOVER not in log, [ln for ln in log.splitlines() if TAKEOVER in ln]
        # the broker names each session by its login, whatever client id was asked for
        assert "as dock-0002 (" in log and "u'dock-0002'" in log
        assert "as ops (" in log
    finally:
        for p in peers:
            p.close()
        mq.stop()


def test_without_the_generated_line_the_same_attack_disconnects_the_device(tmp_path, generated):
    """The control: the same files with `use_username_as_clientid` removed, as before this fix;
    B's CONNECT with A's client id drops A (what the test above rules out)."""
    files, port, pw = generated
    conf = "\n".join(ln for ln in files.conf.read_text().splitlines() if "use_username_as_clientid" not in ln)
    mq = Broker(tmp_path, conf + "\n", port)
    a = Watched(port, "dock-0001", pw["dock-0001"], client_id="dock-0001")
    b = Peer(port, "dock-0002", pw["dock-0002"], client_id="dock-0001")
    try:
        assert a.connect().value == 0
        assert b.connect().value == 0
        assert a.dropped.wait(DEADLINE), "A was not disconnected: the control no longer shows the attack"
        assert TAKEOVER in mq.text()
    finally:
        a.close()
        b.close()
        mq.stop()


def test_each_login_holds_one_session_and_the_monitor_has_one_login_per_connection(tmp_path, generated):
    """What the binding costs and how the project pays it: a second connection with the same
    login ends the first (so each process connection needs its own login); the monitor's eight
    connections log in as monitor, monitor.1 … monitor.7 (one password) and all stay up."""
    files, port, pw = generated
    assert files.instances == [f"monitor.{k}" for k in range(1, broker_auth.MONITOR_CONNECTIONS)]
    mq = Broker(tmp_path, files.conf.read_text(), port)
    peers: list[Peer] = []
    try:
        first = Watched(port, "dock-0002", pw["dock-0002"])
        second = Peer(port, "dock-0002", pw["dock-0002"])
        peers += [first, second]
        assert first.connect().value == 0
        assert second.connect().value == 0
        assert first.dropped.wait(DEADLINE), "a second connection of one login did not end the first"

        logins = broker_auth.monitor_logins("monitor", broker_auth.MONITOR_CONNECTIONS)
        mons = [Watched(port, login, pw["monitor"]) for login in logins]
        peers += mons
        for m in mons:
            assert m.connect().value == 0
            m.subscribe(T.health("+"))
        a = Peer(port, "dock-0001", pw["dock-0001"])
        peers.append(a)
        assert a.connect().value == 0
        body = uuid.uuid4().hex.encode()
        assert a.publish(T.health("dock-0001"), body) in ACCEPTED
        for m in mons:  # every connection up and reading
            assert m.receive_until(T.health("dock-0001"), body) == []
            assert not m.dropped.is_set()
        assert mons[3].publish(T.health("dock-0001"), b"forged") == 0x87, "monitor.3 has the monitor's rights only"
        assert Peer(port, "monitor.8", pw["monitor"]).connect().value in (0x86, 0x87), "no ninth login"
    finally:
        for p in peers:
            p.close()
        mq.stop()


def test_policy_publish_beside_the_running_receiver_does_not_take_its_session(tmp_path):
    """`archive policy publish` run with the receiver's own credentials file (archive.toml) logs
    in as ``archive.policy``: the receiver logged in as ``archive`` stays connected, the device
    gets the signed policy of its unit. ``archive.policy`` may write policies and nothing else."""
    from tests.policy.test_policy import POLICY_TOML
    from tests.support.uplink import UNIT, run

    port = free_port()
    files = broker_auth.generate(tmp_path / "b", DEVICES, port=port, units={d: UNIT for d in DEVICES})
    assert files.publishers == ["archive.policy"]
    pw = {i.name: i.password for i in files.identities}
    mq = Broker(tmp_path, files.conf.read_text(), port)
    receiver = Watched(port, "archive", pw["archive"], client_id="rx-1")
    device = Peer(port, "dock-0001", pw["dock-0001"])
    publisher = Peer(port, "archive.policy", pw["archive"])
    try:
        for p in (receiver, device):
            assert p.connect().value == 0
        assert device.subscribe(T.unit_policy(UNIT)) == [1]
        root = tmp_path / "archive"
        run(["archive", "policy", "key", "--new", "--root", str(root)], check=True)
        (tmp_path / "policy.toml").write_text(POLICY_TOML, encoding="utf-8")
        p = run(["archive", "policy", "publish", "--unit", UNIT, "--file", str(tmp_path / "policy.toml"), "--root",
                 str(root), "--broker", f"127.0.0.1:{port}", "--json"], config=files.credentials["archive"])
        assert p.returncode == 0, p.stderr
        topic, body = device.messages.get(timeout=DEADLINE)
        assert topic == T.unit_policy(UNIT) and b'"edge-policy/1"' in body
        assert receiver.publish(T.ack("dock-0001"), b"still-served") in ACCEPTED
        assert not receiver.dropped.is_set(), "policy publish took the receiver's session"
        assert "as archive.policy (" in mq.text() and TAKEOVER not in mq.text()
        # the publishing login writes policies only
        assert publisher.connect().value == 0
        for topic in (T.ack("dock-0001"), T.archive_status(), T.archive_checkpoint()):
            assert publisher.publish(topic, b"forged") == 0x87, topic
    finally:
        for p in (receiver, device, publisher):
            p.close()
        mq.stop()
