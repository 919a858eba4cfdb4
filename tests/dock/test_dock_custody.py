"""Custody across an interrupted docking (issue 15): a resumed copy is proven against the recorder
before anything is erased; the clock offset survives into the next docking; a recorder that drops
its command channel after SET_MSDC is copied from its volume and erased when the channel returns.
Real simulator on a real pty, real store."""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

import pytest

from agent.common.errors import MetadataError
from agent.evidence.manifest import validate_metadata
from agent.evidence.verify import verify_item
from drivers.recorder import time_from_name
from agent.dock.display import bay_rows, render
from agent.dock.erasing import erase_decision, resume_proven
from tests.dock.test_dock import (SERIAL, copy_records, env, make_cfg, media, media_master, receipt_for,  # noqa: F401
                             sealed_items, sha, start_sim, start_station)
from tests.dock.test_dock_units import SEALED, VERIFY, copy, rec, row
from tools.media import make_big_file


# --- 1. a resumed copy is never trusted blindly -------------------------------------------------
def test_bit_flipped_before_the_unplug_is_caught_recopied_and_erased_only_when_right(env, media):
    """The recorder sends one wrong bit before it is pulled out (default verify_policy = none). At the
    re-dock the station reads the recorder's first bytes again before resuming: they differ from the
    partial copy, which is discarded; the file is copied again whole, and erased only after the archive
    acknowledges the item whose hash is the recorder's file hash."""
    data, ports, made = env
    big = make_big_file(media / f"{SERIAL}_20261127080000_0009.MP4", 6 << 20, seed=3)
    want = sha(big)
    cut = (2 << 20) + 12345
    st = start_station(made, make_cfg(data, ports, probe=False))
    assert st.cfg.dock.verify_policy == "none"
    sim = start_sim(made, media, ports / "ttyREC1", disconnect_file=big.name, disconnect_at=cut, flip_bit_at=1_000_000)
    st.wait("bay-1", ("error", "idle"), timeout=20)
    assert sim.disconnected.is_set()
    receiving = st.store.items(state="receiving")
    assert len(receiving) == 1
    partial = Path(receiving[0]["path"]) / "files" / big.name
    got = partial.read_bytes()
    assert len(got) == cut and got != big.read_bytes()[:cut]  # the flipped bit really is in the partial copy
    sim.stop()
    st.wait_state("bay-1", ("error", "idle"), timeout=5)
    st.wait_left("bay-1")

    sim = start_sim(made, media, ports / "ttyREC1")  # re-docked, the line is good now
    b = st.wait_state("bay-1", ("uploading",), timeout=30)
    assert b["recopied"] == 1 and b["resumed_bytes"] == 0 and b["problems"] == []
    refused = [json.loads(e["detail"]) for e in st.store.audit.entries(action="resume-refused")]
    assert len(refused) == 1 and refused[0]["file"] == big.name and refused[0]["bytes"] == cut
    assert refused[0]["recorder_hash"] != refused[0]["local_hash"]
    assert st.store.item(receiving[0]["id"])["state"] == "discarded"
    row_big = next(r for r in sealed_items(st.store) if st.store.read_manifest(r["id"])["source"]["name"] == big.name)
    assert row_big["content_hash"] == want and row_big["id"] != receiving[0]["id"]
    assert (Path(row_big["path"]) / "files" / big.name).read_bytes() == big.read_bytes()
    assert copy_records(st.store)[row_big["id"]]["hash"] == want
    assert big.name not in sim.erased  # nothing erased before the archive answers
    for r in sealed_items(st.store):
        st.store.mark_archived(r["id"], receipt_for(r))
    st.wait("bay-1", ("done",))
    assert big.name in sim.erased and not big.exists()
    erase = next(json.loads(e["detail"]) for e in st.store.audit.entries(action="erase")
                 if json.loads(e["detail"])["file"] == big.name)
    assert erase["result"] == "erased" and erase["hash"] == want


def test_good_resume_carries_its_prefix_check_into_the_copy_record(env, media):
    data, ports, made = env
    big = make_big_file(media / f"{SERIAL}_20261127080000_0009.MP4", 6 << 20, seed=4)
    cut = (1 << 20) + 7
    st = start_station(made, make_cfg(data, ports, probe=False))
    sim = start_sim(made, media, ports / "ttyREC1", disconnect_file=big.name, disconnect_at=cut)
    st.wait("bay-1", ("error", "idle"), timeout=20)
    sim.stop()
    st.wait_state("bay-1", ("error", "idle"), timeout=5)
    st.wait_left("bay-1")
    start_sim(made, media, ports / "ttyREC1")
    b = st.wait_state("bay-1", ("uploading",), timeout=30)
    assert b["resumed_bytes"] == cut and b["recopied"] == 0
    item = next(r for r in sealed_items(st.store) if st.store.read_manifest(r["id"])["source"]["name"] == big.name)
    c = copy_records(st.store)[item["id"]]
    assert c["resumed_at"] == cut and c["hash"] == sha(big)
    pc = c["prefix_check"]
    assert pc["bytes"] == cut and pc["recorder_hash"] == pc["local_hash"] and pc["alg"] == "sha256"


def test_erase_rule_refuses_an_unproven_resumed_copy():
    # resumed (the audit's ingest entries say so) but the copy record has no prefix check: withheld for good
    d = erase_decision("after-archive", rec(), row(), copies=[copy()], sealed=SEALED, resumed_at=500, verify_receipt=VERIFY)
    assert not d.erase and d.final and "resumed" in d.why
    d = erase_decision("after-archive", rec(), row(), copies=[copy(resumed_at=500)], sealed=SEALED, verify_receipt=VERIFY)
    assert not d.erase and "resumed" in d.why
    bad = {"bytes": 500, "alg": "sha256", "recorder_hash": "r", "local_hash": "l"}
    assert not erase_decision("after-archive", rec(), row(), copies=[copy(resumed_at=500, prefix_check=bad)],
                              sealed=SEALED, verify_receipt=VERIFY).erase
    short = {"bytes": 400, "alg": "sha256", "recorder_hash": "r", "local_hash": "r"}  # an earlier resume point
    assert not erase_decision("after-archive", rec(), row(), copies=[copy(resumed_at=400, prefix_check=short)],
                              sealed=SEALED, resumed_at=500, verify_receipt=VERIFY).erase
    good = {"bytes": 500, "alg": "sha256", "recorder_hash": "r", "local_hash": "r"}
    assert erase_decision("after-archive", rec(), row(), copies=[copy(resumed_at=500, prefix_check=good)],
                          sealed=SEALED, resumed_at=500, verify_receipt=VERIFY).erase
    # a whole second read with the copy's hash proves it too; one with another hash does not
    assert erase_decision("after-archive", rec(), row(), copies=[copy()], sealed=SEALED, resumed_at=500,
                          reread_hash="abc", verify_receipt=VERIFY).erase
    assert not erase_decision("after-archive", rec(), row(), copies=[copy()], sealed=SEALED, resumed_at=500,
                              reread_hash="zzz", verify_receipt=VERIFY).erase
    assert resume_proven([copy()], 0) and not resume_proven([], 10)


# --- 2. the clock offset survives into the next docking ------------------------------------------
def _names_times(media: Path) -> list[tuple[str, _dt.datetime]]:
    out = []
    for p in sorted(media.iterdir()):
        t = time_from_name(p.name)
        out.append((p.name, t))
    return sorted(out, key=lambda x: x[1])


def test_clock_set_in_one_docking_offset_kept_for_files_sealed_in_the_next(env, media):
    """All files recorded with the recorder 90 s fast. The first docking measures +90 s, sets the
    clock, and is unplugged before all files are sealed; the second docking measures about 0, but
    every file recorded before the clock set carries +90,000 ms and the time of the first
    measurement; a file recorded after the set carries the second docking's measurement."""
    data, ports, made = env
    first, t0 = _names_times(media)[0]
    big = make_big_file(media / f"{SERIAL}_{(t0 + _dt.timedelta(seconds=5)):%Y%m%d%H%M%S}_0009.MP4", 4 << 20, seed=6)
    st = start_station(made, make_cfg(data, ports, probe=False))
    sim = start_sim(made, media, ports / "ttyREC1", clock_offset=90, disconnect_file=big.name, disconnect_at=1 << 20)
    st.wait("bay-1", ("error", "idle"), timeout=20)
    assert sim.disconnected.is_set()
    clock1 = json.loads(st.store.audit.entries(action="clock")[-1]["detail"])
    assert clock1["set"] is True and 89_000 <= clock1["offset_ms"] <= 91_000
    sealed1 = {st.store.read_manifest(r["id"])["source"]["name"]: r for r in sealed_items(st.store)}
    assert list(sealed1) == [first]  # the clip before the big file; the rest waits for the next docking
    kept = st.dock.registry.kept_clock(SERIAL)
    assert len(kept) == 5 and all(k["offset_ms"] == clock1["offset_ms"] for k in kept.values())
    assert all(k["measured_at"] == clock1["measured_at"] for k in kept.values())
    sim.stop()
    st.wait_state("bay-1", ("error", "idle"), timeout=5)
    st.wait_left("bay-1")

    # recorded after the clock set, before the second docking
    later = t0 + _dt.timedelta(hours=1)
    new = media / f"{SERIAL}_{later:%Y%m%d%H%M%S}_0010.JPG"
    new.write_bytes(next(p for p in media.iterdir() if p.suffix == ".JPG").read_bytes())
    start_sim(made, media, ports / "ttyREC1")  # the recorder's clock is right now
    st.wait_state("bay-1", ("uploading",), timeout=30)
    clock2 = json.loads(st.store.audit.entries(action="clock")[-1]["detail"])
    assert abs(clock2["offset_ms"]) < 1500 and clock2["set"] is False
    ring = st.store.keyring()
    seen = {}
    for r in sealed_items(st.store):
        m = verify_item(Path(r["path"]), ring).manifest  # the verifier accepts the fields
        meta = m["metadata"]
        seen[m["source"]["name"]] = meta
        assert m["clock_offset_ms"] == meta["clock_offset_ms"]
    assert len(seen) == 7
    for name, meta in seen.items():
        if name == new.name:
            assert meta["clock_offset_ms"] == clock2["offset_ms"] and meta["clock_offset_source"] == "measured"
            assert meta["clock_offset_measured_at"] == clock2["measured_at"]
            continue
        assert meta["clock_offset_ms"] == clock1["offset_ms"], (name, meta)  # +90 s, not 0
        assert meta["clock_offset_measured_at"] == clock1["measured_at"]
        # sealed in the first docking or resumed from it: measured then; the others: kept from it
        want = "measured" if name in (first, big.name) else "kept"
        assert meta["clock_offset_source"] == want, (name, meta)
    assert st.dock.registry.kept_clock(SERIAL) == {}  # every file from before the set is sealed


def test_clock_that_cannot_be_read_is_unknown_never_zero(env, media):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, erase_policy="never", probe=False))
    sim = start_sim(made, media, ports / "ttyREC1", no_clock_read=True, clock_offset=50)
    b = st.wait("bay-1", ("done",))
    assert b["clock_offset_ms"] is None and b["clock_set"] is True and b["problems"] == []
    assert abs(sim.now().timestamp() - time.time()) < 2.5  # set all the same
    for r in sealed_items(st.store):
        m = st.store.read_manifest(r["id"])
        meta = m["metadata"]
        assert meta["clock_offset_ms"] is None and m["clock_offset_ms"] is None
        assert meta["clock_offset_source"] == "unknown" and meta["clock_offset_measured_at"] is None
    clock = json.loads(st.store.audit.entries(action="clock")[-1]["detail"])
    assert clock["offset_ms"] is None and clock["set"] is True and clock["device_time"] is None


def test_clock_fields_checked_by_the_format():
    base = {"case_number": None, "proof": None, "pending": ["case_number", "proof"], "place": "p",
            "capture_start": "2026-11-27T09:00:00+08:00", "capture_end": "2026-11-27T09:01:00+08:00",
            "collector": {"name": "张三", "id": "000123"}}
    ok = [{"clock_offset_ms": 90000, "clock_offset_measured_at": "2026-11-27T10:00:00+08:00",
           "clock_offset_source": "kept"},
          {"clock_offset_ms": None, "clock_offset_measured_at": None, "clock_offset_source": "unknown"},
          {"clock_offset_ms": 12}, {"clock_offset_ms": None}, {}]
    for extra in ok:
        validate_metadata({**base, **extra})
    bad = [({"clock_offset_ms": 0, "clock_offset_measured_at": None, "clock_offset_source": "unknown"}, "never written as 0"),
           ({"clock_offset_ms": None, "clock_offset_measured_at": None, "clock_offset_source": "kept"}, "unknown exactly"),
           ({"clock_offset_ms": 5, "clock_offset_measured_at": "yesterday", "clock_offset_source": "measured"}, "ISO 8601"),
           ({"clock_offset_ms": 5, "clock_offset_measured_at": None, "clock_offset_source": "measured"}, "ISO 8601"),
           ({"clock_offset_ms": 5.5}, "integer"), ({"clock_offset_ms": True}, "integer"),
           ({"clock_offset_ms": 5, "clock_offset_measured_at": "2026-11-27T10:00:00+08:00",
             "clock_offset_source": "guessed"}, "one of")]
    for extra, needle in bad:
        with pytest.raises(MetadataError, match=needle):
            validate_metadata({**base, **extra})


# --- 3. a recorder that drops its command channel after SET_MSDC ---------------------------------
def test_channel_gone_after_mass_storage_copy_from_volume_erase_when_it_returns(env, media):
    """The recorder re-enumerates as mass storage only: its port vanishes 0.3 s after the SET_MSDC
    answer and comes back 1.5 s later as a new connection. The bay copies from the volume, waits for
    the archive, then reconnects (IDENTIFY, AUTH again) and erases over the returned channel."""
    data, ports, made = env
    originals = {p.name: sha(p) for p in media.iterdir()}
    st = start_station(made, make_cfg(data, ports, probe=False))
    sim = start_sim(made, media, ports / "ttyREC1", msdc_drop=1.5)
    b = st.wait_state("bay-1", ("uploading",), timeout=30)
    assert b["docked"] and b["sealed"] == 5 and b["problems"] == []
    assert sim.channel_dropped.wait(5)
    items = sealed_items(st.store)
    assert sorted(st.store.read_manifest(r["id"])["source"]["name"] for r in items) == sorted(originals)
    assert all(r["content_hash"] == originals[st.store.read_manifest(r["id"])["source"]["name"]] for r in items)
    assert st.bay("bay-1")["state"] == "uploading" and st.bay("bay-1")["docked"]  # the vanished port is no undock
    for r in items:
        st.store.mark_archived(r["id"], receipt_for(r))
    b = st.wait("bay-1", ("done",), timeout=30)
    assert sim.channel_back.is_set() and sim.connections == 2
    important = [n for n in originals if "_IMP" in n]
    assert sorted(sim.erased) == sorted(set(originals) - set(important)) and b["erased"] == 4
    assert sim.authenticated  # the station authenticated again on the new connection
    ch = [json.loads(e["detail"]) for e in st.store.audit.entries(action="channel")]
    assert len(ch) == 1 and ch[0]["event"] == "returned" and ch[0]["serial"] == SERIAL
    assert len(st.dock.registry.recorders()) == 1 and st.dock.registry.recorders()[0]["docks"] == 1


def test_channel_that_never_returns_keeps_the_files_for_the_next_docking(env, media):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, probe=False, channel_return_s=2))
    sim = start_sim(made, media, ports / "ttyREC1", msdc_drop=3600)
    st.wait_state("bay-1", ("uploading",), timeout=30)
    assert sim.channel_dropped.wait(5)
    for r in sealed_items(st.store):
        st.store.mark_archived(r["id"], receipt_for(r))
    b = st.wait("bay-1", ("error", "idle"), timeout=30)
    # the station no longer sees the recorder: the bay is empty and the result is its last history entry
    last = b if b["state"] == "error" else b["history"][0]
    assert last["state"] == "error" and b["serial"] in (None, last["serial"])
    assert "命令通道未恢复" in last["reason"] and "erased at the next docking" in last["reason"]
    assert sim.erased == [] and len(sealed_items(st.store)) == 5
    # docked again (the channel is there from the start): everything is in custody, no switch to mass
    # storage, the archived files are erased over the channel
    sim.stop()
    st.wait_state("bay-1", ("idle", "error"), timeout=5)
    st.wait_left("bay-1")
    sim2 = start_sim(made, media, ports / "ttyREC1", msdc_drop=3600)
    b = st.wait("bay-1", ("done",), timeout=30)
    assert b["already"] == 5 and b["erased"] == 4 and len(sim2.erased) == 4 and not sim2.msdc


def test_erase_refused_in_mass_storage_is_done_over_the_channel_at_the_next_docking(env, media):
    """A recorder that cannot change a volume the host has mounted answers ERASE with 10 in
    mass-storage mode (docs/recorder-protocol.md): kept; at the next docking every file is in
    custody, the station does not switch it to mass storage and erases over the channel."""
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, probe=False))
    sim = start_sim(made, media, ports / "ttyREC1", msdc_erase_fail=True)
    st.wait_state("bay-1", ("uploading",), timeout=30)
    for r in sealed_items(st.store):
        st.store.mark_archived(r["id"], receipt_for(r))
    b = st.wait("bay-1", ("error",), timeout=30)
    assert sim.erased == [] and sim.msdc and "erase" in b["reason"]
    sim.stop()
    st.wait_state("bay-1", ("idle", "error"), timeout=5)
    st.wait_left("bay-1")
    sim2 = start_sim(made, media, ports / "ttyREC1", msdc_erase_fail=True)
    b = st.wait("bay-1", ("done",), timeout=30)
    assert not sim2.msdc and b["erased"] == 4 and len(sim2.erased) == 4


# --- 5. battery and resolution at each docking ----------------------------------------------------
def test_battery_low_alarm_raised_from_the_level_and_cleared_when_it_charged(env, media):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, probe=False, battery_low_pct=20))
    sim = start_sim(made, media, ports / "ttyREC1", battery_level=12, charging=True, resolution=(1280, 720))
    b = st.wait_state("bay-1", ("uploading",), timeout=30)
    assert b["battery"] == 12 and b["battery_low"] is True and b["resolution"] == "1280x720"
    alarms = {a["code"]: a for a in st.dock.status()["alarms"]}
    assert "12%" in alarms["recorder_battery_low"]["message"] and "battery_low_pct 20%" in alarms["recorder_battery_low"]["message"]
    assert st.health.alarms.is_active("recorder_battery_low", "bay-1")
    row = bay_rows(st.dock.status())[0]
    assert row["battery"] == "12%⚡ 低 low" and row["battery_low"] and row["recorder"] == f"{SERIAL} 1280x720"
    render(st.dock.status())  # draws
    sim.battery_level = 60  # charged while it waited for the archive
    for r in sealed_items(st.store):
        st.store.mark_archived(r["id"], receipt_for(r))
    b = st.wait("bay-1", ("done",), timeout=30)
    assert b["battery"] == 60 and b["battery_low"] is False  # read again at the end of the docking
    assert not any(a["code"] == "recorder_battery_low" for a in st.dock.status()["alarms"])
    assert not st.health.alarms.is_active("recorder_battery_low", "bay-1")


def test_battery_low_alarm_ends_when_the_recorder_leaves_and_resolution_may_be_unknown(env, media):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, probe=False, erase_policy="never", battery_low_pct=30))
    sim = start_sim(made, media, ports / "ttyREC1", battery_level=25, charging=False, unsupported=["read_resolution"])
    b = st.wait("bay-1", ("done",), timeout=30)
    assert b["battery_low"] and b["resolution"] is None and b["problems"] == []  # no resolution is no error
    assert st.health.alarms.is_active("recorder_battery_low", "bay-1")
    assert bay_rows(st.dock.status())[0]["battery"] == "25% 低 low"
    sim.stop()
    st.wait_state("bay-1", ("idle",), timeout=5)
    assert not st.health.alarms.is_active("recorder_battery_low", "bay-1")


def test_battery_and_resolution_go_out_in_health_through_the_ports(env, media, broker):
    """The bay's battery and resolution travel in its component state, and the battery alarm on its
    alarm topic, through the ports (the health component), as edge-agent run wires them."""
    from tests.support.health import Capture, ContractUplink

    data, ports, made = env
    cap = Capture(broker.port, "edge/dev/dock-0001/#")
    up = ContractUplink(broker.port, "dock-0001")
    try:
        st = start_station(made, make_cfg(data, ports, probe=False, erase_policy="never"), uplink=up)
        start_sim(made, media, ports / "ttyREC1", battery_level=9, charging=False)
        st.wait("bay-1", ("done",))
        _, a = cap.wait_for(lambda t, p: t == "edge/dev/dock-0001/alarm/recorder_battery_low.bay-1" and p)
        assert a["active"] is True and a["source"] == "dock" and a["message"]["zh"].startswith("记录仪电量低 9%")
        _, c = cap.wait_for(lambda t, p: t == "edge/dev/dock-0001/component/bay-1" and p and p.get("state") == "done")
        assert c["battery"] == 9 and c["battery_low"] is True and c["resolution"] == "1920x1080"
        made["sims"][-1].stop()
        _, a = cap.wait_for(lambda t, p: t == "edge/dev/dock-0001/alarm/recorder_battery_low.bay-1" and p
                            and p["active"] is False)
    finally:
        up.stop()
        cap.close()


def test_item_resumed_without_a_prefix_check_is_reread_whole_before_its_erase(env, media):
    """An item resumed by a version that did not check the prefix (its copy record has no
    prefix_check): at the next docking the station switches to mass storage although every file is in
    custody, reads that file whole and erases it only because the second read has the copy's hash."""
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, probe=False))
    sim = start_sim(made, media, ports / "ttyREC1")
    st.wait_state("bay-1", ("uploading",), timeout=30)
    sim.stop()
    st.wait_state("bay-1", ("idle",), timeout=5)
    rows = sealed_items(st.store)
    victim = next(r for r in rows if "_IMP" not in st.store.read_manifest(r["id"])["source"]["name"])
    name = st.store.read_manifest(victim["id"])["source"]["name"]
    # what an older version left: an ingest entry saying the copy was resumed, no prefix check
    st.store.audit.append("ingest", victim["id"], actor="agent:dock", bay="bay-1", serial=SERIAL, file=name,
                          resumed_at=100, bytes=victim["size"])
    for r in rows:
        st.store.mark_archived(r["id"], receipt_for(r))
    st.wait_left("bay-1")
    sim2 = start_sim(made, media, ports / "ttyREC1")
    b = st.wait("bay-1", ("done",), timeout=30)
    assert sim2.msdc and b["erased"] == 4 and name in sim2.erased and b["problems"] == []
