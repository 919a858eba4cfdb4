"""Scale simulation: N simulated devices upload sealed items through one real Mosquitto to K
archive receivers sharing one subscription (``$share/GROUP/edge/xfer/+/+/+``) and one archive root.

    python -m tools.scale_sim                                   # 100 devices x 3 items x 1 MiB, K = 1, 2, 3
    python -m tools.scale_sim --devices 500 --items 2 --item-kib 256 --receivers 1,2,3 --json
    python -m tools.scale_sim --devices 6 --items 2 --item-kib 64 --receivers 2 --probe-mib 0

What runs (loopback only, everything real, nothing mocked):

- devices: each has its own data directory, SQLite ledger, Ed25519 key and sealed items made with
  the library (``agent.store.ingest``), and uploads them with the real uplink
  (:class:`agent.uplink.Uplink`: one MQTT v5 connection, birth/death, chain checkpoint, transfer
  with manifest / chunks / finish and the archive's ``stored`` answer). The devices run in
  ``--workers`` publisher processes (default: one per 50 devices, at least 2; hundreds of devices in
  one Python process starve each other of the interpreter lock, which measures the simulator, not
  the archive);
- the broker: Mosquitto as the project ships it, started for each run on a free port of
  127.0.0.1 (tools/bench/shipped_broker.py: the password file, ACL and ``mosquitto.conf`` snippet
  `edge-agent archive broker-config` writes from the enrolment; anonymous access off). Each
  device logs in as itself and may publish only in its own subtree;
- receivers: K real ``edge-agent archive serve --share GROUP`` processes on the same root, receiver
  k enrolled as ``rx-k`` (`edge-agent archive receiver add`: a signing key and a broker identity
  of its own) and logged in as ``rx-k``; every receipt it sends is signed with its key, and the
  devices pin only the receivers' keys (not the root's), so a device counts an item archived only
  on a receipt from the receiver that stored it.

Each run starts from the same sealed fleet (restored from a pristine copy) and an archive root
where every device is already enrolled. Measured per run: wall time, items/s and MB/s (overall and
in the steady middle 10-90 % of the run), per-device upload rate, and the CPU seconds of the
receivers, the broker and the publishers (``/proc/PID/stat``), from which MB/s per receiver core.
After every run the archive is checked: every item stored exactly once (database and disk), every
item verifies, every unit's chain verifies, and every device holds every item as archived with a
receipt that verifies against the key of the receiver that stored it; a run that fails the check
is reported as failed.

``--probe-mib M`` adds one run of a single device with one item of M MiB to one receiver: the upload
rate one device reaches when nothing else competes (the per-device ceiling of this code path).

The package: ``fleet.py`` (the sealed fleet and its restore), ``procs.py`` (the broker and the
processes), ``publisher.py`` (a publisher process of many devices), ``run.py`` (one run and its
figures), ``check.py`` (exactly once, verified); this module runs them all and reports.

Bounds: at most 1000 devices, 8 receivers, 100 items per device, 64 MiB per item, 3600 s per run;
the data must fit twice in the free space of the work directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .fleet import PREFIX, make_fleet
from .procs import SimError
from .publisher import run_publisher
from .run import SHARE, median, run_once

MAX_DEVICES = 1000
MAX_RECEIVERS = 8
MAX_ITEMS = 100
MAX_ITEM_KIB = 64 * 1024
MAX_TIMEOUT = 3600
DEVICES_PER_WORKER = 50


def simulate(devices: int = 100, items: int = 3, item_kib: int = 1024, receivers: list[int] | None = None,
             workers: int | None = None, probe_mib: int = 32, timeout: float = 600, workdir: str | None = None,
             keep: bool = False, verify: bool = True, receive_maximum: int | None = None,
             progress=None, full_uplink: bool = False, ramp_s: float | None = None, device_kbps: int = 0,
             shards: bool = False, repeat: int = 1, db: str | None = None) -> dict:
    receivers = receivers or [1, 2, 3]
    if db is not None:
        from agent.common.pg import is_url

        if not is_url(db):
            raise SimError(f"--db {db}: give a postgresql://USER@HOST:PORT/NAME URL (default: SQLite ROOT/archive.db)")
    if not 1 <= repeat <= 10:
        raise SimError(f"--repeat {repeat}: must be 1..10")
    if workers is None:
        workers = min(64, max(2, -(-devices // DEVICES_PER_WORKER)))
    check_bounds(devices, items, item_kib, receivers, workers, probe_mib, timeout)
    if ramp_s is None:
        ramp_s = min(10.0, devices / 100)
    if not 0 <= ramp_s <= 600:
        raise SimError(f"--ramp {ramp_s}: must be 0..600 s")
    if device_kbps < 0:
        raise SimError(f"--device-kbps {device_kbps}: must be 0 (no cap) or more")
    dev_opts = {"full_uplink": full_uplink, "ramp_s": ramp_s, "bandwidth": device_kbps * 1000}
    need = 3 * (devices * items * item_kib * 1024 + probe_mib * 2**20) + (64 << 20)
    parent = Path(workdir) if workdir else Path(tempfile.gettempdir())
    if not parent.is_dir():
        raise SimError(f"--dir {parent}: no such directory")
    free = shutil.disk_usage(parent).free
    if free < need:
        raise SimError(f"needs {need >> 20} MiB free in {parent}, has {free >> 20} MiB; use fewer devices or --item-kib")
    base = Path(tempfile.mkdtemp(prefix="edge-scale-sim-", dir=workdir))
    say = progress or (lambda msg: None)
    result = {"benchmark": "scale_sim", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "nproc": os.cpu_count(),
              "devices": devices, "items_per_device": items, "item_kib": item_kib, "workers": workers,
              "share": f"$share/{SHARE}/{PREFIX}/xfer/+/+/+", "device_mode": "uplink" if full_uplink else "lite",
              "layout": "shards" if shards else "shared", "index": "postgresql" if db else "sqlite",
              "broker": "shipped (archive broker-config: an identity per device and receiver, ACL, anonymous off)",
              "ramp_s": ramp_s, "device_kbps": device_kbps, "runs": [], "probe": None, "workdir": str(base)}
    try:
        t = time.monotonic()
        fleet = make_fleet(base / "fleet", devices, items, item_kib * 1024, receivers=max(receivers))
        result["fleet_setup_s"] = round(time.monotonic() - t, 1)
        say(f"fleet: {devices} devices x {items} items x {item_kib} KiB sealed in {result['fleet_setup_s']} s")
        for rep in range(repeat):  # interleaved (K=1, 2, 3, 1, 2, 3 …): load from elsewhere hits every K alike
            for k in receivers:
                r = run_once(base / "fleet", fleet, k, workers, timeout, verify=verify,
                             receive_maximum=receive_maximum, dev_opts=dev_opts, shards=shards,
                             label=f"{k}-{rep + 1}", db=db)
                r["repeat"] = rep + 1
                result["runs"].append(r)
                say(f"K={k}{f' (run {rep + 1})' if repeat > 1 else ''}: {r['stored']}/{r['items']} items in "
                    f"{r['wall_s']} s, {r['mb_s']} MB/s (steady {r['steady_mb_s'] or '-'}), receivers "
                    f"{r['receiver_cpu_s_total']} CPU s, {'OK' if r['ok'] else 'FAILED'}")
        if probe_mib:
            pf = make_fleet(base / "probe", 1, 1, probe_mib << 20, seed=7, receivers=1)
            r = run_once(base / "probe", pf, 1, 1, timeout, verify=verify, receive_maximum=receive_maximum, label="probe",
                         dev_opts=dict(dev_opts, ramp_s=0), db=db)
            result["probe"] = r
            say(f"probe: one device, one {probe_mib} MiB item: {r['mb_s']} MB/s, {'OK' if r['ok'] else 'FAILED'}")
        result["summary"] = summarize(result["runs"])
        k0 = result["summary"].get(str(min(receivers)), {})
        result["scaling"] = {f"K={k}": round(v["mb_s"] / k0["mb_s"], 2)
                             for k, v in result["summary"].items() if k0.get("mb_s") and v.get("mb_s")}
        result["ok"] = all(r["ok"] for r in result["runs"]) and (result["probe"] is None or result["probe"]["ok"])
        return result
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
            result["workdir"] = None


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Per K: the median over the repetitions of the steady rates (overall rate when a run was too
    short for a steady window) and of the receiver CPU cost."""
    out: dict[str, dict] = {}
    # steady rates only when every run has one, so that K values are compared alike
    steady = all(r["steady_mb_s"] for r in runs)
    for k in sorted({r["receivers"] for r in runs}):
        rs = [r for r in runs if r["receivers"] == k]
        mb = [r["steady_mb_s"] if steady else r["mb_s"] for r in rs if r["mb_s"]]
        it = [r["steady_items_s"] if steady else r["items_s"] for r in rs if r["items_s"]]
        cpu = [r["mb_per_receiver_cpu_s"] for r in rs if r["mb_per_receiver_cpu_s"]]
        out[str(k)] = {"runs": len(rs), "rate": "steady" if steady else "overall", "mb_s": median(mb), "mb_s_range": [min(mb), max(mb)] if mb else None,
                       "items_s": median(it), "mb_per_receiver_cpu_s": median(cpu),
                       "ok": all(r["ok"] for r in rs)}
    return out


def check_bounds(devices, items, item_kib, receivers, workers, probe_mib, timeout) -> None:
    if not 1 <= devices <= MAX_DEVICES:
        raise SimError(f"--devices {devices}: must be 1..{MAX_DEVICES}")
    if not 1 <= items <= MAX_ITEMS:
        raise SimError(f"--items {items}: must be 1..{MAX_ITEMS}")
    if not 1 <= item_kib <= MAX_ITEM_KIB:
        raise SimError(f"--item-kib {item_kib}: must be 1..{MAX_ITEM_KIB}")
    if not receivers or any(not 1 <= k <= MAX_RECEIVERS for k in receivers):
        raise SimError(f"--receivers {','.join(map(str, receivers))}: each must be 1..{MAX_RECEIVERS}")
    if not 1 <= workers <= 64:
        raise SimError(f"--workers {workers}: must be 1..64")
    if not 0 <= probe_mib <= MAX_ITEM_KIB // 1024:
        raise SimError(f"--probe-mib {probe_mib}: must be 0..{MAX_ITEM_KIB // 1024}")
    if not 1 <= timeout <= MAX_TIMEOUT:
        raise SimError(f"--timeout {timeout}: must be 1..{MAX_TIMEOUT} s")


def parse_receivers(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SimError(f"--receivers {text!r}: expected numbers separated by commas, e.g. 1,2,3") from None
    if not ks:
        raise SimError(f"--receivers {text!r}: expected numbers separated by commas, e.g. 1,2,3")
    return ks


def table(res: dict) -> str:
    head = ("K", "devices", "items", "MB", "wall s", "items/s", "MB/s", "steady MB/s", "MB/s per rx",
            "rx CPU s", "MB per rx CPU s", "broker CPU s", "device MB/s (median)", "check")
    rows = []
    for r in res["runs"] + ([res["probe"]] if res.get("probe") else []):
        label = str(r["receivers"]) if r is not res.get("probe") else "probe"
        rows.append((label, r["devices"], f"{r['stored']}/{r['items']}", r["mb"], r["wall_s"], r["items_s"], r["mb_s"],
                     r["steady_mb_s"] or "-", r["mb_s_per_receiver"], r["receiver_cpu_s_total"],
                     r["mb_per_receiver_cpu_s"], r["broker_cpu_s"],
                     (r["device_mb_s"] or {}).get("median", "-"),
                     "OK" if r["ok"] else f"FAILED ({r['check']['problem_count']} problems)"))
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(x).rjust(n) for x, n in zip(head, w))]
    lines += ["  ".join(str(x).rjust(n) for x, n in zip(row, w)) for row in rows]
    if res.get("scaling"):
        lines.append("throughput relative to K=%d: %s" % (res["runs"][0]["receivers"],
                                                          ", ".join(f"{k} {v}" for k, v in res["scaling"].items())))
    return "\n".join(lines)


def markdown(res: dict) -> str:
    """The runs as a Markdown table (docs/scaling.md is written from this)."""
    head = ("K", "wall s", "items/s", "MB/s", "steady items/s", "steady MB/s", "receiver CPU s", "cores busy",
            "MB per receiver CPU s", "items per receiver CPU s", "broker CPU s", "device MB/s", "item latency s",
            "retransmits", "check")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["runs"] + ([res["probe"]] if res.get("probe") else []):
        label = "probe" if r is res.get("probe") else str(r["receivers"])
        if r.get("repeat") and any(x.get("repeat", 1) > 1 for x in res["runs"]):
            label += f" (run {r['repeat']})"
        cells = (label, r["wall_s"], r["items_s"], r["mb_s"], r["steady_items_s"], r["steady_mb_s"],
                 r["receiver_cpu_s_total"], r["receiver_cores_busy"], r["mb_per_receiver_cpu_s"],
                 r["items_per_receiver_cpu_s"], r["broker_cpu_s"], (r["device_mb_s"] or {}).get("median"),
                 r["device_item_latency_s"], r["retransmits"],
                 f"{r['stored']}/{r['items']} once, verified" if r["ok"] else "FAILED")
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    la = [r["load_average"][0] for r in res["runs"] if r.get("load_average")]
    lines.append("")
    lines.append(f"{res['devices']} devices x {res['items_per_device']} items x {res['item_kib']} KiB, "
                 f"{res['device_mode']} devices in {res['workers']} processes, {res.get('layout', 'shared')} root(s), "
                 f"{res['nproc']} CPUs"
                 + (f", load average {min(la)}-{max(la)}" if la else "")
                 + (", throughput relative to K=%d: %s" % (res["runs"][0]["receivers"], ", ".join(
                     f"{k} {v}" for k, v in res["scaling"].items())) if res.get("scaling") else ""))
    for k, v in (res.get("summary") or {}).items():
        if v["runs"] > 1:
            lines.append(f"K={k}: median {v.get('rate', 'steady')} {v['mb_s']} MB/s (range {v['mb_s_range'][0]}-{v['mb_s_range'][1]}), "
                         f"{v['items_s']} items/s, {v['mb_per_receiver_cpu_s']} MB per receiver CPU s, "
                         f"{v['runs']} runs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_publish"] and len(argv) == 3:
        return run_publisher(Path(argv[1]), Path(argv[2]))
    ap = argparse.ArgumentParser(prog="python -m tools.scale_sim", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100, help=f"simulated devices (1..{MAX_DEVICES}, default 100)")
    ap.add_argument("--items", type=int, default=3, help="sealed items per device (default 3)")
    ap.add_argument("--item-kib", type=int, default=1024, help="size of each item in KiB (default 1024)")
    ap.add_argument("--receivers", default="1,2,3", help="receiver counts K to run, comma-separated (default 1,2,3)")
    ap.add_argument("--workers", type=int,
                    help=f"publisher processes the devices are spread over (default: one per {DEVICES_PER_WORKER} devices, at least 2)")
    ap.add_argument("--probe-mib", type=int, default=32, help="single-device probe item in MiB (0: no probe; default 32)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run at most (default 600)")
    ap.add_argument("--receive-maximum", type=int, help="Receive Maximum each receiver announces (default: protocol default)")
    ap.add_argument("--full-uplink", action="store_true",
                    help="run each device as the complete uplink component (6 threads, status file, checkpoints) "
                         "instead of the lightweight transfer-only device")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every K this many times, interleaved; the summary takes the median (default 1)")
    ap.add_argument("--shards", action="store_true",
                    help="each receiver its own archive root and topic prefix, the devices split among them "
                         "(instead of K receivers sharing one root)")
    ap.add_argument("--ramp", type=float, help="seconds over which the devices come up (default devices/100, at most 10)")
    ap.add_argument("--device-kbps", type=int, default=0,
                    help="per-device upload cap in kB/s (uplink.bandwidth_limit; default 0 = none), e.g. a WAN link")
    ap.add_argument("--db", help="the archive's index on PostgreSQL: postgresql://USER@HOST:PORT/NAME (a fresh "
                                 "database NAME_RUN per run, dropped after it; default: SQLite ROOT/archive.db)")
    ap.add_argument("--no-verify", action="store_true", help="skip verifying every stored item after each run")
    ap.add_argument("--dir", help="work directory (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, archive) for inspection")
    ap.add_argument("--json", action="store_true", help="print one JSON object (the table goes to stderr)")
    ap.add_argument("--markdown", action="store_true", help="print the results as a Markdown table")
    a = ap.parse_args(argv)
    out = sys.stderr if a.json else sys.stdout
    try:
        res = simulate(a.devices, a.items, a.item_kib, parse_receivers(a.receivers), a.workers, a.probe_mib,
                       a.timeout, a.dir, a.keep, not a.no_verify, a.receive_maximum,
                       progress=lambda m: print(m, file=out, flush=True), full_uplink=a.full_uplink, shards=a.shards,
                       repeat=a.repeat, db=a.db,
                       ramp_s=a.ramp, device_kbps=a.device_kbps)
    except SimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(res) if a.markdown else table(res), file=out)
    if a.json:
        print(json.dumps(res, ensure_ascii=False))
    for r in res["runs"] + ([res["probe"]] if res["probe"] else []):
        for p in r["check"]["problems"][:5]:
            print(f"K={r['receivers']}: {p}", file=sys.stderr)
    return 0 if res["ok"] else 1
