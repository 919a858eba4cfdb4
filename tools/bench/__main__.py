"""`make bench`: run every benchmark of tools/bench (and the scale simulation) and print one table.

    python -m tools.bench                    # full sizes (each benchmark's defaults): tens of minutes
    python -m tools.bench --quick            # small sizes: a few minutes in all
    python -m tools.bench --only ingest --only uplink
    python -m tools.bench --quick --json     # the JSON record on stdout, the table on stderr

Each benchmark runs as its own subprocess (``python -m tools.bench.NAME ... --json``) and prints one
JSON object; this module turns it into rows: benchmark, figure, measured, baseline, ratio, target,
pass/fail. A benchmark that is missing, fails, times out or prints no JSON is shown as such and
the others still run. The table goes to stdout and to ``artifacts/bench.md``, the complete
record (every benchmark's own JSON included) to ``artifacts/bench.json``.

Exit status: 0 when every figure that has a target meets it, 1 when one misses its target or a
benchmark failed, 2 on a usage error. A missing benchmark is reported, not counted as a failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent


@dataclasses.dataclass
class Row:
    benchmark: str
    figure: str
    measured: Any = None
    baseline: Any = None
    ratio: float | None = None
    target: str | None = None       # e.g. ">= 0.9", "<= 1.5"
    ok: bool | None = None          # None: informative, no target
    unit: str = ""

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "-"}[self.ok]


@dataclasses.dataclass
class Spec:
    name: str
    module: str
    quick: list[str]
    full: list[str] = dataclasses.field(default_factory=list)
    rows: Callable[[str, dict], list[Row]] | None = None
    timeout_quick: float = 600
    timeout_full: float = 7200
    cmd: list[str] | None = None    # overrides ``python -m module`` (tests)

    def command(self, quick: bool) -> list[str]:
        base = self.cmd or [sys.executable, "-m", self.module]
        return [*base, *(self.quick if quick else self.full), "--json"]

    def present(self) -> bool:
        if self.cmd:
            return True
        rel = Path(*self.module.split("."))
        return (REPO / rel).with_suffix(".py").is_file() or (REPO / rel / "__main__.py").is_file()


# --- helpers for the row extractors ---------------------------------------------------------------
def _ge(x: float | None, t: float) -> bool | None:
    return None if x is None else x >= t


def _le(x: float | None, t: float) -> bool | None:
    return None if x is None else x <= t


def _ratio(a, b) -> float | None:
    try:
        return round(a / b, 3) if a is not None and b else None
    except TypeError:
        return None


# --- one extractor per benchmark (what each prints is read as it is) -------------------------------
def rows_ingest(name: str, r: dict) -> list[Row]:
    t = r.get("targets", {})
    out = [
        Row(name, "ingest MB/s vs cp + sync", r.get("ingest_mb_s"), r.get("cp_sync_mb_s"), r.get("ratio_vs_cp_sync"),
            f">= {t.get('ratio_vs_cp_sync', 1.0)}", _ge(r.get("ratio_vs_cp_sync"), t.get("ratio_vs_cp_sync", 1.0)), "MB/s"),
        Row(name, "ingest MB/s vs cp + sync + sha256sum", r.get("ingest_mb_s"), r.get("cp_sync_sha256sum_mb_s"),
            r.get("ratio_vs_cp_sha256sum"), f">= {t.get('ratio_vs_cp_sha256sum', 1.6)}",
            _ge(r.get("ratio_vs_cp_sha256sum"), t.get("ratio_vs_cp_sha256sum", 1.6)), "MB/s"),
    ]
    if "ingest_peak_rss_mb" in r:
        lim = t.get("ingest_peak_rss_mb", 100)
        out.append(Row(name, "ingest peak RSS", r["ingest_peak_rss_mb"], None, None, f"<= {lim}",
                       _le(r["ingest_peak_rss_mb"], lim), "MB"))
    return out


def rows_dock(name: str, r: dict) -> list[Row]:
    bays = r.get("bays")
    return [
        Row(name, f"station MB/s ({bays} recorders docked at once) vs cp + sync", r.get("station_mb_s"),
            r.get("cp_sync_mb_s"), r.get("ratio_vs_cp_sync"), ">= 0.9", _ge(r.get("ratio_vs_cp_sync"), 0.9), "MB/s"),
        Row(name, "bays done without error", r.get("bays_done"), bays, _ratio(r.get("bays_done"), bays), "all",
            None if bays is None else r.get("bays_done") == bays),
        Row(name, "station CPU per bay", r.get("cpu_pct_per_bay"), None, None, None, None, "% of a core"),
    ]


def rows_room_pipeline(name: str, r: dict) -> list[Row]:
    t = r.get("target_ratio", 0.7)
    out = [Row(name, "room pipeline fps vs ffmpeg (I420)", r.get("pipeline_fps"), r.get("ffmpeg_fps"), r.get("ratio"),
               f">= {t}", _ge(r.get("ratio"), t), "fps")]
    if r.get("bgr_ratio") is not None:
        out.append(Row(name, "room pipeline fps vs ffmpeg (BGR + compositor)", r.get("bgr_pipeline_fps"),
                       r.get("ffmpeg_fps"), r.get("bgr_ratio"), None, None, "fps"))
    if r.get("cpu_ratio") is not None:
        out.append(Row(name, "CPU ms/frame: ffmpeg / ours", r.get("pipeline_cpu_ms_per_frame"),
                       r.get("ffmpeg_cpu_ms_per_frame"), r.get("cpu_ratio"), None, None, "ms"))
    return out


def rows_room_live(name: str, r: dict) -> list[Row]:
    t = r.get("target_cores", 1.5)
    cpus = (r.get("host") or {}).get("pinned_cpus") or (r.get("host") or {}).get("cpus")
    fps = (r.get("settings") or {}).get("fps")
    out = [Row(name, f"live room CPU ({(r.get('settings') or {}).get('cameras')} cameras)", r.get("cpu_cores"), cpus,
               _ratio(r.get("cpu_cores"), cpus), f"<= {t} cores", _le(r.get("cpu_cores"), t), "cores"),
           Row(name, "recorded fps vs camera fps", r.get("recorded_fps"), fps, _ratio(r.get("recorded_fps"), fps),
               ">= 0.97", _ge(_ratio(r.get("recorded_fps"), fps), 0.97), "fps")]
    seal = r.get("seal_latency_ms") or {}
    if seal.get("p99") is not None:
        out.append(Row(name, "segment close -> sealed p99", seal["p99"], None, None, None, None, "ms"))
    arch = r.get("archive_latency_ms") or {}
    if arch.get("p99") is not None:
        out.append(Row(name, "segment close -> archived p99", arch["p99"], None, None, None, None, "ms"))
    return out


def rows_uplink(name: str, r: dict) -> list[Row]:
    base = r.get("baseline_used_mb_s", r.get("baseline_mb_s"))
    base = max(base) if isinstance(base, list) and base else base
    t = r.get("target_ratio", 0.6)
    out = [Row(name, "archived MB/s vs bare paho QoS 1", r.get("archived_mb_s"), base, r.get("ratio"), f">= {t}",
               _ge(r.get("ratio"), t), "MB/s")]
    ours = r.get("ours") or {}
    if ours.get("chunk_ack_ms_p99") is not None:
        out.append(Row(name, "archive ack per chunk p99", ours["chunk_ack_ms_p99"], None, None, None, None, "ms"))
    return out


def rows_monitor_load(name: str, r: dict) -> list[Row]:
    t = r.get("target_ratio", 0.99)
    out = []
    for x in r.get("results", []):
        lab = f"{x.get('devices')} devices x {x.get('load')} msg/s"
        out.append(Row(name, f"monitor ingest vs publish ({lab})", x.get("ingest_msg_per_s"),
                       x.get("publish_msg_per_s"), x.get("ratio"), f">= {t}", _ge(x.get("ratio"), t), "msg/s"))
        out.append(Row(name, f"delivered / published ({lab})", x.get("received_total"), x.get("published_total"),
                       x.get("delivered_share"), f">= {t}", _ge(x.get("delivered_share"), t)))
    v = r.get("verify")
    if v:  # signed health verified and applied per CPU-second (one core)
        vt = v.get("target_per_s", 5000)
        out.append(Row(name, "monitor: signed health verified per CPU-s", v.get("verified_per_cpu_s"),
                       v.get("bare_ed25519_verify_per_cpu_s"), None, f">= {vt:g}", _ge(v.get("verified_per_cpu_s"), vt),
                       "msg/s"))
    f = r.get("flood")
    if f:  # a genuine device's health under a flood, against one health interval
        worst = (f.get("victim_b_latency_s") or {}).get("max")
        miss = (f.get("victim_b_latency_s") or {}).get("missed")
        out.append(Row(name, "monitor: other device's health applied under a flood (max)", worst, None, None,
                       f"<= {f.get('interval_s')} s", None if worst is None else (worst <= f["interval_s"] and not miss),
                       "s"))
    return out


def rows_scale(name: str, r: dict) -> list[Row]:
    allx = r.get("runs", [])
    out = []
    if allx:
        # steady state (10-90 % of the items) when measured: start-up excluded; median over repetitions
        if r.get("summary"):
            rates = {int(k): v.get("mb_s") for k, v in r["summary"].items()}
        else:
            rates = {x["receivers"]: x.get("steady_mb_s") or x.get("mb_s") for x in allx}
        k1 = min(rates)
        devices = allx[0].get("devices")
        for k in sorted(rates):
            if k == k1:
                continue
            # a receiver added to the shared subscription must add throughput, never take it away
            ratio = _ratio(rates[k], rates[k1])
            out.append(Row(name, f"MB/s with K={k} receivers vs K={k1} ({devices} devices)", rates[k], rates[k1],
                           ratio, ">= 1.0", _ge(ratio, 1.0), "MB/s"))
        stored, items = sum(x["stored"] for x in allx), sum(x["items"] for x in allx)
        out.append(Row(name, "items archived exactly once and verified", stored, items, _ratio(stored, items), "all",
                       all(x.get("ok") for x in allx)))
        best = max(allx, key=lambda x: x.get("mb_per_receiver_cpu_s") or 0)
        out.append(Row(name, "MB per receiver CPU second", best.get("mb_per_receiver_cpu_s"), None, None, None, None,
                       "MB/CPU s"))
    p = r.get("probe")
    if p:
        out.append(Row(name, "one device alone: upload MB/s", (p.get("device_mb_s") or {}).get("median"), None, None,
                       None, None, "MB/s"))
    return out


def rows_generic(name: str, r: dict) -> list[Row]:
    """For a benchmark without an extractor: ``targets`` {key: number}, ``ratio`` with
    ``target_ratio``, or ``pass``/``ok``."""
    out = []
    for key, target in (r.get("targets") or {}).items():
        if isinstance(target, (int, float)) and isinstance(r.get(key), (int, float)):
            lower = any(s in key for s in ("rss", "latency", "_ms", "cpu", "lag", "seconds")) or key.endswith("_s")
            out.append(Row(name, key, r[key], None, None, f"{'<=' if lower else '>='} {target}",
                           _le(r[key], target) if lower else _ge(r[key], target)))
    if r.get("ratio") is not None and not out:
        t = r.get("target_ratio", r.get("target"))
        out.append(Row(name, "ratio", r.get("ratio"), None, r.get("ratio"), f">= {t}" if t is not None else None,
                       _ge(r.get("ratio"), t) if isinstance(t, (int, float)) else None))
    verdict = r.get("pass", r.get("ok"))
    if not out:
        out.append(Row(name, "overall", None, None, None, "pass" if isinstance(verdict, bool) else None,
                       verdict if isinstance(verdict, bool) else None))
    return out


SPECS: list[Spec] = [
    Spec("ingest", "tools.bench.ingest", ["--mib", "128", "--rounds", "1"], rows=rows_ingest),
    Spec("dock", "tools.bench.dock", ["--bays", "4", "--mib", "64", "--no-drop-caches"], rows=rows_dock),
    Spec("room_pipeline", "tools.bench.room_pipeline", ["--seconds", "6", "--repeat", "1", "--no-bgr"],
         rows=rows_room_pipeline),
    Spec("room_live", "tools.bench.room_live", ["--seconds", "15", "--segment-seconds", "5"], rows=rows_room_live),
    Spec("uplink", "tools.bench.uplink", ["--mib", "64", "--item-mib", "16"], rows=rows_uplink),
    Spec("monitor_load", "tools.bench.monitor_load", ["--devices", "200", "--loads", "5", "--seconds", "8",
                                                      "--warmup", "2", "--rounds", "4"], rows=rows_monitor_load),
    Spec("scale_sim", "tools.scale_sim", ["--devices", "100", "--items", "3", "--item-kib", "256", "--receivers", "1,2",
                                          "--repeat", "2", "--probe-mib", "16"], full=["--repeat", "3"], rows=rows_scale),
    Spec("retention_plan", "tools.bench.retention_plan", ["--items", "20000"], full=["--items", "100000"],
         rows=rows_generic),
]


def discover() -> list[Spec]:
    """The specs above, then any other tools/bench/*.py (run with --json only, generic rows)."""
    known = {s.module for s in SPECS}
    extra = [Spec(p.stem, f"tools.bench.{p.stem}", [], rows=None) for p in sorted(BENCH_DIR.glob("*.py"))
             if not p.stem.startswith("_") and f"tools.bench.{p.stem}" not in known]
    return SPECS + extra


def parse_json(text: str) -> dict | None:
    """The last JSON object in a benchmark's stdout (it may print progress lines before it)."""
    text = text.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except ValueError:
        pass
    dec = json.JSONDecoder()
    found = None
    for i, line in enumerate(text.splitlines(keepends=True)):
        if line.lstrip().startswith("{"):
            start = sum(len(x) for x in text.splitlines(keepends=True)[:i])
            try:
                obj, _ = dec.raw_decode(text[start:].lstrip())
            except ValueError:
                continue
            if isinstance(obj, dict):
                found = obj
    return found


def run_one(spec: Spec, quick: bool, timeout: float | None = None, echo: Callable[[str], None] = lambda s: None) -> dict:
    """Run one benchmark; returns {name, status, seconds, rows, record, error, command}."""
    res: dict[str, Any] = {"name": spec.name, "command": spec.command(quick), "status": "ok", "rows": [],
                           "record": None, "error": None, "seconds": None}
    if not spec.present():
        res.update(status="missing", error=f"{spec.module} not found")
        res["rows"] = [Row(spec.name, "(benchmark missing / 基准缺失)")]
        return res
    limit = timeout or (spec.timeout_quick if quick else spec.timeout_full)
    t0 = time.monotonic()
    try:
        p = subprocess.run(res["command"], cwd=REPO, capture_output=True, text=True, timeout=limit,
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired:
        res.update(status="timeout", error=f"no result within {limit:.0f} s", seconds=round(time.monotonic() - t0, 1))
        res["rows"] = [Row(spec.name, f"(timed out after {limit:.0f} s / 超时)", ok=False)]
        return res
    res["seconds"] = round(time.monotonic() - t0, 1)
    rec = parse_json(p.stdout)
    res["record"] = rec
    if rec is None:
        tail = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or ["no output"])[-1]
        res.update(status="failed", error=f"exit {p.returncode}, no JSON: {tail[:300]}")
        res["rows"] = [Row(spec.name, f"(failed / 失败: exit {p.returncode})", ok=False)]
        return res
    try:
        rows = (spec.rows or rows_generic)(spec.name, rec)
    except Exception as exc:  # noqa: BLE001 - a record of an unexpected shape is shown, not fatal
        rows = [Row(spec.name, f"(unreadable record: {exc.__class__.__name__}: {exc})", ok=False)]
        res["status"] = "failed"
        res["error"] = f"cannot read its JSON: {exc}"
    if p.returncode != 0 and res["status"] == "ok":
        res.update(status="failed", error=f"exit {p.returncode}: "
                   + ((p.stderr.strip().splitlines() or [""])[-1])[:300])
        if not any(r.ok is False for r in rows):
            rows.append(Row(spec.name, f"(exit status {p.returncode})", ok=False))
    res["rows"] = rows
    return res


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table(results: list[dict], markdown: bool = False) -> str:
    head = ("benchmark", "figure", "measured", "baseline", "ratio", "target", "result")
    body = []
    for res in results:
        for r in res["rows"]:
            m = _fmt(r.measured) + (f" {r.unit}" if r.unit and r.measured is not None else "")
            b = _fmt(r.baseline) + (f" {r.unit}" if r.unit and r.baseline is not None and r.unit != "%" else "")
            verdict = r.verdict
            if res["status"] != "ok" and r.measured is None:
                verdict = res["status"].upper()  # MISSING, FAILED, TIMEOUT
            body.append((r.benchmark, r.figure, m, b, _fmt(r.ratio), r.target or "-", verdict))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(x.replace("|", "\\|") for x in row) + " |" for row in body]
        return "\n".join(lines)
    w = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.ljust(n) for x, n in zip(head, w)), "  ".join("-" * n for n in w)]
    lines += ["  ".join(x.ljust(n) for x, n in zip(row, w)) for row in body]
    return "\n".join(lines)


def _git_commit() -> str | None:
    try:
        p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return p.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def run_all(specs: list[Spec], quick: bool, out_dir: Path | None, echo: Callable[[str], None]) -> dict:
    started = dt.datetime.now().astimezone().replace(microsecond=0).isoformat()
    results = []
    for spec in specs:
        echo(f"[bench] {spec.name}: {' '.join(spec.command(quick)[1:])}")
        res = run_one(spec, quick)
        extra = f" ({res['error']})" if res["error"] else ""
        echo(f"[bench] {spec.name}: {res['status']}" + (f" in {res['seconds']} s" if res["seconds"] else "") + extra)
        results.append(res)
    rows = [r for res in results for r in res["rows"]]
    failed = [res["name"] for res in results if res["status"] in ("failed", "timeout")]
    below = [f"{r.benchmark}: {r.figure}" for res in results if res["status"] == "ok" for r in res["rows"]
             if r.ok is False]
    summary = {
        "benchmark": "all", "time": started, "quick": quick, "commit": _git_commit(),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                 "load_average": os.getloadavg()},
        "ok": not failed and not below, "failed": failed, "below_target": below,
        "missing": [res["name"] for res in results if res["status"] == "missing"],
        "rows": [dataclasses.asdict(r) | {"verdict": r.verdict} for r in rows],
        "benchmarks": [{k: v for k, v in res.items() if k != "rows"} for res in results],
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        md = [f"# Benchmarks ({'quick' if quick else 'full'} run)", "",
              f"{started}, commit {summary['commit'] or '?'}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
              "Produced by `python -m tools.bench" + (" --quick" if quick else "") + "`; ratios are measured against a "
              "baseline run on the same machine in the same run."
              + (" Quick run: small sizes that fit in the page cache, so copy baselines run at memory speed; "
                 "it checks that every benchmark runs, `make bench` gives the figures of record." if quick else ""),
              "", table(results, markdown=True), ""]
        for res in results:
            if res["error"]:
                md.append(f"- **{res['name']}**: {res['status']}: {res['error']}")
        (out_dir / "bench.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    summary["_results"] = results
    return summary


def main(argv: list[str] | None = None) -> int:
    specs = discover()
    names = [s.name for s in specs]
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="benchmarks: " + ", ".join(names))
    ap.add_argument("--quick", action="store_true", help="small sizes: the whole run takes a few minutes")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run only this benchmark (repeat, or comma-separate, for several)")
    ap.add_argument("--json", action="store_true", help="print the JSON record on stdout (the table on stderr)")
    ap.add_argument("--out", default=str(REPO / "artifacts"), metavar="DIR",
                    help="where bench.json and bench.md go (default artifacts/; '' for nowhere)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and their commands, run nothing")
    a = ap.parse_args(argv)
    if a.only:
        want = [n.strip() for x in a.only for n in x.split(",") if n.strip()]
        unknown = [n for n in want if n not in names]
        if unknown:
            print(f"error: unknown benchmark {', '.join(unknown)} / 未知基准; known: {', '.join(names)}", file=sys.stderr)
            return 2
        specs = [s for s in specs if s.name in want]
    if a.list:
        for s in specs:
            print(f"{s.name:14} {'present' if s.present() else 'MISSING':8} {' '.join(s.command(a.quick)[1:])}")
        return 0
    out = sys.stderr if a.json else sys.stdout
    if a.out:
        try:
            Path(a.out).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"error: --out {a.out}: cannot create it / 无法创建: {exc.strerror}", file=sys.stderr)
            return 2
    summary = run_all(specs, a.quick, Path(a.out) if a.out else None, echo=lambda m: print(m, file=sys.stderr, flush=True))
    results = summary.pop("_results")
    print(table(results), file=out)
    verdict = "all targets met / 全部达标" if summary["ok"] else \
        f"NOT all targets met / 未全部达标: {', '.join(summary['failed'] + summary['below_target'])}"
    print(verdict, file=out)
    if summary["missing"]:
        print(f"missing / 缺失: {', '.join(summary['missing'])}", file=out)
    if a.out:
        print(f"written: {Path(a.out) / 'bench.md'}, {Path(a.out) / 'bench.json'}", file=out)
    if a.json:
        print(json.dumps(summary, ensure_ascii=False))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
