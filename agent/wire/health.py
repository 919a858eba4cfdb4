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

Every one of these payloads travels inside a signed envelope (agent/wire/envelope.py: :class:`Sealer` on the device,
:func:`open_envelope` and :func:`verify` at the monitor; ENVELOPE_SCHEMA, docs/mqtt.md "Signed
device state"): the body's exact bytes, bound by their SHA-256 to a header naming the device, the
full topic, the kind, an (epoch, seq) counter and the key id, signed with the device's Ed25519
key over the header's RFC 8785 bytes.

The monitor never trusts a payload: :func:`agent.wire.health_parse.parse_health` and friends check
every field they use and raise :class:`PayloadError` naming the field. The envelope's code is
agent/wire/envelope.py; this module keeps the schemas, the builders and the alarm CODES.
"""

from __future__ import annotations

import dataclasses
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
        "thresholds": {"type": "object", "required": ["source"], "additionalProperties": False,
                       "description": "where min_ratio_pct and min_rooms come from: the unit policy in force (its "
                                      "version and key id) or, while none has been applied, the station's config",
                       "properties": {"source": {"enum": ["policy", "config", "default"]},
                                      "policy_version": {"type": ["integer", "null"], "minimum": 1},
                                      "policy_key_id": {"type": ["string", "null"], "pattern": "^[0-9a-f]{16}$"}}},
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
    # a genuinely signed policy of newer software, with rules this station does not know: refused whole
    "policy_upgrade_needed": AlarmDef("critical", "策略含本站不认识的规则，须升级本站软件",
                                      "policy has rules this station does not know: upgrade the station"),
    # the policy's archive trust list named a key to pin without a valid endorsement (agent/policy/archive_keys.py)
    "archive_key_refused": AlarmDef("critical", "策略中的归档公钥未经背书，未固定",
                                    "archive key in the policy not endorsed: not pinned"),
    # the unit policy's rules enforced at the station (agent/store/policy_rules.py): one alarm per
    # officer and recorder with items past the upload deadline; the unarchived backlog above the quota
    "upload_overdue": AlarmDef("warning", "资料超过上传时限未归档", "items past the upload deadline"),
    "quota_exceeded": AlarmDef("warning", "未归档资料超过策略配额", "unarchived items above the policy quota"),
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
