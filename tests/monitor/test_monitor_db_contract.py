"""One contract for the monitor's database, run against both backends: SQLite (a file) and the
real PostgreSQL on 127.0.0.1:5432 (each test creates its own database and drops it).

The monitor's real ingest (signed envelopes verified against the enrolment) applies messages and
flushes them in one transaction; the fleet view, the status and alarm history by device, unit and
time range, the roster and the reports read the same on both; migrations run from empty, from an
older schema and from the previous release's database as its own code made it (tests/fixtures);
and `edge-agent monitor --db postgresql://...` runs end to end over a real broker with its web
page and `monitor history`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request

import pytest

from agent.common.errors import EdgeError
from agent.monitor import reports
from agent.monitor.enrolment import Enrolment
from agent.monitor.history import history, parse_time
from agent.monitor.ingest import Ingest, IngestSettings
from agent.monitor.schema import MIGRATIONS, PG_MIGRATIONS
from agent.monitor.state import connect, fleet, open_monitor_db
from tests.support.broker import fleet_credentials
from tests.support.health import EDGE
from tests.support.pg import fresh_database
from tests.support.previous_release import check_upgrade
from tests.support.uplink import credentials
from tools.fleet_sim import ALARMS, FleetSim, SimDevice, enrol, make_fleet

UNIT_A, UNIT_B = "33010011", "33010012"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A SQLite path or the postgresql:// URL of a fresh database."""
    if request.param == "sqlite":
        yield str(tmp_path / "monitor.db")
    else:
        with fresh_database() as url:
            yield url


def _sim(port, devices, **kw) -> FleetSim:
    """The simulated fleet, each device logged in as itself on the shipped broker."""
    return FleetSim("127.0.0.1", port, devices, credentials=fleet_credentials(port, [d.id for d in devices]), **kw)


def _ingest(db, devs):
    return Ingest(db, IngestSettings(), Enrolment.of((d.id, d.unit_code, d.key.public_key()) for d in devs))


def _say(ing, dev: SimDevice, kind: str, body: dict, at: float, sub: str | None = None, retained: bool = False) -> None:
    topic = f"edge/dev/{dev.id}/{kind}" + (f"/{sub}" if sub else "")
    assert ing.handle(topic, dev.seal(topic, json.dumps(body).encode()), retained=retained, now=at) == "accepted", topic


def _read(url, fn, *a, **kw):
    conn = connect(url, readonly=True)
    try:
        return fn(conn, *a, **kw)
    finally:
        conn.close()


def _day(d1: SimDevice, d2: SimDevice, room: SimDevice, ing, t0: float) -> None:
    """Births, health, an alarm raised and cleared, a death and a new birth, in one batch."""
    for d in (d1, room, d2):
        _say(ing, d, "status", d.status("online"), t0)
        _say(ing, d, "health", d.health(), t0 + 1)
    _say(ing, d1, "ratio", d1.ratio(10, 3), t0 + 2)
    d1.alarm = ALARMS[1]
    since = d1.status("online")["ts"]
    _say(ing, d1, "alarm", d1.alarm_payload(True, since), t0 + 100, d1.alarm_key())
    _say(ing, d1, "health", d1.health(), t0 + 150)
    _say(ing, d1, "alarm", d1.alarm_payload(False, since), t0 + 200, d1.alarm_key())
    _say(ing, d1, "status", d1.status("offline"), t0 + 300)
    d1.bdseq += 1
    _say(ing, d1, "status", d1.status("online"), t0 + 400)


def test_state_and_history_by_device_unit_and_time_on_both_backends(db_url):
    d1, d2 = SimDevice("dock-h1", UNIT_A, "一所", "dock"), SimDevice("dock-h2", UNIT_B, "二所", "dock")
    room = SimDevice("room-h1", UNIT_A, "一所", "room")
    db = open_monitor_db(db_url)
    ing = _ingest(db, [d1, d2, room])
    t0 = time.time() - 3600
    _day(d1, d2, room, ing, t0)
    assert _read(db_url, fleet, 1000, now=t0 + 401)["totals"]["devices"] == 0, "nothing visible before the flush"
    ing.flush()  # every message above in one transaction
    f = _read(db_url, fleet, 1000, now=t0 + 401)
    assert f["totals"]["devices"] == 3 and f["totals"]["online"] == 3 and f["totals"]["alarms"] == 0
    assert {u["code"]: u["devices"] for u in f["units"]} == {UNIT_A: 2, UNIT_B: 1}
    assert next(u for u in f["units"] if u["code"] == UNIT_A)["recorders"] == 3

    h = _read(db_url, history, device=d1.id)
    got = [(e["type"], e.get("state") or e.get("event"), round(e["t"] - t0)) for e in h["events"]]
    assert got == [("status", "online", 0), ("alarm", "raised", 100), ("alarm", "cleared", 200),
                   ("status", "offline", 300), ("status", "online", 400)], "health adds no status event"
    assert [e["bdseq"] for e in h["events"] if e["type"] == "status"] == [0, 0, 1]
    assert h["events"][1]["code"] == "recorder_battery_low" and h["events"][1]["unit_code"] == UNIT_A
    assert h["events"][0]["at"].startswith(dt.datetime.fromtimestamp(t0).strftime("%Y-%m-%dT%H:%M"))
    window = _read(db_url, history, unit=UNIT_A, since=t0 + 150, until=t0 + 350)
    assert [(e["device"], e.get("state") or e.get("event")) for e in window["events"]] == \
        [(d1.id, "cleared"), (d1.id, "offline")]
    assert [(e["device"], e["state"]) for e in _read(db_url, history, unit=UNIT_B)["events"]] == [(d2.id, "online")]
    assert _read(db_url, history, unit=UNIT_A)["count"] == 6, "the room's birth is its unit's too"
    last2 = _read(db_url, history, unit=UNIT_A, limit=2)
    assert last2["truncated"] and [round(e["t"] - t0) for e in last2["events"]] == [300, 400], "the newest are kept"
    assert _read(db_url, history, device="dock-none")["events"] == []
    with pytest.raises(EdgeError, match="is after --until"):
        _read(db_url, history, since=t0 + 10, until=t0)
    db.close()

    # the same through the command line, on either backend
    p = subprocess.run([EDGE, "monitor", "history", "--db", db_url, "--device", d1.id, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert [e["at"] for e in json.loads(p.stdout)["events"]] == [e["at"] for e in h["events"]]
    p = subprocess.run([EDGE, "monitor", "history", "--db", db_url, "--unit", UNIT_A, "--since", "2h"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.count("\n") == 6 and "离线 / offline" in p.stdout and "告警 / raised" in p.stdout


def test_a_restart_adds_no_history_and_many_messages_are_one_flush(db_url):
    devs = make_fleet(40, 4, "batch")
    db = open_monitor_db(db_url)
    ing = _ingest(db, devs)
    t0 = time.time() - 60
    for d in devs:
        _say(ing, d, "status", d.status("online"), t0, retained=True)
    for i in range(25):  # 1,000 signed health messages
        for d in devs:
            _say(ing, d, "health", d.health(), t0 + 1 + i)
    ing.flush()
    db.close()
    f = _read(db_url, fleet, 120, now=t0 + 30)
    assert f["totals"]["online"] == 40 and f["ingest"]["accepted"] == 1040
    samples = _read(db_url, lambda c: c.execute("SELECT device, samples FROM usage_daily").fetchall())
    assert sorted(r[1] for r in samples) == [25] * 40, "each device's 25 health messages counted"
    # a second monitor on the same database gets the retained births again: duplicates, no new history
    db = open_monitor_db(db_url)
    ing = _ingest(db, devs)
    for d in devs[:3]:
        topic = f"edge/dev/{d.id}/status"
        assert ing.handle(topic, d.seal(topic, json.dumps(d.status("online")).encode()), retained=True,
                          now=t0 + 40) in ("accepted", "duplicate")
    ing.flush()
    db.close()
    assert _read(db_url, history)["count"] == 40


def test_db_upgrade_from_the_previous_release(db_url):
    """`monitor db upgrade` from the database as the last landed release made and filled it (its
    own code; tests/support/previous_release.py): migrations kept and only newer ones applied,
    every row kept, the schema as from empty; the history that release kept reads the same."""

    def upgrade(target) -> dict:
        p = subprocess.run([EDGE, "monitor", "db", "upgrade", "--json", "--db", str(target)], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    check_upgrade("monitor", db_url, upgrade, [n for n, _ in PG_MIGRATIONS],
                  lambda empty: open_monitor_db(empty).close())
    events = _read(db_url, history, device="dock-m1")["events"]
    assert [(e["type"], e.get("state") or e["event"]) for e in events] == \
        [("status", "online"), ("alarm", "raised"), ("alarm", "cleared"), ("status", "offline")], events
    assert [d["id"] for d in _read(db_url, fleet, 120)["devices"]] == ["dock-m1", "room-m1", "dock-m2"]


def test_db_upgrade_refuses_the_wrong_database(tmp_path):
    """The archive's index given as the monitor's database, and the other way round, or a file
    with a table in the way: said in both languages, nothing changed."""
    from agent.archive.registry import MIGRATIONS as ARCHIVE, open_db

    archive, other = tmp_path / "archive.db", tmp_path / "other.db"
    open_db(str(archive), tmp_path).close()
    p = subprocess.run([EDGE, "monitor", "db", "upgrade", "--db", str(archive)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1 and p.stderr.startswith(f"error: 数据库不匹配 / {archive}: its migrations (0001_archive"), \
        p.stderr
    assert "wrong database?" in p.stderr and "Traceback" not in p.stderr
    assert _read(archive, lambda c: [r[0] for r in c.execute("SELECT name FROM migrations ORDER BY name")]) == \
        [n for n, _ in ARCHIVE]
    open_monitor_db(other).close()
    with pytest.raises(EdgeError, match="数据库不匹配 / .*its migrations \\(0001_initial"):
        open_db(str(other), tmp_path)
    con = sqlite3.connect(tmp_path / "odd.db")
    con.execute("CREATE TABLE devices (serial TEXT)")
    con.close()
    with pytest.raises(EdgeError, match="数据库迁移失败 / .*migration 0001_initial failed and was undone: .*devices"):
        open_monitor_db(tmp_path / "odd.db")
    assert _read(tmp_path / "odd.db", lambda c: [r[0] for r in c.execute("SELECT name FROM sqlite_master")]) == \
        ["devices"]


def test_migrations_from_empty_and_from_an_older_schema(db_url):
    assert [n for n, _ in MIGRATIONS] == [n for n, _ in PG_MIGRATIONS]
    db = open_monitor_db(db_url, upto="0004_ratio_threshold_source")  # an older schema, rows added, upgraded
    assert db.applied() == ["0001_initial", "0002_signed", "0003_ratio_thresholds", "0004_ratio_threshold_source"]
    with db.atomic() as c:
        c.execute("INSERT INTO devices(id, unit_code, kind, state, first_seen, last_seen) VALUES (?,?,?,?,?,?)",
                  ["dock-old", UNIT_A, "dock", "online", 1.0e9, 1.0e9])
        c.execute("INSERT INTO alarm_events(device, unit_code, key, code, severity, event, ts, received) "
                  "VALUES (?,?,?,?,?,?,?,?)", ["dock-old", UNIT_A, "k", "c", "warning", "raised", None, 1.0e9])
    db.close()
    db = open_monitor_db(db_url)
    assert db.applied() == [n for n, _ in MIGRATIONS]
    assert db.upgrade() == [], "a second upgrade applies nothing"
    db.close()
    f = _read(db_url, fleet, 120, now=1.0e9 + 10)
    assert [d["id"] for d in f["devices"]] == ["dock-old"]
    assert [(e["type"], e["event"]) for e in _read(db_url, history, unit=UNIT_A)["events"]] == [("alarm", "raised")]


def test_roster_and_reports_on_both_backends(db_url):
    d1, d2 = SimDevice("dock-r1", UNIT_A, "一所", "dock"), SimDevice("dock-r2", UNIT_B, "二所", "dock")
    room = SimDevice("room-r1", UNIT_A, "一所", "room")
    db = open_monitor_db(db_url)
    ing = _ingest(db, [d1, d2, room])
    _day(d1, d2, room, ing, time.time() - 500)
    ing.flush()
    assert db.import_roster([{"unit_code": UNIT_A, "officer_id": "p1"}, {"unit_code": UNIT_A, "officer_id": "p2"}],
                            "test") == {UNIT_A: 2}
    assert db.import_roster([{"unit_code": UNIT_A, "officer_id": "p1", "name": "张三"},
                             {"unit_code": UNIT_B, "unit_name": "二所", "officers": 7}], "test") == {UNIT_A: 1, UNIT_B: 7}
    db.close()
    today = dt.date.today()
    for kind in reports.KINDS:
        rep = _read(db_url, reports.build, kind, None, today.replace(month=1, day=1), today)
        assert [r["unit_code"] for r in rep["units"]] == [UNIT_A, UNIT_B], kind
    ratio = _read(db_url, reports.build, "ratio", UNIT_A, today, today)["units"][0]
    assert (ratio["officers"], ratio["recorders"]) == (1, 3)


def test_bad_time_arguments_are_refused_clearly():
    now = 1_800_000_000.0
    assert parse_time("2h", "--since", now) == now - 7200
    assert parse_time("2026-12-04T08:00+08:00", "--since") == dt.datetime(2026, 12, 4, 0, 0, tzinfo=dt.timezone.utc).timestamp()
    for bad in ("yesterday", "2h ago", "2026-13-01"):
        with pytest.raises(EdgeError, match="give a date or time"):
            parse_time(bad, "--since")


def test_monitor_on_postgresql_end_to_end(broker, tmp_path):
    """`edge-agent monitor --db postgresql://...` over a real broker: devices come online and go
    offline; the web page's history view, `monitor fleet` and `monitor history` read PostgreSQL."""
    devs = make_fleet(3, 1, "pge")
    root = tmp_path / "archive"
    enrol(root, devs)
    with fresh_database() as url:
        log = open(tmp_path / "monitor.log", "wb")
        auth = credentials(tmp_path, broker.port, "monitor", "monitor")
        mon = subprocess.Popen([EDGE, *auth, "monitor", "--db", url, "--broker", f"127.0.0.1:{broker.port}", "--no-tui",
                                "--enrolment", str(root), "--web", "0"], stdout=log, stderr=log,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
        try:
            web = _wait(lambda: ((t := (tmp_path / "monitor.log").read_text()) and "monitor: ready" in t
                                 and t.split("monitor: ready", 1)[1].split(" web ", 1)[1].split()[0])
                        or (mon.poll() is not None and t))
            assert web.startswith("http://"), web
            sim = _sim(broker.port, devs, rate=2, per_device=True)
            sim.connect()
            sim.run(1.0)
            f = _wait(lambda: (f := _get(web + "api/fleet")) and f["totals"]["online"] == 3 and f)
            assert {d["id"] for d in f["devices"]} == {d.id for d in devs}
            sim.stop(clean=True)  # each device publishes a retained offline status
            _wait(lambda: _get(web + "api/fleet")["totals"]["offline"] == 3)
            h = _get(web + f"api/history?device={devs[0].id}&since=10m")
            assert [e["state"] for e in h["events"]] == ["online", "offline"]
            # the page reads through a few pooled connections, not a new server process per request
            before = _sessions(url)
            for _ in range(20):
                _get(web + "api/fleet")
                _get(web + f"api/history?device={devs[1].id}")
            assert _sessions(url) - before <= 4
            with pytest.raises(urllib.error.HTTPError) as bad:
                _get(web + "api/history?since=yesterday")
            assert bad.value.code == 400
        finally:
            mon.send_signal(signal.SIGTERM)
            assert mon.wait(30) == 0, (tmp_path / "monitor.log").read_text()[-2000:]
            log.close()
        text = (tmp_path / "monitor.log").read_text()
        assert "monitor: ready db postgresql://postgres@127.0.0.1:5432/" in text
        p = subprocess.run([EDGE, "monitor", "fleet", "--db", url, "--json"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and json.loads(p.stdout)["totals"]["offline"] == 3, p.stderr
        p = subprocess.run([EDGE, "monitor", "history", "--db", url, "--unit", devs[0].unit_code, "--json"],
                           capture_output=True, text=True, timeout=60)
        assert [e["state"] for e in json.loads(p.stdout)["events"]].count("offline") == 3


def _sessions(url: str) -> int:
    """Sessions PostgreSQL has started on the database so far (its own statistics)."""
    from agent.common.pg import read_once

    return int(read_once(url, "SELECT sessions FROM pg_stat_database WHERE datname = current_database()")[0]["sessions"])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _wait(pred, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)
