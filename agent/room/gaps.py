"""Gaps in a recording (camera / microphone / sensor loss, capture stalls, agent interruptions):
kept open and closed here, and each sealed segment gets the part of every gap that touches it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading

from agent.common.timeutil import iso

#: what the gap reasons say (bilingual, as an officer and a judge read them)
REASONS = {
    "camera": "信号中断 / camera signal lost",
    "microphone": "音频中断（以静音填充）/ microphone lost, silence recorded",
    "sensor": "温湿度传感器无数据 / temperature-humidity sensor not answering",
    "crash": "录制中断：程序异常终止或断电 / recording interrupted: agent killed or power lost",
    "stopped": "录制中断：程序被停止 / recording interrupted: agent stopped",
    "stall": "采集停顿 / capture stalled",
}


@dataclasses.dataclass
class Gap:
    component: str
    reason: str
    start: dt.datetime
    end: dt.datetime | None = None


class GapLog:
    """Open and closed gaps; each segment gets the part of every gap that touches it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, Gap] = {}
        self._closed: list[Gap] = []
        self._carry: list[dict] = []     # attached whole to the next sealed segment (interruptions)

    def open(self, component: str, reason: str, at: dt.datetime) -> bool:
        with self._lock:
            if component in self._open:
                return False
            self._open[component] = Gap(component, reason, at)
            return True

    def close(self, component: str, at: dt.datetime) -> Gap | None:
        with self._lock:
            g = self._open.pop(component, None)
            if g is not None:
                g.end = max(at, g.start)
                self._closed.append(g)
            return g

    def carry(self, start: str, end: str, component: str, reason: str) -> None:
        with self._lock:
            self._carry.append({"start": start, "end": end, "component": component, "reason": reason})

    def active(self) -> list[str]:
        with self._lock:
            return sorted(self._open)

    def for_segment(self, start: dt.datetime, end: dt.datetime) -> list[dict]:
        """Gaps touching [start, end], clipped to it; interruptions carried in full. Consumes carries."""
        s0, e0 = start.replace(microsecond=0), end.replace(microsecond=0)
        out: list[dict] = []
        with self._lock:
            out.extend(self._carry)
            self._carry = []
            for g in [*self._closed, *self._open.values()]:
                g_end = g.end or end
                if g.start >= end or g_end <= start:     # exact times: no phantom second-long overlaps
                    continue
                ongoing = g.end is None or g.end > end
                out.append({"start": iso(max(g.start, s0)), "end": iso(min(g_end, e0)),
                            "component": g.component,
                            "reason": g.reason + (" (持续 / continues)" if ongoing else "")})
            self._closed = [g for g in self._closed if g.end is not None and g.end >= start]
        return out
