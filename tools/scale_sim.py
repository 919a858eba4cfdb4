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
- the broker: one ``mosquitto`` started for each run on a free port of 127.0.0.1;
- receivers: K real ``edge-agent archive serve --share GROUP`` processes on the same root.

Each run starts from the same sealed fleet (restored from a pristine copy) and an archive root
where every device is already enrolled. Measured per run: wall time, items/s and MB/s (overall and
in the steady middle 10-90 % of the run), per-device upload rate, and the CPU seconds of the
receivers, the broker and the publishers (``/proc/PID/stat``), from which MB/s per receiver core.
After every run the archive is checked: every item stored exactly once (database and disk), every
item verifies, every unit's chain verifies; a run that fails the check is reported as failed.

``--probe-mib M`` adds one run of a single device with one item of M MiB to one receiver: the upload
rate one device reaches when nothing else competes (the per-device ceiling of this code path).

Bounds: at most 1000 devices, 8 receivers, 100 items per device, 64 MiB per item, 3600 s per run;
the data must fit twice in the free space of the work directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

EDGE = str(Path(sys.executable).with_name("edge-agent"))
ROOT_DIR = Path(__file__).resolve().parents[1]

MAX_DEVICES = 1000
MAX_RECEIVERS = 8
MAX_ITEMS = 100
MAX_ITEM_KIB = 64 * 1024
MAX_TIMEOUT = 3600
DEVICES_PER_WORKER = 50
SHARE = "archive"
PREFIX = "edge"

META = {
    "case_number": "浙司罚〔2026〕第0777号",
    "collector": {"name": "李四", "id": "33010002"},
    "place": "杭州市上城区解放路",
    "proof": "现场检查过程",
    "capture_start": "2026-11-27T09:00:00+08:00",
    "capture_end": "2026-11-27T09:05:00+08:00",
}

log = logging.getLogger("scale_sim")


class SimError(Exception):
    """A bad argument or an environment problem: one line for the user."""


# --- small process helpers ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (its threads included)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Broker:
    """One private mosquitto on 127.0.0.1 (persistence off)."""

    def __init__(self, workdir: Path, extra: list[str] | None = None):
        self.dir = workdir
        self.port = free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if not exe:
            raise SimError("mosquitto not found (apt-get install mosquitto) / 未找到 mosquitto")
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join([
            "persistence false", "log_dest stderr", "log_type error",
            "log_type warning", "log_type notice", "set_tcp_nodelay true", "max_queued_messages 10000", *self.extra,
            f"listener {self.port} 127.0.0.1", "allow_anonymous true", ""]))
        with open(self.dir / "mosquitto.log", "ab") as log_fh:  # mosquitto drops root: its own file would fail
            self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log_fh)
        if not wait_port(self.port, self.proc):
            tail = (self.dir / "mosquitto.log").read_text(errors="replace")[-500:] if (self.dir / "mosquitto.log").exists() else ""
            _stop(self.proc)
            raise SimError(f"mosquitto did not start on port {self.port}: {tail}")
        return self

    def stop(self) -> None:
        if self.proc:
            _stop(self.proc)


# --- the fleet: sealed items made with the library -------------------------------------------------
def unit_of(i: int) -> str:
    return f"33010{i % 8 + 1}000000"


def device_id(i: int) -> str:
    return f"sim-{i:04d}"


def _config(data_dir: Path, dev: str, unit: str, port: int = 1883, bandwidth: int = 0, prefix: str = PREFIX):
    from agent.config import Config

    return Config.defaults(**{"uplink.bandwidth_limit": bandwidth,
        "storage.data_dir": str(data_dir), "storage.reserve_mb": 1, "storage.retention_days": 7,
        "device.id": dev, "device.unit_code": unit, "mqtt.host": "127.0.0.1", "mqtt.port": port,
        "mqtt.keepalive": 30, "mqtt.topic_prefix": prefix, "log.level": "warning"})


def make_fleet(base: Path, devices: int, items: int, item_bytes: int, seed: int = 0) -> dict:
    """Sealed items for ``devices`` devices under base/devices (+ a pristine copy) and an archive
    template with every device enrolled. Returns {device: {"unit", "items": [ids], "bytes"}}."""
    from agent.archive.storage import ArchiveStore
    from agent.evidence import keys
    from agent.store.ingest import ingest
    from agent.store.store import Store

    devdir, src = base / "devices", base / "src"
    src.mkdir(parents=True, exist_ok=True)
    fleet: dict[str, dict] = {}
    archive = ArchiveStore(base / "archive-template", receiver="sim-enroll")
    rnd = os.urandom(item_bytes + 4096)
    try:
        for i in range(devices):
            dev, unit = device_id(i), unit_of(i)
            store = Store(_config(devdir / dev, dev, unit))
            store._key = keys.generate(store.key_path, store.pub_path)
            ids = []
            for n in range(items):
                p = src / f"{dev}-{n}.mp4"
                # distinct content per item without paying os.urandom for every byte
                off = (i * items + n + seed) % 4096
                p.write_bytes(rnd[off:off + item_bytes])
                ids.append(ingest(store, [p], dict(META))["item_id"])
                p.unlink()
            store.close()
            archive.registry.enroll(dev, store.pub_path.read_bytes(), unit, actor="scale_sim")
            pin = store.data_dir / "keys" / "archive" / "archive.pub"  # the device trusts this archive
            pin.parent.mkdir(parents=True, exist_ok=True)
            pin.write_bytes(keys.public_pem(archive.signing_key.public_key()))
            fleet[dev] = {"unit": unit, "items": ids, "bytes": items * item_bytes, "data_dir": str(devdir / dev)}
    finally:
        archive.close()
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(devdir, base / "devices.pristine", symlinks=True)
    return fleet


def restore(base: Path, roots: list[Path] | None = None) -> Path:
    """Put the fleet and the archive(s) back to their state before any upload (every device
    enrolled); returns the first archive root."""
    shutil.rmtree(base / "devices", ignore_errors=True)
    shutil.copytree(base / "devices.pristine", base / "devices", symlinks=True)
    for old in base.glob("archive*"):
        if old.name != "archive-template":
            shutil.rmtree(old, ignore_errors=True)
    roots = roots or [base / "archive"]
    for root in roots:
        shutil.copytree(base / "archive-template", root, symlinks=True)
    return roots[0]


# --- the check: exactly once, verified -----------------------------------------------------------
def open_index(root: Path, db: str | None = None):
    """The archive's index through its interface (agent/archive/registry.py ``open_db``): ROOT/archive.db
    (SQLite) or the postgresql:// URL ``db``; read here, never migrated."""
    from agent.archive.registry import open_db

    return open_db(db, root, migrate=False)


def check_archive(root: Path, fleet: dict, verify: bool = True, db: str | None = None) -> dict:
    """Every expected item stored exactly once (index rows and directories) and verifying;
    every unit's chain verifying. Returns {"ok", "problems": [...], "stored", "verified"}."""
    from agent.evidence import keys
    from agent.evidence.verify import verify_chain, verify_item

    problems: list[str] = []
    idx = open_index(root, db)
    try:
        rows = {r["item"]: r["n"] for r in idx.query("SELECT item, count(*) AS n FROM items GROUP BY item")}
    finally:
        idx.close()
    dirs: dict[str, list[Path]] = {}
    for m in root.rglob("manifest.json"):
        rel = m.relative_to(root).parts
        if rel[0].startswith("_"):
            continue
        dirs.setdefault(m.parent.name, []).append(m.parent)
    expected = {i for d in fleet.values() for i in d["items"]}
    for item in sorted(expected):
        if rows.get(item) != 1:
            problems.append(f"{item}: {rows.get(item, 0)} rows in the archive's index")
        if len(dirs.get(item, [])) != 1:
            problems.append(f"{item}: {len(dirs.get(item, []))} directories in the archive")
    for item in sorted(set(rows) - expected):
        problems.append(f"{item}: stored but never produced")
    verified = 0
    if verify:
        ring = keys.KeyRing.from_paths(keys_dir=root / "keys")
        for item, ds in sorted(dirs.items()):
            for d in ds:
                try:
                    verify_item(d, ring)
                    verified += 1
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    problems.append(f"{item}: does not verify: {exc}")
        for unit in sorted({d["unit"] for d in fleet.values()}):
            if (root / unit).is_dir():
                try:
                    verify_chain(root / unit, ring)
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"chain of unit {unit}: {exc}")
    return {"ok": not problems, "problems": problems[:50], "problem_count": len(problems),
            "stored": sum(1 for i in expected if rows.get(i) == 1), "verified": verified}


# --- publisher worker (a subprocess running many devices with the real uplink) --------------------
class LiteDevice:
    """A lightweight simulated device: the agent's real transfer (:class:`agent.uplink.transfer.Transfer`:
    manifest, chunks with offset + SHA-256, finish, query, retransmission, ``stored`` answer) over its
    real MQTT connection (:class:`agent.wire.mqtt.Connection`), without the uplink component's
    housekeeping threads (status file every 3 s, chain checkpoint, command dispatch, publish queue).
    Three threads per device instead of six, so that hundreds fit in a few processes."""

    def __init__(self, cfg, store):
        import secrets

        from agent.uplink import settings_from_config
        from agent.wire.mqtt import Connection
        from agent.wire.topics import Topics
        from agent.uplink.transfer import Transfer

        self.cfg, self.store = cfg, store
        self.device = cfg.device.id
        self.topics = Topics(cfg.mqtt.topic_prefix)
        self.ack_topic = self.topics.ack(self.device)
        self.stop_event = threading.Event()
        self.session = secrets.token_hex(4)
        self.conn = Connection(settings_from_config(cfg, self.device), stop_event=self.stop_event,
                               on_connect=self._on_connect, on_message=self._on_message, name=self.device)
        self.transfer = Transfer(self)
        self.errors_local, self.last_error_local = 0, None

    def _on_connect(self, _conn) -> None:
        self.transfer.wake.set()

    def _on_message(self, topic: str, payload: bytes, props) -> None:
        if topic == self.ack_topic:
            self.transfer.on_answer(payload, props)

    def note_error(self, msg: str) -> None:
        self.errors_local += 1
        self.last_error_local = msg
        log.error("%s: %s", self.device, msg)

    def start(self) -> None:
        self.conn.subscribe(self.ack_topic, 1)
        self.conn.start()
        self.transfer.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.transfer.wake.set()
        self.transfer.join(10)
        self.conn.stop()

    def stats(self) -> dict:
        t, c = self.transfer, self.conn
        return {"items_archived": t.items_archived, "retransmits": t.retransmits, "reconnects": c.reconnects,
                "errors": c.errors + self.errors_local, "last_error": self.last_error_local or c.last_error}


def _publisher(spec_path: Path, report_path: Path) -> int:
    """Run the devices listed in spec_path until each has archived all its items (or SIGTERM)."""
    from agent.runtime import Agent
    from agent.store.store import Store
    from agent.uplink import make_component

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    spec = json.loads(spec_path.read_text())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    devs = []
    for d in spec["devices"]:
        cfg = _config(Path(d["data_dir"]), d["device"], d["unit"], spec["port"], spec.get("bandwidth", 0),
                      d.get("prefix", PREFIX))
        store = Store(cfg)
        if spec.get("full_uplink"):
            up = make_component(Agent(cfg, store=store))
        else:
            up = LiteDevice(cfg, store)
        devs.append({"device": d["device"], "want": d["items"], "bytes": d["bytes"], "up": up, "done": None,
                     "started": None})
    # devices come up spread over the ramp (a fleet never connects in the same millisecond)
    step = spec.get("ramp_s", 0) / max(1, len(devs))
    left = len(devs)
    for d in devs:
        d["started"] = time.monotonic()
        d["up"].start()
        if step:
            stop.wait(step)
    while left and not stop.wait(0.05):
        now = time.monotonic()
        for d in devs:
            if d["done"] is None and d["up"].transfer.items_archived >= d["want"]:
                d["done"] = now
                left -= 1
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = []
    for d in devs:
        st = d["up"].stats()
        lat = list(d["up"].transfer.item_latency)
        dt = (d["done"] - d["started"]) if d["done"] else None
        out.append({"device": d["device"], "archived": st["items_archived"], "wanted": d["want"],
                    "seconds": round(dt, 3) if dt else None,
                    "mb_s": round(d["bytes"] / 1e6 / dt, 3) if dt else None,
                    "item_latency_s": round(sum(lat) / len(lat), 3) if lat else None,
                    "retransmits": st["retransmits"], "reconnects": st["reconnects"], "errors": st["errors"],
                    "last_error": st["last_error"]})
    report_path.write_text(json.dumps({"devices": out, "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
                                       "peak_rss_mb": round(ru.ru_maxrss / 1024, 1)}))
    for d in devs:  # stop every uplink at once: each stop joins its threads
        d["up"].stop_event.set()
        d["up"].transfer.wake.set()
    threads = [threading.Thread(target=d["up"].stop, daemon=True) for d in devs]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 15
    for th in threads:
        th.join(max(0.1, deadline - time.monotonic()))
    os._exit(0)


# --- one run -------------------------------------------------------------------------------------
def run_once(base: Path, fleet: dict, receivers: int, workers: int, timeout: float, verify: bool = True,
             receive_maximum: int | None = None, label: str | None = None, dev_opts: dict | None = None,
             shards: bool = False, db: str | None = None) -> dict:
    """Restore the fleet, start a broker and ``receivers`` archive processes, let every device
    upload, measure, check. Returns the figures of the run.

    ``db``: None, the archive's index is ROOT/archive.db (SQLite); a postgresql:// URL, each root
    gets a fresh database named after it and the run (``NAME_LABEL[_sK]``, the enrolment copied
    from the template, dropped after the run) that its receivers share (``archive serve --db``).

    ``shards``: instead of K receivers on one root behind one shared subscription, each receiver
    gets its own root and topic prefix (``edge-s1`` …) and the devices are split among them (the
    sharded layout of docs/scaling.md)."""
    roots = [base / f"archive-s{k + 1}" for k in range(receivers)] if shards else [base / "archive"]
    prefixes = [f"{PREFIX}-s{k + 1}" for k in range(receivers)] if shards else [PREFIX]
    restore(base, roots)
    urls = [_fresh_index(db, base, root, f"{label or receivers}" + (f"_s{k + 1}" if shards else ""))
            for k, root in enumerate(roots)] if db else [None] * len(roots)
    idx = [open_index(root, u) for root, u in zip(roots, urls)]
    rdir = base / f"run-{label or receivers}"
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir()
    broker = Broker(rdir / "broker").start()
    rx: list[subprocess.Popen] = []
    pubs: list[subprocess.Popen] = []
    logs = []
    total_items = sum(len(d["items"]) for d in fleet.values())
    total_bytes = sum(d["bytes"] for d in fleet.values())
    try:
        for k in range(receivers):
            lp = rdir / f"rx-{k + 1}.log"
            fh = open(lp, "wb")
            logs.append(fh)
            args = [EDGE, "archive", "serve", "--root", str(roots[k % len(roots)]), "--broker",
                    f"127.0.0.1:{broker.port}", "--share", SHARE, "--client-id", f"rx-{k + 1}",
                    "--prefix", prefixes[k % len(prefixes)], "--log-level", "warning"]
            if urls[k % len(roots)]:
                args += ["--db", urls[k % len(roots)]]
            if receive_maximum:
                args += ["--receive-maximum", str(receive_maximum)]
            rx.append(subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_receivers(broker.port, [f"rx-{k + 1}" for k in range(receivers)], rx, rdir)
        cpu0 = {"rx": [cpu_seconds(p.pid) for p in rx], "broker": cpu_seconds(broker.proc.pid)}
        # devices, spread over the publisher processes
        devs = [dict(device=d, unit=v["unit"], data_dir=v["data_dir"], items=len(v["items"]), bytes=v["bytes"],
                     prefix=prefixes[i % len(prefixes)]) for i, (d, v) in enumerate(fleet.items())]
        nw = max(1, min(workers, len(devs)))
        reports = []
        t0 = time.monotonic()
        for w in range(nw):
            sp, rp = rdir / f"pub-{w}.json", rdir / f"pub-{w}.report.json"
            sp.write_text(json.dumps({"port": broker.port, "devices": devs[w::nw], **(dev_opts or {})}))
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
        cpu1 = {"rx": [cpu_seconds(p.pid) for p in rx], "broker": cpu_seconds(broker.proc.pid)}
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
            _stop(p)
        broker.stop()
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
    pg_stats = None
    if db:
        from agent.common.pg import drop_database

        pg_stats = _pg_stats(urls, total_items, total_bytes)
        for u in urls:
            drop_database(u)
    fig = _figures(receivers, fleet, total_items, total_bytes, wall, timeline, cpu0, cpu1, pub_reports, per_rx,
                   check, timed_out, rdir)
    fig["pg"] = pg_stats
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


def _wait_receivers(port: int, rids: list[str], procs: list[subprocess.Popen], rdir: Path, timeout: float = 30) -> None:
    """Until every receiver's retained status says online (it has subscribed and is serving)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    online: set[str] = set()
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"sim-watch-{os.getpid()}",
                    protocol=mqtt.MQTTv5)

    def on_message(_c, _u, msg):
        try:
            if json.loads(msg.payload).get("state") == "online":
                online.add(msg.topic.rsplit("/", 1)[1])
        except ValueError:
            pass

    c.on_message = on_message
    c.on_connect = lambda cl, *_: cl.subscribe("+/archive/status/+", qos=1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not set(rids) <= online:
            dead = [r for r, p in zip(rids, procs) if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tail = "".join((rdir / f"{r}.log").read_text(errors="replace")[-400:] for r in (dead or rids))
                raise SimError(f"archive receiver(s) {', '.join(dead or sorted(set(rids) - online))} "
                               f"did not come online: {tail.strip()}")
            time.sleep(0.05)
        time.sleep(0.3)  # the shared subscription is made before the status is published; margin
    finally:
        c.loop_stop()
        c.disconnect()


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
        "device_item_latency_s": _median([d["item_latency_s"] for d in devs if d.get("item_latency_s")]),
        "retransmits": sum(d.get("retransmits") or 0 for d in devs),
        "reconnects": sum(d.get("reconnects") or 0 for d in devs),
        "devices_done": sum(1 for d in devs if d.get("archived", 0) >= d.get("wanted", 1)),
        "check": check, "ok": bool(check["ok"] and not timed_out and stored == total_items),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "logs": str(rdir),
    }


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    n = len(xs) // 2
    return xs[n] if len(xs) % 2 else round((xs[n - 1] + xs[n]) / 2, 3)


# --- the whole simulation --------------------------------------------------------------------------
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
              "ramp_s": ramp_s, "device_kbps": device_kbps, "runs": [], "probe": None, "workdir": str(base)}
    try:
        t = time.monotonic()
        fleet = make_fleet(base / "fleet", devices, items, item_kib * 1024)
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
            pf = make_fleet(base / "probe", 1, 1, probe_mib << 20, seed=7)
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
        out[str(k)] = {"runs": len(rs), "rate": "steady" if steady else "overall", "mb_s": _median(mb), "mb_s_range": [min(mb), max(mb)] if mb else None,
                       "items_s": _median(it), "mb_per_receiver_cpu_s": _median(cpu),
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
        return _publisher(Path(argv[1]), Path(argv[2]))
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


if __name__ == "__main__":
    raise SystemExit(main())
