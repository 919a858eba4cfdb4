"""Identities and ACL on the broker (issue 14, part 1): Mosquitto started with the files
`agent.wire.broker_auth` generates from the archive's enrolment, and each refusal shown with
real clients (paho-mqtt 2, MQTT v5).

A refused publish gets PUBACK 0x87 and reaches nobody; a refused read is never delivered
(Mosquitto 2.0's ACL file grants every SUBSCRIBE and filters each message it would deliver). To
tell "nothing delivered" from "not yet delivered", every negative check is followed by a
message the same subscriber is allowed to see, published after the refused one: once that
arrives, the refused one would have arrived before it (one broker, one connection, in order).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import tomllib
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.common.errors import EdgeError
from agent.wire import broker_auth
from agent.wire.topics import Topics
from tests.support.broker import denied
from tests.support.uplink import InProc, UNIT, add_items, check_archive, run, wait_for

T = Topics("edge")
DEVICES = ["dock-0001", "dock-0002", "room-0001"]
DEADLINE = 10.0
# a wrong password: Mosquitto 2.0.11 answers 0x87 Not authorized (later versions 0x86 Bad user name or password)
REFUSED = (0x86, 0x87)
ACCEPTED = (0x00, 0x10)  # PUBACK success, "no matching subscribers"


class Peer:
    """One MQTT v5 client under one identity; every wait has a deadline."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None,
                 client_id: str | None = None):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.port = port
        self.connack = queue.Queue()
        self.pubacks: dict[int, queue.Queue] = {}
        self.subacks: dict[int, queue.Queue] = {}
        self.messages: queue.Queue = queue.Queue()
        self.markers: set[bytes] = set()
        self.lock = threading.Lock()
        self.c.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(rc)
        self.c.on_publish = lambda _c, _u, mid, rc, _p: self._q(self.pubacks, mid).put(rc)
        self.c.on_subscribe = lambda _c, _u, mid, rcs, _p: self._q(self.subacks, mid).put(rcs)
        # bytes(): the archive's lean decoder (installed process-wide by another test) hands bytearrays
        self.c.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, bytes(msg.payload)))

    def _q(self, d: dict, mid: int) -> queue.Queue:
        with self.lock:
            return d.setdefault(mid, queue.Queue())

    def connect(self):
        """The CONNACK reason code."""
        self.c.connect("127.0.0.1", self.port, keepalive=10)
        self.c.loop_start()
        return self.connack.get(timeout=DEADLINE)

    def publish(self, topic: str, payload: bytes = b"x", retain: bool = False, props=None) -> int:
        """The PUBACK reason code of a QoS 1 publish."""
        info = self.c.publish(topic, payload, qos=1, retain=retain, properties=props)
        return self._q(self.pubacks, info.mid).get(timeout=DEADLINE).value

    def subscribe(self, topic: str) -> list[int]:
        _, mid = self.c.subscribe(topic, qos=1)
        return [rc.value for rc in self._q(self.subacks, mid).get(timeout=DEADLINE)]

    def receive_until(self, marker_topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Every message received until (marker_topic, payload) arrives (not included). Extra
        copies of earlier markers (overlapping subscriptions each get one) are skipped."""
        got = []
        self.markers.add(payload)
        deadline = time.monotonic() + DEADLINE
        while True:
            topic, body = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if (topic, body) == (marker_topic, payload):
                return got
            if body not in self.markers:
                got.append((topic, body))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def auth(tmp_path: Path):
    """Generated files for three devices, and a broker started with them."""
    return broker_auth.generate(tmp_path / "broker", DEVICES, prefix="edge")


@pytest.fixture
def mq(make_broker, auth):
    return make_broker(password_file=auth.passwd, acl_file=auth.acl)


@pytest.fixture
def peers(mq, auth):
    """peers(name) -> a connected Peer with that identity's generated password."""
    made: list[Peer] = []
    pw = {i.name: i.password for i in auth.identities}

    def make(name: str, client_id: str | None = None) -> Peer:
        p = Peer(mq.port, name, pw[name], client_id=client_id)
        rc = p.connect()
        assert rc.value == 0, f"{name}: CONNACK {rc}"
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def nothing_between(subscriber: Peer, marker_pub: Peer, marker_topic: str) -> list:
    """Publish a marker the subscriber may read; return what it got before the marker."""
    payload = uuid.uuid4().hex.encode()
    assert marker_pub.publish(marker_topic, payload) in ACCEPTED
    return subscriber.receive_until(marker_topic, payload)


# -- the files ---------------------------------------------------------------------------------
def test_password_hash_is_what_mosquitto_passwd_writes_and_the_broker_accepts(tmp_path, make_broker):
    """Our $7$ hash for a fixed salt equals mosquitto_passwd's format; mosquitto_passwd's own
    hash checks with check_password; the broker accepts ours (the other tests) and refuses a
    wrong password."""
    pw = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "dev1", "s3cret"], check=True)
    name, hashed = pw.read_text().strip().split(":", 1)
    assert name == "dev1" and broker_auth.check_password("s3cret", hashed)
    assert not broker_auth.check_password("s3cret!", hashed)
    _, seven, it, salt, _dk = hashed.split("$")
    import base64

    ours = broker_auth.hash_password("s3cret", salt=base64.b64decode(salt), iterations=int(it))
    assert ours == hashed, "same salt and iterations: byte-identical to mosquitto_passwd"
    assert not broker_auth.check_password("x", "$6$abc$def") and not broker_auth.check_password("x", "garbage")

    (tmp_path / "ours").write_text(f"dev1:{broker_auth.hash_password('0ur-pass')}\n")
    mq = make_broker(password_file=tmp_path / "ours")
    ok, bad = Peer(mq.port, "dev1", "0ur-pass"), Peer(mq.port, "dev1", "wrong")
    try:
        assert ok.connect().value == 0
        assert bad.connect().value in REFUSED
    finally:
        ok.close()
        bad.close()


def test_generated_files_modes_and_contents(auth):
    assert sorted(auth.credentials) == sorted(DEVICES + ["archive", "monitor", "ops"])
    for path in auth.credentials.values():
        assert path.stat().st_mode & 0o777 == 0o600
        data = tomllib.loads(path.read_text())["mqtt"]
        assert data["username"] == path.stem and len(data["password"]) >= 32
    assert (auth.out / "credentials").stat().st_mode & 0o777 == 0o700
    assert auth.passwd.stat().st_mode & 0o777 == 0o600
    conf = auth.conf.read_text()
    for line in ("allow_anonymous false", f"password_file {auth.passwd.resolve()}", f"acl_file {auth.acl.resolve()}",
                 "listener 1883 127.0.0.1"):
        assert line in conf.splitlines()
    acl = auth.acl.read_text()
    # every topic a device publishes is granted by a pattern, built by Topics
    for topic in (T.status("%u"), T.health("%u"), T.alarm("%u", "+"), T.component("%u", "+"), T.chain("%u"),
                  T.ratio("%u"), T.cmd_resp("%u"), *[T.xfer("%u", "+", k) for k in
                                                      ("manifest", "chunk", "finish", "query", "annotation")]):
        assert f"pattern write {topic}" in acl.splitlines()
    assert "pattern read edge/ack/%u" in acl.splitlines()
    assert "topic write edge/ack/+" in acl.splitlines()
    assert not [ln for ln in acl.splitlines() if ln.startswith("pattern") and "ack" in ln and "write" in ln]


# Every name on Topics, and where the ACL places it. A topic added to the tree fails this test
# until agent/wire/broker_auth.py grants it to exactly the identities that need it.
TOPIC_PLACES = {
    "status": "device writes its own; monitor, ops read", "health": "device writes; monitor reads",
    "alarm": "device writes; monitor reads", "component": "device writes; monitor reads",
    "chain": "device writes; archive, monitor read", "ratio": "device writes; monitor reads",
    "cmd": "ops writes; the device reads its own", "cmd_resp": "device writes its own; ops reads",
    "xfer": "device writes its own; only the archive reads", "ack": "only the archive writes; the device reads its own",
    "archive_status": "archive writes; everyone reads",
    "archive_checkpoint": "archive writes; monitor reads (keeps copies outside the archive)", "archive_receiver": "archive writes; everyone reads",
    "all_archive_receivers": "filter of archive_receiver", "all_chains": "filter of chain",
    "all_xfer": "filter of xfer", "all_dev": "filter of the device topics",
    "all_of_dev": "filter of one device's topics (the monitor's share of devices; each message still delivered only as the read rules allow)",
    "unit_policy": "archive writes; each device reads its own unit's (a user block per enrolled device); monitor reads",
    "all_unit_policies": "filter of unit_policy", "parse_unit_policy": "parser",
    "operator_reply": "granted to nobody: command send takes its answer on cmd_resp",
    "session": "every login reads and writes its own only (pattern %u): which process holds the login",
    "is_archive_receiver": "parser", "kind_of": "parser", "parse_dev": "parser", "parse_xfer": "parser",
}


def test_every_topic_of_the_tree_has_its_place_in_the_acl():
    names = {n for n in vars(Topics) if not n.startswith("_")}
    assert names == set(TOPIC_PLACES), ("the topic tree changed: grant the new topic in agent/wire/broker_auth.py "
                                        f"and list it here: {sorted(names ^ set(TOPIC_PLACES))}")
    acl = broker_auth.acl_text("edge")
    assert T.operator_reply("x").rsplit("/", 1)[0] not in acl


def test_generate_again_keeps_passwords_rotates_on_request_and_adds_devices(tmp_path):
    out = tmp_path / "b"
    first = broker_auth.generate(out, ["dock-0001"])
    pw1 = {i.name: i.password for i in first.identities}
    passwd1 = first.passwd.read_text()
    second = broker_auth.generate(out, ["dock-0001", "dock-0002"])
    pw2 = {i.name: i.password for i in second.identities}
    assert second.created == ["dock-0002"] and "dock-0001" in second.kept
    assert all(pw2[n] == pw1[n] for n in pw1)
    assert second.passwd.read_text().startswith(passwd1.splitlines()[0])  # unchanged hash kept
    third = broker_auth.generate(out, ["dock-0001", "dock-0002"], rotate=["dock-0001"])
    pw3 = {i.name: i.password for i in third.identities}
    assert third.rotated == ["dock-0001"] and pw3["dock-0001"] != pw1["dock-0001"]
    assert pw3["dock-0002"] == pw2["dock-0002"]
    # the monitor's connection logins (monitor.1 ...) carry the monitor's password
    assert third.instances and all(n.startswith("monitor.") for n in third.instances)
    lines = third.passwd.read_text().splitlines()
    assert third.publishers == ["archive.policy"]
    assert sorted(ln.split(":", 1)[0] for ln in lines) == sorted([*pw3, *third.instances, *third.publishers])
    for line in lines:
        name, hashed = line.split(":", 1)
        assert broker_auth.check_password(pw3[name.split(".", 1)[0]], hashed)
    # rotating the monitor rotates its connection logins with it
    fourth = broker_auth.generate(out, ["dock-0001", "dock-0002"], rotate=["monitor"], monitor_connections=3)
    new_mon = {i.name: i.password for i in fourth.identities}["monitor"]
    assert new_mon != pw3["monitor"] and fourth.instances == ["monitor.1", "monitor.2"]
    hashes = dict(ln.split(":", 1) for ln in fourth.passwd.read_text().splitlines())
    assert "monitor.3" not in hashes and all(broker_auth.check_password(new_mon, hashes[n])
                                             for n in ("monitor", "monitor.1", "monitor.2"))


@pytest.mark.parametrize("devices, kw, msg", [
    (["archive"], {}, "equal a service user name"),
    (["dock-1"], {"services": {"monitor": "archive"}}, "must differ"),
    (["dock-1"], {"services": {"ops": "a/b"}}, "ops user name"),
    (["dock-1"], {"rotate": ["dock-9"]}, "no such identity"),
    (["monitor.1"], {}, "equal a service user name"),
    (["dock-1"], {"monitor_connections": 0}, "--monitor-connections 0"),
    (["dock-1"], {"monitor_connections": 65}, "1 to 64"),
    (["dock-1"], {"prefix": "ed#ge"}, "unsafe topic prefix"),
    (["bad/id"], {}, "cannot be an MQTT user name"),
    (["dock-1"], {"tls_port": 8883}, "needs --cafile"),
    (["dock-1"], {"conf_dir": "etc/mosquitto"}, "--conf-dir 'etc/mosquitto': an absolute path"),
    (["dock-1"], {"conf_dir": "/etc/x\nallow_anonymous true"}, "--conf-dir"),
    (["dock-1"], {"tls_port": 8883, "cafile": "/c a", "certfile": "/c", "keyfile": "/k"}, "--cafile"),
    (["dock-1"], {"tls_identity": "certificate"}, "needs the TLS listener"),
    (["dock-1"], {"tls_port": 8883, "cafile": "/c", "certfile": "/c", "keyfile": "/k", "tls_identity": "cn"},
     "--tls-identity 'cn'"),
    (["dock-1"], {"tls_port": 8883, "cafile": "/c", "certfile": "/c", "keyfile": "/k", "crlfile": "/crl"},
     "needs --tls-identity certificate"),
    (["dock-1"], {"tls_port": 8883, "cafile": "/c", "certfile": "/c", "keyfile": "/k", "tls_identity": "certificate",
                  "crlfile": "ca.crl"}, "--crlfile 'ca.crl'"),
])
def test_bad_input_is_refused_and_writes_nothing(tmp_path, devices, kw, msg):
    out = tmp_path / "b"
    with pytest.raises((EdgeError, ValueError), match=msg):
        broker_auth.generate(out, devices, **kw)
    assert not (out / "passwd").exists() and not (out / "acl").exists()


def test_a_broken_credentials_file_is_an_error_not_a_new_password(tmp_path):
    out = tmp_path / "b"
    broker_auth.generate(out, ["dock-0001"])
    cred = out / "credentials" / "dock-0001.toml"
    before = cred.read_text()
    cred.write_text(before.replace('"', "", 1))  # no longer TOML
    broken = cred.read_text()
    passwd = (out / "passwd").read_text()
    with pytest.raises(EdgeError, match="dock-0001.toml unreadable"):
        broker_auth.generate(out, ["dock-0001"])
    assert cred.read_text() == broken and (out / "passwd").read_text() == passwd


# -- the refusals, against the real broker ------------------------------------------------------
def test_anonymous_and_wrong_password_are_refused(mq, auth):
    anon = Peer(mq.port)
    wrong = Peer(mq.port, "dock-0001", "not-the-password")
    stranger = Peer(mq.port, "dock-9999", "anything")
    try:
        assert anon.connect().value == 0x87  # Not authorized
        assert wrong.connect().value in REFUSED
        assert stranger.connect().value in REFUSED
    finally:
        for p in (anon, wrong, stranger):
            p.close()


def test_device_publishes_only_in_its_own_subtree(peers):
    a, b, monitor = peers("dock-0001"), peers("dock-0002"), peers("monitor")
    assert monitor.subscribe(T.all_dev()) == [1]
    archive = peers("archive")
    assert archive.subscribe(T.all_xfer()) == [1]
    # its own topics: delivered
    assert a.publish(T.health("dock-0001"), b"own") in ACCEPTED
    assert a.publish(T.xfer("dock-0001", "item-1", "manifest"), b"own") in ACCEPTED
    # B's subtree: refused, nothing delivered
    assert a.publish(T.health("dock-0002"), b"forged") == 0x87
    assert a.publish(T.status("dock-0002"), b'{"state":"offline"}', retain=True) == 0x87
    assert a.publish(T.alarm("dock-0002", "disk_full"), b"forged", retain=True) == 0x87
    assert a.publish(T.xfer("dock-0002", "item-2", "chunk"), b"forged") == 0x87
    assert a.publish(T.xfer("dock-0002", "item-2", "manifest"), b"forged") == 0x87
    # outside any device subtree
    assert a.publish("edge/other", b"forged") == 0x87
    assert a.publish(T.archive_receiver("fake"), b'{"state":"online"}', retain=True) == 0x87
    seen = nothing_between(monitor, b, T.health("dock-0002"))
    assert seen == [(T.health("dock-0001"), b"own")]
    seen = nothing_between(archive, b, T.xfer("dock-0002", "item-2", "query"))
    assert seen == [(T.xfer("dock-0001", "item-1", "manifest"), b"own")]


def test_device_cannot_publish_answers_receipts_or_commands(peers):
    a, b = peers("dock-0001"), peers("dock-0002")
    assert b.subscribe(T.ack("dock-0002")) == [1]
    assert a.subscribe(T.ack("dock-0001")) == [1]
    receipt = json.dumps({"item": "x", "kind": "finish", "status": "stored", "receipt": {}}).encode()
    assert a.publish(T.ack("dock-0002"), receipt) == 0x87
    assert a.publish(T.ack("dock-0001"), receipt) == 0x87, "not even on its own ack topic"
    assert a.publish(T.cmd("dock-0002"), b"{}") == 0x87
    assert a.publish(T.cmd("dock-0001"), b"{}") == 0x87
    archive = peers("archive")
    assert nothing_between(b, archive, T.ack("dock-0002")) == []
    assert nothing_between(a, archive, T.ack("dock-0001")) == []


def test_device_reads_only_its_own_answers_and_commands_and_no_transfers(peers):
    a, b, archive, ops = peers("dock-0001"), peers("dock-0002"), peers("archive"), peers("ops")
    for topic in (T.ack("dock-0002"), T.cmd("dock-0002"), T.all_xfer(), T.xfer("dock-0002", "i", "chunk"),
                  T.all_dev(), "edge/#", "#"):
        a.subscribe(topic)  # Mosquitto grants the SUBSCRIBE; what the ACL refuses is never delivered
    assert a.subscribe(T.ack("dock-0001")) == [1]
    assert a.subscribe(T.cmd("dock-0001")) == [1]
    assert archive.publish(T.ack("dock-0002"), b"answer-for-b") in ACCEPTED
    assert ops.publish(T.cmd("dock-0002"), b"cmd-for-b") in ACCEPTED
    assert b.publish(T.xfer("dock-0002", "i", "chunk"), b"bytes-of-b") in ACCEPTED
    assert b.publish(T.health("dock-0002"), b"health-of-b") in ACCEPTED
    # the marker on A's own ack topic comes after all of those
    seen = nothing_between(a, archive, T.ack("dock-0001"))
    assert seen == [], seen
    # and A does get its own command (once per matching subscription)
    assert ops.publish(T.cmd("dock-0001"), b"cmd-for-a") in ACCEPTED
    assert set(nothing_between(a, archive, T.ack("dock-0001"))) == {(T.cmd("dock-0001"), b"cmd-for-a")}


def test_only_the_archive_reads_transfers_and_checkpoints(peers):
    a, monitor, ops, archive = peers("dock-0001"), peers("monitor"), peers("ops"), peers("archive")
    for p in (monitor, ops):
        p.subscribe(T.all_xfer())
        p.subscribe(T.status("dock-0001"))
    monitor_chain = monitor.subscribe(T.all_chains())
    assert archive.subscribe(f"$share/archive/{T.all_xfer()}") == [1]
    assert archive.subscribe(T.all_chains()) == [1]
    assert a.publish(T.xfer("dock-0001", "i", "manifest"), b"manifest") in ACCEPTED
    assert a.publish(T.chain("dock-0001"), b"checkpoint") in ACCEPTED
    marker = uuid.uuid4().hex.encode()
    assert a.publish(T.status("dock-0001"), marker) in ACCEPTED
    assert monitor.receive_until(T.status("dock-0001"), marker) == [(T.chain("dock-0001"), b"checkpoint")]
    assert monitor_chain == [1]
    assert ops.receive_until(T.status("dock-0001"), marker) == []
    got = {archive.messages.get(timeout=DEADLINE) for _ in range(2)}
    assert got == {(T.xfer("dock-0001", "i", "manifest"), b"manifest"), (T.chain("dock-0001"), b"checkpoint")}


def test_monitor_reads_device_state_and_publishes_nothing(peers):
    a, monitor, archive = peers("dock-0001"), peers("monitor"), peers("archive")
    assert monitor.subscribe(T.all_dev()) == [1]
    assert monitor.subscribe(T.all_archive_receivers()) == [1]
    for topic, retain in ((T.health("dock-0001"), False), (T.status("dock-0001"), True),
                          (T.alarm("dock-0001", "disk_full"), True), (T.component("dock-0001", "bay-1"), True),
                          (T.ratio("dock-0001"), True)):
        body = uuid.uuid4().hex.encode()
        assert a.publish(topic, body, retain=retain) in ACCEPTED
        assert monitor.receive_until(topic, body) == []
    assert archive.publish(T.archive_receiver("rx-1"), b'{"state":"online"}', retain=True) in ACCEPTED
    assert monitor.messages.get(timeout=DEADLINE) == (T.archive_receiver("rx-1"), b'{"state":"online"}')
    for topic in (T.health("dock-0001"), T.status("dock-0001"), T.alarm("dock-0001", "x"), T.cmd("dock-0001"),
                  T.ack("dock-0001"), T.xfer("dock-0001", "i", "manifest"), T.archive_receiver("rx-1"),
                  T.health("monitor"), T.xfer("monitor", "i", "manifest")):
        assert monitor.publish(topic, b"forged") == 0x87, topic
    # the monitor does not read commands, answers or the transfer
    ops = peers("ops")
    assert ops.publish(T.cmd("dock-0001"), b"cmd") in ACCEPTED
    assert archive.publish(T.ack("dock-0001"), b"ack") in ACCEPTED
    assert nothing_between(monitor, a, T.health("dock-0001")) == []


def test_ops_sends_commands_and_reads_answers_only(peers):
    a, ops = peers("dock-0001"), peers("ops")
    assert a.subscribe(T.cmd("dock-0001")) == [1]
    assert ops.subscribe(T.cmd_resp("+")) == [1]
    ops.subscribe(T.health("+"))
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = T.cmd_resp("dock-0001")
    assert ops.publish(T.cmd("dock-0001"), b"signed-cmd", props=props) in ACCEPTED
    assert a.messages.get(timeout=DEADLINE) == (T.cmd("dock-0001"), b"signed-cmd")
    assert a.publish(T.health("dock-0001"), b"health") in ACCEPTED
    assert a.publish(T.cmd_resp("dock-0001"), b"answer") in ACCEPTED
    assert ops.messages.get(timeout=DEADLINE) == (T.cmd_resp("dock-0001"), b"answer")
    for topic in (T.ack("dock-0001"), T.health("dock-0001"), T.xfer("dock-0001", "i", "query"),
                  T.archive_receiver("x")):
        assert ops.publish(topic, b"forged") == 0x87, topic


def test_service_identities_cannot_pose_as_a_device_of_their_name(peers):
    for name in ("archive", "monitor", "ops"):
        p = peers(name)
        assert p.publish(T.status(name), b"{}") == 0x87
        assert p.publish(T.xfer(name, "i", "manifest"), b"{}") == 0x87


def test_a_stolen_device_password_cannot_take_another_device_name(mq, auth):
    """The ACL follows the user name, not the client id: dock-0001's password with client id
    dock-0002 still publishes only as dock-0001."""
    pw = {i.name: i.password for i in auth.identities}
    p = Peer(mq.port, "dock-0001", pw["dock-0001"], client_id="dock-0002")
    try:
        assert p.connect().value == 0
        assert p.publish(T.health("dock-0002"), b"forged") == 0x87
        assert p.publish(T.health("dock-0001"), b"own") in ACCEPTED
    finally:
        p.close()


def test_archive_identity_archives_a_real_item_with_the_device_identity(make_broker, auth, tmp_path):
    """The job still gets done: an agent (user dock-0001) and a receiver (user archive) on the
    ACL'd broker archive and verify an item end to end."""
    from agent.archive.receiver import Receiver
    from agent.archive.storage import ArchiveStore
    from agent.wire.client import ConnSettings

    mq = make_broker(password_file=auth.passwd, acl_file=auth.acl)
    pw = {i.name: i.password for i in auth.identities}
    t = InProc(tmp_path, mq.port, mqtt__username="dock-0001", mqtt__password=pw["dock-0001"])
    ids = add_items(t.store, tmp_path, [300_000, 5_000])
    t.enroll()
    st = ArchiveStore(t.root, receiver="rx-acl")
    rx = Receiver(st, ConnSettings("127.0.0.1", mq.port, "rx-acl", keepalive=10, username="archive",
                                   password=pw["archive"]), receiver_id="rx-acl")
    rx.start()
    try:
        assert rx.conn.wait_connected(10), rx.conn.last_error
        up = t.start_agent()
        t.wait_archived(ids, 60)
        wait_for(lambda: up.stats()["archive_reachable"], 10, "archive status read by the device")
        assert not up.stats()["last_error"] or "0x87" not in up.stats()["last_error"]
    finally:
        t.close()
        rx.stop()
        st.close()
    check_archive(t.root, ids)
    log = mq.log_path.read_text(errors="replace")
    assert not [ln for ln in denied(log) if "Denied PUBLISH" in ln], denied(log)[:5]


def test_cli_broker_config_and_enroll_refresh(tmp_path, make_broker):
    """`archive broker-config` writes the files from the enrolment; `archive enroll --broker-dir`
    refreshes them; the broker started with them admits the new device."""
    from agent.evidence import keys

    root, out = tmp_path / "archive", tmp_path / "broker"
    for dev in ("dock-0001", "dock-0002"):
        keys.generate(tmp_path / f"{dev}.key", tmp_path / f"{dev}.pub")
    run(["archive", "enroll", "dock-0001", str(tmp_path / "dock-0001.pub"), "--unit", UNIT, "--root", str(root)],
        check=True)
    p = run(["archive", "broker-config", "--root", str(root), "--out", str(out)], check=True)
    assert "dock-0001" in p.stdout and "消息代理" in p.stdout, p.stdout
    first = tomllib.loads((out / "credentials" / "dock-0001.toml").read_text())["mqtt"]["password"]
    p = run(["archive", "enroll", "dock-0002", str(tmp_path / "dock-0002.pub"), "--unit", UNIT, "--root", str(root),
             "--broker-dir", str(out)], check=True)
    assert "dock-0002" in p.stdout
    creds = {n: tomllib.loads((out / "credentials" / f"{n}.toml").read_text())["mqtt"]["password"]
             for n in ("dock-0001", "dock-0002")}
    assert creds["dock-0001"] == first
    mq = make_broker(password_file=out / "passwd", acl_file=out / "acl")
    peer = Peer(mq.port, "dock-0002", creds["dock-0002"])
    try:
        assert peer.connect().value == 0
        assert peer.publish(T.health("dock-0002"), b"ok") in ACCEPTED
        assert peer.publish(T.health("dock-0001"), b"forged") == 0x87
    finally:
        peer.close()
    # bad input: a root with no archive, an unsafe service name -> clear error, nothing written
    p = run(["archive", "broker-config", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")])
    assert p.returncode != 0 and not (tmp_path / "o2" / "passwd").exists()
    p = run(["archive", "broker-config", "--root", str(root), "--out", str(tmp_path / "o3"), "--monitor-user", "a/b"])
    assert p.returncode != 0 and "monitor user name" in p.stderr and not (tmp_path / "o3" / "passwd").exists()


def test_shipped_examples_are_what_the_generator_writes():
    """config/broker/acl is generate()'s ACL for prefix edge; config/broker/mosquitto.conf its
    config for /etc/mosquitto/edge-agent."""
    here = Path(__file__).resolve().parents[2] / "config" / "broker"
    assert (here / "acl").read_text() == broker_auth.acl_text("edge")
    assert (here / "mosquitto.conf").read_text() == broker_auth.conf_text("/etc/mosquitto/edge-agent")
    doc = (here.parent.parent / "docs" / "mqtt.md").read_text(encoding="utf-8")
    assert f"```\n{broker_auth.acl_text('edge')}```" in doc, "docs/mqtt.md shows the ACL as generated"


def test_command_send_with_ops_credentials_gets_the_device_answer(mq, auth, tmp_path):
    """`edge-agent --config credentials/ops.toml command send` to a running agent (user dock-0001): the answer
    comes back on P/dev/D/cmd/resp, which the device may write and ops may read. Without
    credentials the broker refuses the operator."""
    import shutil

    from tests.support.uplink import agent_config, open_store, start_agent

    pw = {i.name: i.password for i in auth.identities}
    cfg = agent_config(tmp_path, mq.port, mqtt__username="dock-0001", mqtt__password=pw["dock-0001"])
    store = open_store(cfg)
    run(["command", "keygen", "ops", "--out", str(tmp_path / "op")], check=True)
    (store.data_dir / "keys" / "operators").mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "op" / "ops.pub", store.data_dir / "keys" / "operators" / "ops.pub")
    store.close()
    ag = start_agent(cfg, tmp_path)
    try:
        wait_for(lambda: "uplink: connected" in ag.text(), 20, "agent connected", [ag])
        send = ["command", "send", "status", "--device", "dock-0001", "--key", str(tmp_path / "op" / "ops.key"),
                "--broker", f"127.0.0.1:{mq.port}", "--json", "--timeout", "5"]
        # the generated credentials file is a config of its own ([mqtt] username, password)
        p = run(send, config=auth.credentials["ops"])
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["ok"] is True
        anon = run(send)
        assert anon.returncode != 0 and "Not authorized" in anon.stderr, anon.stderr
        # a device's identity cannot send commands: its PUBLISH to another device's cmd is refused
        p = run(send, config=auth.credentials["dock-0002"])
        assert p.returncode != 0 and "the broker refused the command" in p.stderr and "0x87" in p.stderr, p.stderr
    finally:
        ag.stop()
    text = mq.log_path.read_text(errors="replace")
    log = text.splitlines()
    assert not [ln for ln in denied(text) if "from dock-0001 " in ln], "the agent was refused something"
    assert len([ln for ln in log if "Denied PUBLISH" in ln and "edge/dev/dock-0001/cmd" in ln]) == 1


def test_the_generated_mosquitto_conf_runs_as_is_with_a_tls_listener(tmp_path, pki):
    """mosquitto -c on the generated mosquitto.conf (only `user` and the log added, as the
    Debian package's main file would): loopback plain listener and the TLS listener both
    refuse anonymous clients and admit a device by password."""
    from tests.support.broker import free_port, wait_port

    port, tls_port = free_port(), free_port()
    files = broker_auth.generate(tmp_path / "b", ["dock-0001"], port=port, tls_port=tls_port,
                                 cafile=str(pki.ca.cert), certfile=str(pki.server.cert), keyfile=str(pki.server.key))
    conf = tmp_path / "run.conf"
    conf.write_text(f"user {__import__('getpass').getuser()}\nlog_dest file {tmp_path / 'mq.log'}\n"
                    + files.conf.read_text())
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert wait_port(port, proc=proc) and wait_port(tls_port, proc=proc), (tmp_path / "mq.log").read_text()
        pw = {i.name: i.password for i in files.identities}
        for p_, tls in ((port, False), (tls_port, True)):
            ok, anon = Peer(p_, "dock-0001", pw["dock-0001"]), Peer(p_)
            if tls:
                for peer in (ok, anon):
                    peer.c.tls_set(ca_certs=str(pki.ca.cert))
            try:
                assert ok.connect().value == 0
                assert ok.publish(T.health("dock-0001"), b"h") in ACCEPTED
                assert ok.publish(T.health("dock-0002"), b"h") == 0x87
                assert anon.connect().value == 0x87
            finally:
                ok.close()
                anon.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_certificate_identities_get_the_same_acl(make_broker, pki, tmp_path):
    """Mutual TLS with use_identity_as_username (CN = device id / service name; the generated TLS
    listener of `--tls-identity certificate`): the generated ACL confines a device by its
    certificate exactly as by its password."""
    mq = make_broker(tls=pki, plain=False, identity_as_username=True, shipped=True)

    def peer(cn: str) -> Peer:
        p = Peer(mq.tls_port)
        files = pki.client(cn)
        p.c.tls_set(ca_certs=str(pki.ca.cert), certfile=str(files.cert), keyfile=str(files.key))
        assert p.connect().value == 0
        return p

    dock, monitor = peer("dock-0001"), peer("monitor")
    try:
        assert monitor.subscribe(T.all_dev()) == [1]
        assert dock.publish(T.health("room-0001"), b"forged") == 0x87
        assert dock.publish(T.ack("dock-0001"), b"forged") == 0x87
        assert monitor.publish(T.health("dock-0001"), b"forged") == 0x87
        assert nothing_between(monitor, dock, T.health("dock-0001")) == []
    finally:
        dock.close()
        monitor.close()


def _close_all(peers, proc) -> None:
    """Teardown of the tests that run mosquitto on a generated conf themselves."""
    for p in peers:
        try:
            p.close()
        except Exception:
            pass
    proc.terminate()
    proc.wait(10)


def test_certificate_identities_from_broker_config_run_as_is(tmp_path, pki):
    """`archive broker-config --tls-identity certificate` (kept by `archive enroll --broker-dir`),
    mosquitto -c on the generated conf as is: the TLS listener requires a client certificate from
    the CA and takes its CN as the user name, so the generated ACL applies to it (a device
    publishes and reads as itself only, the monitor reads); a password without a certificate and
    a certificate of another CA are refused; one CN is one session; the loopback listener still
    takes passwords."""
    import getpass

    from agent.evidence import keys
    from tests.support.broker import free_port, wait_port

    root, out = tmp_path / "archive", tmp_path / "broker"
    for dev in ("dock-0001", "dock-0002"):
        keys.generate(tmp_path / f"{dev}.key", tmp_path / f"{dev}.pub")
    run(["archive", "enroll", "dock-0001", str(tmp_path / "dock-0001.pub"), "--unit", UNIT, "--root", str(root)],
        check=True)
    port, tls_port = free_port(), free_port()
    run(["archive", "broker-config", "--root", str(root), "--out", str(out), "--port", str(port),
         "--tls-port", str(tls_port), "--cafile", str(pki.ca.cert), "--certfile", str(pki.server.cert),
         "--keyfile", str(pki.server.key), "--tls-identity", "certificate"], check=True)
    run(["archive", "enroll", "dock-0002", str(tmp_path / "dock-0002.pub"), "--unit", UNIT, "--root", str(root),
         "--broker-dir", str(out)], check=True)  # the refresh keeps the option
    text = (out / "mosquitto.conf").read_text()
    tls_block = text[text.index(f"listener {tls_port}"):]
    assert "require_certificate true" in tls_block and "use_identity_as_username true" in tls_block
    assert "use_username_as_clientid true" in tls_block and "allow_anonymous false" in text
    conf = tmp_path / "run.conf"
    conf.write_text(f"user {getpass.getuser()}\nlog_dest file {tmp_path / 'mq.log'}\nlog_type all\n" + text)
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    made: list[Peer] = []

    def peer(cn: str | None, *, rogue: bool = False, login: tuple[str, str] | None = None) -> Peer:
        p = Peer(tls_port, *(login or (None, None)))
        files = (pki.issue_client(cn, name=f"rogue-{cn}", rogue=True) if rogue else pki.client(cn)) if cn else None
        p.c.tls_set(ca_certs=str(pki.ca.cert), certfile=files and str(files.cert), keyfile=files and str(files.key))
        made.append(p)
        return p

    try:
        assert wait_port(port, proc=proc) and wait_port(tls_port, proc=proc), (tmp_path / "mq.log").read_text()
        dock, archive, monitor = peer("dock-0002"), peer("archive"), peer("monitor")
        for p in (dock, archive, monitor):
            assert p.connect().value == 0  # the certificate alone: no password
        assert monitor.subscribe(T.all_dev()) == [1]
        assert dock.subscribe(T.ack("dock-0001")) == [1] and dock.subscribe(T.ack("dock-0002")) == [1]
        assert dock.publish(T.health("dock-0001"), b"forged") == 0x87
        assert dock.publish(T.ack("dock-0002"), b"forged") == 0x87
        assert nothing_between(monitor, dock, T.health("dock-0002")) == []
        assert nothing_between(dock, archive, T.ack("dock-0002")) == []  # dock-0001's answer never reaches it
        # without a certificate (even with a good password), or with one of another CA: no session
        pw = tomllib.loads((out / "credentials" / "dock-0002.toml").read_text())["mqtt"]["password"]
        for bad in (peer(None, login=("dock-0002", pw)), peer("dock-0002", rogue=True)):
            bad.c.on_disconnect = lambda *_a, bad=bad: bad.connack.put(None)  # closed without a CONNACK
            try:
                assert bad.connect() is None
            except OSError:  # or the TLS handshake itself failed
                pass
        # one CN, one session: the same certificate again ends the first connection
        again = peer("dock-0002")
        assert again.connect().value == 0
        wait_for(lambda: not dock.c.is_connected(), DEADLINE, "the first dock-0002 session ended")
        # the loopback listener: passwords, as before
        plain = Peer(port, "dock-0002", pw)
        made.append(plain)
        assert plain.connect().value == 0 and plain.publish(T.health("dock-0002"), b"h") in ACCEPTED
    finally:
        _close_all(made, proc)


def test_a_revoked_certificate_is_refused_by_the_generated_crlfile(tmp_path, pki):
    """A stolen station with certificate identities: `--crlfile` puts the CA's revocation list on
    the generated TLS listener (mosquitto -c on the generated conf as is). A revoked certificate
    gets no session; a CRL revoking one more, then SIGHUP: that certificate's next connection is
    refused, but Mosquitto 2.0.11 keeps its live session (a restart ends it: docs/security.md)."""
    import getpass
    import signal

    from tests.support.broker import free_port, wait_port

    stolen = pki.issue_client("dock-0003", name="crl-dock-0003")
    kept = pki.issue_client("dock-0002", name="crl-dock-0002")
    crl = pki.crl(tmp_path / "ca.crl", [stolen])
    port, tls_port = free_port(), free_port()
    files = broker_auth.generate(tmp_path / "b", ["dock-0002", "dock-0003"], port=port, tls_port=tls_port,
                                 cafile=str(pki.ca.cert), certfile=str(pki.server.cert), keyfile=str(pki.server.key),
                                 tls_identity="certificate", crlfile=str(crl))
    assert f"crlfile {crl}" in files.conf.read_text()
    conf = tmp_path / "run.conf"
    conf.write_text(f"user {getpass.getuser()}\nlog_dest file {tmp_path / 'mq.log'}\n" + files.conf.read_text())
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    made: list[Peer] = []

    def connects(cert) -> bool:
        p = Peer(tls_port)
        p.c.tls_set(ca_certs=str(pki.ca.cert), certfile=str(cert.cert), keyfile=str(cert.key))
        p.c.on_disconnect = lambda *_a: p.connack.put(None)  # closed without a CONNACK
        made.append(p)
        try:
            rc = p.connect()
        except OSError:
            return False
        return rc is not None and rc.value == 0

    try:
        assert wait_port(port, proc=proc) and wait_port(tls_port, proc=proc), (tmp_path / "mq.log").read_text()
        assert not connects(stolen)
        assert connects(kept)
        live = made[-1]
        assert live.publish(T.health("dock-0002"), b"h") in ACCEPTED
        pki.crl(crl, [stolen, kept])  # dock-0002 reported stolen too
        reloads = (tmp_path / "mq.log").read_text().count("Reloading config")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: (tmp_path / "mq.log").read_text().count("Reloading config") > reloads, DEADLINE, "the reload")
        assert not connects(kept)
        # the session opened before the reload goes on: the revocation takes it at the next restart
        assert live.c.is_connected() and live.publish(T.health("dock-0002"), b"h") in ACCEPTED
    finally:
        _close_all(made, proc)


def test_rotating_a_stolen_device_password_and_reloading_shuts_the_thief_out(mq, auth):
    """A station reported stolen: `broker-config --rotate D` and SIGHUP to the broker. Mosquitto
    drops the connected client whose password no longer matches, refuses the old password, and
    admits the new one."""
    old = {i.name: i.password for i in auth.identities}["dock-0001"]
    thief = Peer(mq.port, "dock-0001", old)
    gone = threading.Event()
    thief.c.on_disconnect = lambda *_a: gone.set()
    assert thief.connect().value == 0
    files = broker_auth.generate(auth.out, DEVICES, rotate=["dock-0001"])
    new = {i.name: i.password for i in files.identities}["dock-0001"]
    assert new != old and files.rotated == ["dock-0001"]
    mq.reload()
    try:
        assert gone.wait(DEADLINE), "the connected thief was not dropped on reload"
    finally:
        thief.close()
    again, owner = Peer(mq.port, "dock-0001", old), Peer(mq.port, "dock-0001", new)
    try:
        assert again.connect().value in REFUSED
        assert owner.connect().value == 0
    finally:
        again.close()
        owner.close()


def test_our_connection_sends_chunks_in_place_and_still_reports_a_refused_publish(mq, auth, peers):
    """agent.wire.lean.lean_client (on for every Connection): a chunk-sized packet queued as a
    memoryview arrives byte for byte, its plain PUBACK settles the publish without paho's objects,
    and a refusal (PUBACK 0x87, a reason code paho decodes itself) still fails the publish."""
    import os

    from agent.wire.client import ConnSettings
    from agent.wire.mqtt import Connection

    pw = {i.name: i.password for i in auth.identities}
    archive = peers("archive")
    assert archive.subscribe(T.xfer("dock-0001", "item-1", "chunk")) == [1]
    conn = Connection(ConnSettings("127.0.0.1", mq.port, "lean-dock-0001", username="dock-0001",
                                   password=pw["dock-0001"]), stop_event=threading.Event(), name="lean")
    conn.start()
    try:
        assert conn.wait_connected(DEADLINE)
        assert getattr(conn._client._packet_queue, "_edge_lean", False)
        chunk = bytearray(os.urandom(300_000))
        h = conn.publish(T.xfer("dock-0001", "item-1", "chunk"), chunk)
        assert h.wait(DEADLINE) and h.ok and h.reason == 0
        assert archive.messages.get(timeout=DEADLINE) == (T.xfer("dock-0001", "item-1", "chunk"), bytes(chunk))
        forged = conn.publish(T.xfer("dock-0002", "item-2", "chunk"), chunk)  # another device's transfer
        assert forged.wait(DEADLINE) and not forged.ok and forged.reason == 0x87
        again = conn.publish(T.xfer("dock-0001", "item-1", "chunk"), chunk[:5000])  # the connection goes on
        assert again.wait(DEADLINE) and again.ok
        assert archive.messages.get(timeout=DEADLINE) == (T.xfer("dock-0001", "item-1", "chunk"), bytes(chunk[:5000]))
    finally:
        conn.stop()
