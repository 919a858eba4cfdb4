"""The fleet benchmark (tools/bench/fleet.py), tiny: a few simulated devices through the shipped
broker (identities and ACL) to `edge-agent monitor` on SQLite and on PostgreSQL, status changes
timed to the monitor's API, and a couple of small items archived by one receiver on each index.
The real figures come from running it at 1,000 devices (docs/scaling.md). The run takes about 30 s
on these machines: slow; its parts run by default in tests/monitor/test_monitor_db_contract.py (the
monitor on PostgreSQL through a broker) and tests/tools/test_scale_sim.py (receivers on PostgreSQL)."""

from __future__ import annotations

import json

import pytest

from agent.common.pg import read_once
from tools.bench import fleet


@pytest.mark.parametrize("args, message", [
    (["--backends", "mysql"], "--backends: sqlite, postgresql or both"),
    (["--seconds", "0"], "--seconds: 0 < s <= 600"),
    (["--receivers", "1,x"], "--receivers: numbers separated by commas"),
    (["--devices", "0", "--archive-devices", "0"], "--devices: 1 or more (0: the archive part alone"),
    (["--concurrent", "--archive-devices", "0"], "--concurrent: --devices and --archive-devices both 1 or more"),
])
def test_bad_arguments_are_refused(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        fleet.main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--devices", "400", "--credentials-dir", "/nonexistent"], "at most 300 in one process"),
    (["--devices", "10", "--slice", "3/2"], "--slice '3/2': expected I/N with 0 <= I < N"),
])
def test_fleet_sim_refuses_what_one_process_cannot_simulate(args, message, capsys, monkeypatch):
    from tools import fleet_sim

    # a process whose open-file limit holds 300 connections (3 descriptors each, 200 spare)
    monkeypatch.setattr(fleet_sim.resource, "getrlimit", lambda _r: (1100, 1100))
    with pytest.raises(SystemExit) as e:
        fleet_sim.main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_fleet_on_both_backends(tmp_path):
    out = tmp_path / "fleet.json"
    rc = fleet.main(["--devices", "6", "--units", "2", "--warmup", "1", "--seconds", "3", "--probes", "2",
                     "--archive-devices", "2", "--items", "1", "--item-kib", "16", "--receivers", "1",
                     "--pg", "postgresql://postgres@127.0.0.1:5432/edge_fleet_test", "--dir", str(tmp_path),
                     "--json", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0, res
    assert [m["db"] for m in res["monitor"]] == ["sqlite", "postgresql"]
    for m in res["monitor"]:
        assert m["devices"] == 6 and m["rooms"] == 1 and m["stations"] == 5
        assert m["lost"] == 0 and m["received_total"] >= m["published_total"] > 0, m
        # only the devices' last wills, fired when the simulators are killed at the end: sealed at connect,
        # before the re-births of the run, they are older than what the monitor shows
        assert m["accepted_msg_s"] > 0 and set(m["rejected"]) <= {"rejected.replayed"}, m
        assert m["latency_s"]["samples"] >= 2 and m["latency_s"]["missed"] == 0, m
        assert m["api_fleet_devices"] == 8  # the fleet and the probes, all enrolled and heard
    assert [(a["index"], a["ok"], [r["stored"] for r in a["runs"]]) for a in res["archive"]] == \
        [("sqlite", True, [2]), ("postgresql", True, [2])]
    assert read_once("postgresql://postgres@127.0.0.1:5432/postgres",
                     "SELECT datname FROM pg_database WHERE datname LIKE 'edge_fleet_test%'") == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("edge-fleet-bench-")], "work directory removed"


@pytest.mark.slow
def test_archive_part_alone_through_the_shipped_broker(tmp_path, capsys):
    """`--devices 0`: only the archive part, SQLite and PostgreSQL, K = 1 and 3 receivers, each
    receipt checked on its device against the key of the receiver that stored the item."""
    out = tmp_path / "arc.json"
    rc = fleet.main(["--devices", "0", "--archive-devices", "3", "--items", "1", "--item-kib", "16",
                     "--receivers", "1,3", "--pg", "postgresql://postgres@127.0.0.1:5432/edge_fleet_test",
                     "--dir", str(tmp_path), "--json", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and res["monitor"] == [], res
    assert [(a["index"], [(r["receivers"], r["stored"], r["receipts"], r["ok"]) for r in a["runs"]]) for a in res["archive"]] \
        == [("sqlite", [(1, 3, 3, True), (3, 3, 3, True)]), ("postgresql", [(1, 3, 3, True), (3, 3, 3, True)])]
    assert all("anonymous off" in a["broker"] for a in res["archive"])
    text = capsys.readouterr().out
    assert "| monitor |" not in text and "| postgresql | 3 | 3/3 × 16 KiB |" in text
    assert "| archive index | receivers | items | items/s overall (steady) | MB/s overall (steady) |" in text


@pytest.mark.slow
def test_items_archived_inside_the_monitor_window(tmp_path, capsys):
    """`--concurrent`: the item devices upload to 1 and 3 receivers (own keys, the shipped broker)
    while the fleet loads the monitor, on each backend; every item stored once with its receipt
    checked, every monitor message received, both sets of figures from the same window."""
    out = tmp_path / "fleet.json"
    rc = fleet.main(["--devices", "6", "--units", "2", "--warmup", "1", "--seconds", "4", "--probes", "2",
                     "--archive-devices", "2", "--items", "2", "--item-kib", "16", "--receivers", "1,3", "--concurrent",
                     "--pg", "postgresql://postgres@127.0.0.1:5432/edge_fleet_test", "--dir", str(tmp_path),
                     "--json", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and res["concurrent"] and res["archive"] == [], res
    got = [(m["db"], m["archive"]["index"], m["archive"]["receivers"], m["archive"]["stored"], m["archive"]["receipts"],
            m["archive"]["ok"]) for m in res["monitor"]]
    assert got == [("sqlite", "sqlite", 1, 4, 4, True), ("sqlite", "sqlite", 3, 4, 4, True),
                   ("postgresql", "postgresql", 1, 4, 4, True), ("postgresql", "postgresql", 3, 4, 4, True)]
    for m in res["monitor"]:
        a = m["archive"]
        assert m["lost"] == 0 and m["accepted_msg_s"] > 0 and m["latency_s"]["missed"] == 0, m
        assert a["items_s"] > 0 and a["mb_s"] is not None and a["problems"] == [], a
        # every receipt signed by one of the run's receivers, each enrolled with its own key
        assert sum(a["receipt_keys"].values()) == 4 and set(a["receipt_keys"]) <= {"rx-1", "rx-2", "rx-3"}, a
        assert a["window_overlap"] is not None and 0 < a["window_overlap"] <= 1, a
    assert read_once("postgresql://postgres@127.0.0.1:5432/postgres",
                     "SELECT datname FROM pg_database WHERE datname LIKE 'edge_fleet_test%'") == []
    text = capsys.readouterr().out
    assert "| sqlite | 3 | 6 (+2) |" in text and "| postgresql | 1 | 6 (+2) |" in text
