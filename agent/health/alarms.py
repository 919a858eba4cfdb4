"""Alarms: a registry of raised/cleared conditions, each published as a retained MQTT topic.

Any component raises and clears through the agent's health component::

    agent.health.alarms.raise_("camera_offline", "主摄像头离线", "main camera offline",
                               severity="critical", source="room", instance="camera-main")
    agent.health.alarms.clear("camera_offline", source="room", instance="camera-main")

The topic is ``P/dev/D/alarm/KEY`` with KEY = ``code`` or ``code.instance`` (one alarm per piece
of equipment). A raise publishes the alarm (retained) when it is new or its severity or message
changed; ``since`` is kept from the first raise. A clear publishes a retained payload with
``"active": false`` so a monitor that subscribes later still learns the alarm ended. Active
alarms are kept in the ledger (meta ``health.alarms``) so ``since`` and the clear survive an
agent restart.

The registry does not need an Agent: the archive uses it with its own publish function.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from typing import Callable

from agent.common.timeutil import now_iso
from agent.wire.health import CODES, SEVERITIES, AlarmDef, safe_key  # noqa: F401  (the alarm vocabulary)

log = logging.getLogger(__name__)


META_KEY = "health.alarms"


@dataclasses.dataclass
class Alarm:
    code: str
    key: str
    severity: str
    since: str
    message_zh: str
    message_en: str
    source: str
    active: bool = True
    ts: str = ""
    cleared: str | None = None

    def payload(self, device: str | None = None, unit_code: str | None = None) -> dict:
        out = {"code": self.code, "key": self.key, "active": self.active, "severity": self.severity,
               "since": self.since, "ts": self.ts or now_iso(), "message": {"zh": self.message_zh, "en": self.message_en},
               "source": self.source}
        if self.cleared:
            out["cleared"] = self.cleared
        if device:
            out["device"] = device
        if unit_code:
            out["unit_code"] = unit_code
        return out


def alarm_key(code: str, instance: str | None = None) -> str:
    if code not in CODES:
        raise ValueError(f"unknown alarm code {code!r} (known: {', '.join(CODES)})")
    if instance is None:
        return code
    key = f"{code}.{instance}"
    if not safe_key(key):
        raise ValueError(f"alarm instance {instance!r}: letters, digits, '_', '.', '-' only")
    return key


class AlarmRegistry:
    """Raise/clear alarms; ``publish(key, payload_dict)`` sends the retained topic of one alarm."""

    def __init__(self, publish: Callable[[str, dict], None] | None = None, *, device: str | None = None,
                 unit_code: str | None = None, load: Callable[[], str | None] | None = None,
                 save: Callable[[str], None] | None = None):
        self._publish = publish
        self.device = device
        self.unit_code = unit_code
        self._save = save
        self._lock = threading.RLock()
        self._active: dict[str, Alarm] = {}
        self.raised_count = 0
        self.cleared_count = 0
        if load is not None:
            self._restore(load())

    @classmethod
    def for_store(cls, store, publish: Callable[[str, dict], None] | None = None) -> "AlarmRegistry":
        d = store.cfg.device
        return cls(publish, device=d.id, unit_code=d.unit_code,
                   load=lambda: store.get_meta(META_KEY), save=lambda v: store.set_meta(META_KEY, v))

    def set_publisher(self, publish: Callable[[str, dict], None] | None) -> None:
        self._publish = publish

    # --- persistence ------------------------------------------------------------------------------
    def _restore(self, text: str | None) -> None:
        if not text:
            return
        try:
            for rec in json.loads(text):
                a = Alarm(**rec)
                if a.code in CODES:
                    self._active[a.key] = a
        except (ValueError, TypeError) as exc:
            log.warning("stored alarms unreadable, starting empty: %s", exc)

    def _persist(self) -> None:
        if self._save is not None:
            try:
                self._save(json.dumps([dataclasses.asdict(a) for a in self._active.values()], ensure_ascii=False))
            except Exception:
                log.exception("could not persist the active alarms")

    def _send(self, alarm: Alarm) -> None:
        if self._publish is None:
            return
        try:
            self._publish(alarm.key, alarm.payload(self.device, self.unit_code))
        except Exception:
            log.exception("publishing alarm %s failed", alarm.key)

    # --- API --------------------------------------------------------------------------------------
    def raise_(self, code: str, message_zh: str | None = None, message_en: str | None = None,
               severity: str | None = None, source: str = "health", instance: str | None = None) -> Alarm:
        """Raise (or update) an alarm; published only when new or changed. Returns it."""
        key = alarm_key(code, instance)
        d = CODES[code]
        severity = severity or d.severity
        if severity not in SEVERITIES:
            raise ValueError(f"alarm severity {severity!r}: expected one of {', '.join(SEVERITIES)}")
        zh = (message_zh or d.zh)[:500]
        en = (message_en or d.en)[:500]
        with self._lock:
            cur = self._active.get(key)
            if cur and (cur.severity, cur.message_zh, cur.message_en, cur.source) == (severity, zh, en, source):
                return cur
            ts = now_iso()
            alarm = Alarm(code=code, key=key, severity=severity, since=cur.since if cur else ts, message_zh=zh,
                          message_en=en, source=source, ts=ts)
            self._active[key] = alarm
            if cur is None:
                self.raised_count += 1
                log.warning("alarm raised: %s (%s) %s / %s", key, severity, zh, en)
            self._persist()
            self._send(alarm)
            return alarm

    def clear(self, code: str, source: str | None = None, instance: str | None = None) -> bool:
        """Clear an active alarm (publishes ``active: false``). False if it was not active."""
        key = alarm_key(code, instance)
        with self._lock:
            cur = self._active.pop(key, None)
            if cur is None:
                return False
            ts = now_iso()
            done = dataclasses.replace(cur, active=False, ts=ts, cleared=ts,
                                       source=source or cur.source)
            self.cleared_count += 1
            log.info("alarm cleared: %s (raised %s)", key, cur.since)
            self._persist()
            self._send(done)
            return True

    def set(self, condition: bool, code: str, message_zh: str | None = None, message_en: str | None = None,
            severity: str | None = None, source: str = "health", instance: str | None = None) -> None:
        """Raise when ``condition`` holds, clear otherwise (for periodic checks)."""
        if condition:
            self.raise_(code, message_zh, message_en, severity, source, instance)
        else:
            self.clear(code, source, instance)

    def is_active(self, code: str, instance: str | None = None) -> bool:
        return alarm_key(code, instance) in self._active

    def active(self) -> list[Alarm]:
        with self._lock:
            return sorted(self._active.values(), key=lambda a: a.key)

    def republish(self) -> None:
        """Send every active alarm again (after a rebirth request)."""
        for a in self.active():
            self._send(a)

    def status(self) -> dict:
        return {"active": [a.key for a in self.active()], "raised": self.raised_count, "cleared": self.cleared_count}
