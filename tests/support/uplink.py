"""Helpers for the uplink / archive tests: an agent data dir with sealed items, real
`edge-agent run` and `edge-agent archive serve` subprocesses, waiting with timeouts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from agent import config as config_mod
from agent.evidence import keys
from agent.evidence.verify import verify_chain, verify_item
from agent.store.ingest import ingest
from agent.store.store import Store

from tests.support.broker import login
from tests.support.spine import EDGE, META as _SPINE_META

UNIT = "330100000000"
META = {**_SPINE_META, "capture_start": "2026-11-27T09:00:00+08:00", "capture_end": "2026-11-27T09:05:00+08:00"}


def agent_config(tmp: Path, port: int, device: str = "dock-0001", **values) -> Path:
    """An agent config (data dir tmp/DEVICE) pointing at 127.0.0.1:port; values as section__key.
    On a shipped broker (tests.support.broker) the device logs in with its own identity."""
    if "mqtt__username" not in values:
        values.update({f"mqtt__{k}": v for k, v in
                       login(port, device, unit=values.get("device__unit_code", UNIT)).items()})
    data = {"storage": {"data_dir": str(tmp / device), "reserve_mb": 1, "retention_days": 7},
            "device": {"id": device, "unit_code": UNIT},
            "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 10},
            "uplink": {"ack_timeout_s": 5}, "evidence": {"block_size": 1 << 20},
            "log": {"format": "text", "level": "info"}}
    for dotted, v in values.items():
        s, k = dotted.split("__")
        data.setdefault(s, {})[k] = v
    path = tmp / f"{device}.toml"
    path.write_text(config_mod.render_default(data), encoding="utf-8")
    return path


def open_store(config: Path) -> Store:
    store = Store(config_mod.load(config))
    if not store.key_path.exists():
        store._key = keys.generate(store.key_path, store.pub_path)
    return store


def add_items(store: Store, tmp: Path, sizes: list[int], case: str | None = META["case_number"],
              seed: int = 0) -> list[str]:
    """Ingest one item per size (random content); returns item ids in chain order."""
    ids = []
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    for n, size in enumerate(sizes):
        p = src / f"clip-{seed}-{n}-{time.monotonic_ns()}.mp4"
        p.write_bytes(os.urandom(size))
        meta = dict(META)
        if case is None:
            meta.pop("case_number")
            meta["pending"] = ["case_number"]
        else:
            meta["case_number"] = case
        ids.append(ingest(store, [p], meta)["item_id"])
        p.unlink()
    return ids


def enroll(root: Path, store: Store, device: str = "dock-0001", unit: str = UNIT) -> None:
    run(["archive", "enroll", device, str(store.pub_path), "--unit", unit, "--root", str(root),
         "--pin-to", str(store.data_dir)], check=True)


def credentials(tmp: Path, port: int, name: str, role: str = "archive") -> list[str]:
    """``["--config", FILE]`` with the ``[mqtt]`` login of ``name`` on the shipped broker at
    ``port`` (what `archive broker-config` writes to credentials/NAME.toml); [] on an open broker."""
    creds = login(port, name, role)
    if not creds:
        return []
    path = tmp / f"{name}-credentials.toml"
    path.write_text(f'[mqtt]\nusername = "{creds["username"]}"\npassword = "{creds["password"]}"\n', encoding="utf-8")
    path.chmod(0o600)
    return ["--config", str(path)]


def run(args: list[str], config: Path | None = None, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [EDGE] + (["--config", str(config)] if config else []) + args
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


class Proc:
    """A long-running edge-agent subprocess with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.log = log
        self.args = args
        e = dict(os.environ)
        e.update(env or {})
        self.fh = open(log, "ab")
        self.p = subprocess.Popen([EDGE, *args], stdout=self.fh, stderr=subprocess.STDOUT, env=e,
                                  start_new_session=True)

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)

    def stop(self, timeout: float = 20) -> int:
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.fh.close()
        return self.p.returncode

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def start_agent(config: Path, tmp: Path, name: str = "agent") -> Proc:
    return Proc(["--config", str(config), "run"], tmp / f"{name}.log")


def start_archive(root: Path, port: int, tmp: Path, name: str = "archive", extra: list[str] | None = None,
                  env: dict | None = None, wait: bool = True) -> Proc:
    extra = list(extra or [])
    auth = [] if "--config" in extra else credentials(tmp, port, name)
    p = Proc([*auth, "archive", "serve", "--root", str(root), "--broker", f"127.0.0.1:{port}",
              "--client-id", name, *extra], tmp / f"{name}.log", env=env)
    if wait:
        wait_for(lambda: "archive: connected to" in p.text() or not p.alive(), 20, f"{name} connected", [p])
        assert p.alive(), p.text()
    return p


def states(config: Path) -> dict[str, str]:
    cfg = config_mod.load(config)
    con = sqlite3.connect(str(Path(cfg.storage.data_dir) / "ledger.db"), timeout=30)
    try:
        return {r[0]: r[1] for r in con.execute("SELECT id, state FROM items")}
    finally:
        con.close()


def wait_for(pred, timeout: float, what: str, procs: list[Proc] = (), step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    logs = "\n".join(f"--- {p.log.name} ---\n" + "\n".join(p.text().splitlines()[-30:]) for p in procs)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def all_archived(config: Path, ids: list[str]):
    def pred():
        st = states(config)
        return all(st.get(i) in ("archived", "purged") for i in ids)
    return pred


def archived_items(root: Path) -> dict[str, int]:
    """item id -> number of copies under root/UNIT/... (excluding _tmp/_quarantine)."""
    out: dict[str, int] = {}
    for m in root.rglob("manifest.json"):
        rel = m.relative_to(root).parts
        if rel[0].startswith("_"):
            continue
        out[m.parent.name] = out.get(m.parent.name, 0) + 1
    return out


def check_archive(root: Path, ids: list[str], device: str = "dock-0001") -> None:
    """Every item exactly once, verifying (individually and as a chain), recorded in the DB."""
    ring = keys.KeyRing.from_paths(keys_dir=root / "keys")
    copies = archived_items(root)
    for i in ids:
        assert copies.get(i) == 1, f"{i}: {copies.get(i, 0)} copies in the archive"
    for m in root.rglob("manifest.json"):
        if not m.relative_to(root).parts[0].startswith("_"):
            verify_item(m.parent, ring)
    verify_chain(root / UNIT, ring, allow_missing_start=True)
    con = sqlite3.connect(str(root / "archive.db"))
    try:
        n = {r[0]: r[1] for r in con.execute("SELECT item, count(*) FROM items GROUP BY item")}
    finally:
        con.close()
    for i in ids:
        assert n.get(i) == 1, f"{i}: {n.get(i, 0)} rows in archive.db"


def nothing_outside(root: Path, parent: Path) -> None:
    """Nothing was written beside the root (the wire tried ../)."""
    allowed = {root.name}
    extra = [p.name for p in parent.iterdir() if p.name not in allowed and not p.name.endswith((".log", ".toml"))]
    assert not [e for e in extra if "evil" in e or "etc" in e], extra


def live_status(config: Path) -> dict:
    cfg = config_mod.load(config)
    p = Path(cfg.storage.data_dir) / "uplink-status.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


class InProc:
    """An uplink and an archive receiver in this process (fast tests of one mechanism)."""

    def __init__(self, tmp: Path, port: int, *, tls=None, agent_tls: tuple | None = None,
                 archive_tls: tuple | None = None, archive_port: int | None = None, **values):
        from agent.archive.storage import ArchiveStore

        self.tmp = tmp
        self.port = port
        if agent_tls:
            values.update(mqtt__tls=True, mqtt__cafile=str(agent_tls[0]), mqtt__certfile=str(agent_tls[1]),
                          mqtt__keyfile=str(agent_tls[2]))
        self.config = agent_config(tmp, port, **values)
        self.store = open_store(self.config)
        self.root = tmp / "archive"
        self.archive = ArchiveStore(self.root)
        self.archive_port = archive_port or port
        self.archive_tls = archive_tls
        self.agent = None
        self.uplink = None
        self.receivers = []

    def enroll(self, device: str = "dock-0001", unit: str = UNIT) -> None:
        self.archive.registry.enroll(device, self.store.pub_path.read_bytes(), unit)
        self.pin_archive()

    def pin_archive(self) -> None:
        """The device pins this archive's key (what `archive enroll --pin-to` does)."""
        pin = self.store.data_dir / "keys" / "archive" / "archive.pub"
        pin.parent.mkdir(parents=True, exist_ok=True)
        pin.write_bytes(keys.public_pem(self.archive.signing_key.public_key()))

    def start_archive(self, name: str = "archive-t", share: str | None = None, first_checkpoint_s: float | None = None,
                      **kw):
        from agent.archive.receiver import Receiver
        from agent.archive.storage import ArchiveStore
        from agent.wire.client import ConnSettings, TlsConfig

        tls = TlsConfig(*map(str, self.archive_tls)) if self.archive_tls else None
        st = ArchiveStore(self.root, receiver=name, **kw)
        creds = {} if tls else login(self.archive_port, name, "archive")
        rx = Receiver(st, ConnSettings("127.0.0.1", self.archive_port, name, tls=tls, keepalive=10, **creds),
                      share=share, receiver_id=name)
        if first_checkpoint_s is not None:  # the archive-wide checkpoint (30 s after start by default)
            rx.first_checkpoint_s = first_checkpoint_s
        rx.start()
        assert rx.conn.wait_connected(10), rx.conn.last_error
        # its subscriptions went out before it counted as connected: the broker's PUBACK of a later
        # publish on the same connection says they are in place (a device's first message is heard)
        h = rx.conn.publish(rx.topics.archive_receiver(rx.rid), rx._status("online"), retain=True, timeout=10)
        assert h.wait(10) and h.ok, "the receiver's status was not acknowledged"
        self.receivers.append(rx)
        return rx

    def start_agent(self):
        from agent.runtime import Agent
        from agent.uplink import make_component

        self.agent = Agent(self.store.cfg, store=self.store)
        self.uplink = make_component(self.agent)
        self.uplink.start()
        return self.uplink

    def wait_archived(self, ids: list[str], timeout: float = 30):
        wait_for(all_archived(self.config, ids), timeout, f"{len(ids)} item(s) archived: "
                 f"{self.uplink.stats() if self.uplink else ''}")

    def close(self) -> None:
        if self.uplink:
            self.uplink.stop()
        for rx in self.receivers:
            rx.stop()
            rx.store.close()
        self.archive.close()
