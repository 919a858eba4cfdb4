"""Status and alarm history by device, unit and time range (``edge-agent monitor history``,
``GET /api/history``), read from the monitor's database on either backend.

A status event is a change of a device's state (``online``/``offline``, or a new birth) with the
time it began (the monitor's arrival time; for a retained message, when the device signed it);
``lost`` is not an event: it is shown while an online device stays silent (``--lost-after``). An
alarm event is a raise or a clear, at the time the monitor received it, with the alarm's own
signed time (``ts``).
"""

from __future__ import annotations

import datetime as dt
import re
import time

from agent.common.errors import EdgeError

#: at most this many events per answer (newest dropped last: the answer says it was cut)
MAX_EVENTS = 10_000
_AGO = re.compile(r"^(\d{1,6})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str | None, what: str, now: float | None = None) -> float | None:
    """``--since``/``--until``: an ISO 8601 date or date and time (without a zone: local time), or
    a span back from now (``90s``, ``30m``, ``2h``, ``7d``). None stays None."""
    if value is None or value == "":
        return None
    v = value.strip()
    m = _AGO.match(v)
    if m:
        return (now or time.time()) - int(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        t = dt.datetime.fromisoformat(v)
    except ValueError:
        raise EdgeError(f"时间无效 / {what} {value!r}: give a date or time (2026-12-04, 2026-12-04T08:00, "
                        "2026-12-04T08:00+08:00) or a span back from now (30m, 2h, 7d)") from None
    return t.timestamp() if t.tzinfo else t.astimezone().timestamp()


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def history(conn, device: str | None = None, unit: str | None = None, since: float | None = None,
            until: float | None = None, limit: int = MAX_EVENTS) -> dict:
    """The status and alarm events of ``device`` and/or ``unit`` (neither: the whole fleet) with
    time in [since, until], oldest first; at most ``limit`` (then ``truncated`` is true and the
    newest are kept)."""
    if since is not None and until is not None and since > until:
        raise EdgeError(f"时间范围无效 / --since {iso(since)} is after --until {iso(until)}")
    limit = max(1, min(int(limit), MAX_EVENTS))
    conds, params = [], []
    if device:
        conds.append("device = ?")
        params.append(device)
    if unit:
        conds.append("unit_code = ?")
        params.append(unit)
    where_s, where_a = list(conds), list(conds)
    ps, pa = list(params), list(params)
    for bound, op in ((since, ">="), (until, "<=")):
        if bound is not None:
            where_s.append(f"at {op} ?")
            where_a.append(f"received {op} ?")
            ps.append(bound)
            pa.append(bound)

    def where(c: list[str]) -> str:
        return (" WHERE " + " AND ".join(c)) if c else ""

    # newest first with a limit each, then merged oldest first
    status = conn.execute("SELECT device, unit_code, kind, state, bdseq, source, ts, at FROM status_events"
                          f"{where(where_s)} ORDER BY at DESC, id DESC LIMIT ?", [*ps, limit + 1]).fetchall()
    alarms = conn.execute("SELECT device, unit_code, key, code, severity, event, ts, received FROM alarm_events"
                          f"{where(where_a)} ORDER BY received DESC, id DESC LIMIT ?", [*pa, limit + 1]).fetchall()
    events = [{"t": r["at"], "type": "status", "device": r["device"], "unit_code": r["unit_code"], "kind": r["kind"],
               "state": r["state"], "bdseq": r["bdseq"], "source": r["source"], "signed": r["ts"]} for r in status]
    events += [{"t": r["received"], "type": "alarm", "device": r["device"], "unit_code": r["unit_code"],
                "key": r["key"], "code": r["code"], "severity": r["severity"], "event": r["event"],
                "signed": r["ts"]} for r in alarms]
    events.sort(key=lambda e: e["t"], reverse=True)
    truncated = len(events) > limit
    events = events[:limit][::-1]
    for e in events:
        e["at"] = iso(e["t"])
    return {"device": device, "unit": unit, "since": iso(since) if since is not None else None,
            "until": iso(until) if until is not None else None, "count": len(events), "truncated": truncated,
            "events": events}


def line(e: dict) -> str:
    """One event as a line of text (``monitor history`` without --json)."""
    if e["type"] == "status":
        what = {"online": "上线 / online", "offline": "离线 / offline"}.get(e["state"], e["state"])
        return f"{e['at']}  {e['device']}  {e['unit_code'] or '-'}  状态 / status  {what}  (bdseq {e['bdseq']}, {e['source']})"
    what = {"raised": "告警 / raised", "cleared": "解除 / cleared"}.get(e["event"], e["event"])
    return f"{e['at']}  {e['device']}  {e['unit_code'] or '-'}  告警 / alarm  {e['code']} {e['key']} {e['severity']}  {what}"
