"""`python -m tools.bench`: the aggregator runs each benchmark as a subprocess, tolerates one that is
missing, fails, prints no JSON or JSON of an unexpected shape, and writes one table to
artifacts/bench.md and the record to artifacts/bench.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tools.bench import __main__ as bench


def _script(tmp: Path, name: str, body: str) -> list[str]:
    p = tmp / f"{name}.py"
    p.write_text(body)
    return [sys.executable, str(p)]


@pytest.fixture
def specs(tmp_path):
    good = _script(tmp_path, "good", "import json, sys\n"
                   "assert sys.argv[-1] == '--json'\n"
                   "print('warming up...')\n"
                   "print(json.dumps({'speed': 12.5, 'peak_rss_mb': 40, 'targets': {'speed': 10, 'peak_rss_mb': 100}},"
                   " indent=2))\n")
    slow = _script(tmp_path, "below", "import json\nprint(json.dumps({'ratio': 0.4, 'target_ratio': 0.6}))\n")
    crash = _script(tmp_path, "crash", "import sys\nprint('boom: no broker', file=sys.stderr)\nsys.exit(3)\n")
    garbage = _script(tmp_path, "garbage", "print('not json at all')\n")
    odd = _script(tmp_path, "odd", "import json\nprint(json.dumps({'station_mb_s': 'fast'}))\n")
    return [
        bench.Spec("good", "x.good", [], cmd=good),
        bench.Spec("below", "x.below", [], cmd=slow),
        bench.Spec("crash", "x.crash", [], cmd=crash),
        bench.Spec("garbage", "x.garbage", [], cmd=garbage),
        bench.Spec("odd", "x.odd", [], cmd=odd, rows=lambda n, r: [bench.Row(n, "x", r["missing_key"])]),
        bench.Spec("absent", "tools.bench.no_such_benchmark", ["--small"]),
    ]


def test_every_outcome_is_shown_and_the_others_still_run(specs, tmp_path):
    out = tmp_path / "artifacts"
    summary = bench.run_all(specs, quick=True, out_dir=out, echo=lambda m: None)
    results = {r["name"]: r for r in summary.pop("_results")}
    assert results["good"]["status"] == "ok"
    good = {r.figure: r for r in results["good"]["rows"]}
    assert good["speed"].ok is True and good["speed"].target == ">= 10"
    assert good["peak_rss_mb"].ok is True and good["peak_rss_mb"].target == "<= 100"
    below = results["below"]["rows"][0]
    assert below.ok is False and below.ratio == 0.4 and below.target == ">= 0.6"
    assert results["crash"]["status"] == "failed" and "boom: no broker" in results["crash"]["error"]
    assert "exit 3" in results["crash"]["error"]
    assert results["garbage"]["status"] == "failed" and "no JSON" in results["garbage"]["error"]
    assert results["odd"]["status"] == "failed" and "missing_key" in results["odd"]["error"]
    assert results["absent"]["status"] == "missing"

    assert summary["ok"] is False
    assert summary["missing"] == ["absent"]
    assert set(summary["failed"]) == {"crash", "garbage", "odd"}
    assert summary["below_target"] == ["below: ratio"]

    md = (out / "bench.md").read_text()
    for word in ("| benchmark | figure | measured | baseline | ratio | target | result |", "MISSING", "FAILED",
                 "PASS", "FAIL", "quick run"):
        assert word in md
    rec = json.loads((out / "bench.json").read_text())
    assert rec["ok"] is False and len(rec["benchmarks"]) == 6
    assert rec["benchmarks"][0]["record"]["speed"] == 12.5
    text = bench.table(list(results.values()))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["benchmark", "figure"]
    assert any(line.startswith("absent") and line.rstrip().endswith("MISSING") for line in lines)


def test_a_real_benchmark_through_the_aggregator(tmp_path):
    spec = bench.Spec("ingest", "tools.bench.ingest", ["--mib", "8", "--rounds", "1"], rows=bench.rows_ingest)
    res = bench.run_one(spec, quick=True)
    assert res["status"] == "ok", res["error"]
    figs = {r.figure: r for r in res["rows"]}
    row = figs["ingest MB/s vs cp + sync"]
    assert row.measured > 0 and row.baseline > 0 and row.ratio > 0
    # the ratio is the two figures beside it, and the verdict is that ratio against the printed target
    assert row.ratio == pytest.approx(row.measured / row.baseline, rel=0.02, abs=0.01)
    assert row.target.startswith(">= ") and row.ok is (row.ratio >= float(row.target[3:]))
    assert figs["ingest peak RSS"].target == "<= 100"


def test_extractors_read_what_the_benchmarks_print():
    uplink = {"bench": "uplink", "baseline_mb_s": [80.0, 90.0], "archived_mb_s": 60.0, "ratio": 0.667,
              "target_ratio": 0.6, "pass": True, "ours": {"chunk_ack_ms_p99": 12.0}}
    r = bench.rows_uplink("uplink", uplink)
    assert (r[0].measured, r[0].baseline, r[0].ok) == (60.0, 90.0, True)
    live = {"cpu_cores": 1.7, "target_cores": 1.5, "recorded_fps": 30.0, "settings": {"fps": 30, "cameras": 2},
            "host": {"cpus": 2, "pinned_cpus": 2}, "seal_latency_ms": {"p99": 120.0}, "archive_latency_ms": {}}
    r = bench.rows_room_live("room_live", live)
    assert r[0].ok is False and r[0].target == "<= 1.5 cores" and r[1].ok is True
    mon = {"target_ratio": 0.99, "results": [{"load": 5, "devices": 1000, "publish_msg_per_s": 5000,
                                              "ingest_msg_per_s": 4990, "ratio": 0.998, "published_total": 100,
                                              "received_total": 100, "delivered_share": 1.0}]}
    assert [x.ok for x in bench.rows_monitor_load("monitor_load", mon)] == [True, True]
    dock = {"bays": 4, "bays_done": 3, "station_mb_s": 100.0, "cp_sync_mb_s": 105.0, "ratio_vs_cp_sync": 0.952}
    assert [x.ok for x in bench.rows_dock("dock", dock)] == [True, False, None]
    room = {"pipeline_fps": 80.0, "ffmpeg_fps": 100.0, "ratio": 0.8, "target_ratio": 0.7}
    assert bench.rows_room_pipeline("room_pipeline", room)[0].ok is True
    scale = {"runs": [{"receivers": 1, "mb_s": 10.0, "stored": 4, "items": 4, "ok": True, "devices": 2,
                       "mb_per_receiver_cpu_s": 50.0},
                      {"receivers": 2, "mb_s": 19.0, "stored": 4, "items": 4, "ok": True, "devices": 2,
                       "mb_per_receiver_cpu_s": 55.0}],
             "probe": {"device_mb_s": {"median": 29.0}}}
    rows = bench.rows_scale("scale_sim", scale)
    assert rows[0].ratio == 1.9 and rows[0].ok is True and rows[1].ok is True and rows[-1].measured == 29.0


def test_json_is_found_after_progress_lines():
    assert bench.parse_json('step 1\nstep 2\n{\n  "a": 1,\n  "b": {"c": 2}\n}\n') == {"a": 1, "b": {"c": 2}}
    assert bench.parse_json('{"a": 1}') == {"a": 1}
    assert bench.parse_json("nothing here\n") is None
    assert bench.parse_json("[1, 2]") is None


def test_unknown_benchmark_name_is_a_usage_error(capsys):
    assert bench.main(["--only", "nosuch", "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark nosuch" in err and "ingest" in err


def test_unwritable_output_directory_is_a_usage_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert bench.main(["--only", "ingest", "--out", str(blocker / "sub")]) == 2
    assert "cannot create it" in capsys.readouterr().err


def test_list_shows_every_benchmark_with_its_quick_command(capsys):
    assert bench.main(["--list", "--quick"]) == 0
    out = capsys.readouterr().out
    for name in ("ingest", "dock", "room_pipeline", "room_live", "uplink", "monitor_load", "scale_sim"):
        assert name in out
    assert "--json" in out and "--receivers 1,2" in out
