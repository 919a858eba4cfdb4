"""Docking-station benchmark: N simulated recorders (separate processes, real ptys) docked at the
same instant, one big file each, copied + hashed + fsynced + sealed by the station.

Reports the station's aggregate MB/s divided by `cp` + `sync` of the same files in the same run
(target >= 0.9), the station's CPU seconds per bay, its peak RSS, and the time from docking to
all items sealed.

    python -m tools.bench.dock                     # 16 recorders x 1 GiB
    python -m tools.bench.dock --bays 16 --mib 256 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.config import Config
from agent.evidence import keys
from agent.runtime import Agent
from agent.store.store import Store
from tools.media import make_big_file


def _drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _sha_rate(mib: int = 256) -> float:
    import hashlib

    buf = os.urandom(1 << 20)
    h = hashlib.sha256()
    t = time.perf_counter()
    for _ in range(mib):
        h.update(buf)
    return mib * (1 << 20) / 1e6 / (time.perf_counter() - t)


def _cp_sync(files: list[Path], dst: Path) -> float:
    dst.mkdir()
    t0 = time.perf_counter()
    subprocess.run(["cp", *map(str, files), str(dst)], check=True)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - t0


def run(bays: int = 16, mib: int = 1024, workers: int = 8, workdir: str | None = None, drop: bool = True,
        keep: bool = False, verify: bool = False) -> dict:
    base = Path(tempfile.mkdtemp(prefix="edge-bench-dock-", dir=workdir))
    procs: list[subprocess.Popen] = []
    try:
        staging, ports = base / "staging", base / "ports"
        staging.mkdir()
        ports.mkdir()
        files = []
        for i in range(bays):
            m = base / f"media{i}"
            m.mkdir()
            files.append(make_big_file(m / f"{7100000 + i}_20261127080000_0001.MP4", mib << 20, seed=i))
        total = sum(f.stat().st_size for f in files)
        os.sync()
        load0 = round(os.getloadavg()[0], 2)  # other work on the machine skews both runs
        dropped = drop and _drop_caches()
        # recorders: one simulator process each, its port link made in staging
        for i in range(bays):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tools.recorder_sim", "--link", str(staging / f"ttyREC{i}"),
                 "--media", str(base / f"media{i}"), "--mount", str(base / f"mnt{i}"), "--serial", f"{7100000 + i}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[2]))
        deadline = time.monotonic() + 60
        while len(list(staging.iterdir())) < bays:
            if time.monotonic() > deadline:
                raise SystemExit("simulators did not start")
            time.sleep(0.05)
        cfg = Config.defaults(**{
            "storage.data_dir": str(base / "data"), "storage.reserve_mb": 64, "device.id": "dock-bench",
            "dock.bays": [str(ports / "ttyREC*")], "dock.poll_ms": 200, "dock.copy_workers": workers,
            "dock.erase_policy": "never", "dock.probe": False, "dock.verify_policy": "reread" if verify else "none"})
        store = Store(cfg)
        keys.generate(store.key_path, store.pub_path)
        from agent.dock import make_component

        agent = Agent(cfg, store)
        station = agent.add(make_component(agent))
        agent.start()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for link in staging.iterdir():  # every recorder docks at the same instant
            os.rename(link, ports / link.name)
        finals: dict[str, dict] = {}
        deadline = time.monotonic() + 3600
        while len(finals) < bays and time.monotonic() < deadline:
            for name, bay in list(station.bays.items()):  # cheap look: the copy threads need the GIL
                if name not in finals and bay.st.state in ("done", "error") and not bay.busy:
                    finals[name] = bay.snapshot()
            time.sleep(0.1)
        elapsed = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        pool_peak = station.pool.status()["peak"]
        agent.stop()
        # baseline afterwards, same files, same cache state (deleting big files first would make
        # the next writer pay for the discards, so nothing is deleted before both runs are done)
        os.sync()
        if drop:
            _drop_caches()
        cp_s = _cp_sync(files, base / "cp")
        t = time.perf_counter()
        subprocess.run(["sha256sum", *map(str, sorted((base / "cp").iterdir()))], check=True,
                       stdout=subprocess.DEVNULL)
        cp_sha_s = cp_s + time.perf_counter() - t
        sha_mb_s = _sha_rate()
        errors = {n: b.get("reason") for n, b in finals.items() if b["state"] != "done"}
        sealed = len(store.items(state="sealed"))
        res = {
            "bays": bays, "mib_each": mib, "total_mb": round(total / 1e6, 1), "copy_workers": workers,
            "verify": "reread" if verify else "none", "page_cache_dropped": dropped,
            "cp_sync_s": round(cp_s, 2), "cp_sync_mb_s": round(total / 1e6 / cp_s, 1),
            "cp_sync_sha256sum_s": round(cp_sha_s, 2), "ratio_vs_cp_sync_sha256sum": round(cp_sha_s / elapsed, 3),
            "sha256_mb_s_one_core": round(sha_mb_s, 1),
            # the evidence format hashes every byte twice (whole file + per block): CPU ceiling
            "hash_ceiling_mb_s": round(min(os.cpu_count() or 1, workers) * sha_mb_s / 2, 1),
            "station_s": round(elapsed, 2), "station_mb_s": round(total / 1e6 / elapsed, 1),
            "ratio_vs_cp_sync": round(cp_s / elapsed, 3),
            "dock_to_all_sealed_s": round(elapsed, 2),
            "cpu_s_total": round(cpu, 2), "cpu_s_per_bay": round(cpu / bays, 3),
            "cpu_pct_per_bay": round(100 * cpu / elapsed / bays, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "pool_peak": pool_peak, "items_sealed": sealed, "bays_done": bays - len(errors), "errors": errors,
            "nproc": os.cpu_count(), "loadavg_1m_before": load0, "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "workdir": str(base) if keep else None,
        }
        return res
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.dock", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bays", type=int, default=16, help="simulated recorders docked at once (default 16)")
    ap.add_argument("--mib", type=int, default=1024, help="file size per recorder in MiB (default 1024)")
    ap.add_argument("--workers", type=int, default=8, help="dock.copy_workers (default 8, the config default)")
    ap.add_argument("--verify", action="store_true", help="dock.verify_policy = reread (second read of each file)")
    ap.add_argument("--dir", help="work directory (default: system temp dir; needs 3 x bays x mib free)")
    ap.add_argument("--no-drop-caches", action="store_true", help="do not drop the page cache between runs")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.bays < 1 or a.mib < 1 or a.workers < 1:
        ap.error("--bays, --mib and --workers must be positive")
    need = 3 * a.bays * (a.mib << 20)
    free = shutil.disk_usage(a.dir or tempfile.gettempdir()).free
    if free < need:
        ap.error(f"needs {need >> 30} GiB free in {a.dir or tempfile.gettempdir()}, has {free >> 30} GiB; use --mib or --dir")
    res = run(a.bays, a.mib, a.workers, a.dir, not a.no_drop_caches, a.keep, a.verify)
    if a.json:
        print(json.dumps(res, indent=2, ensure_ascii=False))
    else:
        for k, v in res.items():
            print(f"{k:24} {v}")
    return 0 if res["bays_done"] == a.bays else 1


if __name__ == "__main__":
    raise SystemExit(main())
