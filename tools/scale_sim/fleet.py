"""The simulated fleet: sealed items made with the library for every device (its own data
directory, ledger and key), an archive template with every device enrolled and the receivers
``rx-1`` … enrolled with keys of their own (`edge-agent archive receiver add`), every device
pinning those receivers' keys (and not the root's: every receipt must be signed by the receiver
that stored the item), and the restore to that state before each run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PREFIX = "edge"

META = {
    "case_number": "浙司罚〔2026〕第0777号",
    "collector": {"name": "李四", "id": "33010002"},
    "place": "杭州市上城区解放路",
    "proof": "现场检查过程",
    "capture_start": "2026-11-27T09:00:00+08:00",
    "capture_end": "2026-11-27T09:05:00+08:00",
}


def unit_of(i: int) -> str:
    return f"33010{i % 8 + 1}000000"


def device_id(i: int) -> str:
    return f"sim-{i:04d}"


def receiver_id(k: int) -> str:
    """The receiver id (MQTT user name, client id, key name) of receiver k (1, 2, …)."""
    return f"rx-{k}"


def device_config(data_dir: Path, dev: str, unit: str, port: int = 1883, bandwidth: int = 0, prefix: str = PREFIX,
                  username: str = "", password: str = ""):
    from agent.config import Config

    return Config.defaults(**{"uplink.bandwidth_limit": bandwidth, "mqtt.username": username, "mqtt.password": password,
        "storage.data_dir": str(data_dir), "storage.reserve_mb": 1, "storage.retention_days": 7,
        "device.id": dev, "device.unit_code": unit, "mqtt.host": "127.0.0.1", "mqtt.port": port,
        "mqtt.keepalive": 30, "mqtt.topic_prefix": prefix, "log.level": "warning"})


def add_receivers(root: Path, receivers: int) -> None:
    """`edge-agent archive receiver add rx-K --root ROOT` for K = 1..``receivers`` (the click
    command, called in this process), as an operator enrols each receiver host: a key pair of its
    own in ROOT/_archive/receivers/, from which `archive broker-config` gives each a broker
    identity; audited."""
    from tools.bench.shipped_broker import edge_agent

    from .procs import SimError

    for k in range(1, receivers + 1):
        rc, out = edge_agent(["archive", "receiver", "add", receiver_id(k), "--root", str(root), "--json"], True)
        if rc != 0:
            raise SimError(f"archive receiver add {receiver_id(k)} failed: {out.strip()[-300:]}")


def make_fleet(base: Path, devices: int, items: int, item_bytes: int, seed: int = 0, receivers: int = 1) -> dict:
    """Sealed items for ``devices`` devices under base/devices (+ a pristine copy) and an archive
    template with ``receivers`` receivers and every device enrolled, each device pinning every
    receiver's key. Returns {device: {"unit", "items": [ids], "bytes"}}."""
    from agent.archive import receivers as receivers_mod
    from agent.archive.storage import ArchiveStore
    from agent.evidence import keys
    from agent.store.ingest import ingest
    from agent.store.store import Store

    devdir, src = base / "devices", base / "src"
    src.mkdir(parents=True, exist_ok=True)
    fleet: dict[str, dict] = {}
    add_receivers(base / "archive-template", receivers)
    archive = ArchiveStore(base / "archive-template", receiver="sim-enroll")
    rnd = os.urandom(item_bytes + 4096)
    try:
        for i in range(devices):
            dev, unit = device_id(i), unit_of(i)
            store = Store(device_config(devdir / dev, dev, unit))
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
            # the device trusts the enrolled receivers' keys (`archive enroll --pin-to`), not the root's
            receivers_mod.pin_all(archive.root, store.data_dir)
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
