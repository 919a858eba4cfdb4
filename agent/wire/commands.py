"""Signed central commands (start/stop a room session, rebirth, clock sync, config change, erase
policy). Owner of the command format; docs/mqtt.md#commands describes it.

A command is JSON::

    {"cmd": "room.start", "args": {...}, "device": "room-01", "ts": "2026-11-27T09:00:00+08:00",
     "nonce": "9f0c…(16+ hex)", "key_id": "<operator key id>", "sig": "<base64 Ed25519>"}

``sig`` signs the RFC 8785 canonical JSON of the object without ``sig``. The device refuses a
command that is unsigned, signed by a key it does not trust, for another device, older or newer
than ``commands.max_age_s``, or whose nonce it has already seen (replay). Every accepted or
refused command is written to the audit log; the answer goes to the MQTT v5 response topic (or
``P/dev/D/cmd/resp``) with the request's correlation data.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import secrets
from pathlib import Path
from typing import Any, Callable

from agent.common.errors import EdgeError
from agent.evidence import hashing, keys
from agent.common.timeutil import now, now_iso, parse_iso
from .protocol import bounded_json

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024
#: commands that change what the device does; handlers are registered by components in Agent.commands
KNOWN = ("room.start", "room.stop", "room.status", "rebirth", "clock.sync", "config.set", "dock.erase_policy", "status")


class CommandRefused(EdgeError):
    pass


def sign_command(private, cmd: str, args: dict, device: str, ts: str | None = None, nonce: str | None = None) -> bytes:
    body = {"cmd": cmd, "args": args, "device": device, "ts": ts or now_iso(),
            "nonce": nonce or secrets.token_hex(16), "key_id": keys.key_id(private.public_key())}
    body["sig"] = keys.sign(private, hashing.canonical(body))
    return json.dumps(body, ensure_ascii=False).encode()


def parse_command(payload: bytes) -> dict:
    obj = bounded_json(payload, MAX_COMMAND_BYTES, "command", CommandRefused)
    if not isinstance(obj, dict):
        raise CommandRefused("command must be a JSON object")
    for field, typ in (("cmd", str), ("args", dict), ("device", str), ("ts", str), ("nonce", str)):
        if not isinstance(obj.get(field), typ):
            raise CommandRefused(f"command field {field!r} missing or not a {typ.__name__}")
    if "sig" not in obj or "key_id" not in obj:
        raise CommandRefused("unsigned command")
    if not isinstance(obj["sig"], str) or not isinstance(obj["key_id"], str):
        raise CommandRefused("malformed signature")
    if not (16 <= len(obj["nonce"]) <= 64):
        raise CommandRefused("nonce must be 16 to 64 characters")
    return obj


class CommandGate:
    """Checks signatures, freshness and replays; dispatches to handlers; audits everything."""

    def __init__(self, store, device_id: str, keys_dir: Path, max_age_s: int,
                 handlers: dict[str, Callable[[dict, str], dict]]):
        self.store = store
        self.device_id = device_id
        self.keys_dir = keys_dir
        self.max_age = max_age_s
        self.handlers = handlers

    def _ring(self) -> keys.KeyRing:
        ring = keys.KeyRing()
        if self.keys_dir.is_dir():
            for p in sorted(self.keys_dir.glob("*.pub")):
                try:
                    ring.add(keys.load_public(p), device_id=p.stem)
                except EdgeError as exc:
                    log.warning("operator key %s unusable: %s", p, exc)
        return ring

    def check(self, payload: bytes) -> dict:
        obj = parse_command(payload)
        body = {k: v for k, v in obj.items() if k != "sig"}
        ring = self._ring()
        public = ring.get(obj["key_id"])
        if public is None:
            raise CommandRefused(f"signed by untrusted key {obj['key_id']}")
        try:
            canon = hashing.canonical(body)
        except EdgeError as exc:
            raise CommandRefused(f"malformed command: {exc}") from None
        if not keys.verify_sig(public, canon, obj["sig"]):
            raise CommandRefused("bad signature")
        if obj["device"] != self.device_id:
            raise CommandRefused(f"command for device {obj['device']!r}, this is {self.device_id!r}")
        try:
            ts = parse_iso(obj["ts"], "ts")
        except EdgeError as exc:
            raise CommandRefused(str(exc)) from None
        age = (now() - ts).total_seconds()
        if abs(age) > self.max_age:
            raise CommandRefused(f"expired: issued {int(age)} s ago (limit {self.max_age} s)")
        cutoff = now().timestamp() - 2 * self.max_age
        if not self.store.use_nonce(obj["nonce"], ts.timestamp(), forget_before=cutoff):
            raise CommandRefused("replayed: this nonce was already used")
        obj["operator"] = ring.device_of.get(obj["key_id"], obj["key_id"])
        return obj

    def handle(self, payload: bytes) -> dict:
        """Check and run one command; never raises. Returns the response object."""
        try:
            obj = self.check(payload)
        except EdgeError as exc:
            self.store.audit.append("command", None, actor="mqtt:unverified", result="refused", reason=str(exc),
                                    payload=payload[:512].decode("utf-8", "replace"))
            log.warning("command refused: %s", exc)
            return {"ok": False, "error": str(exc), "time": now_iso()}
        actor = f"operator:{obj['operator']}"
        handler = self.handlers.get(obj["cmd"])
        if handler is None:
            self.store.audit.append("command", None, actor=actor, cmd=obj["cmd"], result="refused",
                                    reason="unknown command")
            return {"ok": False, "cmd": obj["cmd"], "error": f"unknown command {obj['cmd']!r}", "time": now_iso()}
        try:
            result: Any = handler(obj["args"], actor)
            self.store.audit.append("command", None, actor=actor, cmd=obj["cmd"], args=obj["args"], result="accepted")
            return {"ok": True, "cmd": obj["cmd"], "result": result, "nonce": obj["nonce"], "time": now_iso()}
        except EdgeError as exc:
            self.store.audit.append("command", None, actor=actor, cmd=obj["cmd"], args=obj["args"], result="failed",
                                    reason=str(exc))
            return {"ok": False, "cmd": obj["cmd"], "error": str(exc), "nonce": obj["nonce"], "time": now_iso()}
        except Exception as exc:  # a handler bug must not kill the agent
            log.exception("command %s failed", obj["cmd"])
            self.store.audit.append("command", None, actor=actor, cmd=obj["cmd"], result="failed", reason=repr(exc))
            return {"ok": False, "cmd": obj["cmd"], "error": f"internal error: {exc}", "time": now_iso()}


def operator_keys_dir(cfg) -> Path:
    return Path(cfg.commands.operator_keys_dir or Path(cfg.storage.data_dir) / "keys" / "operators")


def _expired_example() -> str:  # used by docs/tests to build an expired command
    return (now() - _dt.timedelta(hours=1)).isoformat()
