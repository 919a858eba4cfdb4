"""Upload deadlines at the archive (``edge-agent report deadlines``; docs/custody.md "Upload deadline").

The rule: upload *"within 24 hours after duty"* (DOMAIN.md, "Retention"). For each archived item
the time that counts runs from the **end of capture** — the recorder's clock corrected by the
drift sealed with the item (``capture_end`` − ``clock_offset_ms``) — to the archive's receipt
(``stored_at``, when the archive answered ``stored``). The deadline is the unit's signed policy
(``upload_deadline_h``, 24 h by default). The station does not know when a duty ends; the end of
the item's capture is the earliest a duty can end, so a deadline counted from it is never more
lenient than the rule.

Per item: officer (the collector sealed into it), recorder (the recorder's serial for a docked
recorder, else the sealing device), capture end, deadline, receipt time and how late; summaries
per officer and per recorder; and, per device, the chain positions its signed checkpoint
announces that the archive has not received (items that may be late and are not here yet).
"""

from __future__ import annotations

import datetime as dt
import json
import re

from agent.common.errors import EdgeError
from agent.common.timeutil import iso, parse_iso
from agent.evidence import manifest as mf, rules, timing
from agent.wire import policy as wp

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_YEAR = re.compile(r"^(\d{4})$")


def parse_period(period: str) -> tuple[dt.date, dt.date]:
    """``2026-11`` (a month), ``2026`` (a year), ``2026-11-05`` (a day) or ``FROM..TO`` (days)."""
    p = period.strip()
    try:
        if ".." in p:
            a, b = p.split("..", 1)
            start, end = dt.date.fromisoformat(a), dt.date.fromisoformat(b)
        elif m := _MONTH.match(p):
            y, mo = int(m[1]), int(m[2])
            start = dt.date(y, mo, 1)
            end = (dt.date(y + (mo == 12), mo % 12 + 1, 1) - dt.timedelta(days=1))
        elif m := _YEAR.match(p):
            start, end = dt.date(int(m[1]), 1, 1), dt.date(int(m[1]), 12, 31)
        else:
            start = end = dt.date.fromisoformat(p)
    except ValueError:
        raise EdgeError(f"期间无效 / --period {period!r}: 2026-11 (a month), 2026 (a year), 2026-11-05 (a day) or "
                        "2026-11-01..2026-11-30") from None
    if end < start:
        raise EdgeError(f"期间无效 / --period {period!r}: ends before it starts")
    return start, end


def unit_deadline(root, unit: str) -> tuple[int, str]:
    """(hours, where from): the unit's last signed policy at this archive, else the default."""
    from .policy import last_published

    try:
        last = last_published(root, unit)
    except (EdgeError, ValueError):
        last = None
    if last:
        return last[0].rules.upload_deadline_h, f"policy v{last[0].version}"
    return wp.Rules().upload_deadline_h, "default"


def _hours(td: dt.timedelta) -> float:
    return round(td.total_seconds() / 3600, 2)


def read_deadlines(store, start: dt.date, end: dt.date, unit: str | None = None) -> dict:
    """The report over the archive ``store`` (:class:`agent.archive.storage.ArchiveStore`, read-only)."""
    sql, args = "SELECT device, item, seq, unit, path, stored_at FROM items", []
    if unit is not None:
        rules.check_unit_code(unit)
        known = {r["unit"] for r in store.db.query("SELECT DISTINCT unit FROM devices")}
        if unit not in known:
            raise EdgeError(f"存档中没有该单位 / --unit {unit}: no such unit at this archive (known: {', '.join(sorted(known)) or 'none'})")
        sql, args = sql + " WHERE unit = ?", [unit]
    deadlines: dict[str, tuple[int, str]] = {}
    items, skipped = [], []
    for r in store.db.query(sql + " ORDER BY unit, device, seq", args):
        try:
            m = json.loads((store.inside(store.root / r["path"]) / mf.MANIFEST).read_bytes())
            meta = mf.effective_metadata(m, mf.read_annotations(store.root / r["path"]))
            ended = timing.capture_end(meta)
            stored = parse_iso(r["stored_at"], "stored_at")
        except (OSError, ValueError, KeyError, TypeError, EdgeError) as exc:
            skipped.append({"device": r["device"], "item": r["item"], "why": str(exc)[:200]})
            continue
        if not start <= ended.astimezone().date() <= end or meta.get("kind") == "station-audit":
            continue  # (a station's audit log is no recording: agent/archive/stationaudit.py)
        if r["unit"] not in deadlines:
            deadlines[r["unit"]] = unit_deadline(store.root, r["unit"])
        hours, _ = deadlines[r["unit"]]
        due = ended + dt.timedelta(hours=hours)
        collector = meta.get("collector") or {}
        recorder = ((meta.get("recorder") or {}).get("serial") if isinstance(meta.get("recorder"), dict) else None)
        late = stored - due
        items.append({
            "unit_code": r["unit"], "device": r["device"], "recorder": recorder or r["device"],
            "officer_id": collector.get("id"), "officer_name": collector.get("name"), "item": r["item"],
            "capture_end": iso(ended), "clock_offset_ms": meta.get("clock_offset_ms"), "deadline_h": hours,
            "deadline": iso(due), "received": iso(stored), "took_h": _hours(stored - ended),
            "late": late > dt.timedelta(0), "late_by_h": _hours(late) if late > dt.timedelta(0) else 0,
        })

    def summary(key: tuple[str, ...]) -> list[dict]:
        out: dict[tuple, dict] = {}
        for it in items:
            k = tuple(it[x] for x in key)
            s = out.setdefault(k, {**{x: it[x] for x in key}, "items": 0, "late": 0, "worst_late_by_h": 0})
            s["items"] += 1
            s["late"] += int(it["late"])
            s["worst_late_by_h"] = max(s["worst_late_by_h"], it["late_by_h"])
        return [out[k] for k in sorted(out, key=lambda k: tuple("" if v is None else str(v) for v in k))]

    not_received = [{"device": m["device"], "announced": m["announced"], "missing": m["missing"]}
                    for m in store.missing() if m["missing"] and (unit is None or _unit_of(store, m["device"]) == unit)]
    return {"deadline_h": {u: {"hours": h, "from": src} for u, (h, src) in sorted(deadlines.items())},
            "items": items, "late": [i for i in items if i["late"]],
            "officers": summary(("unit_code", "officer_id", "officer_name")),
            "recorders": summary(("unit_code", "recorder")),
            "not_received": not_received, "skipped": skipped}


def _unit_of(store, device: str) -> str | None:
    row = store.db.one("SELECT unit FROM devices WHERE id = ?", [device])
    return row["unit"] if row else None
