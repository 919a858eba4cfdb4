"""Reports per unit and period, from the monitor database (read-only).

``ratio``   equipment as of the end of the period: officers, recorders that count, ratio and
            interview rooms against the thresholds of the unit policy its stations have in force
            (rules.equipment; while none: their dock.min_ratio_pct, default 20 = one recorder per
            five officers, and dock.min_rooms, default 1), compliant or not, and which source was
            used (``thresholds``) — the same computation as the monitor's page (state.unit_compliance).
``usage``   use in the period: hours recorded, items, items archived and archived share, items
            pending annotation (at the end of the period), alarms raised by kind.
``annual``  both, for a calendar year: what a unit files by 31 January (行政执法统计年报).

Counters come from the devices' health reports (monotonic ``usage`` counters, kept per device
and day): the items of a period are the growth of the counter over the period. The archived
share is items archived in the period ÷ items produced in the period (capped at 1; backlog
from before the period can be archived in it).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
import time

from agent.common.errors import EdgeError
from agent.wire.health import CODES
from .state import unit_compliance

KINDS = ("ratio", "usage", "annual")


def parse_day(value: str, opt: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise EdgeError(f"日期无效 / {opt} {value!r}: expected a date YYYY-MM-DD") from None


def period(frm: str | None, to: str | None, year: int | None = None) -> tuple[dt.date, dt.date]:
    """The inclusive period; default: the current year to today (annual: the previous year)."""
    today = dt.date.today()
    if year is not None:
        if not 2000 <= year <= 2100:
            raise EdgeError(f"年份无效 / --year {year}: out of range 2000..2100")
        if frm or to:
            raise EdgeError("--year 与 --from/--to 只能选一种 / --year and --from/--to exclude each other")
        return dt.date(year, 1, 1), dt.date(year, 12, 31)
    start = parse_day(frm, "--from") if frm else dt.date(today.year, 1, 1)
    end = parse_day(to, "--to") if to else today
    if end < start:
        raise EdgeError(f"日期范围无效 / --to {end} is before --from {start}")
    return start, end


def _bounds(start: dt.date, end: dt.date) -> tuple[float, float]:
    t0 = time.mktime(start.timetuple())
    t1 = time.mktime((end + dt.timedelta(days=1)).timetuple()) - 0.001
    return t0, t1


def _units(conn: sqlite3.Connection, unit: str | None) -> dict[str, str]:
    units: dict[str, str] = {}
    for r in conn.execute("SELECT code, name FROM units"):
        units[r["code"]] = r["name"] or ""
    for r in conn.execute("SELECT unit_code, max(unit_name) name FROM devices WHERE unit_code IS NOT NULL GROUP BY unit_code"):
        if not units.get(r["unit_code"]):
            units[r["unit_code"]] = r["name"] or ""
    if unit is not None:
        if unit not in units:
            known = ", ".join(sorted(units)[:10]) or "none yet"
            raise EdgeError(f"未知单位 / --unit {unit}: unknown unit (known: {known})")
        return {unit: units[unit]}
    return dict(sorted(units.items()))


def _ratio_row(conn, code: str, name: str, t1: float) -> dict:
    docks = conn.execute("SELECT count(*) FROM devices WHERE unit_code = ? AND kind = 'dock' AND first_seen <= ?",
                         [code, t1]).fetchone()[0]
    return {"unit_code": code, "unit_name": name, **unit_compliance(conn, code, until=t1), "docks": docks}


def _usage_row(conn, code: str, start: dt.date, end: dt.date, t0: float, t1: float) -> dict:
    items = archived = recorded = pending = 0
    devices = [r[0] for r in conn.execute("SELECT id FROM devices WHERE unit_code = ? AND first_seen <= ?", [code, t1])]
    for dev in devices:
        rows = conn.execute("SELECT * FROM usage_daily WHERE device = ? AND day BETWEEN ? AND ? ORDER BY day",
                            [dev, start.isoformat(), end.isoformat()]).fetchall()
        if not rows:
            continue
        prev = conn.execute("SELECT * FROM usage_daily WHERE device = ? AND day < ? ORDER BY day DESC LIMIT 1",
                            [dev, start.isoformat()]).fetchone()
        first, last = rows[0], rows[-1]
        base = (prev["items_total"], prev["items_archived"], prev["recorded_s"]) if prev else \
            (first["first_items_total"], first["first_items_archived"], first["first_recorded_s"])
        items += max(0, last["items_total"] - base[0])
        archived += max(0, last["items_archived"] - base[1])
        recorded += max(0, last["recorded_s"] - base[2])
        pending += last["pending_annotation"] or 0
    by_kind = {code_: 0 for code_ in CODES}
    for r in conn.execute("SELECT e.code, count(*) n FROM alarm_events e LEFT JOIN devices d ON d.id = e.device "
                          "WHERE e.event = 'raised' AND e.received BETWEEN ? AND ? "
                          "AND coalesce(e.unit_code, d.unit_code) = ? GROUP BY e.code", [t0, t1, code]):
        by_kind[r["code"]] = by_kind.get(r["code"], 0) + r["n"]
    return {"devices": len(devices), "hours_recorded": round(recorded / 3600, 2), "items": items,
            "items_archived": archived, "archived_share": round(min(1.0, archived / items), 3) if items else None,
            "items_pending_annotation": pending, "alarms_total": sum(by_kind.values()), "alarms_by_kind": by_kind}


def build(conn: sqlite3.Connection, kind: str, unit: str | None, start: dt.date, end: dt.date) -> dict:
    if kind not in KINDS:
        raise EdgeError(f"report {kind!r}: expected one of {', '.join(KINDS)}")
    t0, t1 = _bounds(start, end)
    rows = []
    for code, name in _units(conn, unit).items():
        row: dict = {"unit_code": code, "unit_name": name, "from": start.isoformat(), "to": end.isoformat()}
        if kind in ("ratio", "annual"):
            row.update(_ratio_row(conn, code, name, t1))
        if kind in ("usage", "annual"):
            row.update(_usage_row(conn, code, start, end, t0, t1))
        rows.append(row)
    out = {"report": kind, "from": start.isoformat(), "to": end.isoformat(),
           "generated": dt.datetime.now().astimezone().replace(microsecond=0).isoformat(), "units": rows}
    if kind == "annual":
        out["year"] = start.year
        out["due"] = f"{start.year + 1}-01-31"
        out["title"] = f"{start.year} 年度执法音像记录统计 / {start.year} annual recording statistics"
    return out


def to_csv(report: dict) -> str:
    """One row per unit; alarms by kind as columns alarms_<code>."""
    buf = io.StringIO()
    rows = []
    for r in report["units"]:
        flat = {k: v for k, v in r.items() if k not in ("alarms_by_kind", "thresholds")}
        if "thresholds" in r:  # which thresholds: threshold_source, policy_version, policy_key_id
            flat.update({("threshold_source" if k == "source" else k): v for k, v in r["thresholds"].items()})
        for code, n in (r.get("alarms_by_kind") or {}).items():
            flat[f"alarms_{code}"] = n
        rows.append(flat)
    if not rows:
        return ""
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def to_json(report: dict) -> str:
    return json.dumps(report, ensure_ascii=False, indent=2)
