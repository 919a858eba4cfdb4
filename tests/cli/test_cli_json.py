"""Issue 16 item 7, `--json` on every command that prints a result: each command below is run
for real with --json and what it prints parses as JSON (one object, or JSON lines for the
long-running ones: archive serve, run, monitor, dock watch)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.evidence import crypt, keys
from agent.store.ingest import ingest
from tests.support.spine import EDGE, META, make_config, make_store, run_cli
from tests.support.uplink import UNIT, add_items, agent_config, credentials, open_store


def _json(p: subprocess.CompletedProcess):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


class Lines:
    """A long-running edge-agent whose stdout is read line by line (each must be JSON)."""

    def __init__(self, args: list[str], tmp: Path):
        self.err = open(tmp / f"stderr-{time.monotonic_ns()}.log", "wb")
        self.err_path = Path(self.err.name)
        self.p = subprocess.Popen([EDGE, *args], stdout=subprocess.PIPE, stderr=self.err, text=True,
                                  start_new_session=True)
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.q.put(line)
        self.q.put(None)

    def next(self, timeout: float = 30) -> dict:
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s; stderr: {self.err_path.read_text()[-2000:]}") from None
        assert line is not None, f"stdout closed; stderr: {self.err_path.read_text()[-2000:]}"
        return json.loads(line)

    def until(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            got = self.next(max(0.1, deadline - time.monotonic()))
            if got.get("event") == event:
                return got

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(30)
        finally:
            self.err.close()

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


def test_config_and_audit_commands_print_json(tmp_path):
    store = make_store(tmp_path)
    store.close()
    cfg = tmp_path / "agent.toml"
    assert _json(run_cli(cfg, "config", "validate", "--json")) == {"ok": True, "config": str(cfg)}
    got = _json(run_cli(cfg, "config", "set", "storage.reserve_mb", "2048", "--json"))
    assert got == {"key": "storage.reserve_mb", "value": 2048, "config": str(cfg)}
    got = _json(run_cli(cfg, "config", "set", "mqtt.password", "s3cret-9", "--json"))
    assert got["value"] == "********"  # a secret is never printed, not even in JSON
    rows = _json(run_cli(cfg, "audit", "export", "--json"))
    assert [r["action"] for r in rows if r["action"] == "config"] == ["config", "config"]
    out = tmp_path / "audit.json"
    assert run_cli(cfg, "audit", "export", "--json", "-o", str(out)).returncode == 0
    assert json.loads(out.read_text(encoding="utf-8")) == rows
    both = run_cli(cfg, "audit", "export", "--json", "--csv")
    assert both.returncode == 2 and "--csv" in both.stderr and "--json" in both.stderr


def test_key_and_command_tools_print_json(tmp_path):
    got = _json(run_cli(tmp_path / "none.toml", "command", "keygen", "ops", "--out", str(tmp_path / "op"), "--json"))
    assert got["key"] == str(tmp_path / "op" / "ops.key") and Path(got["public_key"]).exists()
    assert got["key_id"] == keys.key_id(keys.load_private(Path(got["key"])).public_key())
    signed = _json(run_cli(tmp_path / "none.toml", "command", "sign", "status", "--device", "room-01", "--key",
                           got["key"], "--json"))
    assert signed["cmd"] == "status" and signed["device"] == "room-01" and signed["key_id"] == got["key_id"]
    # the indented form still verifies at a device (the signature covers the canonical form)
    from agent.wire.commands import parse_command

    assert parse_command(json.dumps(signed, indent=2).encode())["cmd"] == "status"
    enc = _json(run_cli(tmp_path / "none.toml", "crypt", "keygen", str(tmp_path / "arch"), "--json"))
    assert enc["recipient_id"] and Path(enc["public_key"]).name == "archive-enc.pub"
    store = make_store(tmp_path, encryption__enabled=True, encryption__archive_public_key=enc["public_key"])
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"SECRET" * 500)
    item = ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"))["item_id"]
    store.close()
    got = _json(run_cli(tmp_path / "agent.toml", "crypt", "decrypt", str(store.items_dir / item), "--key", enc["key"],
                        "--out", str(tmp_path / "plain"), "--device-key", str(store.pub_path), "--json"))
    assert got["verified"] is True and [Path(f).read_bytes() for f in got["files"]] == [b"SECRET" * 500]


def test_archive_commands_print_json(tmp_path):
    cfg = agent_config(tmp_path, 1883)
    store = open_store(cfg)
    ids = add_items(store, tmp_path, [1000])
    root = tmp_path / "archive"
    got = _json(run_cli(tmp_path / "none.toml", "archive", "enroll", "dock-0001", str(store.pub_path), "--unit", UNIT,
                        "--root", str(root), "--pin-to", str(store.data_dir), "--json"))
    assert got["device"] == "dock-0001" and got["unit"] == UNIT and Path(got["pinned"]["archive"]).exists()
    bc = _json(run_cli(tmp_path / "none.toml", "archive", "broker-config", "--root", str(root), "--out",
                       str(tmp_path / "broker"), "--json"))
    assert bc["devices"] == ["dock-0001"] and set(bc["services"]) == {"archive", "monitor", "ops"}
    again = _json(run_cli(tmp_path / "none.toml", "archive", "enroll", "room-0009", str(store.pub_path), "--unit", UNIT,
                          "--root", str(root), "--broker-dir", str(tmp_path / "broker"), "--json"))
    assert again["broker"]["created"] == ["room-0009"] and "edge-agent uplink trust-archive" in again["pin_on_device"]
    ann = keys.generate(tmp_path / "clerk.key", tmp_path / "clerk.pub")
    got = _json(run_cli(tmp_path / "none.toml", "archive", "enroll-annotator", "clerk-07", str(tmp_path / "clerk.pub"),
                        "--unit", UNIT, "--root", str(root), "--json"))
    assert got == {"annotator": "clerk-07", "unit": UNIT, "key_id": keys.key_id(ann.public_key())}
    from tests.support.archived import approved_request, store_in_archive

    store_in_archive(root, store, ids[0])
    store.close()
    rid = approved_request(root, ids[0])
    got = _json(run_cli(tmp_path / "none.toml", "archive", "export", ids[0], str(tmp_path / "out"), "--root", str(root),
                        "--request", rid, "--json"))
    assert got == {"item_id": ids[0], "path": str(tmp_path / "out" / ids[0]), "request": int(rid),
                   "requester": "test-requester", "approver": "test-approver", "reason": "test export"}


def test_long_running_commands_print_json_lines(broker, tmp_path):
    root = tmp_path / "archive"
    cfg = agent_config(tmp_path, broker.port)
    open_store(cfg).close()
    rx = Lines([*credentials(tmp_path, broker.port, "rx-json"), "archive", "serve", "--root", str(root), "--broker", f"127.0.0.1:{broker.port}", "--client-id",
                "rx-json", "--json"], tmp_path)
    mon = agent = None
    try:
        ready = rx.until("ready")
        assert ready["receiver"] == "rx-json" and ready["broker"] == f"127.0.0.1:{broker.port}"
        mon = Lines([*credentials(tmp_path, broker.port, "monitor", "monitor"), "monitor", "--broker", f"127.0.0.1:{broker.port}", "--db", str(tmp_path / "m.db"),
                     "--enrolment", str(root), "--json"], tmp_path)
        assert mon.until("ready")["prefix"] == "edge"
        agent = Lines(["--config", str(cfg), "run", "--json", "--status-every", "0.5"], tmp_path)
        started = agent.until("started")
        assert started["device"] == "dock-0001"
        status = agent.until("status")
        assert status["store"]["device"]["id"] == "dock-0001" and "uplink" in status["components"]
        assert agent.stop() == 0 and agent.until("stopped")["device"] == "dock-0001"
        assert mon.stop() == 0 and mon.until("stopped")["ok"] is True
        assert rx.stop() == 0 and rx.until("stopped") ["ok"] is True
    finally:
        for p in (rx, mon, agent):
            if p is not None:
                p.kill()


def test_dock_watch_prints_json(tmp_path):
    make_store(tmp_path).close()
    cfg = tmp_path / "agent.toml"
    assert run_cli(cfg, "dock", "watch", "--once", "--json").stdout.strip() == "null"  # no station state yet
    (tmp_path / "data" / "dock").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "dock" / "bays.json").write_text(json.dumps({"device": "dock-01", "bays": []}))
    assert _json(run_cli(cfg, "dock", "watch", "--once", "--json"))["device"] == "dock-01"
    w = Lines(["--config", str(cfg), "dock", "watch", "--json", "--interval", "0.2"], tmp_path)
    try:
        first, second = w.next(), w.next()
        assert first["event"] == second["event"] == "state" and second["state"]["device"] == "dock-01"
    finally:
        w.kill()
