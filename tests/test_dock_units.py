"""Small pieces of the docking station: config checks, the erase rule, the fair pool, the ratio."""

from __future__ import annotations

import datetime as _dt
import json
import threading
import time

import pytest

from agent.config import Config, loads, render_default
from agent.dock.copying import source_key
from agent.dock.erasing import erase_decision
from agent.dock.registry import Registry
from agent.config.dock import bay_name_for, parse_bays
from agent.dock.station import FairPool
from agent.common.errors import ConfigError
from drivers.recorder import FileRecord, FileType, Mark

TZ = _dt.timezone(_dt.timedelta(hours=8))


def rec(**kw) -> FileRecord:
    base = dict(name="1234567_20261127090000_0001.MP4", size=1000, capture_time=_dt.datetime(2026, 11, 27, 9, tzinfo=TZ),
                duration=10, type=FileType.VIDEO)
    base.update(kw)
    return FileRecord(**base)


def row(state="archived", content_hash="abc", size=1000, receipt=None, archived_at="2026-11-27T10:00:00+08:00"):
    return {"state": state, "content_hash": content_hash, "size": size,
            "receipt": json.dumps(receipt or {}), "archived_at": archived_at if state in ("archived", "purged") else None}


# --- the erase rule -----------------------------------------------------------------------------
def test_erase_after_archive_only_when_acknowledged_with_the_same_hash():
    assert erase_decision("after-archive", rec(), row())[0] is True
    assert erase_decision("after-archive", rec(), row(state="purged"))[0] is True
    for state in ("receiving", "sealed", "uploading", "rejected"):
        assert erase_decision("after-archive", rec(), row(state=state))[0] is False
    assert erase_decision("after-archive", rec(), row(receipt={"content_hash": "other"}))[0] is False
    assert erase_decision("after-archive", rec(), row(receipt={"content_hash": "abc"}))[0] is True
    assert erase_decision("after-archive", rec(), None)[0] is False
    assert erase_decision("after-archive", rec(size=999), row())[0] is False
    assert erase_decision("after-archive", rec(), row(state="purged", archived_at=None))[0] is False


def test_erase_after_local_verify_needs_an_equal_second_read():
    assert erase_decision("after-local-verify", rec(), row(state="sealed"), reread_hash="abc")[0] is True
    assert erase_decision("after-local-verify", rec(), row(state="sealed"), reread_hash=None)[0] is False
    assert erase_decision("after-local-verify", rec(), row(state="sealed"), reread_hash="zzz")[0] is False
    assert erase_decision("after-local-verify", rec(), row(state="receiving"), reread_hash="abc")[0] is False


def test_never_erase_protected_conflicted_or_policy_never():
    for policy in ("after-archive", "after-local-verify", "never"):
        ok, why = erase_decision(policy, rec(mark=Mark.IMPORTANT), row(), reread_hash="abc")
        assert not ok and "important" in why
        assert not erase_decision(policy, rec(locked=True), row(), reread_hash="abc")[0]
        assert not erase_decision(policy, rec(), row(), reread_hash="abc", conflict=True)[0]
    assert not erase_decision("never", rec(), row(), reread_hash="abc")[0]


def test_station_alarm_titles_are_the_wire_vocabulary():
    """The dock keeps its alarm titles for bays.json; they are the same words as the wire's codes."""
    from agent.dock.station import ALARMS
    from agent.wire.health import CODES

    for code, (zh, en) in ALARMS.items():
        assert (CODES[code].zh, CODES[code].en) == (zh, en), code


def test_source_key_changes_with_size_and_time():
    a = source_key("1234567", rec())
    assert a == source_key("1234567", rec())
    assert a != source_key("1234567", rec(size=1001))
    assert a != source_key("1234567", rec(capture_time=_dt.datetime(2026, 11, 27, 9, 0, 1, tzinfo=TZ)))
    assert a != source_key("7654321", rec())


# --- config -------------------------------------------------------------------------------------
def test_dock_defaults_and_render_round_trip():
    cfg = Config.defaults()
    assert cfg.dock.erase_policy == "after-archive" and cfg.dock.clock_threshold_s == 2 and cfg.dock.min_ratio_pct == 20
    values = {"dock": {"bays": ["/dev/ttyACM*", {"name": "bay-9", "port": "/dev/ttyUSB9"},
                                {"name": "usb-1", "mount": "/media/rec1"}],
                       "mass_storage_map": [{"label": "rec1", "serial": "7000001", "officer_number": "000555"}]}}
    cfg = loads(render_default(values))
    assert cfg.dock.bays[1] == {"name": "bay-9", "port": "/dev/ttyUSB9"}
    assert "admin_password" in cfg.as_dict()["dock"] and cfg.as_dict()["dock"]["admin_password"] == "********"


@pytest.mark.parametrize("text,needle", [
    ('[dock]\nbays = ["ttyACM*"]', "dock.bays"),
    ('[dock]\nbays = [{name = "a b", port = "/dev/x"}]', "name"),
    ('[dock]\nbays = [{port = "/dev/x", mount = "/m"}]', "exactly one"),
    ('[dock]\nbays = [{name = "b1", port = "/dev/tty*"}]', "not the glob"),
    ('[dock]\nbays = [{name = "b1", port = "/dev/a"}, {name = "b1", port = "/dev/b"}]', "used twice"),
    ('[dock]\nbays = [{name = "b1", prot = "/dev/a"}]', "unknown key"),
    ('[dock]\nbays = "/dev/ttyACM*"', "expected a list"),
    ('[dock]\nerase_policy = "sometimes"', "not one of"),
    ('[dock]\nverify_policy = "maybe"', "not one of"),
    ('[dock]\nadmin_password = "1234567"', "1 to 6"),
    ('[dock]\nadmin_password = "密码"', "1 to 6"),
    ('[dock]\npoll_ms = 5000', "maximum"),
    ('[dock]\ncopy_workers = 0', "minimum"),
    ('[dock]\nmin_ratio_pct = 0', "minimum"),
    ('[dock]\nmass_storage_map = [{label = "x"}]', "serial is required"),
    ('[dock]\nmass_storage_map = [{label = "x", serial = "1", officer_number = "2", colour = "red"}]', "unknown key"),
    ('[dock]\nbogus = 1', "unknown key"),
])
def test_bad_dock_config_names_the_key(text, needle):
    with pytest.raises(ConfigError) as e:
        loads(text)
    assert needle in str(e.value) and "dock." in str(e.value)


def test_bay_names():
    specs = parse_bays(["/dev/ttyACM*", {"name": "front", "port": "/dev/ttyUSB0"}, "/dev/serial/by-id/recorder"])
    assert bay_name_for(specs[0], "/dev/ttyACM12") == "bay-12"
    assert bay_name_for(specs[1], "/dev/ttyUSB0") == "front"
    assert bay_name_for(specs[2], "/dev/serial/by-id/recorder") == "bay-recorder"


# --- fair pool ----------------------------------------------------------------------------------
def test_fair_pool_bounds_and_hands_over():
    pool = FairPool(2)
    inside = []
    peak = [0]
    lock = threading.Lock()

    def worker(i):
        for _ in range(5):
            with pool.slot():
                for _part in range(2):
                    with lock:
                        inside.append(i)
                        peak[0] = max(peak[0], len(inside))
                    time.sleep(0.005)
                    with lock:
                        inside.remove(i)
                    pool.yield_slot()  # holds no slot while waiting for it again

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] <= 2 and pool.status()["busy"] == 0 and pool.status()["peak"] == 2


def test_fair_pool_stop_interrupts_waiters():
    stop = threading.Event()
    pool = FairPool(1, stop)
    pool.acquire()
    err = []

    def waiter():
        try:
            pool.acquire()
        except InterruptedError as exc:
            err.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    deadline = time.monotonic() + 5
    while pool.status()["waiting"] != 1:             # the waiter is blocked in acquire()
        assert time.monotonic() < deadline, pool.status()
        time.sleep(0.005)
    stop.set()
    t.join(3)
    assert err and pool.status()["waiting"] == 0


# --- registry and ratio -------------------------------------------------------------------------
def test_ratio_per_unit_usage_window_and_conflicts(tmp_path):
    reg = Registry(tmp_path)
    csv = tmp_path / "o.csv"
    csv.write_text("officer_number,name,unit,unit_name\n" + "".join(f"{i:06d},P{i},U1,一所\n" for i in range(10))
                   + "".join(f"{i:06d},Q{i},U2,二所\n" for i in range(100, 104)), encoding="utf-8-sig")
    assert reg.import_roster(csv) == 14
    now = time.time()
    reg.seen("A1", "000001", "P1", "U1", "一所", "bay-1", at=now - 40 * 86400)  # docked 40 days ago
    reg.seen("A2", "000002", "P2", "U1", "一所", "bay-2", at=now)
    reg.seen("B1", "000100", "Q100", "U2", "二所", "bay-3", at=now)
    reg.flag_conflict("B1", "bay-3 and bay-4")
    rows = {r.unit_code: r for r in reg.ratio(min_ratio_pct=20, usage_days=30, at=now)}
    assert (rows["U1"].officers, rows["U1"].recorders_in_service, rows["U1"].ratio_pct, rows["U1"].meets_minimum) == (10, 2, 20, True)
    assert (rows["U1"].recorders_used, rows["U1"].usage_pct) == (1, 50)
    assert (rows["U2"].officers, rows["U2"].ratio_pct, rows["U2"].meets_minimum, rows["U2"].conflicts) == (4, 25, True, 1)
    reg.set_in_service("A2", False)
    rows = {r.unit_code: r for r in reg.ratio(min_ratio_pct=20, usage_days=30, at=now)}
    assert rows["U1"].recorders_in_service == 1 and rows["U1"].meets_minimum is False
    # re-import replaces the roster
    csv.write_text("警号,姓名,单位\n000001,P1,U1\n", encoding="utf-8")
    assert reg.import_roster(csv) == 1 and len(reg.officers()) == 1
