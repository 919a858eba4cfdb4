"""The monitor's parsers of the device-state payloads (the bodies inside the signed envelope).

Fast and distrustful: every field used is checked and a :class:`agent.wire.health.PayloadError`
names the field. The schemas they follow are in agent/wire/health.py.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .health import (_ID_RE, _ISO_RE, _CODE_RE, _STATE_SET, KINDS, MAX_PAYLOAD, SEVERITIES,
                     VERSION, PayloadError)

# --- parsers (monitor side) -----------------------------------------------------------------------
try:  # 3-5x faster JSON parsing for the monitor's ingest (optional)
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency, the fallback keeps the agent importable
    _orjson = None


def loads(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD:
        raise PayloadError(f"payload of {len(payload)} bytes is above the limit {MAX_PAYLOAD}")
    try:
        if _orjson is not None:
            return _orjson.loads(payload)
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"not JSON: {str(exc)[:80]}") from None


def _obj(v: Any, field: str) -> dict:
    if not isinstance(v, dict):
        raise PayloadError(f"{field}: expected an object")
    return v


def _int(d: dict, key: str, field: str, *, nullable: bool = False, required: bool = True) -> int | None:
    v = d.get(key)
    if type(v) is int and 0 <= v <= 4611686018427387904:  # fast path (bool is not int here)
        return v
    if v is None and (nullable or not required):
        return None
    raise PayloadError(f"{field}.{key}: expected a non-negative integer, got {str(v)[:40]!r}")


def _num(d: dict, key: str, field: str) -> float:
    v = d.get(key)
    t = type(v)
    if (t is float and math.isfinite(v) and v >= 0) or (t is int and v >= 0):
        return float(v)
    raise PayloadError(f"{field}.{key}: expected a non-negative number, got {str(v)[:40]!r}")


def _str(d: dict, key: str, field: str, pattern: re.Pattern | None = None, limit: int = 500,
         required: bool = True) -> str | None:
    v = d.get(key)
    if v is None and not required:
        return None
    if type(v) is not str or len(v) > limit or (pattern is not None and not pattern.match(v)):
        raise PayloadError(f"{field}.{key}: invalid or missing ({str(v)[:40]!r})")
    return v


def parse_status(payload: bytes) -> dict:
    d = _obj(loads(payload), "status")
    if d.get("state") not in ("online", "offline"):
        raise PayloadError(f"status.state: expected online or offline, got {str(d.get('state'))[:40]!r}")
    out = {"state": d["state"], "bdseq": _int(d, "bdseq", "status")}
    out["unit_code"] = _str(d, "unit_code", "status", _ID_RE, required=False)
    out["unit_name"] = _str(d, "unit_name", "status", required=False)
    out["version"] = _str(d, "version", "status", limit=64, required=False)
    kind = d.get("kind")
    if kind is not None and kind not in KINDS:
        raise PayloadError(f"status.kind: expected one of {', '.join(KINDS)}")
    out["kind"] = kind
    return out


def parse_health(payload: bytes) -> dict:
    """The fields of a health payload the monitor keeps, checked."""
    d = _obj(loads(payload), "health")
    if d.get("v") != VERSION:
        raise PayloadError(f"health.v: expected {VERSION}, got {str(d.get('v'))[:20]!r}")
    out: dict[str, Any] = {
        "device": _str(d, "device", "health", _ID_RE),
        "unit_code": _str(d, "unit_code", "health", _ID_RE),
        "unit_name": _str(d, "unit_name", "health", required=False),
        "ts": _str(d, "ts", "health", _ISO_RE, 40),
        "uptime_s": _int(d, "uptime_s", "health"),
        "cpu_percent": _num(d, "cpu_percent", "health"),
        "version": _str(d, "version", "health", limit=64, required=False),
    }
    if d.get("kind") not in KINDS:
        raise PayloadError(f"health.kind: expected one of {', '.join(KINDS)}")
    out["kind"] = d["kind"]
    mem = _obj(d.get("memory"), "health.memory")
    out["mem_used_percent"] = min(100.0, _num(mem, "used_percent", "health.memory"))
    disk = _obj(d.get("disk"), "health.disk")
    out["disk_free_bytes"] = _int(disk, "free_bytes", "health.disk")
    out["disk_total_bytes"] = _int(disk, "total_bytes", "health.disk")
    buf = _obj(d.get("buffer"), "health.buffer")
    out["buffer_items"] = _int(buf, "items", "health.buffer")
    out["buffer_bytes"] = _int(buf, "bytes", "health.buffer")
    out["oldest_age_s"] = _int(buf, "oldest_age_s", "health.buffer", nullable=True)
    out["pending_annotation"] = _int(buf, "pending_annotation", "health.buffer")
    use = _obj(d.get("usage"), "health.usage")
    out["items_total"] = _int(use, "items_total", "health.usage")
    out["items_archived"] = _int(use, "items_archived", "health.usage")
    out["recorded_s"] = _int(use, "recorded_s", "health.usage")
    up = _obj(d.get("uplink"), "health.uplink")
    if not isinstance(up.get("connected"), bool):
        raise PayloadError("health.uplink.connected: expected true or false")
    out["uplink_connected"] = up["connected"]
    out["bytes_per_s"] = float(up["bytes_per_s"]) if isinstance(up.get("bytes_per_s"), (int, float)) \
        and not isinstance(up.get("bytes_per_s"), bool) and math.isfinite(up["bytes_per_s"]) else None
    clk = _obj(d.get("clock"), "health.clock")
    sync = clk.get("synchronized")
    if sync is not None and not isinstance(sync, bool):
        raise PayloadError("health.clock.synchronized: expected true, false or null")
    out["clock_synchronized"] = sync
    off = clk.get("offset_ms")
    if off is not None and (not isinstance(off, int) or isinstance(off, bool)):
        raise PayloadError("health.clock.offset_ms: expected an integer or null")
    out["clock_offset_ms"] = off
    comps = _obj(d.get("components"), "health.components")
    if len(comps) > 64:
        raise PayloadError("health.components: more than 64 components")
    cs = out["components"] = {}
    match, states = _ID_RE.match, _STATE_SET
    for name, c in comps.items():
        if type(c) is not dict or c.get("state") not in states or not match(name):
            raise PayloadError(f"health.components.{str(name)[:40]}: invalid")
        cs[name] = c["state"]
    alarms = d.get("alarms")
    if not isinstance(alarms, list) or len(alarms) > 256 or not all(isinstance(a, str) and _ID_RE.match(a) for a in alarms):
        raise PayloadError("health.alarms: expected a list of alarm keys")
    out["alarms"] = alarms
    out["policy_version"] = _int(d, "policy_version", "health", required=False)
    return out


def parse_alarm(payload: bytes, key: str) -> dict:
    d = _obj(loads(payload), "alarm")
    code = _str(d, "code", "alarm", _CODE_RE, 64)
    if d.get("key") != key:
        raise PayloadError(f"alarm.key: {str(d.get('key'))[:40]!r} does not match the topic ({key})")
    if not (key == code or key.startswith(code + ".")):
        raise PayloadError(f"alarm.code: {code} does not match the topic ({key})")
    if not isinstance(d.get("active"), bool):
        raise PayloadError("alarm.active: expected true or false")
    if d.get("severity") not in SEVERITIES:
        raise PayloadError(f"alarm.severity: expected one of {', '.join(SEVERITIES)}")
    msg = _obj(d.get("message"), "alarm.message")
    return {
        "code": code, "key": key, "active": d["active"], "severity": d["severity"],
        "since": _str(d, "since", "alarm", _ISO_RE, 40), "ts": _str(d, "ts", "alarm", _ISO_RE, 40),
        "cleared": _str(d, "cleared", "alarm", _ISO_RE, 40, required=False),
        "message_zh": _str(msg, "zh", "alarm.message"), "message_en": _str(msg, "en", "alarm.message"),
        "source": _str(d, "source", "alarm", limit=128),
        "unit_code": _str(d, "unit_code", "alarm", _ID_RE, required=False),
    }


_STATE_RE = re.compile(r"^[a-z][a-z_-]{0,31}$")
#: workflow states of a docking-station bay, mapped to the common component states
BAY_STATES = {"idle": "ok", "identifying": "starting", "charging": "ok", "downloading": "ok", "verifying": "ok",
              "uploading": "ok", "done": "ok", "error": "error"}


def parse_component(payload: bytes, name: str) -> dict:
    """{name, state (one of COMPONENT_STATES), raw_state, label, ts, detail}."""
    d = _obj(loads(payload), "component")
    if d.get("name") != name:
        raise PayloadError(f"component.name: {str(d.get('name'))[:40]!r} does not match the topic ({name})")
    raw = d.get("state")
    if type(raw) is not str or not _STATE_RE.match(raw):
        raise PayloadError(f"component.state: expected a state word, got {str(raw)[:40]!r}")
    state = raw if raw in _STATE_SET else BAY_STATES.get(raw, "unknown")
    detail = d.get("detail")
    if detail is not None and not isinstance(detail, dict):
        raise PayloadError("component.detail: expected an object")
    if detail is None:  # a bay publishes its fields at the top level
        detail = {k: v for k, v in d.items() if k not in ("name", "state", "label", "ts", "device")}
    return {"name": name, "state": state, "raw_state": raw, "label": _str(d, "label", "component", required=False),
            "ts": _str(d, "ts", "component", _ISO_RE, 40, required=False), "detail": detail}


def parse_ratio(payload: bytes, dev: str) -> dict:
    """{"at", "min_ratio_pct", "min_rooms", "units": [{unit_code, unit_name, officers, recorders, serials}]}
    (thresholds None when the station did not say); rows of units without a usable code (the station's "?" for recorders of no known unit) are left out."""
    d = _obj(loads(payload), "ratio")
    if d.get("device") is not None and d.get("device") != dev:
        raise PayloadError(f"ratio.device: {str(d.get('device'))[:40]!r} does not match the topic ({dev})")
    at = _str(d, "at", "ratio", _ISO_RE, 40)
    units = d.get("units")
    if not isinstance(units, list) or len(units) > 1000:
        raise PayloadError("ratio.units: expected a list of at most 1000 units")
    out = []
    for i, u in enumerate(units):
        f = f"ratio.units[{i}]"
        u = _obj(u, f)
        code = u.get("unit_code")
        if not isinstance(code, str):
            raise PayloadError(f"{f}.unit_code: expected a string")
        off = _int(u, "officers", f)
        rec = _int(u, "recorders_in_service", f)
        if off > 1_000_000 or rec > 100_000:
            raise PayloadError(f"{f}: counts out of range")
        serials = u.get("recorder_serials")
        if serials is not None and (not isinstance(serials, list) or len(serials) > 100_000 or not all(
                isinstance(x, str) and 0 < len(x) <= 64 for x in serials)):
            raise PayloadError(f"{f}.recorder_serials: expected a list of recorder serials")
        if not _ID_RE.match(code):
            continue
        out.append({"unit_code": code, "unit_name": _str(u, "unit_name", f, required=False), "officers": off,
                    "recorders": rec, "serials": serials})
    thresholds = {}
    for key, lo, hi in (("min_ratio_pct", 1, 1000), ("min_rooms", 0, 100)):
        v = d.get(key)
        if v is not None:
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise PayloadError(f"ratio.{key}: expected an integer {lo}..{hi}, got {str(v)[:20]!r}")
            thresholds[key] = v
    src = {"threshold_source": None, "policy_version": None, "policy_key_id": None}
    t = d.get("thresholds")
    if t is not None:
        t = _obj(t, "ratio.thresholds")
        if t.get("source") not in ("policy", "config", "default"):
            raise PayloadError(f"ratio.thresholds.source: expected policy, config or default, got {str(t.get('source'))[:20]!r}")
        src["threshold_source"] = t["source"]
        if t["source"] == "policy":
            v, k = t.get("policy_version"), t.get("policy_key_id")
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 2**53 - 1:
                raise PayloadError("ratio.thresholds.policy_version: expected the version of the policy in force")
            if not isinstance(k, str) or not re.fullmatch(r"[0-9a-f]{16}", k):
                raise PayloadError("ratio.thresholds.policy_key_id: expected 16 hex digits")
            src["policy_version"], src["policy_key_id"] = v, k
    return {"at": at, "units": out, "min_ratio_pct": thresholds.get("min_ratio_pct"),
            "min_rooms": thresholds.get("min_rooms"), **src}
