"""The monitor shows as a device's state only what that device signed (issue 14, section 2
"Health, status, alarms, ratio"), and nothing a stranger sends stops it (section 3). Attacks run
against a real Mosquitto and a real `edge-agent monitor`; the envelope itself is unit-tested."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.monitor.enrolment import Enrolment
from agent.monitor.ingest import Ingest, IngestSettings
from agent.monitor.state import MonitorDB
from agent.evidence import keys
from agent.wire import envelope as pl, health
from tests.support.broker import login_for_topic
from tests.support.health import EDGE, MonitorProc, publish
from tests.support.uplink import credentials
from tools.fleet_sim import SimDevice, enrol

UNIT = "33010600"


def _fleet(db) -> dict:
    p = subprocess.run([EDGE, "monitor", "fleet", "--db", str(db), "--json"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _wait(pred, timeout=30.0, step=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step)


def _dev(f, dev):
    return next((d for d in f["devices"] if d["id"] == dev), None)


def _status(d: SimDevice, state: str, bdseq: int, unit: str = UNIT) -> dict:
    return {"state": state, "bdseq": bdseq, "device": d.id, "kind": d.kind, "unit_code": unit, "ts": "2026-12-01T09:00:00+08:00"}


def _alarm(active: bool) -> dict:
    return {"code": "camera_offline", "key": "camera_offline", "active": active, "severity": "critical",
            "since": "2026-12-01T09:00:00+08:00", "ts": "2026-12-01T09:00:00+08:00",
            "message": {"zh": "摄像头离线", "en": "camera offline"}, "source": "room"}


def _forged(d: SimDevice, topic: str, body: dict, how: str) -> bytes:
    """A forgery for ``topic`` in ``d``'s name: ``plain`` JSON, an envelope signed by a ``stranger``
    key (with d's key id copied), or d's genuine envelope with the ``body`` swapped."""
    if how == "plain":
        return json.dumps(body).encode()
    if how == "stranger":
        other = SimDevice(d.id, d.unit_code, "", d.kind)
        other._sealer = pl.Sealer(Ed25519PrivateKey.generate(), d.id, 2**52)
        env = json.loads(other.seal(topic, body))
        env["key_id"] = keys.key_id(d.key.public_key())
        return json.dumps(env).encode()
    env = json.loads(d.seal(topic, _alarm(False) if "alarm" in topic else {"x": 1}))
    env["body"] = json.dumps(body)
    env["body_sha256"] = __import__("hashlib").sha256(env["body"].encode()).hexdigest()
    return json.dumps(env).encode()


# --- the envelope ---------------------------------------------------------------------------------
def test_libsodium_and_openssl_agree_on_every_signature():
    """The monitor checks signatures with libsodium (keys.verify_raw), everything else with OpenSSL
    (keys.verify_sig): a genuine signature passes both; another key, another byte, another
    signature, a short or an unreadable one, or a key of the wrong length passes neither."""
    assert keys.SODIUM, "PyNaCl (a dependency) is installed: the monitor's fast path is on"
    k, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pub, raw = k.public_key(), keys.public_raw(k.public_key())
    data = b'{"body_sha256":"00","device":"dock-7"}'
    sig = keys.sign(k, data)
    flipped = bytearray(base64.b64decode(sig))
    flipped[10] ^= 1
    cases = [(pub, data, sig, True), (other.public_key(), data, sig, False), (pub, data + b" ", sig, False),
             (pub, data, keys.sign(other, data), False), (pub, data, base64.b64encode(bytes(flipped)).decode(), False),
             (pub, data, base64.b64encode(base64.b64decode(sig)[:63]).decode(), False), (pub, data, "%%%", False),
             (pub, data, "", False)]
    for public, msg, s, want in cases:
        assert keys.verify_sig(public, msg, s) is want
        assert keys.verify_raw(keys.public_raw(public), msg, s) is want
    assert keys.verify_raw(raw[:31], data, sig) is False and keys.verify_raw(raw + b"\0", data, sig) is False
    # the short signature with the message's first byte moved into it is no way around the check
    assert keys.verify_raw(raw, data[1:], base64.b64encode(base64.b64decode(sig) + data[:1])[:88].decode()) is False


def test_envelope_signed_bytes_are_rfc8785_and_bound_to_topic():
    d = SimDevice("dock-7", UNIT, "单位", "dock")
    topic = "edge/dev/dock-7/health"
    payload = d.seal(topic, d.health())
    env = pl.open_envelope(payload)
    assert env.signed_bytes() == rfc8785.dumps(env.header()), "the fast path is exactly RFC 8785"
    assert pl.verify(env, d.key.public_key())
    assert not pl.verify(env, Ed25519PrivateKey.generate().public_key())
    assert env.topic == topic and env.kind == "health" and env.device == "dock-7" and env.seq == 1
    with pytest.raises(ValueError, match="not a device-state topic of dock-7"):
        d.seal("edge/dev/dock-8/health", {})
    with pytest.raises(ValueError, match="not a device-state topic"):
        d.seal("edge/dev/dock-7/cmd", {})
    # every field is checked before any signature work
    raw = json.loads(payload)
    for change, message in [({"v": 2}, "envelope.v"), ({"kind": "chain"}, "envelope.kind"),
                            ({"epoch": 0}, "envelope.epoch"), ({"seq": 2**53}, "envelope.seq"),
                            ({"seq": True}, "envelope.seq"), ({"key_id": "XYZ"}, "envelope.key_id"),
                            ({"sig": "AAAA"}, "envelope.sig"), ({"body": raw["body"] + " "}, "body_sha256"),
                            ({"extra": 1}, "unknown"), ({"topic": "a b"}, "envelope.topic"),
                            ({"body": "\ud800"}, "surrogate")]:
        bad = json.dumps(dict(raw, **change)).encode()
        with pytest.raises(health.PayloadError, match=message):
            pl.open_envelope(bad)
    for junk in (b"", b"{}", b"[1]", b"\xff", b'{"state":"online","bdseq":1}', b"nul\x00"):
        with pytest.raises(health.UnsignedError):
            pl.open_envelope(junk)
    # NaN in a body (a broken metric) is sealed as null, not as invalid JSON
    body = json.loads(pl.open_envelope(d.seal(topic, dict(d.health(), cpu_percent=float("nan")))).body)
    assert body["cpu_percent"] is None


def test_ingest_refusals_in_process(tmp_path):
    """Each refusal of the ingest pipeline, in order, without a broker (the worker calls handle())."""
    a, b = SimDevice("a-1", UNIT, "单位", "room"), SimDevice("b-1", UNIT, "单位", "dock")
    ing = Ingest(MonitorDB(tmp_path / "m.db"), IngestSettings(),
                 Enrolment.of((d.id, d.unit_code, d.key.public_key()) for d in (a, b)))
    ta, tb = "edge/dev/a-1/status", "edge/dev/b-1/status"
    assert ing.handle(ta, a.seal(ta, _status(a, "online", 3))) == "accepted"
    assert ing.handle(ta, _forged(a, ta, _status(a, "offline", 99), "plain")) == "unsigned"
    assert ing.handle(ta, _forged(a, ta, _status(a, "offline", 99), "stranger")) == "bad_signature"
    assert ing.handle(ta, _forged(a, ta, _status(a, "offline", 99), "swapped")) == "bad_signature"
    assert ing.handle(tb, a.seal(ta, _status(a, "offline", 99))) == "wrong_topic", "a's signature on b's topic"
    assert ing.handle("edge/dev/a-1/health", a.seal(ta, _status(a, "offline", 99))) == "wrong_topic"
    assert ing.handle("edge/dev/zz-9/status", a.seal(ta, _status(a, "offline", 99))) == "unknown_device"
    env = json.loads(b.seal(tb, _status(b, "online", 1)))
    env["key_id"] = "0" * 16
    assert ing.handle(tb, json.dumps(env).encode()) == "wrong_key"
    assert ing.handle(ta, a.seal(ta, _status(a, "online", 4, unit="99999999"))) == "unit_mismatch"
    assert ing.devices["a-1"]["state"] == "online" and ing.devices["a-1"]["bdseq"] == 3
    assert ing.devices["a-1"]["unit_code"] == UNIT and ing.devices["a-1"]["unit_conflicts"] == 1
    # the unit comes from the enrolment even when the message names none
    assert ing.handle(tb, b.seal(tb, {"state": "online", "bdseq": 1})) == "accepted"
    assert ing.devices["b-1"]["unit_code"] == UNIT
    ing.flush()
    rows = {(r["device"], r["reason"]): r["count"] for r in ing.db.conn.execute("SELECT * FROM rejections")}
    assert rows == {("a-1", "unsigned"): 1, ("a-1", "bad_signature"): 2, ("b-1", "wrong_topic"): 1,
                    ("a-1", "wrong_topic"): 1, ("b-1", "wrong_key"): 1, ("a-1", "unit_mismatch"): 1}
    assert ing.stats()["rejected.unknown_device"] == 1


def test_a_new_agent_epoch_survives_a_monitor_restart(tmp_path):
    """The replay window persists (signed_seen): an old genuine message replayed after a monitor
    restart is still refused; a restarted device (new epoch) is accepted with seq from 1 again."""
    a = SimDevice("a-1", UNIT, "单位", "dock")
    enr = Enrolment.of([(a.id, UNIT, a.key.public_key())])
    t = "edge/dev/a-1/alarm/camera_offline"
    raised, cleared = a.seal(t, _alarm(True)), a.seal(t, _alarm(False))
    ing = Ingest(MonitorDB(tmp_path / "m.db"), IngestSettings(), enr)
    assert ing.handle(t, raised) == "accepted" and ing.handle(t, cleared) == "accepted"
    ing.flush()
    ing.db.close()
    ing2 = Ingest(MonitorDB(tmp_path / "m.db"), IngestSettings(), enr)
    assert ing2.handle(t, raised) == "replayed" and ing2.handle(t, cleared, retained=True) == "duplicate"
    assert ing2.alarms[("a-1", "camera_offline")] == {"active": False}
    a._sealer = None  # the agent restarts: a new epoch
    assert pl.open_envelope(a.seal(t, _alarm(True))).seq == 1
    assert ing2.handle(t, a.seal(t, _alarm(True))) == "accepted"


# --- attacks through a real broker -----------------------------------------------------------------
@pytest.fixture
def watched(request, tmp_path):
    """A monitor watching two enrolled devices (room a-1 and dock b-1) that have reported; on the
    shipped broker, or on the open one where the test asks for ``open_broker``."""
    broker = request.getfixturevalue("open_broker" if "open_broker" in request.fixturenames else "broker")
    a, b = SimDevice("a-1", UNIT, "甲单位", "room"), SimDevice("b-1", UNIT, "甲单位", "dock")
    enrol(tmp_path / "archive", [a, b])
    db = tmp_path / "m.db"
    mon = MonitorProc(db, broker.port, enrolment=tmp_path / "archive")
    for d in (a, b):
        for kind, body in (("status", _status(d, "online", 5)), ("health", d.health())):
            topic = f"edge/dev/{d.id}/{kind}"
            publish(broker.port, topic, d.seal(topic, body), retain=kind == "status")
    _wait(lambda: (f := _fleet(db)) and all((_dev(f, x) or {}).get("health") for x in ("a-1", "b-1")))
    yield mon, db, a, b
    assert mon.stop() == 0


def test_forged_status_health_alarm_not_shown(watched, open_broker):
    """An anonymous client forges status (offline), health (full disk) and an alarm for a real
    device, plain, signed by another key, and with a genuine envelope's body swapped: nothing is
    shown, every one is counted as rejected (stats, page data, per device). An open broker on
    purpose (the shipped ACL refuses the anonymous client): the monitor's own refusal."""
    broker = open_broker
    mon, db, a, _ = watched
    forged = []
    for how in ("plain", "stranger", "swapped"):
        t = "edge/dev/a-1/status"
        forged.append((t, _forged(a, t, _status(a, "offline", 6), how), True))
        t = "edge/dev/a-1/health"
        h = dict(a.health(), disk={"free_bytes": 0, "total_bytes": 1, "reserve_bytes": 1, "low": True})
        forged.append((t, _forged(a, t, h, how), False))
        t = "edge/dev/a-1/alarm/camera_offline"
        forged.append((t, _forged(a, t, _alarm(True), how), True))
    forged.append(("edge/dev/a-1/alarm/camera_offline", b"", True))  # deleting a retained topic
    for topic, payload, retain in forged:
        publish(broker.port, topic, payload, retain=retain)
    f = _wait(lambda: (f := _fleet(db)) and f["rejected"]["total"] >= 10 and f)
    d = _dev(f, "a-1")
    assert d["state"] == "online" and d["bdseq"] == 5, "the forged 'offline' was not applied"
    assert d["health"]["disk_free_bytes"] != 0, "the forged health was not applied"
    assert f["alarms"] == [], "the forged alarm was not applied"
    by = {(r["device"], r["reason"]): r["count"] for r in f["rejected"]["by_device"]}
    assert by == {("a-1", "unsigned"): 4, ("a-1", "bad_signature"): 6}
    assert f["ingest"]["rejected.unsigned"] == 4 and f["ingest"]["rejected.bad_signature"] == 6
    assert "rejected (bad_signature" in mon.text()
    # the real device is still heard
    t = "edge/dev/a-1/alarm/camera_offline"
    publish(broker.port, t, a.seal(t, _alarm(True)), retain=True)
    _wait(lambda: len(_fleet(db)["alarms"]) == 1)
    # a monitor that starts later reads what the broker retains: the forged status replaced the
    # genuine one there (only the broker's ACL prevents that); it is refused, the device's state
    # stays unknown (not "offline") until its next birth, and the genuine alarm is shown
    mon2 = MonitorProc(db.parent / "m2.db", broker.port, enrolment=db.parent / "archive")
    try:
        f2 = _wait(lambda: (f := _fleet(db.parent / "m2.db")) and len(f["alarms"]) == 1
                   and f["rejected"]["total"] >= 1 and f)
        assert _dev(f2, "a-1")["state"] == "unknown" and f2["rejected"]["by_reason"] == {"bad_signature": 1}
        t = "edge/dev/a-1/status"
        publish(broker.port, t, a.seal(t, _status(a, "online", 6)), retain=True)  # the device's rebirth
        _wait(lambda: _dev(_fleet(db.parent / "m2.db"), "a-1")["state"] == "online")
    finally:
        mon2.stop()


def _flood(port: int, topic: str, payloads, stop: threading.Event, sent: list) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{os.getpid()}-{topic[-8:]}-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5)
    c.max_queued_messages_set(0)
    creds = login_for_topic(port, topic)  # on the shipped broker: the device's own login (stolen with it)
    if creds:
        c.username_pw_set(creds["username"], creds["password"])
    c.connect("127.0.0.1", port)
    c.loop_start()
    i = 0
    while not stop.is_set():
        c.publish(topic, payloads(i), qos=0)
        i += 1
        if i % 100 == 0:
            sent[0] = i
            time.sleep(0.05)  # ~2,000 msg/s: well above any device, within what one core verifies
    c.disconnect()
    c.loop_stop()


def test_flood_of_forgeries_does_not_block_genuine_health(watched, open_broker):
    """Forgeries in a-1's name (well-formed, wrong signature, ever-new sequence numbers: each costs
    a full verify) flood while a-1 and b-1 keep reporting every second: both devices' genuine
    health is applied within one interval, and the forgeries never use up a-1's rate allowance
    (counted as bad_signature, never as flood). An open broker on purpose: a stranger floods in
    a-1's name while a-1 reports, which the shipped ACL (and one login, one session) prevents."""
    broker = open_broker
    mon, db, a, b = watched
    stop = threading.Event()
    sent = [0]
    t = "edge/dev/a-1/health"
    template = json.loads(a.seal(t, a.health()))

    def forged(i: int) -> bytes:
        return json.dumps(dict(template, epoch=2**53 - 1, seq=2**53 - 1 - i,
                               sig=base64.b64encode(os.urandom(64)).decode())).encode()

    th = threading.Thread(target=_flood, args=(broker.port, t, forged, stop, sent), daemon=True)
    th.start()
    interval = 1.0
    try:
        _wait(lambda: _fleet(db)["ingest"].get("rejected.bad_signature", 0) > 200)
        for k in range(1, 6):
            t0 = time.time()
            for d in (a, b):
                h = dict(d.health(), uptime_s=500_000 + k)
                topic = f"edge/dev/{d.id}/health"
                publish(broker.port, topic, d.seal(topic, h), qos=1)
            f = _wait(lambda: (f := _fleet(db)) and all(_dev(f, x)["health"]["uptime_s"] == 500_000 + k
                                                       for x in ("a-1", "b-1")) and f, timeout=10, step=0.05)
            for x in ("a-1", "b-1"):
                applied = _dev(f, x)["health_ts"] - t0
                assert applied <= interval, f"{x}: applied {applied:.3f} s after publishing"
    finally:
        stop.set()
        th.join(10)
    f = _fleet(db)
    assert sent[0] >= 1000 and f["ingest"]["rejected.bad_signature"] >= 500
    assert f["ingest"].get("rejected.flood", 0) == 0, "forgeries never count against a-1's rate"
    assert mon.p.poll() is None


def test_stolen_device_flood_is_cut_per_verified_sender(watched, broker):
    """A stolen device (b-1's key) floods genuine messages: verified, then cut at its own rate
    (rejected as flood); a-1's health still arrives at once."""
    mon, db, a, b = watched
    stop = threading.Event()
    sent = [0]
    t = "edge/dev/b-1/health"
    th = threading.Thread(target=_flood, args=(broker.port, t, lambda i: b.seal(t, b.health()), stop, sent),
                          daemon=True)
    th.start()
    try:
        _wait(lambda: _fleet(db)["ingest"].get("rejected.flood", 0) > 100)
        t0 = time.time()
        h = dict(a.health(), uptime_s=700_001)
        topic = "edge/dev/a-1/health"
        publish(broker.port, topic, a.seal(topic, h), qos=1)
        f = _wait(lambda: (f := _fleet(db)) and _dev(f, "a-1")["health"]["uptime_s"] == 700_001 and f, timeout=10,
                  step=0.05)
        assert _dev(f, "a-1")["health_ts"] - t0 <= 1.0
    finally:
        stop.set()
        th.join(10)
    by = {(r["device"], r["reason"]) for r in _fleet(db)["rejected"]["by_device"]}
    assert ("b-1", "flood") in by and not any(dev == "a-1" for dev, _ in by)


def test_device_enrolled_later_is_heard_without_restart(tmp_path, broker):
    """Before its enrolment a device's messages are refused (unknown_device, counted with the
    catch-all: a broker login exists for it, its enrolment at the archive does not yet); enrolled at
    the archive while the monitor runs, it is subscribed on its share and shown after the re-read."""
    a, late = SimDevice("a-1", UNIT, "单位", "dock"), SimDevice("late-7", UNIT, "单位", "room")
    root = tmp_path / "archive"
    enrol(root, [a])
    db = tmp_path / "m.db"
    mon = MonitorProc(db, broker.port, enrolment=root, extra=["--catch-all"])
    try:
        t = "edge/dev/late-7/health"
        publish(broker.port, t, late.seal(t, late.health()))
        _wait(lambda: _fleet(db)["ingest"].get("rejected.unknown_device", 0) == 1)
        enrol(root, [late])
        deadline = time.monotonic() + 40
        while not (_dev(_fleet(db), "late-7") or {}).get("health"):
            assert time.monotonic() < deadline, "the device enrolled later was never shown"
            publish(broker.port, t, late.seal(t, late.health()))
            time.sleep(1)
        f = _fleet(db)
        assert _dev(f, "late-7")["unit_code"] == UNIT
        assert f["ingest"].get("rejected.bad_signature", 0) == 0
    finally:
        assert mon.stop() == 0


def test_dead_worker_exits_nonzero(tmp_path, broker):
    """A worker that dies (a bug outside the per-message guard, injected here: the real queue's
    hand-off raises) makes `edge-agent monitor` exit non-zero instead of staying "online"."""
    root = tmp_path / "archive"
    a = SimDevice("a-1", UNIT, "单位", "dock")
    enrol(root, [a])
    script = (
        "import sys\n"
        "from agent.monitor import ingest\n"
        "def broken(self):\n"
        "    raise RuntimeError('injected: queue hand-off broken')\n"
        "ingest.Ingest._next = broken\n"
        "from agent.cli import main\n"
        "sys.exit(main())\n")
    auth = credentials(tmp_path, broker.port, "monitor", "monitor")
    p = subprocess.run([sys.executable, "-c", script, *auth, "monitor", "--db", str(tmp_path / "m.db"), "--broker",
                        f"127.0.0.1:{broker.port}", "--no-tui", "--enrolment", str(root), "--duration", "30"],
                       capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert p.returncode != 0, p.stderr
    assert "ingest worker died" in p.stderr and "injected: queue hand-off broken" in p.stderr
    assert "监控接收线程已停止" in p.stderr


def test_monitor_needs_an_enrolment(tmp_path, broker):
    p = subprocess.run([EDGE, "monitor", "--db", str(tmp_path / "m.db"), "--broker", f"127.0.0.1:{broker.port}",
                        "--no-tui", "--duration", "1"], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "EDGE_MONITOR_ENROLMENT"})
    assert p.returncode != 0 and "--enrolment" in p.stderr
    p = subprocess.run([EDGE, "monitor", "--db", str(tmp_path / "m.db"), "--broker", f"127.0.0.1:{broker.port}",
                        "--no-tui", "--duration", "1", "--enrolment", str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "此处没有设备登记 / " in p.stderr and "no archive enrolment here" in p.stderr


def test_through_the_shipped_broker_each_message_arrives_once_and_junk_is_counted(tmp_path):
    """Logged in through the shipped broker configuration (`archive broker-config`: a device may
    publish only in its own subtree) the monitor has no P/dev/# catch-all, so the broker sends each
    enrolled device's message once (no copy to drop), and what a device's identity can send that
    is not its signed state still reaches its share and is counted; other topics, and the other
    device's subtree, are closed to it at the broker."""
    from tools.bench.shipped_broker import ShippedBroker

    a, b = SimDevice("ship-a", UNIT, "单位", "dock"), SimDevice("ship-b", UNIT, "单位", "dock")
    root = tmp_path / "archive"
    enrol(root, [a, b])
    broker = ShippedBroker(tmp_path / "broker", root).start()
    db = tmp_path / "m.db"
    mon = MonitorProc(db, broker.port, enrolment=root, env={"EDGE_AGENT_CONFIG": str(broker.credential_file("monitor"))})
    c = broker.paho(a.id, "ship-a")
    try:
        assert "edge/dev/#" not in mon.text() and "on 7 shares" in mon.text()
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        t = "edge/dev/ship-a/health"
        for _ in range(30):
            c.publish(t, a.seal(t, a.health()), qos=1)
        c.publish(t, b"not signed", qos=1)
        c.publish("edge/dev/ship-a/bogus", b"{}", qos=1)  # not a topic a device may write: the broker drops it
        tb = "edge/dev/ship-b/health"
        c.publish(tb, b.seal(tb, b.health()), qos=1).wait_for_publish(10)  # A's login in B's subtree
        _wait(lambda: _fleet(db)["ingest"].get("received", 0) >= 31)
        time.sleep(1.5)  # anything more (a copy, the bogus topic, B's message) would be counted by now
        ing = _fleet(db)["ingest"]
        assert ing["received"] == 31 and ing["accepted"] == 30 and ing.get("copies", 0) == 0, ing
        assert ing["rejected.unsigned"] == 1 and ing.get("rejected.bad_topic", 0) == 0
        assert _dev(_fleet(db), "ship-b") is None, "the broker refused A's login in B's subtree"
    finally:
        c.disconnect()
        c.loop_stop()
        assert mon.stop() == 0
        broker.stop()
