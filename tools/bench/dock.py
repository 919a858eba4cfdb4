"""Docking-station benchmark: N simulated recorders (separate processes, real ptys) docked at the
same instant, one big file each, copied + hashed + fsynced + sealed by the station, and (unless
``--no-archive``) archived at a central archive over MQTT in the same run.

Reports the station's aggregate MB/s divided by `cp` + `sync` of the same files in the same run
(target >= 0.9; the ratio is about the station's copy, up to sealed), the station's CPU seconds per
bay, its peak RSS, the time from docking to all items sealed (``dock_to_all_sealed_s``) and, with
the archive, the time from docking to all items archived (``dock_to_all_archived_s``, issue 4).

With the archive (the default) the run starts a private Mosquitto on a free port, enrolls the
station's device key at a fresh archive root (``edge-agent archive enroll``), starts ``edge-agent
archive serve`` as its own process, and runs the uplink in the station's Agent next to the dock,
as ``edge-agent run`` does. The sealed figure is then measured with the uplink running (it drains
sealed items while the other bays still copy: that is how a station runs), so the station's CPU
figures include the uplink's threads. The archive and the broker run on this host too (at a real
station they are elsewhere): their CPU seconds while the bays copy are reported as
``archive_host_cpu_s_while_copying``. ``archived_mb_s`` is all bytes / ``dock_to_all_archived_s``;
the archive is then verified (signatures, hashes, chain) and ``archived_verified_items`` counted.

    python -m tools.bench.dock                     # 16 recorders x 1 GiB, archived
    python -m tools.bench.dock --bays 16 --mib 256 --json
    python -m tools.bench.dock --bays 2 --mib 32 --no-archive   # station only, no MQTT
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
from agent.evidence.verify import verify_chain
from agent.runtime import Agent
from agent.store.store import Store
from tools.bench.shipped_broker import free_port
from tools.bench.uplink import EDGE, cpu_s, start_broker
from tools.media import make_big_file

DEVICE_ID = "dock-bench"
UNIT_CODE = "330100000000"


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


def _ledger_states(store: Store) -> dict[str, int]:
    return store.counts_by_state()


def _stop(p: subprocess.Popen | None, timeout: float = 30) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


def run(bays: int = 16, mib: int = 1024, workers: int = 8, workdir: str | None = None, drop: bool = True,
        keep: bool = False, verify: bool = False, archive: bool = True) -> dict:
    base = Path(tempfile.mkdtemp(prefix="edge-bench-dock-", dir=workdir))
    procs: list[subprocess.Popen] = []
    broker = ar = None
    ar_log = None
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
        port = free_port()
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
        overrides = {
            "storage.data_dir": str(base / "data"), "storage.reserve_mb": 64, "device.id": DEVICE_ID,
            "device.unit_code": UNIT_CODE,
            "dock.bays": [str(ports / "ttyREC*")], "dock.poll_ms": 200, "dock.copy_workers": workers,
            "dock.erase_policy": "never", "dock.probe": False, "dock.verify_policy": "reread" if verify else "none"}
        if archive:
            overrides.update({"mqtt.host": "127.0.0.1", "mqtt.port": port})
        cfg = Config.defaults(**overrides)
        store = Store(cfg)
        keys.generate(store.key_path, store.pub_path)
        from agent.dock import make_component

        root = base / "archive"
        if archive:
            subprocess.run([EDGE, "archive", "enroll", DEVICE_ID, str(store.pub_path), "--unit", UNIT_CODE,
                            "--root", str(root), "--pin-to", str(store.data_dir)], check=True, capture_output=True)
            # the broker as shipped: identities and ACL from the enrolment, anonymous off
            broker = start_broker(base, root, port)
            cred = broker.credentials(DEVICE_ID)
            cfg = Config.defaults(**overrides, **{"mqtt.username": cred["username"], "mqtt.password": cred["password"]})
            ar_log = open(base / "archive.log", "wb")
            ar = subprocess.Popen([EDGE, "--config", str(broker.credential_file("archive")), "archive", "serve",
                                   "--root", str(root), "--broker", f"127.0.0.1:{port}",
                                   "--client-id", "bench-archive", "--log-level", "warning"],
                                  stdout=ar_log, stderr=ar_log, start_new_session=True)
        agent = Agent(cfg, store)
        up = None
        if archive:  # as `edge-agent run` builds it: the uplink first, then the producer
            from agent.uplink import make_component as make_uplink

            up = agent.add(make_uplink(agent))
        from agent.health import make_component as make_health

        health = make_health(agent)  # the dock's ports (not started: no health rounds in the bench)
        station = agent.add(make_component(agent, alarms=health, report=health))
        agent.start()
        if up is not None:  # dock only once the archive listens: a lost manifest costs an ack timeout
            deadline = time.monotonic() + 60
            while not (up.connected and up.stats()["archive_reachable"]):  # a signed, fresh receiver status
                if time.monotonic() > deadline or ar.poll() is not None:
                    raise SystemExit(f"archive serve not reachable (rc {ar.poll()}); see {base / 'archive.log'}")
                time.sleep(0.05)
        ext0 = (cpu_s(ar.pid), cpu_s(broker.pid)) if archive else None
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
        arch: dict = {}
        if archive:
            ext1 = (cpu_s(ar.pid), cpu_s(broker.pid))
            at_sealed = _ledger_states(store).get("archived", 0)
            # every item in the ledger archived (or, failing that, none left to send)
            archived_s = None
            deadline = time.monotonic() + 3600
            while True:
                states = _ledger_states(store)
                n = sum(states.values())
                if n and states.get("archived", 0) == n:
                    archived_s = time.perf_counter() - t0
                    break
                if not (states.get("sealed") or states.get("uploading")) or time.monotonic() > deadline \
                        or ar.poll() is not None:
                    break
                time.sleep(0.05)
            ru2 = resource.getrusage(resource.RUSAGE_SELF)
            ext2 = (cpu_s(ar.pid), cpu_s(broker.pid))
            ustats = up.stats()
            arch = {
                "dock_to_all_archived_s": None if archived_s is None else round(archived_s, 2),
                "archived_mb_s": None if archived_s is None else round(total / 1e6 / archived_s, 1),
                "items_archived": states.get("archived", 0), "ledger_states": states,
                "archived_when_all_sealed": at_sealed,
                "archive_host_cpu_s_while_copying": round(sum(ext1) - sum(ext0), 2),
                "cpu_s_dock_to_archived": {
                    "station": round((ru2.ru_utime - ru0.ru_utime) + (ru2.ru_stime - ru0.ru_stime), 2),
                    "archive": round(ext2[0] - ext0[0], 2), "broker": round(ext2[1] - ext0[1], 2)},
                "uplink_retransmits": ustats["retransmits"], "uplink_errors": ustats["errors"],
                "uplink_last_error": ustats["last_error"],
            }
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
        # items that were sealed (with the archive most have moved on to "archived" since)
        sealed = sum(n for st, n in _ledger_states(store).items()
                     if st in ("sealed", "uploading", "archived", "rejected"))
        if archive:
            _stop(ar)
            try:
                rep = verify_chain(root / UNIT_CODE, keys.KeyRing.from_paths(keys_dir=root / "keys"))
                arch["archived_verified_items"] = rep.devices.get(DEVICE_ID, {}).get("items", 0)
            except Exception as exc:  # VerifyError, or nothing archived at all
                arch["archived_verified_items"] = 0
                arch["archive_verify_error"] = str(exc)
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
            "archive": archive, "sealed_with_uplink_running": archive, **arch,
            "cpu_s_total": round(cpu, 2), "cpu_s_per_bay": round(cpu / bays, 3),
            "cpu_pct_per_bay": round(100 * cpu / elapsed / bays, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "pool_peak": pool_peak, "items_sealed": sealed, "bays_done": bays - len(errors), "errors": errors,
            "nproc": os.cpu_count(), "loadavg_1m_before": load0, "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "workdir": str(base) if keep else None,
        }
        return res
    finally:
        _stop(ar)
        if broker is not None:
            broker.stop()
        if ar_log is not None:
            ar_log.close()
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
    ap.add_argument("--archive", action=argparse.BooleanOptionalAction, default=True,
                    help="also archive every item over MQTT in the same run (private Mosquitto + `edge-agent "
                         "archive serve`, the uplink in the station's Agent) and report the time from docking "
                         "to all items archived; --no-archive: the station alone, no MQTT (default: on)")
    ap.add_argument("--dir", help="work directory (default: system temp dir; needs 3 x bays x mib free, "
                                  "4 x with the archive)")
    ap.add_argument("--no-drop-caches", action="store_true", help="do not drop the page cache between runs")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.bays < 1 or a.mib < 1 or a.workers < 1:
        ap.error("--bays, --mib and --workers must be positive")
    need = (4 if a.archive else 3) * a.bays * (a.mib << 20)
    free = shutil.disk_usage(a.dir or tempfile.gettempdir()).free
    if free < need:
        ap.error(f"needs {need >> 30} GiB free in {a.dir or tempfile.gettempdir()}, has {free >> 30} GiB; use --mib or --dir")
    res = run(a.bays, a.mib, a.workers, a.dir, not a.no_drop_caches, a.keep, a.verify, a.archive)
    if a.json:
        print(json.dumps(res, indent=2, ensure_ascii=False))
    else:
        width = max(map(len, res))
        for k, v in res.items():
            print(f"{k:{width}} {v}")
    ok = res["bays_done"] == a.bays
    if a.archive:
        ok = ok and res["dock_to_all_archived_s"] is not None \
            and res["archived_verified_items"] == res["items_archived"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
