"""Signed central commands: refused when unsigned, wrongly signed, expired, replayed, or for
another device; accepted ones run their handler; every decision is in the audit log."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import config as config_mod
from agent.wire.commands import CommandGate, sign_command
from agent.evidence import keys
from agent.runtime import Agent
from tests.support.spine import make_config, make_store


@pytest.fixture
def setup(tmp_path):
    store = make_store(tmp_path)
    opdir = tmp_path / "operators"
    op = keys.generate(opdir / "ops-center.key", opdir / "ops-center.pub")
    (opdir / "ops-center.key").rename(tmp_path / "ops-center.key")
    ran = []
    gate = CommandGate(store, "dock-01", opdir, 300, {"rebirth": lambda a, who: ran.append((a, who)) or {"done": 1}})
    return store, op, gate, ran


def test_accepted_command_runs_and_is_audited(setup):
    store, op, gate, ran = setup
    resp = gate.handle(sign_command(op, "rebirth", {"x": 1}, "dock-01"))
    assert resp["ok"] and resp["result"] == {"done": 1}
    assert ran == [({"x": 1}, "operator:ops-center")]
    last = store.audit.entries(action="command")[-1]
    assert last["actor"] == "operator:ops-center" and '"accepted"' in last["detail"]


@pytest.mark.parametrize("case,reason", [
    ("unsigned", "unsigned command"),
    ("badsig", "bad signature"),
    ("otherkey", "untrusted key"),
    ("otherdevice", "for device 'dock-99'"),
    ("expired", "expired"),
    ("future", "expired"),
    ("notjson", "not valid JSON"),
    ("toolarge", "too large"),
    ("unknown", "unknown command"),
])
def test_refusals(setup, case, reason):
    store, op, gate, ran = setup
    good = json.loads(sign_command(op, "rebirth", {}, "dock-01"))
    if case == "unsigned":
        good.pop("sig")
        payload = json.dumps(good).encode()
    elif case == "badsig":
        good["args"] = {"evil": True}
        payload = json.dumps(good).encode()
    elif case == "otherkey":
        payload = sign_command(Ed25519PrivateKey.generate(), "rebirth", {}, "dock-01")
    elif case == "otherdevice":
        payload = sign_command(op, "rebirth", {}, "dock-99")
    elif case == "expired":
        payload = sign_command(op, "rebirth", {}, "dock-01", ts="2026-01-01T00:00:00+08:00")
    elif case == "future":
        payload = sign_command(op, "rebirth", {}, "dock-01", ts="2099-01-01T00:00:00+08:00")
    elif case == "notjson":
        payload = b"\xff\x00garbage"
    elif case == "toolarge":
        payload = b"{" + b" " * 70000 + b"}"
    else:
        payload = sign_command(op, "format.disk", {}, "dock-01")
    resp = gate.handle(payload)
    assert not resp["ok"] and reason in resp["error"]
    assert ran == []
    assert '"refused"' in store.audit.entries(action="command")[-1]["detail"]


def test_replay_is_refused(setup):
    store, op, gate, ran = setup
    payload = sign_command(op, "rebirth", {}, "dock-01")
    assert gate.handle(payload)["ok"]
    again = gate.handle(payload)
    assert not again["ok"] and "replayed" in again["error"]
    assert len(ran) == 1


def test_agent_builtin_config_set_command(tmp_path):
    path = make_config(tmp_path)
    store = make_store(tmp_path)
    opdir = tmp_path / "data" / "keys" / "operators"
    op = keys.generate(tmp_path / "op.key", opdir / "op.pub")
    agent = Agent(config_mod.load(path), store)
    resp = agent.dispatch_command(sign_command(op, "config.set", {"key": "storage.reserve_mb", "value": 4096}, "dock-01"))
    assert resp["ok"], resp
    assert config_mod.load(path).storage.reserve_mb == 4096
    refused = agent.dispatch_command(sign_command(op, "config.set", {"key": "commands.max_age_s", "value": 99999}, "dock-01"))
    assert not refused["ok"] and "cannot be changed remotely" in refused["error"]
    bad = agent.dispatch_command(sign_command(op, "config.set", {"key": "storage.reserve_mb", "value": "lots"}, "dock-01"))
    assert not bad["ok"] and "expected an integer" in bad["error"]
