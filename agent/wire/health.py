"""The payloads of the device state topics, in one place: JSON Schemas (docs/asyncapi.yaml carries
the same schemas; a test keeps them equal), builders used by the agent, and fast parsers used by
the central monitor.

Topics (``P`` prefix, ``D`` device; see agent/uplink/topics.py)::

    P/dev/D/status            STATUS_SCHEMA     retained; written by the uplink (birth/death, bdseq)
    P/dev/D/health            HEALTH_SCHEMA     every health.interval_s, QoS 0, not retained
    P/dev/D/alarm/KEY         ALARM_SCHEMA      retained; KEY = CODE or CODE.INSTANCE; cleared by
                                                 a retained payload with "active": false
    P/dev/D/component/NAME    COMPONENT_SCHEMA  retained per component (bay-1, camera-main, ...)
    P/dev/D/ratio             RATIO_SCHEMA      retained; docking stations: recorders (and officers) known

Every one of these payloads travels inside a signed envelope (:class:`Sealer` on the device,
:func:`open_envelope` and :func:`verify` at the monitor; ENVELOPE_SCHEMA, docs/mqtt.md "Signed
device state"): the body's exact bytes, bound by their SHA-256 to a header naming the device, the
full topic, the kind, an (epoch, seq) counter and the key id, signed with the device's Ed25519
key over the header's RFC 8785 bytes.

The monitor never trusts a payload: :func:`parse_health` and friends check every field they
use and raise :class:`PayloadError` naming the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import threading
import time
from typing import Any

from agent.common.canon import canonical
from agent.common.timeutil import now_iso
from agent.evidence import keys

#: payload format version (``v`` in health)
VERSION = 1
#: the largest payload the monitor accepts on any device topic (bytes)
MAX_PAYLOAD = 64 * 1024

SEVERITIES = ("info", "warning", "critical")
COMPONENT_STATES = ("ok", "warning", "error", "offline", "stopped", "starting", "unknown")
KINDS = ("dock", "room", "archive")
_STATE_SET = frozenset(COMPONENT_STATES)

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_ID_RE = re.compile(_ID)
_ISO = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)$"
_ISO_RE = re.compile(_ISO)
_CODE = r"^[a-z][a-z0-9_]{0,63}$"
_CODE_RE = re.compile(_CODE)


class PayloadError(ValueError):
    """A payload that does not follow its schema; the message names the field."""


class UnsignedError(PayloadError):
    """A payload that is not a signed envelope at all (plain JSON, empty, garbage)."""


# --- JSON Schemas (draft 2020-12) -----------------------------------------------------------------
_iso = {"type": "string", "pattern": _ISO, "description": "ISO 8601 time with UTC offset"}
_id = {"type": "string", "pattern": _ID, "maxLength": 128}
_count = {"type": "integer", "minimum": 0}
_nullable_count = {"type": ["integer", "null"], "minimum": 0}
_text = {"type": "string", "maxLength": 500}

MESSAGE_SCHEMA = {
    "type": "object",
    "description": "bilingual text for the officer / operator",
    "required": ["zh", "en"],
    "properties": {"zh": _text, "en": _text},
    "additionalProperties": False,
}

STATUS_SCHEMA = {
    "$id": "status", "title": "Device status (birth / death)",
    "description": "Retained. 'online' after every connect, 'offline' as the MQTT last will or on a clean "
                   "stop; bdseq matches the will of the same connection (Sparkplug B style), so a stale "
                   "'online' cannot survive a crash.",
    "type": "object",
    "required": ["state", "bdseq"],
    "properties": {
        "state": {"enum": ["online", "offline"]},
        "bdseq": {"type": "integer", "minimum": 0},
        "device": _id,
        "kind": {"enum": list(KINDS)},
        "unit_code": _id,
        "unit_name": _text,
        "version": {"type": "string", "maxLength": 64},
        "ts": _iso,
        "reason": _text,
    },
    "additionalProperties": True,
}

COMPONENT_SCHEMA = {
    "$id": "component", "title": "Component status",
    "description": "Retained, one topic per component. The health component publishes every agent component "
                   "(dock, room, uplink, ...) and the parts a component lists (camera-main, microphone, sensor) as "
                   "{name, state, ts, device, detail} with state one of ok|warning|error|offline|stopped|starting|"
                   "unknown. Docking-station bays (bay-N) are reported by the station (through the health component) with the bay's "
                   "workflow state (idle, identifying, charging, downloading, verifying, uploading, done, error), a "
                   "bilingual label and the bay's progress fields (agent/dock/state.py BayState).",
    "type": "object",
    "required": ["name", "state"],
    "properties": {
        "name": _id,
        "state": {"type": "string", "pattern": "^[a-z][a-z_-]{0,31}$"},
        "label": _text,
        "ts": _iso,
        "device": _id,
        "detail": {"type": "object", "description": "the component's own status() (free form)"},
    },
    "additionalProperties": True,
}

ALARM_SCHEMA = {
    "$id": "alarm", "title": "Alarm raised / cleared",
    "description": "Retained on P/dev/D/alarm/KEY (KEY = code, or code.instance for one piece of equipment). "
                   "'active': false clears it; the retained clear stays so late subscribers see the end.",
    "type": "object",
    "required": ["code", "key", "active", "severity", "since", "ts", "message", "source"],
    "properties": {
        "code": {"type": "string", "pattern": _CODE},
        "key": _id,
        "active": {"type": "boolean"},
        "severity": {"enum": list(SEVERITIES)},
        "since": _iso,
        "ts": _iso,
        "cleared": {"type": ["string", "null"], "pattern": _ISO},
        "message": MESSAGE_SCHEMA,
        "source": {"type": "string", "maxLength": 128},
        "device": _id,
        "unit_code": _id,
    },
    "additionalProperties": False,
}

_ratio_row = {
    "type": "object",
    "description": "one unit the station knows (from its roster and recorder registry; agent/dock/registry.py RatioRow)",
    "required": ["unit_code", "officers", "recorders_in_service"],
    "properties": {
        "unit_code": {"type": "string", "maxLength": 64},
        "unit_name": _text,
        "officers": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "recorders_in_service": {"type": "integer", "minimum": 0, "maximum": 100000},
        "ratio_pct": {"type": ["integer", "null"], "minimum": 0, "description": "recorders per 100 officers"},
        "min_ratio_pct": {"type": "integer", "minimum": 0},
        "meets_minimum": {"type": "boolean"},
        "recorders_registered": _count,
        "recorders_used": _count,
        "usage_pct": {"type": ["integer", "null"], "minimum": 0},
        "usage_days": _count,
        "conflicts": _count,
        "recorder_serials": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 100000,
                             "description": "optional: serials of the recorders that count, to de-duplicate across stations"},
        "excluded": {"type": "array", "maxItems": 100000, "description":
                     "recorders left out of the count and why (agent/common/ratio.py REASONS: not_in_service, unassigned, "
                     "auth_failed, conflict)",
                     "items": {"type": "object", "required": ["serial", "reason"],
                               "properties": {"serial": {"type": "string", "maxLength": 64},
                                              "reason": {"type": "string", "maxLength": 32}, "text": _text}}},
        "min_rooms": _count,
    },
    "additionalProperties": True,
}

RATIO_SCHEMA = {
    "$id": "ratio", "title": "Equipment ratio report (docking stations)",
    "description": "Retained; written by the docking station (agent/dock/station.py) when its registry changes and "
                   "periodically. Per unit: officers (roster) and the recorders that count — enrolled, assigned, healthy "
                   "(agent/common/ratio.py) — with each one left out and why (配备率: at least one recorder per five officers, "
                   "min_ratio_pct 20 by default), plus items pending annotation per officer.",
    "type": "object",
    "required": ["device", "at", "units"],
    "properties": {
        "device": _id,
        "at": _iso,
        "min_ratio_pct": {"type": "integer", "minimum": 1, "maximum": 1000,
                          "description": "the station's dock.min_ratio_pct; the monitor judges the unit by it"},
        "min_rooms": {"type": "integer", "minimum": 0, "maximum": 100,
                      "description": "the station's dock.min_rooms (interview rooms per unit); the monitor judges by it"},
        "usage_days": _count,
        "units": {"type": "array", "items": _ratio_row, "maxItems": 1000},
        "pending": {"type": "array", "maxItems": 10000, "items": {
            "type": "object", "properties": {"officer_number": {"type": ["string", "null"]},
                                             "officer_name": {"type": ["string", "null"]},
                                             "unit_code": {"type": ["string", "null"]},
                                             "pending_items": _count, "oldest": {"type": ["string", "null"]}}}},
    },
    "additionalProperties": True,
}

HEALTH_SCHEMA = {
    "$id": "health", "title": "Periodic health",
    "description": "Every health.interval_s (default 30 s), QoS 0, not retained.",
    "type": "object",
    "required": ["v", "device", "unit_code", "kind", "ts", "seq", "uptime_s", "cpu_percent", "memory", "disk",
                 "buffer", "usage", "uplink", "clock", "components", "alarms"],
    "properties": {
        "v": {"const": VERSION},
        "device": _id,
        "unit_code": _id,
        "unit_name": _text,
        "kind": {"enum": list(KINDS)},
        "version": {"type": "string", "maxLength": 64},
        "ts": _iso,
        "seq": _count,
        "uptime_s": _count,
        "cpu_percent": {"type": "number", "minimum": 0},
        "load1": {"type": ["number", "null"], "minimum": 0},
        "memory": {
            "type": "object", "required": ["total_bytes", "used_percent", "rss_bytes"],
            "properties": {"total_bytes": _count, "used_percent": {"type": "number", "minimum": 0, "maximum": 100},
                           "rss_bytes": _count},
            "additionalProperties": False,
        },
        "disk": {
            "type": "object", "required": ["free_bytes", "total_bytes", "reserve_bytes", "low"],
            "properties": {"free_bytes": _count, "total_bytes": _count, "reserve_bytes": _count,
                           "low": {"type": "boolean"}},
            "additionalProperties": False,
        },
        "buffer": {
            "type": "object",
            "required": ["items", "bytes", "oldest_age_s", "pending_annotation", "oldest_pending_annotation_age_s"],
            "properties": {"items": _count, "bytes": _count, "oldest_age_s": _nullable_count,
                           "pending_annotation": _count, "oldest_pending_annotation_age_s": _nullable_count},
            "additionalProperties": False,
        },
        "usage": {
            "type": "object", "description": "monotonic counters since the device was set up",
            "required": ["items_total", "items_archived", "recorded_s"],
            "properties": {"items_total": _count, "items_archived": _count, "recorded_s": _count},
            "additionalProperties": False,
        },
        "uplink": {
            "type": "object", "required": ["connected"],
            "properties": {"connected": {"type": "boolean"}, "reconnects": _count, "errors": _count,
                           "bytes_sent": _count, "bytes_per_s": {"type": "number", "minimum": 0},
                           "items_archived": _count, "archive_reachable": {"type": ["boolean", "null"]},
                           "last_error": {"type": ["string", "null"], "maxLength": 500}},
            "additionalProperties": True,
        },
        "clock": {
            "type": "object", "required": ["synchronized", "source", "offset_ms"],
            "properties": {"synchronized": {"type": ["boolean", "null"]},
                           "source": {"enum": ["adjtimex", "timedatectl", "uplink", "unknown"]},
                           "offset_ms": {"type": ["integer", "null"]},
                           "max_error_ms": {"type": ["integer", "null"], "minimum": 0}},
            "additionalProperties": False,
        },
        "components": {
            "type": "object", "maxProperties": 64, "propertyNames": {"pattern": _ID},
            "additionalProperties": {
                "type": "object", "required": ["state"],
                "properties": {"state": {"enum": list(COMPONENT_STATES)}},
            },
        },
        "alarms": {"type": "array", "items": _id, "maxItems": 256, "description": "keys of the active alarms"},
        "policy_version": {"type": ["integer", "null"], "minimum": 1,
                           "description": "version of the signed unit policy in force (P/unit/U/policy), null for none"},
    },
    "additionalProperties": False,
}

SCHEMAS = {"status": STATUS_SCHEMA, "health": HEALTH_SCHEMA, "alarm": ALARM_SCHEMA,
           "component": COMPONENT_SCHEMA, "ratio": RATIO_SCHEMA}


# --- builders (agent side) ------------------------------------------------------------------------
def component_state(status: Any) -> str:
    """Normalise a component's status() to one of COMPONENT_STATES."""
    if not isinstance(status, dict):
        return "unknown"
    st = status.get("state")
    if st in COMPONENT_STATES:
        return st
    if st in ("running", "recording", "idle", "connected", "online"):
        return "ok"
    if st in ("disconnected",):
        return "offline"
    if status.get("error") or status.get("last_error"):
        return "warning"
    return "ok" if status.get("running", True) else "stopped"


def jsonable(obj: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of a status dict (no NaN, no objects, bounded depth)."""
    if depth > 6:
        return None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in list(obj.items())[:100]}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v, depth + 1) for v in list(obj)[:100]]
    return str(obj)


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
    return {"at": at, "units": out, "min_ratio_pct": thresholds.get("min_ratio_pct"),
            "min_rooms": thresholds.get("min_rooms")}


def safe_key(value: str) -> bool:
    """An alarm key / component name usable as one topic level."""
    return isinstance(value, str) and bool(_ID_RE.match(value))


@dataclasses.dataclass(frozen=True)
class AlarmDef:
    severity: str
    zh: str
    en: str


#: every alarm code, its default severity and its title (中文 / English)
CODES: dict[str, AlarmDef] = {
    "disk_low": AlarmDef("critical", "磁盘空间不足", "disk space low"),
    "backlog_old": AlarmDef("warning", "待上传资料积压过久", "upload backlog too old"),
    "clock_unsynced": AlarmDef("warning", "时钟未同步", "clock not synchronised"),
    "clock_drift": AlarmDef("warning", "时钟偏差过大", "clock drifting"),
    "camera_offline": AlarmDef("critical", "摄像头离线", "camera offline"),
    "microphone_silent": AlarmDef("critical", "麦克风无声", "microphone silent"),
    "sensor_silent": AlarmDef("warning", "温湿度传感器无数据", "sensor silent"),
    "recorder_battery_low": AlarmDef("warning", "执法记录仪电量低", "recorder battery low"),
    "archive_unreachable": AlarmDef("warning", "归档服务器不可达", "archive unreachable"),
    "pending_annotation_old": AlarmDef("warning", "资料待补录信息过久", "items pending annotation too long"),
    "unknown_device_rejected": AlarmDef("critical", "归档拒绝未登记设备", "unknown device rejected at the archive"),
    # unit policy (agent/policy): a forged, older, other-unit or expired policy refused; the one in force expired
    "policy_refused": AlarmDef("critical", "下发策略被拒绝（伪造、回退、他单位或过期）",
                               "unit policy refused (forged, rolled back, other unit or expired)"),
    "policy_expired": AlarmDef("warning", "执行中的策略已过期", "policy in force has expired"),
    # docking station
    "dock_disk_full": AlarmDef("critical", "采集站磁盘已满，拒绝接入", "station disk full, docking refused"),
    "recorder_clock": AlarmDef("warning", "执法记录仪时钟严重偏差", "recorder clock far off"),
    "recorder_serial_conflict": AlarmDef("critical", "两台记录仪序列号相同", "two recorders claim the same serial"),
    "recorder_auth_failed": AlarmDef("warning", "记录仪管理员密码错误", "recorder admin password refused"),
    "recorder_no_answer": AlarmDef("warning", "记录仪无应答或通信错误", "recorder does not answer"),
    "recorder_unsafe_name": AlarmDef("warning", "记录仪文件名不安全", "recorder reported unsafe file names"),
    "recorder_officer_mismatch": AlarmDef("warning", "记录仪警员与分配不符", "recorder officer differs from the assignment"),
    # interview room
    "room_state_unreadable": AlarmDef("critical", "询问室会话状态文件损坏", "room session state unreadable"),
    "room_recovery_failed": AlarmDef("critical", "询问室录像恢复失败", "room recording recovery failed"),
    "room_write_failed": AlarmDef("critical", "录制写入失败", "recording write failed"),
    "room_capture_failed": AlarmDef("critical", "录制异常", "recording failed"),
    "room_seal_failed": AlarmDef("critical", "分段封存失败", "segment sealing failed"),
}


# --- the signed envelope (every device-state topic) -----------------------------------------------
#: envelope format version (``v``)
ENVELOPE = 1
#: the topics whose payloads are sealed (P/dev/D/KIND[/NAME])
SIGNED_KINDS = ("status", "health", "alarm", "component", "ratio")
#: the ledger meta key of the last epoch a device used (agent side)
EPOCH_META = "wire.state_epoch"
_MAX_COUNTER = 2**53 - 1   # RFC 8785: integers beyond this are not exact
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SIG_RE = re.compile(r"^[A-Za-z0-9+/]{86}==$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,400}$")
_HEADER = ("v", "device", "kind", "topic", "epoch", "seq", "ts", "key_id", "body_sha256")

ENVELOPE_SCHEMA = {
    "$id": "envelope", "title": "Signed device state (every P/dev/D/{status,health,alarm,component,ratio})",
    "description": "The payload of every device-state topic. 'body' is the exact JSON text of the message (the "
                   "status, health, alarm, component or ratio schema); the signature is Ed25519 (the device key "
                   "enrolled at the archive) over the RFC 8785 bytes of the header: every field except 'body' "
                   "and 'sig'. 'body_sha256' binds the body's UTF-8 bytes, 'topic' the full topic (a signature "
                   "is not valid on another topic or for another device), (epoch, seq) orders the messages of "
                   "one topic (a replayed older message is refused). A status message is ordered by "
                   "(bdseq, online < offline) instead, because the last will is sealed at connect, before "
                   "the birth. docs/mqtt.md, 'Signed device state'.",
    "type": "object",
    "required": list(_HEADER) + ["body", "sig"],
    "properties": {
        "v": {"const": ENVELOPE},
        "device": _id,
        "kind": {"enum": list(SIGNED_KINDS)},
        "topic": {"type": "string", "maxLength": 400, "description": "the full topic the message is published on"},
        "epoch": {"type": "integer", "minimum": 1, "maximum": _MAX_COUNTER,
                  "description": "grows at every agent start (at least the start time in Unix seconds)"},
        "seq": {"type": "integer", "minimum": 1, "maximum": _MAX_COUNTER, "description": "per epoch, from 1"},
        "ts": _iso,
        "key_id": {"type": "string", "pattern": "^[0-9a-f]{16}$",
                   "description": "first 16 hex digits of SHA-256 of the raw Ed25519 public key"},
        "body_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "body": {"type": "string", "description": "the message's JSON text (UTF-8), signed through body_sha256"},
        "sig": {"type": "string", "pattern": "^[A-Za-z0-9+/]{86}==$", "description": "base64 Ed25519 signature"},
    },
    "additionalProperties": False,
}
SCHEMAS["envelope"] = ENVELOPE_SCHEMA


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by null (JSON has neither); nothing truncated."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def body_bytes(body: dict | bytes | str) -> bytes:
    """The exact bytes a body is sealed as (sorted keys, UTF-8, no NaN)."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    try:
        return json.dumps(body, ensure_ascii=False, sort_keys=True, allow_nan=False, default=str).encode()
    except ValueError:
        return json.dumps(_finite(body), ensure_ascii=False, sort_keys=True, allow_nan=False, default=str).encode()


class Sealer:
    """Seals the device-state messages of one device (the agent side).

    ``epoch`` must grow at every start of the agent (:meth:`for_ledger` keeps it in the ledger's
    meta and takes at least the current Unix time, so a wiped ledger still starts above every
    earlier epoch); ``seq`` counts from 1 within an epoch. Thread-safe.
    """

    def __init__(self, private_key, device: str, epoch: int):
        if not _ID_RE.match(device or ""):
            raise ValueError(f"device id {device!r} cannot be sealed for")
        if not 1 <= epoch <= _MAX_COUNTER:
            raise ValueError(f"epoch {epoch} out of range")
        self.key = private_key
        self.device = device
        self.epoch = epoch
        self.key_id = keys.key_id(private_key.public_key())
        self._n = 0
        self._lock = threading.Lock()

    @classmethod
    def for_ledger(cls, store) -> "Sealer":
        """A sealer with the store's device key and a fresh epoch (saved in the ledger's meta)."""
        prev = store.get_meta(EPOCH_META)
        try:
            prev_n = int(prev or 0)
        except ValueError:
            prev_n = 0
        epoch = max(prev_n + 1, int(time.time()))
        store.set_meta(EPOCH_META, str(epoch))
        return cls(store.private_key, store.cfg.device.id, epoch)

    def seal(self, topic: str, body: dict | bytes | str) -> bytes:
        """The envelope to publish on ``topic`` (P/dev/DEVICE/KIND[/NAME]) carrying ``body``."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[1] != "dev" or parts[2] != self.device or parts[3] not in SIGNED_KINDS:
            raise ValueError(f"{topic}: not a device-state topic of {self.device}")
        data = body_bytes(body)
        with self._lock:
            self._n += 1
            n = self._n
        header = {"v": ENVELOPE, "device": self.device, "kind": parts[3], "topic": topic, "epoch": self.epoch,
                  "seq": n, "ts": now_iso(), "key_id": self.key_id,
                  "body_sha256": hashlib.sha256(data).hexdigest()}
        sig = keys.sign(self.key, canonical(header))
        return json.dumps({**header, "body": data.decode(), "sig": sig}, ensure_ascii=False,
                          separators=(",", ":")).encode()


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    device: str
    kind: str
    topic: str
    epoch: int
    seq: int
    ts: str
    key_id: str
    body_sha256: str
    body: bytes
    sig: str

    def header(self) -> dict:
        return {"v": ENVELOPE, "device": self.device, "kind": self.kind, "topic": self.topic, "epoch": self.epoch,
                "seq": self.seq, "ts": self.ts, "key_id": self.key_id, "body_sha256": self.body_sha256}

    def signed_bytes(self) -> bytes:
        """The RFC 8785 bytes of the header. Every header value is an integer or an ASCII string
        without characters JSON escapes (checked by :func:`open_envelope`), and for such values
        sorted compact JSON is exactly RFC 8785: orjson writes it ~10x faster than the general
        serialiser (tests/test_health_signed.py compares both)."""
        if _orjson is not None:
            return _orjson.dumps(self.header(), option=_orjson.OPT_SORT_KEYS)
        return canonical(self.header())


def _counter(d: dict, key: str) -> int:
    v = d.get(key)
    if type(v) is not int or not 1 <= v <= _MAX_COUNTER:
        raise PayloadError(f"envelope.{key}: expected an integer 1..2^53-1, got {str(v)[:40]!r}")
    return v


def open_envelope(payload: bytes) -> Envelope:
    """Parse a signed envelope (no signature check yet: :func:`verify`). Raises
    :class:`UnsignedError` when the payload is not an envelope at all, :class:`PayloadError`
    naming the field otherwise. Body bytes must hash to ``body_sha256``."""
    if not payload:
        raise UnsignedError("empty payload (not signed)")
    try:
        d = loads(payload)
    except PayloadError as exc:
        raise UnsignedError(str(exc)) from None
    if type(d) is not dict or "sig" not in d or "body" not in d:
        raise UnsignedError("not a signed envelope (no body and sig)")
    if len(d) != len(_HEADER) + 2 or not all(k in d for k in _HEADER):
        extra = sorted(set(map(str, d)) - set(_HEADER) - {"body", "sig"})[:3]
        raise PayloadError(f"envelope: fields {', '.join(_HEADER)}, body, sig required"
                           + (f"; unknown {extra}" if extra else ""))
    if d["v"] != ENVELOPE or type(d["v"]) is not int:
        raise PayloadError(f"envelope.v: expected {ENVELOPE}")
    device, kind, topic, ts = d["device"], d["kind"], d["topic"], d["ts"]
    if type(device) is not str or not _ID_RE.match(device):
        raise PayloadError("envelope.device: invalid")
    if kind not in SIGNED_KINDS:
        raise PayloadError("envelope.kind: invalid")
    if type(topic) is not str or not _TOPIC_RE.match(topic):
        raise PayloadError("envelope.topic: invalid")
    if type(ts) is not str or len(ts) > 40 or not _ISO_RE.match(ts):
        raise PayloadError("envelope.ts: invalid")
    kid, bh, sig, body = d["key_id"], d["body_sha256"], d["sig"], d["body"]
    if type(kid) is not str or not _HEX16.match(kid):
        raise PayloadError("envelope.key_id: expected 16 hex digits")
    if type(bh) is not str or not _HEX64.match(bh):
        raise PayloadError("envelope.body_sha256: expected 64 hex digits")
    if type(sig) is not str or not _SIG_RE.match(sig):
        raise PayloadError("envelope.sig: expected a base64 Ed25519 signature")
    if type(body) is not str:
        raise PayloadError("envelope.body: expected the message's JSON text")
    try:
        raw = body.encode()
    except UnicodeEncodeError:
        raise PayloadError("envelope.body: not encodable as UTF-8 (lone surrogate)") from None
    if hashlib.sha256(raw).hexdigest() != bh:
        raise PayloadError("envelope.body_sha256: does not match the body")
    return Envelope(device, kind, topic, _counter(d, "epoch"), _counter(d, "seq"), ts, kid, bh, raw, sig)


def verify(env: Envelope, public) -> bool:
    """Whether ``env`` is signed by ``public`` (an Ed25519 public key)."""
    return keys.verify_sig(public, env.signed_bytes(), env.sig)
