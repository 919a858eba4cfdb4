"""Benchmark: the centre at fleet scale, the monitor's and the archive's index on SQLite and on
PostgreSQL side by side in one run (issue 17).

    python -m tools.bench.fleet                                    # 1,000 devices, 60 s, both backends
    python -m tools.bench.fleet --devices 1000 --rate 1 --seconds 60 --archive-devices 100 --receivers 1,3 \
        --pg postgresql://postgres@127.0.0.1:5432/edge_bench --json fleet.json

Monitor part, once per backend (``--backends sqlite,postgresql``), everything real:

* Mosquitto as shipped (tools/bench/shipped_broker.py: identities and ACL of ``archive
  broker-config``, anonymous off), each simulated device logged in as itself;
* ``edge-agent monitor --db monitor.db`` or ``--db postgresql://…`` (a fresh database, dropped after)
  with its web page, verifying every signature against the enrolment;
* ``--devices`` simulated devices (tools/fleet_sim.py: one docking station per unit slot and one
  interview room per unit, ``--units`` units), one MQTT connection each, signed health at
  ``--rate`` Hz, retained components and ratio reports, an alarm raised or cleared every
  ``--alarm-every`` s and a status change (death and re-birth) every ``--flap-every`` s;
* probe devices whose status is changed one at a time: the time from publishing a status to
  seeing it in the monitor's API (``/api/history``, the page's history view) is the
  status-to-view latency (p50, p99, max).

Measured over the window after ``--warmup``: messages/s the devices published and the monitor
accepted (signatures checked; from its counters, between two of its flushes), everything
received after the devices stop (lost = published - received), the monitor's CPU, the broker's
CPU, the latency, and how long one ``/api/fleet`` (the whole page) takes at this fleet size.

Archive part (``--archive-devices`` > 0), once per backend: tools/scale_sim/ (the devices'
real transfer to ``edge-agent archive serve --share`` receivers, every item checked stored
once and verified) with K receivers for each K in ``--receivers`` (each K ``--repeat`` times,
interleaved): items/s and MB/s. Through the same shipped broker: each device logged in as
itself, receiver k enrolled as ``rx-k`` (`archive receiver add`) and logged in as itself, every
receipt signed by the receiver that stored the item and checked on the device.
``--devices 0`` runs the archive part alone.

``--concurrent``: both at once. For each backend and each K, one monitor run during whose measured
window the ``--archive-devices`` upload their items to K receivers through that run's broker
(tools/bench/fleet_items.py); each monitor row then carries its window's archive figures.

Bounds: at most 5,000 devices (fleet_sim), 600 s per window.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.bench.shipped_broker import ShippedBroker  # noqa: E402
from tools.fleet_sim import FleetSim, enrol, make_fleet  # noqa: E402

EDGE = str(Path(sys.executable).with_name("edge-agent"))
ROOT_DIR = Path(__file__).resolve().parents[2]
PER_WORKER = 200
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/edge_bench"


def counters(db: str) -> dict[str, int]:
    """The monitor's counters (including ``_flushed_at_ms``), on either backend."""
    from agent.monitor.state import connect

    try:
        conn = connect(db, readonly=True)
    except Exception:  # noqa: BLE001 - not created yet
        return {}
    try:
        return {r["name"]: int(r["value"]) for r in conn.execute("SELECT name, value FROM counters")}
    except Exception:  # noqa: BLE001
        return {}
    finally:
        conn.close()


def _get(url: str, timeout: float = 30.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


class Probe:
    """Probe devices whose status this process changes one at a time, timing each change from
    publish to the monitor's API."""

    def __init__(self, sim: FleetSim, web: str):
        self.sim, self.web = sim, web
        self.lat: list[float] = []
        self.missed = 0
        self.online = {d.id: True for d in sim.devices}

    def once(self, i: int, timeout: float = 15.0) -> None:
        d = self.sim.devices[i % len(self.sim.devices)]
        if self.online[d.id]:
            state = "offline"
        else:
            d.bdseq += 1
            state = "online"
        t = time.monotonic()
        self.sim.pub(d, "status", None, d.status(state), 1, True)
        url = f"{self.web}api/history?device={d.id}&limit=1"
        while time.monotonic() - t < timeout:
            ev = _get(url)["events"]
            if ev and ev[-1]["state"] == state and ev[-1]["bdseq"] == d.bdseq:
                self.lat.append(time.monotonic() - t)
                self.online[d.id] = state == "online"
                return
            time.sleep(0.02)
        self.missed += 1
        self.online[d.id] = state == "online"


def monitor_run(label: str, db: str, fleet, probes, root: Path, work: Path, *, units: int, rate: float, warmup: float,
                seconds: float, alarm_every: float, flap_every: float, probe_every: float, flush_s: float = 1.0,
                presign: bool = True, say=lambda m: None, during=None) -> dict:
    """``during``: uploads to run in the measured window through this run's broker
    (tools/bench/fleet_items.py: ``start(broker)`` at its start, ``join(end)`` after it)."""
    work.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # the free port it picked may be taken by another process before mosquitto binds it
        try:
            broker = ShippedBroker(work, root).start()
            break
        except SystemExit:
            if attempt == 2:
                raise
    log_path = work / "monitor.log"
    log = open(log_path, "wb")
    mon = psim = None
    workers: list[subprocess.Popen] = []
    try:
        mon = subprocess.Popen([EDGE, "--config", str(broker.credential_file("monitor")), "monitor", "--db", db,
                                "--broker", f"127.0.0.1:{broker.port}", "--no-tui", "--lost-after", "120",
                                "--enrolment", str(root), "--web", "0", "--flush-s", str(flush_s)], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while "monitor: ready" not in (text := log_path.read_text(errors="replace")):
            if time.monotonic() > deadline or mon.poll() is not None:
                raise RuntimeError(f"monitor did not start: {text[-1500:]}")
            time.sleep(0.1)
        web = text.split("monitor: ready", 1)[1].split(" web ", 1)[1].split()[0]
        t = time.monotonic()
        psim = FleetSim("127.0.0.1", broker.port, probes, rate=1, credentials=broker.credentials)
        psim.connect()
        # the devices in worker processes of at most PER_WORKER each (paho's select() loop: ~1,000 sockets)
        nw = -(-len(fleet) // PER_WORKER)
        # --presign: every health message sealed before the first round (genuine: each device's key, next seq
        # and scheduled time), so that the signing (~0.9 of a core at 5,000 msg/s) is not in the timed window
        n_msgs = len(fleet) * rate * (warmup + seconds)
        start_at = time.time() + 5 + len(fleet) * 0.004 + n_msgs * 150e-6 / 1.5
        extra = ["--presign", "--start-at", f"{start_at:.3f}"] if presign else []
        workers = [subprocess.Popen(
            [sys.executable, "-m", "tools.fleet_sim", "--broker", f"127.0.0.1:{broker.port}", "--devices",
             str(len(fleet)), "--units", str(units), "--slice", f"{w}/{nw}", "--credentials-dir",
             str(broker.dir / "credentials"), "--rate", str(rate), "--duration", str(warmup + seconds),
             "--alarm-every", str(alarm_every * nw), "--flap-every", str(flap_every * nw), "--kill-after", *extra],
            stdout=subprocess.PIPE, stderr=open(work / f"sim-{w}.log", "wb"), cwd=ROOT_DIR, text=True)
            for w in range(nw)]
        say(f"{label}: {len(fleet)} devices in {nw} processes + {len(probes)} probes started")
        if presign:  # until every simulator has sealed its messages, then until the first round
            deadline = time.monotonic() + 600
            while not all("presigned" in (work / f"sim-{w}.log").read_text(errors="replace") for w in range(nw)):
                if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                    raise RuntimeError(f"a simulator did not finish sealing: see {work}/sim-*.log")
                time.sleep(0.2)
            late = time.time() - start_at
            say(f"{label}: {n_msgs:.0f} messages sealed ahead" + (f", {late:.1f} s after the planned start" if late > 0 else ""))
            time.sleep(max(0.0, start_at - time.time()))
        time.sleep(warmup)
        mp, bp = psutil.Process(mon.pid), psutil.Process(broker.pid)
        wp = [psutil.Process(w.pid) for w in workers]
        c0, t0 = counters(db), time.monotonic()
        m0, b0, w0, s0 = _cpu(mp), _cpu(bp), sum(_cpu(p) for p in wp), psutil.cpu_times()
        probe = Probe(psim, web)
        if during is not None:
            during.start(broker)
        i = 0
        while time.monotonic() - t0 < seconds and all(w.poll() is None for w in workers):
            probe.once(i)
            i += 1
            time.sleep(probe_every)
        c1, t1 = counters(db), time.monotonic()
        m1, b1, w1, s1 = _cpu(mp), _cpu(bp), sum(_cpu(p) for p in wp if p.is_running()), psutil.cpu_times()
        page = []
        for _ in range(3):
            t = time.monotonic()
            f = _get(web + "api/fleet", timeout=120)
            page.append(time.monotonic() - t)
        items = during.join(t1) if during is not None else None
        runs = []
        for w in workers:
            out, _ = w.communicate(timeout=warmup + seconds + 120)
            try:
                runs.append(json.loads(out.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                raise RuntimeError(f"a simulator process failed (rc {w.returncode}): see {work}/sim-*.log") from None
        run = {"rounds": min(r["rounds"] for r in runs), "status_changes": sum(r["status_changes"] for r in runs),
               "late_start_s": max((r.get("late_start_s") or 0) for r in runs),
               "elapsed_s": max(r["elapsed_s"] for r in runs)}
        published = sum(sum(r["published"].values()) for r in runs) + sum(psim.published.values())
        d0, last, still = time.monotonic(), -1, 0
        while time.monotonic() - d0 < 180:  # drain: until the monitor has counted everything or stops moving
            now = counters(db).get("received", 0)
            if now >= published:
                break
            still = still + 1 if now == last else 0
            if still >= 20:
                break
            last = now
            time.sleep(0.5)
        drain = time.monotonic() - d0
        c2 = counters(db)
        window = t1 - t0
        flush_dt = (c1.get("_flushed_at_ms", 0) - c0.get("_flushed_at_ms", 0)) / 1000 or window
        accepted = (c1.get("accepted", 0) - c0.get("accepted", 0)) / flush_dt
        scheduled = len(fleet) * rate
        busy = sum(s1) - sum(s0)
        return {
            "backend": label, "db": "postgresql" if db.startswith("postgresql://") else "sqlite",
            "flush_s": flush_s, "devices": len(fleet), "rooms": sum(1 for d in fleet if d.kind == "room"),
            "stations": sum(1 for d in fleet if d.kind == "dock"), "probes": len(probes), "rate_hz": rate,
            "window_s": round(window, 1),
            "scheduled_health_msg_s": scheduled,
            "published_health_msg_s": round(sum(r["published"]["health"] for r in runs) / run["elapsed_s"], 1),
            "accepted_msg_s": round(accepted, 1), "accepted_vs_scheduled": round(accepted / scheduled, 3),
            "sim_rounds": run.get("rounds"), "status_changes": run.get("status_changes"),
            "presigned": presign, "sim_late_start_s": run.get("late_start_s"),
            "published_total": published, "received_total": c2.get("received", 0),
            "lost": max(0, published - c2.get("received", 0)), "drain_s": round(drain, 1),
            "rejected": {k: v for k, v in c2.items() if k.startswith("rejected.") and v},
            "monitor_cpu_pct_of_one_core": round((m1 - m0) / window * 100, 1),
            "accepted_per_monitor_cpu_s": round(accepted * window / (m1 - m0), 1) if m1 > m0 else None,
            "broker_cpu_pct_of_one_core": round((b1 - b0) / window * 100, 1),
            "simulator_cpu_pct_of_one_core": round((w1 - w0) / window * 100, 1), "simulator_processes": nw,
            "machine_cpu_busy_pct": round((1 - (s1.idle - s0.idle) / busy) * 100, 1) if busy else None,
            "latency_s": {"samples": len(probe.lat), "missed": probe.missed,
                          "p50": _round(_pct(probe.lat, 0.5)), "p90": _round(_pct(probe.lat, 0.9)),
                          "p99": _round(_pct(probe.lat, 0.99)), "max": _round(max(probe.lat, default=None)),
                          "mean": _round(statistics.fmean(probe.lat) if probe.lat else None)},
            "api_fleet_s": _round(statistics.median(page)), "api_fleet_devices": f["totals"]["devices"],
            "monitor_rss_mib": round(mp.memory_info().rss / 2**20, 1),
            "load_average": [round(x, 1) for x in os.getloadavg()],
            **({"archive": items} if items is not None else {}),
        }
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(10)
        if psim is not None:
            try:
                psim.stop(clean=False)
            except Exception:  # noqa: BLE001
                pass
        if mon is not None and mon.poll() is None:
            mon.terminate()
            try:
                mon.wait(30)
            except subprocess.TimeoutExpired:
                mon.kill()
        broker.stop()
        log.close()


def _round(x, n: int = 3):
    return None if x is None else round(x, n)


def archive_runs(db: str | None, devices: int, items: int, item_kib: int, receivers: list[int], work: Path,
                 say=lambda m: None, repeat: int = 1) -> dict:
    from tools import scale_sim

    res = scale_sim.simulate(devices=devices, items=items, item_kib=item_kib, receivers=receivers, probe_mib=0,
                             timeout=900, workdir=str(work), db=db, progress=say, repeat=repeat)
    return {"index": res["index"], "devices": devices, "items_per_device": items, "item_kib": item_kib,
            "ok": res["ok"], "summary": res["summary"],
            "broker": res["broker"],
            "runs": [{**{k: r.get(k) for k in ("receivers", "repeat", "items", "stored", "wall_s", "items_s", "mb_s",
                                                "steady_items_s", "steady_mb_s", "receiver_cpu_s_total",
                                                "mb_per_receiver_cpu_s", "broker_cpu_s", "retransmits",
                                                "items_per_receiver", "pg", "ok", "at_utc", "load_average")},
                      "receipts": r["check"].get("receipts")}
                     for r in res["runs"]]}


def table(res: dict) -> str:
    lines = [f"fleet benchmark {res['time']} ({res['nproc']} CPUs, load {res['load_average_start']})"]
    if res["monitor"]:
        lines += ["", "| monitor | devices | health/s scheduled | accepted/s | lost | monitor CPU % | accepted per CPU-s "
                      "| status-to-view p50 / p99 / max (s) | /api/fleet (s) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["monitor"]:
        lat = r["latency_s"]
        lines.append(f"| {r['db']} (flush {r['flush_s']:g} s) | {r['devices']} ({r['stations']} stations, {r['rooms']} rooms) | "
                     f"{r['scheduled_health_msg_s']:g} | {r['accepted_msg_s']} | {r['lost']} | "
                     f"{r['monitor_cpu_pct_of_one_core']} | {r['accepted_per_monitor_cpu_s']} | "
                     f"{lat['p50']} / {lat['p99']} / {lat['max']} ({lat['samples']} samples, {lat['missed']} missed) | "
                     f"{r['api_fleet_s']} |")
    if res["archive"]:
        lines += ["", "| archive index | receivers | items | items/s overall (steady) | MB/s overall (steady) | receiver CPU s "
                      "| MB per receiver CPU s "
                      "| PostgreSQL commits, rows written per item | retransmits | receipts checked | at (UTC), load | ok |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for a in res["archive"]:
            for r in a["runs"]:
                pg = r.get("pg")
                cost = f"{pg['commits_per_item']}, {pg['rows_per_item']}" if pg else "-"
                la = r.get("load_average") or []
                lines.append(f"| {a['index']} | {r['receivers']} | {r['stored']}/{r['items']} × {a['item_kib']} KiB | "
                             f"{r['items_s']} ({r['steady_items_s'] or '-'}) | {r['mb_s']} ({r['steady_mb_s'] or '-'}) | "
                             f"{r['receiver_cpu_s_total']} | {r.get('mb_per_receiver_cpu_s')} | "
                             f"{cost} | {r.get('retransmits')} | {r.get('receipts')} | "
                             f"{r.get('at_utc', '-')}, {' '.join(map(str, la))} | "
                             f"{'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.fleet", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--units", type=int, default=400, help="units (one interview room each, except the last)")
    ap.add_argument("--rate", type=float, default=1.0, help="signed health messages per second per device")
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured window (at most 600)")
    ap.add_argument("--alarm-every", type=float, default=0.5, help="an alarm raised or cleared every S seconds")
    ap.add_argument("--flap-every", type=float, default=0.5, help="a device dies and is born again every S seconds")
    ap.add_argument("--probes", type=int, default=5, help="probe devices for the status-to-view latency")
    ap.add_argument("--probe-every", type=float, default=0.3, help="pause between two probe status changes")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--flush-s", type=float, default=1.0, help="the monitor's --flush-s (its write interval)")
    ap.add_argument("--no-presign", dest="presign", action="store_false",
                    help="the simulators sign each message when they publish it (default: every health message "
                         "sealed before the first round, for its scheduled time: fleet_sim --presign)")
    ap.add_argument("--pg", default=PG_DEFAULT, help="PostgreSQL URL; fresh databases NAME_… are made and dropped")
    ap.add_argument("--archive-devices", type=int, default=100, help="devices uploading small items (0: no archive part)")
    ap.add_argument("--items", type=int, default=3)
    ap.add_argument("--item-kib", type=int, default=256)
    ap.add_argument("--receivers", default="1,3")
    ap.add_argument("--repeat", type=int, default=1, help="archive part: each K this many times, interleaved (1..10)")
    ap.add_argument("--concurrent", action="store_true",
                    help="the archive part inside the monitor window: for each backend and K, one monitor run during "
                         "which the --archive-devices upload their items (tools/bench/fleet_items.py)")
    ap.add_argument("--dir", help="work directory (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    a = ap.parse_args(argv)
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"sqlite", "postgresql"}:
        ap.error("--backends: sqlite, postgresql or both")
    if not 0 < a.seconds <= 600:
        ap.error("--seconds: 0 < s <= 600")
    if a.devices < 0 or (a.devices == 0 and not a.archive_devices):
        ap.error("--devices: 1 or more (0: the archive part alone, with --archive-devices)")
    try:
        receivers = [int(x) for x in a.receivers.split(",") if x]
    except ValueError:
        ap.error("--receivers: numbers separated by commas")
    if a.concurrent and not (a.devices and a.archive_devices):
        ap.error("--concurrent: --devices and --archive-devices both 1 or more")
    from agent.common.pg import create_database, drop_database

    out = sys.stderr if a.json == "-" else sys.stdout
    say = lambda m: print(m, file=out, flush=True)  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="edge-fleet-bench-", dir=a.dir))
    res = {"benchmark": "fleet", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "nproc": os.cpu_count(),
           "load_average_start": [round(x, 1) for x in os.getloadavg()],
           "argv": ["python", "-m", "tools.bench.fleet", *(sys.argv[1:] if argv is None else argv)],
           "monitor": [], "archive": []}
    try:
        if a.devices:
            fleet = make_fleet(a.devices, a.units)
            probes = make_fleet(max(1, a.probes), 1, "probe", "3302")
            t = time.monotonic()
            enrol(work / "archive", fleet + probes)
            say(f"enrolled {len(fleet) + len(probes)} devices in {time.monotonic() - t:.1f} s")
        if a.concurrent:
            from tools.bench import fleet_items

            res["concurrent"] = True
            res["monitor"] = fleet_items.runs(sys.modules[__name__], a, fleet, probes, work, receivers, backends, say)
        for b in backends if a.devices and not a.concurrent else []:
            db = str(work / "monitor.db")
            if b == "postgresql":
                head, _, name = a.pg.rpartition("/")
                db = f"{head}/{name}_mon_{uuid.uuid4().hex[:8]}"
                create_database(db)
            try:
                r = monitor_run(b, db, fleet, probes, work / "archive", work / f"mon-{b}", units=a.units, rate=a.rate, warmup=a.warmup,
                                seconds=a.seconds, alarm_every=a.alarm_every, flap_every=a.flap_every,
                                probe_every=a.probe_every, flush_s=a.flush_s, presign=a.presign, say=say)
            finally:
                if b == "postgresql":
                    drop_database(db)
            res["monitor"].append(r)
            say(f"{b}: accepted {r['accepted_msg_s']} msg/s of {r['scheduled_health_msg_s']:g} scheduled, lost "
                f"{r['lost']}, latency p50 {r['latency_s']['p50']} p99 {r['latency_s']['p99']} s, monitor CPU "
                f"{r['monitor_cpu_pct_of_one_core']} %")
        if a.archive_devices and not a.concurrent:
            for b in backends:
                pg = f"{a.pg}_arc" if b == "postgresql" else None
                (work / f"arc-{b}").mkdir()
                res["archive"].append(archive_runs(pg, a.archive_devices, a.items, a.item_kib, receivers,
                                                   work / f"arc-{b}", say=say, repeat=a.repeat))
    finally:
        if a.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    res["load_average_end"] = [round(x, 1) for x in os.getloadavg()]
    print(table(res), file=out)
    if res.get("concurrent"):
        from tools.bench import fleet_items

        print("\nThe same windows: monitor and archive at once\n\n" + fleet_items.table(res["monitor"]), file=out)
    if a.json:
        text = json.dumps(res, ensure_ascii=False, indent=1)
        if a.json == "-":
            print(text)
        else:
            Path(a.json).write_text(text + "\n")
    ok = all(r["lost"] == 0 and r.get("archive", {"ok": True})["ok"] for r in res["monitor"]) \
        and all(x["ok"] for x in res["archive"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
