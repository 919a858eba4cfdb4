"""One run of the scale simulation: the fleet restored, the broker as shipped (one per root and
prefix), K archive receivers each logged in as itself and the publisher processes (each device
logged in as itself) started, the archive's index watched until every item is stored, the figures
measured (rates, steady window, CPU seconds per process) and the archive checked (the receipts the
devices hold included)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .check import check_archive, check_receipts, open_index
from .fleet import PREFIX, receiver_id, restore
from .procs import SimError, cpu_seconds, start_broker, stop_process

EDGE = str(Path(sys.executable).with_name("edge-agent"))
ROOT_DIR = Path(__file__).resolve().parents[2]  # the checkout: publishers run `python -m tools.scale_sim` there
SHARE = "archive"


def run_once(base: Path, fleet: dict, receivers: int, workers: int, timeout: float, verify: bool = True,
             receive_maximum: int | None = None, label: str | None = None, dev_opts: dict | None = None,
             shards: bool = False, db: str | None = None, broker=None) -> dict:
    """Restore the fleet, start the broker as shipped and ``receivers`` archive processes, let
    every device upload, measure, check. Returns the figures of the run.

    Broker: `archive broker-config` from the root's enrolment (identities + ACL, anonymous off);
    each device logs in as itself, receiver k as ``rx-k`` (enrolled with `archive receiver add`,
    signing with its own key), the readiness watch as ``monitor``.

    ``db``: None, the archive's index is ROOT/archive.db (SQLite); a postgresql:// URL, each root
    gets a fresh database named after it and the run (``NAME_LABEL[_sK]``, the enrolment copied
    from the template, dropped after the run) that its receivers share (``archive serve --db``).

    ``shards``: instead of K receivers on one root behind one shared subscription, each receiver
    gets its own root and topic prefix (``edge-s1`` …) and the devices are split among them (the
    sharded layout of docs/scaling.md), each shard with its own broker (identities and ACL are
    per prefix: one broker per region in docs/scaling.md).

    ``broker``: a running broker as shipped for base/archive, started by the caller after its own
    :func:`restore` (tools/bench/fleet_items.py: the monitor and a 1,000-device fleet on it at the
    same time); not restored, not stopped here, and the receivers are awaited as the ``archive``
    identity (the monitor's logins are the monitor's: one login, one session)."""
    roots = [base / f"archive-s{k + 1}" for k in range(receivers)] if shards else [base / "archive"]
    prefixes = [f"{PREFIX}-s{k + 1}" for k in range(receivers)] if shards else [PREFIX]
    given = broker  # (the loops below name each broker ``broker``)
    if given is not None and shards:
        raise SimError("a caller's broker serves one root: no shards")
    if given is None:
        restore(base, roots)
    urls = [_fresh_index(db, base, root, f"{label or receivers}" + (f"_s{k + 1}" if shards else ""))
            for k, root in enumerate(roots)] if db else [None] * len(roots)
    idx = [open_index(root, u) for root, u in zip(roots, urls)]
    rdir = base / f"run-{label or receivers}"
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir()
    brokers = []
    rx: list[subprocess.Popen] = []
    pubs: list[subprocess.Popen] = []
    logs = []
    total_items = sum(len(d["items"]) for d in fleet.values())
    total_bytes = sum(d["bytes"] for d in fleet.values())
    try:
        for r, (root, prefix) in enumerate(zip(roots, prefixes)):
            brokers.append(given or start_broker(rdir / (f"broker-s{r + 1}" if shards else "broker"), root, prefix))
        for k in range(receivers):
            rid, broker = receiver_id(k + 1), brokers[k % len(brokers)]
            lp = rdir / f"{rid}.log"
            fh = open(lp, "wb")
            logs.append(fh)
            args = [EDGE, "--config", str(broker.credential_file(rid)), "archive", "serve",
                    "--root", str(roots[k % len(roots)]), "--broker", f"127.0.0.1:{broker.port}", "--share", SHARE,
                    "--client-id", rid, "--prefix", prefixes[k % len(prefixes)], "--log-level", "warning"]
            if urls[k % len(roots)]:
                args += ["--db", urls[k % len(roots)]]
            if receive_maximum:
                args += ["--receive-maximum", str(receive_maximum)]
            rx.append(subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True))
        for b, broker in enumerate(brokers):
            mine = [k for k in range(receivers) if k % len(brokers) == b]
            _wait_receivers(broker, [receiver_id(k + 1) for k in mine], [rx[k] for k in mine], rdir,
                            watcher="archive" if given is not None else "monitor")
        cpu0 = {"rx": [cpu_seconds(p.pid) for p in rx], "broker": sum(cpu_seconds(b.pid) for b in brokers)}
        # devices, spread over the publisher processes, each logged in as itself
        devs = []
        for i, (d, v) in enumerate(fleet.items()):
            broker = brokers[i % len(brokers)]
            devs.append(dict(device=d, unit=v["unit"], data_dir=v["data_dir"], items=len(v["items"]), bytes=v["bytes"],
                             prefix=prefixes[i % len(prefixes)], port=broker.port, **_credentials(broker, d)))
        nw = max(1, min(workers, len(devs)))
        reports = []
        t0 = time.monotonic()
        for w in range(nw):
            sp, rp = rdir / f"pub-{w}.json", rdir / f"pub-{w}.report.json"
            sp.write_text(json.dumps({"devices": devs[w::nw], **(dev_opts or {})}))
            sp.chmod(0o600)  # it holds the devices' broker passwords
            fh = open(rdir / f"pub-{w}.log", "wb")
            logs.append(fh)
            pubs.append(subprocess.Popen([sys.executable, "-m", "tools.scale_sim", "_publish", str(sp), str(rp)],
                                         stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT_DIR, start_new_session=True))
            reports.append(rp)
        timeline: list[tuple[float, int, int]] = []
        deadline = t0 + timeout
        timed_out = False
        while True:
            n = b = 0
            for ix in idx:
                nr, br = _stored(ix)
                n, b = n + nr, b + br
            now = time.monotonic()
            timeline.append((now - t0, n, b))
            if n >= total_items:
                break
            if now > deadline:
                timed_out = True
                break
            if any(p.poll() not in (None, 0) for p in pubs):
                break
            time.sleep(0.1)
        wall = time.monotonic() - t0
        cpu1 = {"rx": [cpu_seconds(p.pid) for p in rx], "broker": sum(cpu_seconds(b.pid) for b in brokers)}
        # publishers leave once every device has its stored answers (a moment after the archive)
        for p in pubs:
            try:
                p.wait(max(5.0, deadline - time.monotonic()) if not timed_out else 1)
            except subprocess.TimeoutExpired:
                pass
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in pubs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        pub_reports = []
        for rp in reports:
            try:
                pub_reports.append(json.loads(rp.read_text()))
            except (OSError, ValueError):
                pub_reports.append({"devices": [], "cpu_s": None, "error": f"no report from {rp.name}"})
        per_rx: dict[str, int] = {}
        for ix in idx:
            per_rx.update(_per_receiver(ix))
    finally:
        for ix in idx:
            ix.close()
        for p in pubs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for p in rx:
            stop_process(p)
        for b in brokers:
            if b is not given:
                b.stop()
        for fh in logs:
            fh.close()
    if shards:
        parts = [check_archive(root, {d: v for i, (d, v) in enumerate(fleet.items()) if i % len(roots) == k},
                               verify=verify, db=urls[k]) for k, root in enumerate(roots)]
        problems = [p for c in parts for p in c["problems"]]
        check = {"ok": all(c["ok"] for c in parts), "problems": problems[:50],
                 "problem_count": sum(c["problem_count"] for c in parts), "stored": sum(c["stored"] for c in parts),
                 "verified": sum(c["verified"] for c in parts)}
    else:
        check = check_archive(roots[0], fleet, verify=verify, db=urls[0])
    receipts = check_receipts(roots, fleet, urls, shards)
    if not receipts["ok"]:
        check = dict(check, ok=False, problems=(check["problems"] + receipts["problems"])[:50],
                     problem_count=check["problem_count"] + len(receipts["problems"]))
    check["receipts"] = receipts["checked"]
    check["receipt_keys"] = receipts["signed_by"]
    pg_stats = None
    if db:
        from agent.common.pg import drop_database

        pg_stats = _pg_stats(urls, total_items, total_bytes)
        for u in urls:
            drop_database(u)
    fig = _figures(receivers, fleet, total_items, total_bytes, wall, timeline, cpu0, cpu1, pub_reports, per_rx,
                   check, timed_out, rdir)
    fig["pg"] = pg_stats
    fig["upload_monotonic"] = [t0, t0 + wall]  # when the publishers started and the last item was stored
    return fig


def _pg_stats(urls: list[str], items: int, nbytes: int) -> dict | None:
    """What the run cost PostgreSQL (its own statistics of the run's databases): transactions,
    rows written and database size, per item and per GB archived (sizing figures)."""
    from agent.common.errors import EdgeError
    from agent.common.pg import read_once

    time.sleep(1.0)  # a backend's statistics reach the shared counters within a second of its last commit
    tot = {"xact_commit": 0, "rows_written": 0, "db_bytes": 0}
    try:
        for u in urls:
            r = read_once(u, "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted AS w, "
                             "pg_database_size(current_database()) AS size FROM pg_stat_database "
                             "WHERE datname = current_database()")[0]
            tot["xact_commit"] += int(r["xact_commit"])
            tot["rows_written"] += int(r["w"])
            tot["db_bytes"] += int(r["size"])
    except (EdgeError, IndexError):
        return None
    gb = nbytes / 1e9
    return {**tot, "commits_per_item": round(tot["xact_commit"] / items, 1) if items else None,
            "rows_per_item": round(tot["rows_written"] / items, 1) if items else None,
            "rows_per_gb": round(tot["rows_written"] / gb) if gb else None}


def _credentials(broker, name: str) -> dict:
    """username/password of identity ``name`` from the [mqtt] fragment broker-config wrote for it
    (read as TOML: a thousand devices, no full configuration each)."""
    import tomllib

    m = tomllib.loads(broker.credential_file(name).read_text())["mqtt"]
    return {"username": m["username"], "password": m["password"]}


def _wait_receivers(broker, rids: list[str], procs: list[subprocess.Popen], rdir: Path, timeout: float = 30,
                    watcher: str = "monitor") -> None:
    """Until every receiver's retained status on ``broker`` says online (it has subscribed and is
    serving); watched under the broker's read-only ``monitor`` identity (or ``watcher``)."""
    from agent.wire.topics import Topics

    online: set[str] = set()
    c = broker.paho(watcher, f"sim-watch-{os.getpid()}")
    topic = Topics(broker.prefix).all_archive_receivers()

    def on_message(_c, _u, msg):
        try:
            if json.loads(msg.payload).get("state") == "online":
                online.add(msg.topic.rsplit("/", 1)[1])
        except ValueError:
            pass

    c.on_message = on_message
    c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not set(rids) <= online:
            dead = [r for r, p in zip(rids, procs) if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tail = "".join((rdir / f"{r}.log").read_text(errors="replace")[-400:] for r in (dead or rids))
                raise SimError(f"archive receiver(s) {', '.join(dead or sorted(set(rids) - online))} "
                               f"did not come online: {tail.strip()} (broker log: {broker.log_tail(5)})")
            time.sleep(0.05)
        time.sleep(0.3)  # the shared subscription is made before the status is published; margin
    finally:
        c.disconnect()  # before loop_stop: the loop thread leaves at once instead of at its next select timeout
        c.loop_stop()


def _fresh_index(db: str, base: Path, root: Path, label: str) -> str:
    """A new PostgreSQL database for ``root`` in this run, migrated, with the template's enrolment."""
    from agent.archive.registry import open_db
    from agent.common.pg import create_database, drop_database

    head, _, name = db.rpartition("/")
    url = f"{head}/{name}_{label}".replace("-", "_")
    drop_database(url)
    create_database(url)
    tmpl = open_db(None, base / "archive-template", migrate=False)
    try:
        rows = tmpl.query("SELECT id, unit, key_id, pubkey, enrolled_at, enrolled_by FROM devices")
    finally:
        tmpl.close()
    pg = open_db(url, root)  # migrates
    try:
        with pg.atomic() as tx:
            tx.executemany("INSERT INTO devices(id, unit, key_id, pubkey, enrolled_at, enrolled_by) "
                           "VALUES (:id, :unit, :key_id, :pubkey, :enrolled_at, :enrolled_by)", rows)
    finally:
        pg.close()
    return url


def _stored(idx) -> tuple[int, int]:
    """(items, bytes) in the index (either backend, through its interface)."""
    r = idx.one("SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM items")
    return int(r["n"]), int(r["b"])


def _per_receiver(idx) -> dict[str, int]:
    return {r["receiver"]: r["n"] for r in idx.query("SELECT receiver, count(*) AS n FROM items GROUP BY receiver")}


def _steady(timeline: list[tuple[float, int, int]], total: int) -> tuple[float | None, float | None]:
    """items/s and bytes/s between 10 % and 90 % of the items stored (start-up and tail excluded)."""
    lo, hi = total * 0.1, total * 0.9
    a = next((t for t in timeline if t[1] >= lo), None)
    b = next((t for t in timeline if t[1] >= hi), None)
    if not a or not b or b[0] - a[0] < 0.3 or b[1] <= a[1]:
        return None, None
    dt = b[0] - a[0]
    return (b[1] - a[1]) / dt, (b[2] - a[2]) / dt


def _figures(k, fleet, total_items, total_bytes, wall, timeline, cpu0, cpu1, pubs, per_rx, check, timed_out, rdir) -> dict:
    stored, stored_bytes = timeline[-1][1], timeline[-1][2]
    rx_cpu = [round(b - a, 3) for a, b in zip(cpu0["rx"], cpu1["rx"])]
    rx_cpu_total = sum(rx_cpu)
    s_items, s_bytes = _steady(timeline, total_items)
    devs = [d for r in pubs for d in r.get("devices", [])]
    rates = sorted(d["mb_s"] for d in devs if d.get("mb_s"))
    mb = stored_bytes / 1e6
    return {
        "receivers": k, "devices": len(fleet), "items": total_items, "mb": round(total_bytes / 1e6, 1),
        "stored": stored, "wall_s": round(wall, 2), "timed_out": timed_out,
        "items_s": round(stored / wall, 1) if wall else None, "mb_s": round(mb / wall, 1) if wall else None,
        "steady_items_s": round(s_items, 1) if s_items else None,
        "steady_mb_s": round(s_bytes / 1e6, 1) if s_bytes else None,
        "mb_s_per_receiver": round(mb / wall / k, 1) if wall else None,
        "items_s_per_receiver": round(stored / wall / k, 1) if wall else None,
        "receiver_cpu_s": rx_cpu, "receiver_cpu_s_total": round(rx_cpu_total, 2),
        "receiver_cores_busy": round(rx_cpu_total / wall, 2) if wall else None,
        "mb_per_receiver_cpu_s": round(mb / rx_cpu_total, 1) if rx_cpu_total else None,
        "items_per_receiver_cpu_s": round(stored / rx_cpu_total, 1) if rx_cpu_total else None,
        "broker_cpu_s": round(cpu1["broker"] - cpu0["broker"], 2),
        "mb_per_broker_cpu_s": round(mb / (cpu1["broker"] - cpu0["broker"]), 1) if cpu1["broker"] > cpu0["broker"] else None,
        "publisher_cpu_s": round(sum(r.get("cpu_s") or 0 for r in pubs), 2),
        "items_per_receiver": per_rx,
        "device_mb_s": {"min": rates[0], "median": rates[len(rates) // 2], "max": rates[-1]} if rates else None,
        "device_item_latency_s": median([d["item_latency_s"] for d in devs if d.get("item_latency_s")]),
        "retransmits": sum(d.get("retransmits") or 0 for d in devs),
        "reconnects": sum(d.get("reconnects") or 0 for d in devs),
        "devices_done": sum(1 for d in devs if d.get("archived", 0) >= d.get("wanted", 1)),
        "check": check, "ok": bool(check["ok"] and not timed_out and stored == total_items),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "at_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "logs": str(rdir),
    }


def median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    n = len(xs) // 2
    return xs[n] if len(xs) % 2 else round((xs[n - 1] + xs[n]) / 2, 3)
