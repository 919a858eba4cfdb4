"""Central monitor: ingest through a real broker from a simulated fleet, lost detection, bad
input (malformed, oversized, wrong unit, retained garbage, flood), restart persistence after
kill -9, the terminal view."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from rich.console import Console

from agent.monitor.enrolment import Enrolment
from agent.monitor.ingest import Ingest, IngestSettings
from agent.monitor.state import MonitorDB, connect, fleet
from agent.monitor.tui import render
from tests.support.broker import fleet_credentials
from tests.support.health import EDGE, MonitorProc, publish
from tools.fleet_sim import FleetSim, SimDevice, enrol, make_fleet


def _sim(port, devices, **kw) -> FleetSim:
    """The simulated fleet, each device logged in as itself on the shipped broker."""
    return FleetSim("127.0.0.1", port, devices, credentials=fleet_credentials(port, [d.id for d in devices]), **kw)


def _enrolled(tmp_path, *fleets):
    """An archive root with every device of ``fleets`` enrolled (the monitor's --enrolment)."""
    root = tmp_path / "archive"
    for f in fleets:
        enrol(root, f)
    return root


def _in_memory(*devices):
    return Enrolment.of((d.id, d.unit_code, d.key.public_key()) for d in devices)


def _fleet(db, lost_after=120) -> dict:
    p = subprocess.run([EDGE, "monitor", "fleet", "--db", str(db), "--lost-after", str(lost_after), "--json"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _wait(pred, timeout=30.0, step=0.2):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step)


def _dev(f, dev):
    return next(d for d in f["devices"] if d["id"] == dev)


def test_fleet_states_wills_and_lost(tmp_path, broker):
    db = tmp_path / "m.db"
    loud, silent = make_fleet(6, 3, "w"), make_fleet(3, 1, "q", "4401")
    mon = MonitorProc(db, broker.port, lost_after=5, enrolment=_enrolled(tmp_path, loud, silent))
    try:
        # 6 devices with their own connection and last will; 3 units (the last without a room)
        sim = _sim(broker.port, loud, per_device=True, rate=2, alarm_every=0.5, officers=20)
        sim.connect()
        sim.run(2.0)
        # 3 devices that hang: still connected (no will fires), they just go silent -> lost
        quiet = _sim(broker.port, silent, rate=2)
        quiet.connect()
        quiet.run(1.0)
        f = _wait(lambda: (f := _fleet(db, 5)) and f["totals"]["devices"] == 9 and f)
        units = {u["code"]: u for u in f["units"]}
        assert units["33010000"]["recorders"] == 6 and units["33010000"]["officers"] == 20
        assert units["33010000"]["ratio"] == pytest.approx(0.3) and units["33010000"]["compliant"] is True
        assert units["33010002"]["recorders"] == 6, "two stations of one unit: the larger count, not the sum"
        assert units["33010002"]["rooms"] == 0 and units["33010002"]["compliant"] is False
        sim.stop(clean=False)  # wills fire: offline with the matching bdseq
        f = _wait(lambda: (f := _fleet(db, 5)) and all(_dev(f, d.id)["display_state"] == "offline" for d in sim.devices) and f)
        f = _wait(lambda: (f := _fleet(db, 5)) and all(_dev(f, d.id)["display_state"] == "lost" for d in quiet.devices) and f,
                  timeout=40)
        assert f["totals"]["lost"] == 3 and f["totals"]["offline"] == 6
        assert all(_dev(f, d.id)["state"] == "online" for d in quiet.devices), "lost: online, but silent"
        # alarms were raised/cleared by the simulator; events kept for the reports
        conn = connect(db, readonly=True)
        assert conn.execute("SELECT count(*) FROM alarm_events WHERE event='raised'").fetchone()[0] >= 1
        conn.close()
        quiet.stop(clean=False)
    finally:
        assert mon.stop() == 0
    assert "monitor: stopped" in mon.text()


BAD = [  # on the topics of an enrolled device, not signed or not valid
    ("edge/dev/bad-1/health", b"{not json", "unsigned"),
    ("edge/dev/bad-1/health", json.dumps({"v": 1}).encode(), "unsigned"),
    ("edge/dev/bad-1/health", b"\xff\xfe\x00garbage", "unsigned"),
    ("edge/dev/bad-1/health", b"[" * 70000, "oversized"),
    ("edge/dev/bad-1/status", b"online", "unsigned"),
    ("edge/dev/bad-1/status", json.dumps({"state": "online", "bdseq": 9, "unit_code": "U1"}).encode(), "unsigned"),
    ("edge/dev/bad-1/alarm/disk_low", json.dumps({"code": "disk_low", "key": "other"}).encode(), "unsigned"),
    ("edge/dev/bad-1/component/bay-1", json.dumps({"name": "bay-2", "state": "ok", "ts": "x"}).encode(), "unsigned"),
    ("edge/dev/bad-1/ratio", json.dumps({"unit_code": "U1", "recorders": "many"}).encode(), "unsigned"),
    ("edge/dev/bad-1/unknown", b"{}", "bad_topic"),
    ("edge/dev/../health", b"{}", "bad_topic"),
    ("edge/dev/stranger/health", b"{}", "unknown_device"),
]


def _health(dev, unit, seq=1, items=0):
    d = SimDevice(dev, unit, "单位", "dock")
    d.seq = seq - 1
    d.items = items
    h = d.health()
    h["usage"] = {"items_total": items, "items_archived": items, "recorded_s": items * 60}
    return h


def _signed(d: SimDevice, kind: str, body, sub: str | None = None) -> tuple[str, bytes]:
    topic = f"edge/dev/{d.id}/{kind}" + (f"/{sub}" if sub else "")
    return topic, d.seal(topic, body)


def test_bad_input_counted_never_applied(tmp_path, open_broker):
    """An open broker on purpose: topics outside a device's own (``edge/dev/bad-1/unknown``,
    ``edge/dev/../health``) and a stranger's messages, which the shipped ACL stops at the broker,
    reach the monitor here, which must refuse and count them itself."""
    broker = open_broker
    db = tmp_path / "m.db"
    bad, flood = SimDevice("bad-1", "U1", "单位", "dock"), SimDevice("flood-1", "U1", "单位", "dock")
    mon = MonitorProc(db, broker.port, enrolment=_enrolled(tmp_path, [bad, flood]))
    try:
        publish(broker.port, *_signed(bad, "status", {"state": "online", "bdseq": 4, "unit_code": "U1", "kind": "dock"}),
                retain=True)
        publish(broker.port, *_signed(bad, "health", _health("bad-1", "U1")))
        _wait(lambda: _fleet(db)["totals"]["devices"] == 1)
        for topic, payload, _ in BAD:
            publish(broker.port, topic, payload)
        # signed, but claiming another unit; a health naming another device; a stale death
        publish(broker.port, *_signed(bad, "health", _health("bad-1", "U2")))
        publish(broker.port, *_signed(bad, "health", _health("someone-else", "U1")))
        publish(broker.port, *_signed(bad, "status", {"state": "offline", "bdseq": 3}), retain=True)
        # signed, invalid body
        publish(broker.port, *_signed(bad, "alarm", {"code": "disk_low", "key": "other"}, "disk_low"))
        # retained garbage on another status topic (seen again by every subscriber that connects)
        publish(broker.port, "edge/dev/junk/status", b"\x00\x01garbage", retain=True)
        # flood: 400 genuine messages at once from one device
        from tests.support.health import mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flooder", protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        topic = "edge/dev/flood-1/health"
        for _ in range(400):
            c.publish(topic, flood.seal(topic, _health("flood-1", "U1")), qos=0)
        c.publish(topic, flood.seal(topic, _health("flood-1", "U1")), qos=1).wait_for_publish(10)
        c.disconnect()
        c.loop_stop()
        f = _wait(lambda: (f := _fleet(db)) and f["ingest"].get("rejected.flood", 0) > 0
                  and f["ingest"].get("rejected.unit_mismatch", 0) >= 1 and f["ingest"].get("received", 0) >= 420 and f)
        ing = f["ingest"]
        assert ing["rejected.unsigned"] == 8 and ing["rejected.unknown_device"] == 2  # + the retained junk
        assert ing["rejected.invalid"] == 1
        assert ing["rejected.oversized"] == 1 and ing["rejected.bad_topic"] >= 1
        assert ing["rejected.device_mismatch"] == 1
        by = {(r["device"], r["reason"]): r["count"] for r in f["rejected"]["by_device"]}
        # the stale death: older than the birth it would undo. (Messages of the flood that arrive
        # backed up are taken in random order, so some of flood-1's count as replayed too.)
        assert by[("bad-1", "replayed")] == 1, by
        assert ing["rejected.replayed"] == 1 + by.get(("flood-1", "replayed"), 0)
        assert 90 <= ing["accepted"] + by.get(("flood-1", "replayed"), 0) <= 200, ing  # the flood was cut at the burst (100)
        assert f["rejected"]["total"] == sum(v for k, v in ing.items() if k.startswith("rejected."))
        assert by[("bad-1", "unsigned")] == 8 and by[("flood-1", "flood")] == ing["rejected.flood"]
        d = _dev(f, "bad-1")
        assert d["unit_code"] == "U1" and d["state"] == "online" and d["bdseq"] == 4
        assert d["unit_conflicts"] == 1 and d["last_conflict"] == "U2"
        assert "junk" not in {x["id"] for x in f["devices"]}
        assert mon.p.poll() is None, "the monitor survived"
        # and it still takes good messages
        publish(broker.port, *_signed(bad, "health", _health("bad-1", "U1", seq=2, items=3)))
        _wait(lambda: (_dev(_fleet(db), "bad-1")["health"] or {}).get("items_total") == 3)
        assert "rejected (unit_mismatch" in mon.text()
    finally:
        mon.stop()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_restart_persistence_after_kill9(tmp_path, broker):
    db = tmp_path / "m.db"
    fl = make_fleet(4, 2, "p")
    root = _enrolled(tmp_path, fl)
    mon = MonitorProc(db, broker.port, enrolment=root)
    sim = _sim(broker.port, fl, rate=2)
    sim.connect()
    sim.run(1.5)
    d0 = sim.devices[0]
    d0.alarm = ("camera_offline", "camera-main", "主摄像头离线", "main camera offline", "critical")
    d0._since = "2026-11-27T09:00:00+08:00"
    sim.pub(d0, "alarm", d0.alarm_key(), d0.alarm_payload(True, d0._since), 1, True)
    f1 = _wait(lambda: (f := _fleet(db)) and f["totals"]["alarms"] == 1 and f["totals"]["devices"] == 4 and f)
    sim.stop()
    mon.stop(signal.SIGKILL)
    # clear the alarm while the monitor is down: the retained clear reaches it on restart
    publish(broker.port, *_signed(d0, "alarm", d0.alarm_payload(False, d0._since), d0.alarm_key()), retain=True)
    f2 = _fleet(db)
    assert {d["id"] for d in f2["devices"]} == {d["id"] for d in f1["devices"]}
    mon2 = MonitorProc(db, broker.port, enrolment=root)
    try:
        f3 = _wait(lambda: (f := _fleet(db)) and f["totals"]["alarms"] == 0 and f)
        assert f3["totals"]["devices"] == 4 and f3["ingest"]["received"] >= f1["ingest"]["received"]
        conn = connect(db, readonly=True)
        ev = [r["event"] for r in conn.execute("SELECT event FROM alarm_events ORDER BY id")]
        conn.close()
        assert ev == ["raised", "cleared"], "no duplicate event for the retained re-delivery"
        assert _fleet(db)["ingest"]["duplicate"] >= 1, "retained state seen before the restart: a duplicate"
    finally:
        mon2.stop()


def test_ingest_inprocess_tui_and_bdseq(tmp_path):
    """Ingest without a broker (its handle() is what the worker calls): bdseq ordering of signed
    status, the empty retained payload that deletes an alarm topic is refused (unsigned), the
    terminal view renders bilingual labels."""
    db = MonitorDB(tmp_path / "m.db")
    r1 = SimDevice("r1", "U9", "单位", "room")
    ing = Ingest(db, IngestSettings(), _in_memory(r1))
    st = lambda s, n: _signed(r1, "status", {"state": s, "bdseq": n, "unit_code": "U9", "kind": "room"})  # noqa: E731
    will6 = st("offline", 6)  # sealed at connect 6, before the birth of connect 7
    will7 = st("offline", 7)
    assert ing.handle(*st("online", 7)) == "accepted"
    assert ing.handle(*will6) == "replayed"
    assert ing.devices["r1"]["state"] == "online"
    assert ing.handle(*will7) == "accepted", "the will sealed before the birth still ends it"
    assert ing.devices["r1"]["state"] == "offline"
    assert ing.handle(*will7, retained=True) == "duplicate"
    alarm = {"code": "microphone_silent", "key": "microphone_silent", "active": True, "severity": "critical",
             "since": "2026-11-27T09:00:00+08:00", "ts": "2026-11-27T09:00:00+08:00",
             "message": {"zh": "麦克风无声", "en": "microphone silent"}, "source": "room"}
    raised = _signed(r1, "alarm", alarm, "microphone_silent")
    assert ing.handle(*raised) == "accepted"
    assert ing.handle("edge/dev/r1/alarm/microphone_silent", b"", retained=True) == "unsigned"
    assert ing.handle(*_signed(r1, "alarm", dict(alarm, active=False), "microphone_silent")) == "accepted"
    assert ing.handle(*raised) == "replayed", "an old raise replayed does not bring the alarm back"
    assert ing.handle("edge/dev/r1/cmd", b"x") == "ignored"
    ing.flush()
    f = fleet(db.conn, 120)
    assert f["totals"]["alarms"] == 0
    # the room is offline: it has lost its room badge and says since when (issue 16 item 3)
    assert f["units"][0]["rooms"] == 0 and [(r["id"], r["state"]) for r in f["units"][0]["rooms_out"]] == [("r1", "offline")]
    assert [r[0] for r in db.conn.execute("SELECT event FROM alarm_events")] == ["raised", "cleared"]
    console = Console(record=True, width=160)
    console.print(render(f))
    text = console.export_text()
    assert "达标" in text and "r1" in text and "离线 offline" in text
    db.close()


def test_broker_killed_and_restarted(tmp_path, broker):
    """The broker dies (SIGKILL) and comes back without its retained messages: the monitor
    reconnects by itself and keeps its state; devices that come back are seen again."""
    db = tmp_path / "m.db"
    mon = MonitorProc(db, broker.port, enrolment=_enrolled(tmp_path, make_fleet(4, 1, "b")))
    try:
        sim = _sim(broker.port, make_fleet(3, 1, "b"), rate=2)
        sim.connect()
        sim.run(1.0)
        sim.stop()
        _wait(lambda: _fleet(db)["totals"]["devices"] == 3)
        broker.restart(kill=True, downtime=1.0)
        sim2 = _sim(broker.port, make_fleet(4, 1, "b"), rate=2)
        sim2.connect()
        sim2.run(1.5)
        f = _wait(lambda: (f := _fleet(db)) and f["totals"]["devices"] == 4 and f)
        assert _dev(f, "b-000-0003")["display_state"] == "online"
        sim2.stop()
        assert mon.p.poll() is None
    finally:
        mon.stop()
    assert "disconnected" in mon.text() and mon.text().count("connected to 127.0.0.1") >= 2


def test_tui_live_view(tmp_path):
    """The rich Live loop against a real database, rendered to a recording console."""
    import io
    import threading

    from agent.monitor import tui

    db = MonitorDB(tmp_path / "m.db")
    t1 = SimDevice("t1", "U7", "单位", "dock")
    ing = Ingest(db, IngestSettings(), _in_memory(t1))
    assert ing.handle(*_signed(t1, "health", _health("t1", "U7"))) == "accepted"
    ing.flush()
    out = io.StringIO()
    console = Console(file=out, width=140, force_terminal=True, color_system=None)
    stop = threading.Event()
    th = threading.Thread(target=tui.run, args=(db.path, 120, stop, console, 0.2))
    th.start()
    deadline = time.monotonic() + 10
    while "在线 online" not in out.getvalue():      # the view has drawn the device
        assert time.monotonic() < deadline and th.is_alive(), out.getvalue()
        time.sleep(0.05)
    stop.set()
    th.join(10)
    assert not th.is_alive()
    text = out.getvalue()
    assert "执法记录设备监控" in text and "t1" in text and "在线 online" in text
    db.close()


def test_load_small_nothing_lost(tmp_path):
    """tools/bench/monitor_load at a small scale (200 devices x 2 Hz): every message ends up
    counted by the monitor, none refused."""
    from tools.bench.monitor_load import run_load

    r = run_load(200, 2.0, 3.0, 1.5, tmp_path)
    assert r["delivered_share"] == 1.0 and r["rejected"] == {}, r
    assert r["publish_msg_per_s"] > 300


@pytest.mark.slow
def test_load_benchmark_1000_devices(tmp_path):
    """The benchmark itself: 1,000 devices at 1 Hz and 5 Hz (make bench prints the table)."""
    from tools.bench.monitor_load import run_load

    for load in (1.0, 5.0):
        work = tmp_path / f"x{load:g}"
        work.mkdir()
        r = run_load(1000, load, 15.0, 4.0, work)
        assert r["delivered_share"] == 1.0 and r["rejected"] == {}, r


def _tls_config(tmp_path, tls_broker, pki, cn="monitor", name="monitor.toml"):
    """A config file whose [mqtt] section has TLS and the client certificate of ``cn``, no user name."""
    from agent import config as config_mod

    cert = pki.client(cn)
    cfg = tmp_path / name
    cfg.write_text(config_mod.render_default({"mqtt": {
        "host": "127.0.0.1", "port": tls_broker.tls_port, "tls": True, "cafile": str(pki.ca.cert),
        "certfile": str(cert.cert), "keyfile": str(cert.key)}}), encoding="utf-8")
    return cfg


def test_monitor_over_mutual_tls(tmp_path, tls_broker, pki):
    """Central deployment: the monitor takes TLS and its client certificate from the [mqtt]
    section of a config file (EDGE_AGENT_CONFIG) and subscribes over mutual TLS. The broker has
    certificate identities under the shipped ACL: the CN ``monitor`` gets the monitor's rights
    (it reads the device's health) and is one session for every connection, so the monitor, left
    at its default ``--connections``, says so and runs one connection (docs/mqtt.md, "One login,
    one session"), and keeps it: with eight its connections ended each other in turn."""
    cfg = _tls_config(tmp_path, tls_broker, pki)
    db = tmp_path / "m.db"
    dev = SimDevice("tls-1", "U5", "单位", "dock")
    mon = MonitorProc(db, tls_broker.tls_port, env={"EDGE_AGENT_CONFIG": str(cfg)}, enrolment=_enrolled(tmp_path, [dev]))
    try:
        # a device on the plain port; again until seen: under load the monitor's TLS subscription may
        # be acknowledged after its ready line, and a health message before it is not kept
        f = _wait(lambda: publish(tls_broker.port, *_signed(dev, "health", _health("tls-1", "U5")))
                  or ((f := _fleet(db)) and f["totals"]["devices"] == 1 and f), step=1.0)
        assert _dev(f, "tls-1")["unit_code"] == "U5"
        # a few keepalive-free seconds more: eight connections on one CN would have ended each other by now
        time.sleep(3)
        assert mon.p.poll() is None, mon.text()[-2000:]
    finally:
        mon.stop()
    text = mon.text()
    assert "证书身份" in text and "one connection" in text and "'monitor'" in text, text[-2000:]
    # one session under the certificate's CN, never taken over
    assert text.count("connected to 127.0.0.1") == 1 and "reconnecting" not in text, text[-2000:]
    log = tls_broker.log_path.read_text()
    assert log.count(" as monitor ") == 1 and "already connected" not in log, log[-3000:]


def test_monitor_with_a_certificate_refuses_several_connections(tmp_path, tls_broker, pki):
    """Asked for ``--connections 4`` with a client certificate and no user name (all four would
    be the certificate's one session and end each other), the monitor refuses before it connects:
    a one-line error naming the CN and what to do, exit status 2 (a configuration error)."""
    cfg = _tls_config(tmp_path, tls_broker, pki)
    p = subprocess.run([EDGE, "monitor", "--db", str(tmp_path / "m.db"), "--no-tui", "--broker",
                        f"127.0.0.1:{tls_broker.tls_port}", "--enrolment",
                        str(_enrolled(tmp_path, [SimDevice("tls-1", "U5", "单位", "dock")])), "--connections", "4",
                        "--duration", "5"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "EDGE_AGENT_CONFIG": str(cfg)})
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "--connections 4" in p.stderr and "'monitor'" in p.stderr and "证书" in p.stderr, p.stderr
    assert " as monitor " not in tls_broker.log_path.read_text()  # refused before connecting


def test_two_monitors_with_one_certificate_the_first_stops(tmp_path, tls_broker, pki):
    """Two monitors with the same client certificate (one CN, one session): the monitor claims the
    CN's session (agent/wire/claim.py) as it does a user name's, so the one taken over exits with
    status 6 instead of taking the session back for ever."""
    cfg = _tls_config(tmp_path, tls_broker, pki)
    env = {"EDGE_AGENT_CONFIG": str(cfg)}
    root = _enrolled(tmp_path, [SimDevice("tls-1", "U5", "单位", "dock")])
    first = MonitorProc(tmp_path / "a.db", tls_broker.tls_port, env=env, enrolment=root)
    second = None
    try:
        _wait(lambda: "connected to 127.0.0.1" in first.text())
        second = MonitorProc(tmp_path / "b.db", tls_broker.tls_port, env=env, enrolment=root)
        assert first.p.wait(30) == 6, first.text()[-2000:]
        assert "另一个监控以同一登录名登录" in first.text() and "'monitor'" in first.text()
        time.sleep(2)
        assert second.p.poll() is None, second.text()[-2000:]
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_monitor_starts_before_the_broker(tmp_path, broker):
    """The broker is down when the monitor starts: it says so, keeps retrying, and connects
    when the broker comes up."""
    broker.stop()
    db = tmp_path / "m.db"
    late = SimDevice("late-1", "U1", "单位", "dock")
    mon = MonitorProc(db, broker.port, enrolment=_enrolled(tmp_path, [late]))
    try:
        assert "not reachable yet" in mon.text()
        broker.restart()
        _wait(lambda: mon.text().count("connected to 127.0.0.1") >= 1, timeout=40)
        publish(broker.port, *_signed(late, "status", {"state": "online", "bdseq": 1, "unit_code": "U1"}), retain=True)
        _wait(lambda: _fleet(db)["totals"]["devices"] == 1)
    finally:
        mon.stop()


def test_a_state_change_or_alarm_is_written_at_once_health_waits_for_the_flush(tmp_path):
    """What an operator watches (a device going offline, an alarm raised) reaches the monitor's
    database within ``prompt_s`` of being applied, not at the next ``flush_s`` (here 60 s); a
    health message alone waits for the flush. The worker and flusher run as in `edge-agent monitor`."""
    db = MonitorDB(tmp_path / "m.db")
    r1 = SimDevice("r1", "U9", "单位", "room")
    ing = Ingest(db, IngestSettings(flush_s=60.0, prompt_s=0.2), _in_memory(r1))
    ing.start_workers()
    look = connect(tmp_path / "m.db")

    def shown(sql: str, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if look.execute(sql).fetchone()[0]:
                return True
            time.sleep(0.05)
        return False

    try:
        ing.submit(*_signed(r1, "status", {"state": "online", "bdseq": 1, "unit_code": "U9", "kind": "room"}))
        assert shown("SELECT count(*) FROM status_events WHERE device='r1' AND state='online'")
        ing.submit(*_signed(r1, "health", r1.health()))
        assert not shown("SELECT count(*) FROM devices WHERE id='r1' AND health IS NOT NULL", timeout=1.0), \
            "health alone is written at the flush"
        alarm = {"code": "microphone_silent", "key": "microphone_silent", "active": True, "severity": "critical",
                 "since": "2026-11-27T09:00:00+08:00", "ts": "2026-11-27T09:00:00+08:00",
                 "message": {"zh": "麦克风无声", "en": "microphone silent"}, "source": "room"}
        ing.submit(*_signed(r1, "alarm", alarm, "microphone_silent"))
        assert shown("SELECT count(*) FROM alarm_events WHERE device='r1' AND event='raised'")
        ing.submit(*_signed(r1, "status", {"state": "offline", "bdseq": 1, "unit_code": "U9", "kind": "room"}))
        assert shown("SELECT count(*) FROM status_events WHERE device='r1' AND state='offline'")
    finally:
        look.close()
        ing.stop()
        db.close()
