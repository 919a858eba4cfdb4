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

The monitor never trusts a payload: :func:`parse_health` and friends check every field they
use and raise :class:`PayloadError` naming the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: payload format version (``v`` in health)
VERSION = 1
#: the largest payload the monitor accepts on any device topic (bytes)
MAX_PAYLOAD = 64 * 1024

SEVERITIES = ("info", "warning", "critical")
COMPONENT_STATES = ("ok", "warning", "error", "offline", "stopped", "starting", "unknown")
KINDS = ("dock", "room", "archive")

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_ID_RE = re.compile(_ID)
_ISO = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)$"
_ISO_RE = re.compile(_ISO)
_CODE = r"^[a-z][a-z0-9_]{0,63}$"
_CODE_RE = re.compile(_CODE)


class PayloadError(ValueError):
    """A payload that does not follow its schema; the message names the field."""


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
    "description": "Retained, one topic per component (a bay, a camera, the microphone, the sensor, the uplink).",
    "type": "object",
    "required": ["name", "state", "ts"],
    "properties": {
        "name": _id,
        "state": {"enum": list(COMPONENT_STATES)},
        "ts": _iso,
        "device": _id,
        "detail": {"type": "object", "description": "the component's own status() (free form)"},
    },
    "additionalProperties": False,
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

RATIO_SCHEMA = {
    "$id": "ratio", "title": "Equipment ratio report (docking stations)",
    "description": "Retained. What a docking station knows of its unit: recorders enrolled and, when "
                   "configured, the number of enforcement officers (配备率: >= 1 recorder per 5 officers).",
    "type": "object",
    "required": ["unit_code", "recorders", "ts"],
    "properties": {
        "unit_code": _id,
        "unit_name": _text,
        "recorders": {"type": "integer", "minimum": 0, "maximum": 100000},
        "officers": {"type": ["integer", "null"], "minimum": 0, "maximum": 1000000},
        "recorder_ids": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 10000},
        "ts": _iso,
    },
    "additionalProperties": False,
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
            "type": "object", "maxProperties": 64,
            "additionalProperties": {
                "type": "object", "required": ["state"],
                "properties": {"state": {"enum": list(COMPONENT_STATES)}},
            },
        },
        "alarms": {"type": "array", "items": _id, "maxItems": 256, "description": "keys of the active alarms"},
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
def loads(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD:
        raise PayloadError(f"payload of {len(payload)} bytes is above the limit {MAX_PAYLOAD}")
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"not JSON: {str(exc)[:80]}") from None


def _obj(v: Any, field: str) -> dict:
    if not isinstance(v, dict):
        raise PayloadError(f"{field}: expected an object")
    return v


def _int(d: dict, key: str, field: str, *, nullable: bool = False, required: bool = True) -> int | None:
    v = d.get(key)
    if v is None and (nullable or not required):
        if key not in d and required and not nullable:
            raise PayloadError(f"{field}.{key}: missing")
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 2**62:
        raise PayloadError(f"{field}.{key}: expected a non-negative integer, got {str(v)[:40]!r}")
    return v


def _num(d: dict, key: str, field: str) -> float:
    v = d.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise PayloadError(f"{field}.{key}: expected a non-negative number, got {str(v)[:40]!r}")
    return float(v)


def _str(d: dict, key: str, field: str, pattern: re.Pattern | None = None, limit: int = 500,
         required: bool = True) -> str | None:
    v = d.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or len(v) > limit or (pattern is not None and not pattern.match(v)):
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
    out["components"] = {}
    for name, c in comps.items():
        if not _ID_RE.match(name) or not isinstance(c, dict) or c.get("state") not in COMPONENT_STATES:
            raise PayloadError(f"health.components.{str(name)[:40]}: invalid")
        out["components"][name] = c["state"]
    alarms = d.get("alarms")
    if not isinstance(alarms, list) or len(alarms) > 256 or not all(isinstance(a, str) and _ID_RE.match(a) for a in alarms):
        raise PayloadError("health.alarms: expected a list of alarm keys")
    out["alarms"] = alarms
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


def parse_component(payload: bytes, name: str) -> dict:
    d = _obj(loads(payload), "component")
    if d.get("name") != name:
        raise PayloadError(f"component.name: {str(d.get('name'))[:40]!r} does not match the topic ({name})")
    if d.get("state") not in COMPONENT_STATES:
        raise PayloadError(f"component.state: expected one of {', '.join(COMPONENT_STATES)}")
    detail = d.get("detail")
    if detail is not None and not isinstance(detail, dict):
        raise PayloadError("component.detail: expected an object")
    return {"name": name, "state": d["state"], "ts": _str(d, "ts", "component", _ISO_RE, 40), "detail": detail or {}}


def parse_ratio(payload: bytes) -> dict:
    d = _obj(loads(payload), "ratio")
    ids = d.get("recorder_ids")
    if ids is not None and (not isinstance(ids, list) or len(ids) > 10000
                            or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids)):
        raise PayloadError("ratio.recorder_ids: expected a list of recorder serials")
    rec = _int(d, "recorders", "ratio")
    off = _int(d, "officers", "ratio", nullable=True)
    if rec > 100000 or (off is not None and off > 1000000):
        raise PayloadError("ratio: counts out of range")
    return {"unit_code": _str(d, "unit_code", "ratio", _ID_RE), "unit_name": _str(d, "unit_name", "ratio", required=False),
            "recorders": rec, "officers": off, "recorder_ids": ids, "ts": _str(d, "ts", "ratio", _ISO_RE, 40)}


def safe_key(value: str) -> bool:
    """An alarm key / component name usable as one topic level."""
    return isinstance(value, str) and bool(_ID_RE.match(value))
