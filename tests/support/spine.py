"""Helpers for the evidence-spine tests (store, CLI): a configured store in a temp dir, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent import config as config_mod
from agent.evidence import keys
from agent.store.store import Store

EDGE = str(Path(sys.executable).with_name("edge-agent"))

META = {
    "case_number": "杭司罚〔2026〕第0123号",
    "collector": {"name": "张三", "id": "33010001"},
    "place": "杭州市西湖区文三路",
    "proof": "现场检查过程",
}


def make_config(tmp: Path, **values) -> Path:
    """An agent config in tmp; values as section__key. With ``mqtt__port`` of a shipped test
    broker (tests.support.broker) the device logs in with its own identity."""
    if "mqtt__port" in values and "mqtt__username" not in values:
        from tests.support.broker import login

        creds = login(values["mqtt__port"], values.get("device__id", "dock-01"), unit=values.get("device__unit_code"))
        values.update({f"mqtt__{k}": v for k, v in creds.items()})
    data = {"storage": {"data_dir": str(tmp / "data"), "reserve_mb": 1}, "device": {"id": "dock-01"}}
    for dotted, v in values.items():
        s, k = dotted.split("__")
        data.setdefault(s, {})[k] = v
    path = tmp / "agent.toml"
    path.write_text(config_mod.render_default(data), encoding="utf-8")
    return path


def make_store(tmp: Path, **values) -> Store:
    path = make_config(tmp, **values)
    cfg = config_mod.load(path)
    store = Store(cfg)
    if not store.key_path.exists():
        store._key = keys.generate(store.key_path, store.pub_path)
    return store


def run_cli(config: Path, *args, check=False, env=None, **kw) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("EDGE_AGENT_CRASH_AT", None)
    e.update(env or {})
    p = subprocess.run([EDGE, "--config", str(config), *args], capture_output=True, text=True, env=e, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"edge-agent {' '.join(args)} failed: {p.stderr}")
    return p


def ingest_args(path: Path, case: str = META["case_number"]) -> list[str]:
    return ["ingest", str(path), "--case", case, "--collector", "张三", "--collector-id", "33010001",
            "--place", META["place"], "--proof", META["proof"], "--captured-at", "2026-11-27T09:00:00+08:00", "-q",
            "--kind", "other"]  # the test files are bytes, not media
