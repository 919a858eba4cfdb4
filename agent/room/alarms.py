"""The room's alarms: kept locally (``room status`` shows them) and raised / cleared in the
health registry when the agent runs one."""

from __future__ import annotations

import logging
import threading
from typing import Any

from agent.common.timeutil import now_iso

log = logging.getLogger(__name__)

#: alarms about the room's devices, cleared when the session ends (failures stay until the next start)
DEVICE_ALARMS = ("camera_offline", "microphone_silent", "sensor_silent")


class Alarms:
    """Raise / clear through ``agent.health.alarms`` (agent/health/alarms.py) when the health
    component runs; always kept locally as well (``room status`` shows them).

    ``code`` is a health alarm code (camera_offline, microphone_silent, sensor_silent,
    disk_low); codes the registry does not know (room_seal_failed, room_capture_failed) stay
    local and appear in the room's status, which health publishes with the component."""

    def __init__(self, agent: Any = None) -> None:
        self.agent = agent
        self.active: dict[str, dict] = {}
        self._lock = threading.Lock()

    def _sink(self):
        health = getattr(self.agent, "health", None) if self.agent is not None else None
        return getattr(health, "alarms", None)

    @staticmethod
    def key(code: str, instance: str | None) -> str:
        return f"{code}.{instance}" if instance else code

    def raise_(self, code: str, zh: str, en: str, instance: str | None = None) -> None:
        key = self.key(code, instance)
        with self._lock:
            if key in self.active:
                return
            self.active[key] = {"code": key, "message": f"{zh} / {en}", "since": now_iso()}
        log.warning("alarm %s: %s / %s", key, zh, en)
        sink = self._sink()
        if sink is not None:
            try:
                sink.raise_(code, zh, en, source="room", instance=instance)
            except (KeyError, ValueError):
                log.debug("alarm code %s unknown to the health registry: kept local", code)
            except Exception:
                log.exception("raising alarm %s failed", key)

    def clear(self, code: str, instance: str | None = None) -> None:
        key = self.key(code, instance)
        with self._lock:
            if self.active.pop(key, None) is None:
                return
        log.info("alarm %s cleared", key)
        sink = self._sink()
        if sink is not None:
            try:
                sink.clear(code, source="room", instance=instance)
            except (KeyError, ValueError):
                pass
            except Exception:
                log.exception("clearing alarm %s failed", key)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.active.values())

    def reset(self, codes: tuple[str, ...] | None = None) -> None:
        """Clear the room's alarms (all, or those of ``codes``), here and in the health registry
        (which keeps them across restarts): at a session start, and for the devices at its end."""
        with self._lock:
            for key in [k for k in self.active if codes is None or k.split(".", 1)[0] in codes]:
                del self.active[key]
        sink = self._sink()
        if sink is None or not hasattr(sink, "active"):
            return
        for a in sink.active():
            if getattr(a, "source", None) == "room" and (codes is None or a.code in codes):
                code, _, inst = a.key.partition(".")
                try:
                    sink.clear(code, source="room", instance=inst or None)
                except Exception:
                    log.exception("clearing alarm %s failed", a.key)
