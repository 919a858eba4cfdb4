"""Benchmark: can the central monitor keep up with the fleet?

    python -m tools.bench.monitor_load [--devices 1000] [--loads 1,5] [--seconds 20] [--json [PATH]]

For each load factor L: a private Mosquitto, ``edge-agent monitor`` (subprocess, SQLite in a temp
dir), and tools/fleet_sim.py (subprocess) with ``--devices`` simulated devices publishing health
at L Hz each over 4 connections. After a warm-up, over a steady window we measure

* publish rate (messages/s the simulator sent, and the scheduled rate devices x L) and ingest rate
  (messages/s the monitor counted between two of its flushes, from its ``counters`` table); the
  ratio is ingest / scheduled (target >= 0.99 at 5x on 2 cores);
* after the simulator stops: messages received in total ÷ published (nothing lost) and the time
  the monitor needed to drain its backlog;
* CPU of the monitor (percent of one core, user + system) and its peak RSS.

``--json`` writes one record for the ``make bench`` aggregator (stdout, or PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.fleet_sim import FleetSim, make_fleet  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EDGE = str(Path(sys.executable).with_name("edge-agent"))
TARGET = 0.99


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def counter(db: Path, name: str = "received") -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute("SELECT value FROM counters WHERE name = ?", [name]).fetchone()
        finally:
            conn.close()
        return row[0] if row else 0
    except sqlite3.Error:
        return 0


def run_load(devices: int, load: float, seconds: float, warmup: float, work: Path) -> dict:
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"max_queued_messages 100000\n" + ("user root\n" if os.geteuid() == 0 else ""))
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = work / "monitor.db"
    mon_log = open(work / "monitor.log", "wb")
    mon = None
    try:
        wait_port(port)
        mon = subprocess.Popen([EDGE, "monitor", "--db", str(db), "--broker", f"127.0.0.1:{port}", "--no-tui",
                                "--lost-after", "60"], stdout=mon_log, stderr=mon_log)
        deadline = time.monotonic() + 20
        while "monitor: ready" not in (work / "monitor.log").read_text(errors="replace"):
            if time.monotonic() > deadline or mon.poll() is not None:
                raise RuntimeError("monitor did not start: " + (work / "monitor.log").read_text()[-1000:])
            time.sleep(0.1)
        proc = psutil.Process(mon.pid)
        total = warmup + seconds
        # the simulator runs in this process (its own threads); the monitor is a separate process
        sim_obj = FleetSim("127.0.0.1", port, make_fleet(devices, max(1, devices // 20), "bench"), rate=load,
                           connections=4)
        sim_obj.connect()
        holder: dict = {}
        sim = threading.Thread(target=lambda: holder.update(sim_obj.run(total)), name="fleet-sim")
        sim.start()
        time.sleep(warmup)
        c0, f0, p0, t0 = counter(db), counter(db, "_flushed_at_ms"), sim_obj.published["health"], time.monotonic()
        cpu0, sys0 = proc.cpu_times(), psutil.cpu_times()
        rss = proc.memory_info().rss
        while time.monotonic() - t0 < seconds and sim.is_alive():
            time.sleep(0.5)
            rss = max(rss, proc.memory_info().rss)
        c1, f1, p1, t1 = counter(db), counter(db, "_flushed_at_ms"), sim_obj.published["health"], time.monotonic()
        cpu1, sys1 = proc.cpu_times(), psutil.cpu_times()
        sim.join(total + 60)
        sim_obj.stop()
        sim = None
        published = sum(sim_obj.published.values())
        # drain: wait until the monitor has counted everything (or stops progressing)
        d0 = time.monotonic()
        last, still = counter(db), 0
        while True:
            time.sleep(0.5)
            now = counter(db)
            if now >= published or (now == last and (still := still + 1) >= 20) or time.monotonic() - d0 > 180:
                break
            if now != last:
                still = 0
            last = now
        drain = time.monotonic() - d0
        received = counter(db)
        window = t1 - t0
        pub_rate = (p1 - p0) / window
        ing_rate = (c1 - c0) / ((f1 - f0) / 1000)  # counts between two flushes, over their own interval
        cpu = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / window * 100
        # the simulator publishes in rounds (all devices at each tick): over a window a few seconds
        # long the sampled publish count is quantised by a whole round; the scheduled rate is exact
        # as long as the simulator keeps its schedule (checked: sim_kept_up)
        nominal = devices * load
        busy = sum(sys1) - sum(sys0)
        steal = (getattr(sys1, "steal", 0) - getattr(sys0, "steal", 0)) / busy * 100 if busy else 0.0
        return {"load": load, "devices": devices, "publish_msg_per_s": round(pub_rate, 1),
                "scheduled_msg_per_s": nominal, "sim_kept_up": pub_rate >= 0.95 * nominal,
                "ingest_msg_per_s": round(ing_rate, 1), "ratio": round(ing_rate / nominal, 3),
                "published_total": published, "received_total": received,
                "delivered_share": round(received / published, 4) if published else None,
                "drain_s": round(drain, 1), "monitor_cpu_pct_of_one_core": round(cpu, 1),
                "monitor_rss_mib": round(rss / 2**20, 1), "window_s": round(window, 1),
                "rejected": {k: v for k, v in _counters(db).items() if k.startswith("rejected")},
                "load_average": [round(x, 1) for x in os.getloadavg()], "cpu_steal_pct": round(steal, 1)}
    finally:
        for p in (mon,):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        broker.terminate()
        broker.wait(10)
        mon_log.close()


def _counters(db: Path) -> dict:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0]: r[1] for r in conn.execute("SELECT name, value FROM counters")}
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--loads", default="1,5", help="load factors (messages per second per device)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window per load")
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds before the window (the connect burst drains)")
    ap.add_argument("--json", nargs="?", const="-", help="write a JSON record (to stdout or PATH)")
    a = ap.parse_args(argv)
    if not 1 <= a.devices <= 5000:
        ap.error("--devices: 1..5000")
    loads = [float(x) for x in a.loads.split(",") if x.strip()]
    results = []
    for load in loads:
        with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
            results.append(run_load(a.devices, load, a.seconds, a.warmup, Path(tmp)))
    record = {"bench": "monitor_load", "target_ratio": TARGET, "cpus": os.cpu_count(),
              "machine": platform.machine(), "python": platform.python_version(), "results": results,
              "ok": all(r["ratio"] >= TARGET and r["delivered_share"] >= TARGET and r["sim_kept_up"] for r in results)}
    table = sys.stderr if a.json == "-" else sys.stdout
    print(f"{'load':>5} {'publish/s':>10} {'ingest/s':>9} {'ratio':>6} {'delivered':>9} {'drain s':>7} "
          f"{'CPU %':>6} {'RSS MiB':>8}  load avg  steal %", file=table)
    for r in results:
        print(f"{r['load']:>4g}x {r['publish_msg_per_s']:>10} {r['ingest_msg_per_s']:>9} {r['ratio']:>6} "
              f"{r['delivered_share']:>9} {r['drain_s']:>7} {r['monitor_cpu_pct_of_one_core']:>6} "
              f"{r['monitor_rss_mib']:>8}  {r['load_average'][0]:>8}  {r['cpu_steal_pct']:>7}", file=table)
    if a.json:
        text = json.dumps(record, indent=2)
        if a.json == "-":
            print(text)
        else:
            Path(a.json).write_text(text + "\n")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
