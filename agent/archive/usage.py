"""Usage from what the archive holds (``edge-agent report usage --archive ROOT``).

The monitor's usage counts are the growth of the stations' health counters while the monitor
watched them: items sealed before a station's first report to this monitor are not in them, so a
unit whose items are all archived can show 0. The archive's index is the record of what was
archived; this module counts from it and from each stored manifest, read-only:

* capture times are read as a reviewer reads them: the recorder's clock corrected by the drift
  sealed with the item (``capture_end`` − ``clock_offset_ms``, :mod:`agent.evidence.timing`), the
  same rule as ``report deadlines`` (agent/archive/deadlines.py);
* an item belongs to the period by its capture start (采集时间), read as a time with its zone,
  on the calendar day of the archive's local time;
* hours recorded = capture end − capture start;
* late = stored at the archive more than ``deadline_h`` hours after its capture end (``--deadline-h``,
  24 by default: the unit policy's default ``upload_deadline_h``);

per unit, per officer (the collector sealed into the item) and per device.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

from agent.common.errors import EdgeError
from agent.common.timeutil import parse_iso
from agent.evidence import timing

#: hours an item may take from capture end to the archive (the unit policy's default upload_deadline_h)
DEFAULT_DEADLINE_H = 24


def _local_day(ts: dt.datetime) -> dt.date:
    return ts.astimezone().date()


def read_usage(root: Path, start: dt.date, end: dt.date, unit: str | None = None,
               deadline_h: int = DEFAULT_DEADLINE_H) -> dict:
    """{units, officers, devices, skipped}: counts of the archived items captured in [start, end]."""
    path = Path(root) / "archive.db"
    if not path.is_file():
        raise EdgeError(f"此处没有归档 / {root}: no archive here ({path.name} missing); give the archive root "
                        "(--archive ROOT)")
    if deadline_h < 1:
        raise EdgeError(f"--deadline-h {deadline_h}: at least 1 hour")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            conn.row_factory = sqlite3.Row
            sql, args = "SELECT device, item, unit, path, stored_at FROM items", []
            if unit is not None:
                sql, args = sql + " WHERE unit = ?", [unit]
            rows = [dict(r) for r in conn.execute(sql + " ORDER BY unit, device, seq", args)]
            units_known = {r[0] for r in conn.execute("SELECT DISTINCT unit FROM items")} | {
                r[0] for r in conn.execute("SELECT DISTINCT unit FROM devices")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise EdgeError(f"{path}: cannot read the archive index ({exc})") from None
    if unit is not None and unit not in units_known:
        raise EdgeError(f"存档中没有该单位 / --unit {unit}: no such unit at this archive "
                        f"(known: {', '.join(sorted(units_known)[:10]) or 'none'})")
    late_after = dt.timedelta(hours=deadline_h)
    units: dict[str, dict] = {}
    officers: dict[tuple, dict] = {}
    devices: dict[tuple, dict] = {}
    skipped: list[dict] = []

    def add(table: dict, key, base: dict, seconds: float, late: bool) -> None:
        row = table.setdefault(key, {**base, "items": 0, "recorded_s": 0, "late": 0})
        row["items"] += 1
        row["recorded_s"] += seconds
        row["late"] += int(late)

    for r in rows:
        try:
            meta = json.loads((Path(root) / r["path"] / "manifest.json").read_text(encoding="utf-8"))["metadata"]
            begin, finish = timing.capture_start(meta), timing.capture_end(meta)
            stored = parse_iso(r["stored_at"], "stored_at")
            collector = meta.get("collector") or {}
        except (OSError, ValueError, KeyError, TypeError, EdgeError) as exc:
            skipped.append({"device": r["device"], "item": r["item"], "why": str(exc)[:200]})
            continue
        if not start <= _local_day(begin) <= end or meta.get("kind") == "station-audit":
            continue  # (a station's audit log is no recording: agent/archive/stationaudit.py)
        seconds = max(0.0, (finish - begin).total_seconds())
        late = stored - finish > late_after
        add(units, r["unit"], {"unit_code": r["unit"]}, seconds, late)
        add(officers, (r["unit"], collector.get("id")),
            {"unit_code": r["unit"], "officer_id": collector.get("id"), "officer_name": collector.get("name")},
            seconds, late)
        add(devices, (r["unit"], r["device"]), {"unit_code": r["unit"], "device": r["device"]}, seconds, late)

    def done(table: dict) -> list[dict]:
        out = []
        for key in sorted(table, key=lambda k: tuple("" if x is None else str(x) for x in (k if isinstance(k, tuple) else (k,)))):
            row = dict(table[key])
            row["hours_recorded"] = round(row.pop("recorded_s") / 3600, 2)
            out.append(row)
        return out

    if unit is not None and unit not in units:
        units[unit] = {"unit_code": unit, "items": 0, "recorded_s": 0, "late": 0}
    return {"deadline_h": deadline_h, "units": done(units), "officers": done(officers), "devices": done(devices),
            "skipped": skipped}
