"""Monitor state and history: devices, units, alarms, status and alarm history, ratio reports,
daily usage — in SQLite (WAL; the embedded default for one box) or PostgreSQL (``--db
postgresql://…``, through agent/common/pg.py): the same tables (agent/monitor/schema.py) and the
same SQL on both.

The ingest thread applies messages to an in-memory copy of the device rows and flushes the dirty
ones (plus alarm and status events, ratio reports, counters) in one transaction every ``flush_s``:
thousands of messages a second become one write a second, on either backend. Readers (web page,
terminal view, reports, ``monitor history``) open their own read-only connection
(:func:`connect`) and read committed rows, so a reader never blocks ingest and a crash loses at
most one flush interval.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator

from agent.common import ratio as rule
from agent.common.errors import EdgeError
from agent.common.pg import PgDatabase, Reader, is_url, redact
from agent.common.sqlbase import SqlDatabase
from .schema import MIGRATIONS, PG_MIGRATIONS


def connect(path: Path | str, readonly: bool = False):
    """A connection whose ``execute(sql, params)`` yields rows read by name or position: SQLite
    (``sqlite3.Connection``) for a path, a read-only :class:`agent.common.pg.Reader` for a
    postgresql:// URL."""
    if is_url(str(path)):
        return Reader(str(path))
    p = Path(path)
    if readonly:
        if not p.exists():
            raise EdgeError(f"{p}: no monitor database here (start `edge-agent monitor --db {p}` first)")
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=30, check_same_thread=False)
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(p), timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def check_db_arg(db: str) -> str | Path:
    """--db: a postgresql:// URL (kept as is) or a SQLite file path."""
    if "://" in db:
        if is_url(db):
            return db
        raise EdgeError(f"数据库地址无效 / --db {redact(db)}: give a SQLite file path or a "
                        "postgresql://USER@HOST:PORT/NAME URL")
    return Path(db)


def open_monitor_db(db: str | Path, **kw) -> "MonitorDB | PgMonitorDB":
    """The monitor's database, migrated: PostgreSQL for a postgresql:// URL, else SQLite."""
    return PgMonitorDB(str(db), **kw) if is_url(str(db)) else MonitorDB(db, **kw)


class _Roster:
    """What both backends do alike (``atomic()`` yields ``execute``/``executemany``)."""

    # --- roster -----------------------------------------------------------------------------------
    def import_roster(self, rows: list[dict], source: str) -> dict[str, int]:
        """Replace the officers of the units named in ``rows``. A row is either
        {unit_code, unit_name?, officers} (a count) or {unit_code, unit_name?, officer_id, name?}."""
        counts: dict[str, int] = {}
        names: dict[str, str] = {}
        people: dict[str, list[tuple[str, str]]] = {}
        for r in rows:
            u = r["unit_code"]
            if r.get("unit_name"):
                names[u] = r["unit_name"]
            if r.get("officers") is not None:
                counts[u] = counts.get(u, 0) + int(r["officers"])
            if r.get("officer_id"):
                people.setdefault(u, []).append((r["officer_id"], r.get("name") or ""))
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self.atomic() as c:
            for u, lst in people.items():
                c.execute("DELETE FROM roster WHERE unit_code = ?", [u])
                c.executemany("INSERT INTO roster VALUES (?, ?, ?) ON CONFLICT(unit_code, officer_id) DO UPDATE SET name=excluded.name", [(u, i, n) for i, n in lst])
                counts[u] = counts.get(u, 0) + len({i for i, _ in lst})
            for u, n in counts.items():
                c.execute("INSERT INTO units(code, name, officers, officers_source, officers_updated) VALUES (?,?,?,?,?) "
                          "ON CONFLICT(code) DO UPDATE SET officers=excluded.officers, officers_source=excluded.officers_source, "
                          "officers_updated=excluded.officers_updated, name=coalesce(excluded.name, units.name)",
                          [u, names.get(u), n, source, now])
        return counts



class MonitorDB(_Roster, SqlDatabase):
    """SQLite: one writable connection with named migrations and one transaction helper."""

    migrations = MIGRATIONS
    dialect = "sqlite"
    _MIGRATED_AT = "datetime('now')"

    def __init__(self, path: Path | str, upto: str | None = None, migrate: bool = True):
        self.path = Path(path)
        try:
            self.conn = connect(self.path)
            self.lock = threading.RLock()
            if migrate:
                self.upgrade(upto)
        except sqlite3.DatabaseError as exc:
            raise EdgeError(f"{self.path}: 不是监控数据库 / not a monitor database ({exc})") from None

    @contextlib.contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            if self.conn.in_transaction:
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, params=()) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.conn.execute(sql, params)]

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class PgMonitorDB(_Roster, PgDatabase):
    """PostgreSQL: the same tables (PG_MIGRATIONS) over a connection pool; a flush is one
    transaction whose rows go through psycopg's pipeline (``executemany``)."""

    migrations = PG_MIGRATIONS


# --- reading ----------------------------------------------------------------------------------------
def _row(r: sqlite3.Row) -> dict:
    return dict(r)


def fleet(conn: sqlite3.Connection, lost_after: float, now: float | None = None) -> dict:
    """Everything the page and the terminal view show: units (with compliance), devices, alarms."""
    now = now or time.time()
    devices = []
    for r in conn.execute("SELECT * FROM devices ORDER BY unit_code, id"):
        d = _row(r)
        d["health"] = json.loads(d["health"]) if d["health"] else None
        d["components"] = json.loads(d["components"] or "{}")
        d["silent_s"] = int(now - d["last_seen"])
        d["display_state"] = display_state(d, now, lost_after)
        d["since"] = state_since(d)
        devices.append(d)
    alarms = [_row(r) for r in conn.execute("SELECT * FROM alarms WHERE active = 1 ORDER BY "
                                            "CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, since")]
    units = unit_rows(conn, devices, alarms, lost_after=lost_after, now=now)
    counters = {r["name"]: r["value"] for r in conn.execute("SELECT * FROM counters") if not r["name"].startswith("_")}
    rejected = {k.split(".", 1)[1]: v for k, v in counters.items() if k.startswith("rejected.")}
    try:
        by_device = [_row(r) for r in conn.execute("SELECT * FROM rejections ORDER BY last_at DESC LIMIT 200")]
    except sqlite3.OperationalError:  # a database the current monitor has not opened yet
        by_device = []
    states = {"online": 0, "offline": 0, "lost": 0, "unknown": 0}
    for d in devices:
        states[d["display_state"]] = states.get(d["display_state"], 0) + 1
    return {"generated": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)), "lost_after_s": lost_after,
            "totals": {"units": len(units), "devices": len(devices), **states, "alarms": len(alarms),
                       "compliant_units": sum(1 for u in units if u["compliant"])},
            "units": units, "devices": devices, "alarms": alarms, "ingest": counters,
            "rejected": {"total": sum(rejected.values()), "by_reason": rejected, "by_device": by_device}}


class _Now:
    """The rows the unit view reads per unit (units, the stations' latest ratio reports, rooms), read
    once for all units: the page of a fleet with hundreds of units is three queries, not four per
    unit (on PostgreSQL each query is a round trip: 5.3 s for /api/fleet with 400 units, measured).
    ``execute`` goes to the connection."""

    def __init__(self, conn):
        self.conn = conn
        self.units = {r["code"]: _row(r) for r in conn.execute("SELECT * FROM units")}
        self.reports: dict[str, list[dict]] = {}
        for r in conn.execute("SELECT * FROM ratio_reports"):
            self.reports.setdefault(r["unit_code"], []).append(_row(r))
        self.rooms: dict[str, list[dict]] = {}
        for r in conn.execute("SELECT * FROM devices WHERE kind = 'room' ORDER BY id"):
            self.rooms.setdefault(r["unit_code"], []).append(_row(r))

    def execute(self, sql: str, params=()):
        return self.conn.execute(sql, params)


def _reports(conn: sqlite3.Connection, unit: str, until: float | None) -> list[dict]:
    """The docking stations' latest ratio report rows of a unit (as of ``until``; None = now)."""
    if until is None and isinstance(conn, _Now):
        return [dict(r) for r in conn.reports.get(unit, [])]
    if until is None:
        return [_row(r) for r in conn.execute("SELECT * FROM ratio_reports WHERE unit_code = ?", [unit])]
    return [_row(r) for r in conn.execute(
        "SELECT h.* FROM ratio_history h JOIN (SELECT device, max(received) received FROM ratio_history "
        "WHERE received <= ? GROUP BY device) l ON h.device = l.device AND h.received = l.received "
        "WHERE h.unit_code = ?", [until, unit])]


def recorders_of(conn: sqlite3.Connection, unit: str, until: float | None = None) -> tuple[int, int | None]:
    """(recorders, officers) of a unit from the docking stations' latest ratio reports (as of
    ``until``). Several stations of one unit: recorder serials are united when every report lists
    them, else the largest count is taken (a recorder docks at more than one station; never
    overstate compliance). Officers 0 means the station has no roster: unknown."""
    rows = _reports(conn, unit, until)
    if not rows:
        return 0, None
    if all(r["serials"] for r in rows):
        ids: set[str] = set()
        for r in rows:
            ids.update(json.loads(r["serials"]))
        rec = len(ids)
    else:
        rec = max(r["recorders"] for r in rows)
    offs = [r["officers"] for r in rows if r["officers"]]
    return rec, (max(offs) if offs else None)


#: seconds of silence after which an online device is shown lost (``edge-agent monitor --lost-after``)
DEFAULT_LOST_AFTER = 120


def display_state(d: dict, now: float, lost_after: float = DEFAULT_LOST_AFTER) -> str:
    """online, offline, lost (online but silent more than ``lost_after``) or unknown."""
    return "lost" if d["state"] == "online" and now - d["last_seen"] > lost_after else d["state"]


def state_since(d: dict) -> str | None:
    """Since when a device is in its shown state (ISO 8601): lost since it was last heard; offline
    since its death was received (a monitor started later: since it was last known alive, from
    the signed times of its retained messages); online since its birth."""
    if d.get("display_state") == "lost":
        ts = d["last_seen"]
    elif d["state"] == "offline":
        ts = max(d["status_ts"] or 0, d["last_seen"] or 0) or None
    else:
        ts = d.get("status_ts") or d.get("first_seen")
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts)) if ts else None


def rooms_of(conn: sqlite3.Connection, unit: str, until: float | None = None,
             lost_after: float = DEFAULT_LOST_AFTER, now: float | None = None) -> tuple[int, list[dict]]:
    """(rooms that count, rooms that do not and why) of a unit. Now (``until`` None or not yet
    past): a room counts only while it is online — an offline or silent room loses its badge and
    is listed with its state and since when. For a past moment the monitor keeps no state
    history: the rooms known by then count."""
    now = now or time.time()
    if until is not None and until < now:
        return conn.execute("SELECT count(*) FROM devices WHERE unit_code = ? AND kind = 'room' AND first_seen <= ?",
                            [unit, until]).fetchone()[0], []
    ok, out = 0, []
    rows = conn.rooms.get(unit, []) if isinstance(conn, _Now) else \
        conn.execute("SELECT * FROM devices WHERE unit_code = ? AND kind = 'room' ORDER BY id", [unit])
    for r in rows:
        d = _row(r)
        d["display_state"] = display_state(d, now, lost_after)
        if d["display_state"] == "online":
            ok += 1
        else:
            out.append({"id": d["id"], "state": d["display_state"], "since": state_since(d)})
    return ok, out


def unit_compliance(conn: sqlite3.Connection, unit: str, until: float | None = None,
                    lost_after: float = DEFAULT_LOST_AFTER, now: float | None = None) -> dict:
    """The one computation of a unit's equipment verdict, for the page, /api/fleet, the terminal
    view and ``report ratio``/``annual`` alike: officers from the imported roster (else the
    stations' reports), recorders that count from the stations' reports, rooms known, judged by
    the thresholds the unit's stations report: the newest unit policy one of them has in force,
    else their configuration (agent/common/ratio.py ``thresholds_of``); ``thresholds`` says which."""
    u = conn.units.get(unit) if isinstance(conn, _Now) else \
        conn.execute("SELECT * FROM units WHERE code = ?", [unit]).fetchone()
    rep_rec, rep_off = recorders_of(conn, unit, until)
    recorders = u["recorders"] if u is not None and u["recorders"] is not None else rep_rec
    officers = u["officers"] if u is not None and u["officers"] is not None else rep_off
    src = u["officers_source"] if u is not None and u["officers"] is not None else (
        "ratio report" if rep_off is not None else None)
    t = rule.thresholds_of(_reports(conn, unit, until))
    rooms, rooms_out = rooms_of(conn, unit, until, lost_after, now)
    return {**rule.compliance(recorders, officers, rooms, t), "rooms_out": rooms_out, "officers_source": src}


def compliance(recorders: int, officers: int | None, rooms: int,
               thresholds: rule.Thresholds = rule.Thresholds()) -> dict:
    return rule.compliance(recorders, officers, rooms, thresholds)


def unit_rows(conn: sqlite3.Connection, devices: list[dict], alarms: list[dict], until: float | None = None,
              lost_after: float = DEFAULT_LOST_AFTER, now: float | None = None) -> list[dict]:
    if until is None and not isinstance(conn, _Now):
        conn = _Now(conn)
    units = {k: dict(v) for k, v in conn.units.items()} if isinstance(conn, _Now) else \
        {r["code"]: _row(r) for r in conn.execute("SELECT * FROM units")}
    for d in devices:
        if d["unit_code"] and d["unit_code"] not in units:
            units[d["unit_code"]] = {"code": d["unit_code"], "name": d["unit_name"], "officers": None,
                                     "officers_source": None, "recorders": None}
        elif d["unit_code"] and not units[d["unit_code"]].get("name"):
            units[d["unit_code"]]["name"] = d["unit_name"]
    for a in alarms:  # a unit known only from the archive's alarms (a device never heard here)
        if a.get("unit_code") and a["unit_code"] not in units:
            units[a["unit_code"]] = {"code": a["unit_code"], "name": "", "officers": None, "officers_source": None,
                                     "recorders": None}
    by_unit: dict[str, list[dict]] = {}
    for d in devices:
        by_unit.setdefault(d["unit_code"], []).append(d)
    unit_of = {d["id"]: d["unit_code"] for d in devices}
    alarms_by_unit: dict[str, int] = {}
    for a in alarms:
        u = a["unit_code"] or unit_of.get(a["device"])
        alarms_by_unit[u] = alarms_by_unit.get(u, 0) + 1
    out = []
    for code in sorted(units):
        u = units[code]
        devs = by_unit.get(code, [])
        newest, old = policy_lag(devs)
        row = {"code": code, "name": u.get("name") or "",
               "docks": sum(1 for d in devs if d["kind"] == "dock"),
               "devices": len(devs),
               "online": sum(1 for d in devs if d.get("display_state") == "online"),
               "offline": sum(1 for d in devs if d.get("display_state") == "offline"),
               "lost": sum(1 for d in devs if d.get("display_state") == "lost"),
               "alarms": alarms_by_unit.get(code, 0),
               "oldest_buffer_age_s": max([d["health"]["oldest_age_s"] for d in devs
                                           if d.get("health") and d["health"].get("oldest_age_s") is not None] or [None],
                                          key=lambda v: -1 if v is None else v),
               "policy_newest": newest, "policy_old": old,
               **unit_compliance(conn, code, until, lost_after, now)}
        out.append(row)
    return out


def policy_lag(devs: list[dict]) -> tuple[int | None, list[str]]:
    """The unit policy versions the devices of one unit report in their health (agent/policy):
    (the newest any of them runs, the ids of stations running an older one or none). Each
    device dict gets ``policy_version`` and ``policy_old`` (shown on the page and in /api/fleet)."""
    versions = {d["id"]: (d.get("health") or {}).get("policy_version") for d in devs if d.get("health")}
    newest = max((v for v in versions.values() if isinstance(v, int)), default=None)
    old = []
    for d in devs:
        v = versions.get(d["id"])
        d["policy_version"] = v
        d["policy_old"] = newest is not None and d["id"] in versions and (v is None or v < newest)
        if d["policy_old"]:
            old.append(d["id"])
    return newest, sorted(old)
