"""The room's alarms: kept locally (``room status`` shows them) and raised / cleared through the
:class:`~agent.common.ports.AlarmPort` the runtime hands the room (the health component, which
publishes them); without a port (a bare session in a test or a tool) they stay local."""

from __future__ import annotations

import logging
import threading

from agent.common.ports import AlarmPort
from agent.common.timeutil import now_iso

from .state import camera_names

log = logging.getLogger(__name__)

#: alarms about the room's devices, cleared when the session ends (failures stay until the next start)
DEVICE_ALARMS = ("camera_offline", "microphone_silent", "sensor_silent")

#: every (code, instance) the room raises; :meth:`Alarms.reset` clears them in the port, which keeps
#: alarms across restarts (``disk_low`` without an instance is the agent's own, not the room's)
ROOM_ALARMS: tuple[tuple[str, str | None], ...] = (
    *(("camera_offline", f"camera-{n}") for n in camera_names(2)),
    ("microphone_silent", "microphone"), ("microphone_silent", "microphone-level"),
    ("sensor_silent", "sensor"), ("disk_low", "room"),
    ("room_write_failed", None), ("room_capture_failed", None), ("room_seal_failed", None),
    ("room_state_unreadable", None), ("room_recovery_failed", None),
)


class Alarms:
    """The room's active alarms, here and in ``port``. ``code`` is one of
    ``agent.wire.health.CODES``; a key is ``code.instance`` (or ``code``)."""

    def __init__(self, port: AlarmPort | None = None) -> None:
        self.port = port
        self.active: dict[str, dict] = {}
        self._lock = threading.Lock()

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
        if self.port is not None:
            self.port.raise_alarm(code, zh, en, source="room", instance=instance)

    def clear(self, code: str, instance: str | None = None) -> None:
        key = self.key(code, instance)
        with self._lock:
            if self.active.pop(key, None) is None:
                return
        log.info("alarm %s cleared", key)
        if self.port is not None:
            self.port.clear_alarm(code, source="room", instance=instance)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.active.values())

    def reset(self, codes: tuple[str, ...] | None = None) -> None:
        """Clear the room's alarms (all, or those of ``codes``), here and in the port: at a
        session start (what is still wrong is raised again), and for the devices at its end."""
        with self._lock:
            for key in [k for k in self.active if codes is None or k.split(".", 1)[0] in codes]:
                del self.active[key]
        if self.port is None:
            return
        for code, instance in ROOM_ALARMS:
            if codes is None or code in codes:
                self.port.clear_alarm(code, source="room", instance=instance)
