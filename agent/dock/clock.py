"""The recorder's clock at a docking: measured once (recorder − station, the request's midpoint),
kept with the recorder for the files recorded under it until each is sealed (registry), set
past ``dock.clock_threshold_s``, alarmed past ``dock.clock_alarm_s``; each file's item gets the
offset in force when it was recorded. :class:`BayClock` is mixed into :class:`agent.dock.bay.Bay`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time

from drivers.recorder import FileRecord, RecorderRefused, Unsupported

from agent.common.timeutil import now_iso
from .copying import source_key
from .state import HAVE_STATES, UNKNOWN_CLOCK, BayPart, ClockOffset

log = logging.getLogger(__name__)


class BayClock(BayPart):
    """Read, keep, set and apply the recorder's clock offset (mixed into ``Bay``, whose state,
    lock and ``_problem()`` it uses)."""

    _clock_huge: bool = False

    def _read_clock(self) -> tuple[ClockOffset, _dt.datetime | None]:
        """Measure the recorder clock (recorder − station, midpoint of the request): the offset, when
        it was measured, and the device time read (None when the recorder cannot tell its time:
        the offset is then unknown, never 0)."""
        cfg = self.station.cfg.dock
        c = self.client
        self._clock_huge = False
        measured_at = now_iso()
        before = time.time()
        try:
            device = c.read_clock()
        except Unsupported as exc:
            log.info("bay %s: recorder %s cannot tell its time (%s): clock offset unknown", self.name,
                     self.st.serial, exc)
            return UNKNOWN_CLOCK, None
        after = time.time()
        offset_ms = int(round((device.timestamp() - (before + after) / 2) * 1000))
        with self.lock:
            self.st.clock_offset_ms = offset_ms
        huge = abs(offset_ms) > cfg.clock_alarm_s * 1000 or not 2000 <= device.year <= 2090
        if huge:
            self.station.alarm("recorder_clock", self,
                               f"记录仪时钟严重偏差 / recorder clock {device.isoformat()} is off by {offset_ms // 1000} s")
            self._problem(f"时钟严重偏差 / recorder clock was {device.isoformat()} ({offset_ms // 1000} s off); "
                          "capture times from this recorder need review")
        self._clock_huge = huge
        return ClockOffset(offset_ms, measured_at, "measured"), device

    def _keep_clock(self, serial: str, records: list[FileRecord], clock: ClockOffset) -> None:
        self.station.registry.keep_clock(serial, [source_key(serial, r) for r in records], clock.offset_ms,
                                         clock.measured_at)

    def _set_clock(self, clock: ClockOffset, device: _dt.datetime | None) -> None:
        """SyncDevTime past ``dock.clock_threshold_s`` (always when the offset is unknown), in the zone
        the recorder reported (+08:00 when it reported none); audited (``clock``)."""
        cfg = self.station.cfg.dock
        was_set = False
        if clock.offset_ms is None or abs(clock.offset_ms) > cfg.clock_threshold_s * 1000:
            tz = (device.tzinfo if device is not None else None) or _dt.timezone(_dt.timedelta(hours=8))
            try:
                self.client.set_clock(_dt.datetime.now(tz))
                was_set = True
            except RecorderRefused as exc:
                self._problem(f"时间同步失败 / time sync refused: {exc}")
        with self.lock:
            self.st.clock_set = was_set
        self.station.store.audit.append("clock", None, actor="agent:dock", bay=self.name, serial=self.st.serial,
                                        device_time=device.isoformat() if device is not None else None,
                                        offset_ms=clock.offset_ms, measured_at=clock.measured_at, set=was_set,
                                        huge=self._clock_huge)

    def _apply_clock(self, plan: list[dict], serial: str, clock: ClockOffset) -> None:
        """Give each file the offset in force when it was recorded: kept from the docking that first
        saw it, else this docking's. Kept offsets of files already sealed or no longer on the
        recorder are released."""
        reg = self.station.registry
        kept = reg.kept_clock(serial)
        listed = {e["key"] for e in plan}
        done = [e["key"] for e in plan if e["row"] and e["row"]["state"] in HAVE_STATES]
        reg.release_clock(serial, done + [k for k in kept if k not in listed])
        for e in plan:
            row = kept.get(e["key"])
            same = row is not None and (row["offset_ms"], row["measured_at"]) == (clock.offset_ms, clock.measured_at)
            e["clock"] = ClockOffset.kept(row) if row is not None and not same else clock
