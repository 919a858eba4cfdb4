"""What a bay is in: the states a docked recorder goes through, the bay's published record
(:class:`BayState`) and the error that ends the work on one recorder (:class:`BayAbort`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.common.errors import EdgeError

if TYPE_CHECKING:  # pragma: no cover
    from drivers.recorder import RecorderClient

    from .station import DockStation

STATES = ("idle", "identifying", "charging", "downloading", "verifying", "uploading", "done", "error")
LABELS = {
    "idle": "空闲 / Idle",
    "identifying": "识别中 / Identifying",
    "charging": "充电中 / Charging",
    "downloading": "下载中 / Downloading",
    "verifying": "校验中 / Verifying",
    "uploading": "上传中 / Uploading",
    "done": "完成 / Done",
    "error": "故障 / Error",
}
PENDING = ["case_number", "proof"]
HAVE_STATES = ("sealed", "uploading", "archived", "purged", "rejected")


@dataclass(frozen=True)
class ClockOffset:
    """The recorder clock offset that applies to a file: device minus station in ms, ``None`` when
    unknown (the recorder cannot tell its time: never written as 0); when it was measured (station
    time, ISO 8601; ``None`` when unknown); and where it comes from: ``measured`` at this docking,
    ``kept`` from the docking that first saw the file (agent/dock/registry.py), or ``unknown``."""

    offset_ms: int | None
    measured_at: str | None
    source: str

    @classmethod
    def kept(cls, row: dict) -> "ClockOffset":
        known = row.get("offset_ms") is not None
        return cls(row.get("offset_ms"), row.get("measured_at") if known else None, "kept" if known else "unknown")

    def metadata(self) -> dict:
        """The item's metadata fields (docs/evidence-format.md)."""
        return {"clock_offset_ms": self.offset_ms, "clock_offset_measured_at": self.measured_at,
                "clock_offset_source": self.source}


UNKNOWN_CLOCK = ClockOffset(None, None, "unknown")


class BayAbort(EdgeError):
    """Stop work on this recorder; ``reason`` is the bilingual bay error."""

    def __init__(self, reason: str, alarm: str | None = None):
        super().__init__(reason)
        self.alarm = alarm


@dataclass
class BayState:
    """What ``dock status`` shows and ``P/dev/D/component/bay-N`` carries (retained)."""

    name: str
    path: str = ""
    kind: str = "serial"  # serial (command channel) or mass-storage
    state: str = "idle"
    label: str = LABELS["idle"]
    docked: bool = False
    since: str = ""
    reason: str | None = None
    message: str | None = None
    serial: str | None = None
    officer_number: str | None = None
    officer_name: str | None = None
    unit_number: str | None = None
    unit_name: str | None = None
    battery: int | None = None
    battery_low: bool = False  # below dock.battery_low_pct at the last reading (alarm recorder_battery_low)
    resolution: str | None = None  # ReadDeviceResolution, "1920x1080"; None when the recorder does not tell
    charging: bool | None = None
    recorder_free: int | None = None
    recorder_full: bool = False
    clock_offset_ms: int | None = None
    clock_set: bool = False
    file_index: int = 0
    file_count: int = 0
    file_name: str | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    rate_bps: int = 0
    eta_s: int | None = None
    resumed_bytes: int = 0
    recopied: int = 0  # resumed copies whose first part differed from the recorder: discarded, copied again
    items: list[str] = field(default_factory=list)
    sealed: int = 0
    already: int = 0
    archived: int = 0
    erased: int = 0
    kept_protected: int = 0
    assignment: dict | None = None  # {recorder, station, agree}: the station's assignment against the recorder's record
    problems: list[str] = field(default_factory=list)
    # the last dockings of this bay once their recorder has left, newest first: {serial, officer_number,
    # officer_name, state, reason, message, sealed, already, erased, kept_protected, items, problems, left_at}
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)  # shallow: much cheaper than asdict() under the copy threads' GIL
        d["items"] = list(self.items)
        d["problems"] = list(self.problems)
        d["history"] = [dict(h) for h in self.history]
        d["label"] = LABELS[self.state]
        return d


class BayPart:
    """What the parts of a bay (``BayCopy``, ``BayErase``, ``BayClock``, mixed into ``Bay``) use of it."""

    station: "DockStation"
    st: BayState
    lock: threading.RLock
    client: "RecorderClient | None"
    mass_storage: bool
    msdc_mount: str | None
