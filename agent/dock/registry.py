"""Officer roster and recorder registry of a docking station; equipment ratio and usage.

Kept in ``data_dir/dock/registry.db`` (SQLite, WAL), apart from the evidence ledger: it is
reference data, rebuilt from the roster file and from docking, never evidence itself.

* roster: ``edge-agent roster import officers.csv`` (officer number, name, unit code, unit name)
* recorders: learned from identify (ZFY_INFO): serial -> officer, unit, first/last seen; two
  recorders claiming the same serial at once are flagged (``conflict``)
* ratio: recorders that count (enrolled, assigned, healthy: agent/common/ratio.py) / officers per
  unit, against ``dock.min_ratio_pct``; each recorder left out is listed with its reason;
  usage: recorders docked in the last ``dock.usage_days`` days / registered recorders
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.common import ratio as rule
from agent.common.errors import EdgeError
from agent.common.fs import read_csv_text
from agent.common.sqlite import Database
from agent.common.timeutil import now_iso

log = logging.getLogger(__name__)

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_registry", """
        CREATE TABLE officers (
            number TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            unit_code TEXT NOT NULL,
            unit_name TEXT NOT NULL DEFAULT '',
            imported_at TEXT NOT NULL
        );
        CREATE TABLE recorders (
            serial TEXT PRIMARY KEY,
            officer_number TEXT,
            officer_name TEXT,
            unit_number TEXT,
            unit_name TEXT,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            last_seen_ts REAL NOT NULL,
            last_bay TEXT,
            docks INTEGER NOT NULL DEFAULT 0,
            in_service INTEGER NOT NULL DEFAULT 1,
            conflict INTEGER NOT NULL DEFAULT 0,
            conflict_detail TEXT
        );
        CREATE TABLE docks (
            serial TEXT NOT NULL,
            ts REAL NOT NULL,
            at TEXT NOT NULL,
            bay TEXT
        );
        CREATE INDEX docks_ts ON docks(ts);
    """),
    ("0002_clock_kept", """
        CREATE TABLE clock_kept (
            serial TEXT NOT NULL,
            source_key TEXT NOT NULL,
            offset_ms INTEGER,
            measured_at TEXT,
            PRIMARY KEY (serial, source_key)
        );
    """),
    ("0003_assignments", """
        CREATE TABLE assignments (
            serial TEXT PRIMARY KEY,
            officer_number TEXT NOT NULL,
            officer_name TEXT NOT NULL,
            unit_number TEXT NOT NULL,
            unit_name TEXT NOT NULL,
            assigned_at TEXT NOT NULL,
            actor TEXT
        );
    """),
    ("0004_auth_result", """
        ALTER TABLE recorders ADD COLUMN auth_ok INTEGER;
        ALTER TABLE recorders ADD COLUMN auth_at TEXT
    """),
]

_NUMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
# header aliases (English / Chinese) accepted by the roster import
_COLUMNS = {
    "officer_number": ("officer_number", "number", "officer", "警号", "执法证号", "执法证编号"),
    "name": ("name", "officer_name", "姓名"),
    "unit_code": ("unit", "unit_code", "unit_number", "单位", "单位编号", "单位代码"),
    "unit_name": ("unit_name", "单位名称"),
}


@dataclass
class Officer:
    number: str
    name: str
    unit_code: str
    unit_name: str = ""


@dataclass
class RatioRow:
    """Equipment ratio and usage of one unit (配备率 / 使用率)."""

    unit_code: str
    unit_name: str
    officers: int
    recorders_in_service: int
    ratio_pct: int | None  # recorders per 100 officers (None without officers)
    min_ratio_pct: int
    meets_minimum: bool
    recorders_registered: int
    recorders_used: int
    usage_pct: int | None
    usage_days: int
    conflicts: int
    recorder_serials: list[str] = dataclasses.field(default_factory=list)  # the recorders that count
    excluded: list[dict] = dataclasses.field(default_factory=list)  # [{serial, reason, text}] left out
    min_rooms: int = rule.DEFAULT_MIN_ROOMS
    threshold_source: str = "config"   # policy | config (agent/common/ratio.py SOURCES)
    policy_version: int | None = None  # the unit policy the thresholds come from

    def as_dict(self) -> dict:
        return asdict(self)


class Registry(Database):
    """Roster and recorder registry in data_dir/dock/registry.db (the ledger's helpers, own tables)."""

    migrations = MIGRATIONS

    def __init__(self, data_dir: Path | str):
        super().__init__(Path(data_dir) / "dock" / "registry.db")

    # --- roster -----------------------------------------------------------------------------
    def import_roster(self, path: Path | str, *, replace: bool = True) -> int:
        """Import officers.csv (UTF-8, UTF-8 with BOM, or GBK). With ``replace`` the roster is
        replaced as a whole (officers no longer listed are removed). Returns the count."""
        officers = parse_roster(Path(path))
        with self.atomic() as db:
            if replace:
                db.execute("DELETE FROM officers")
            at = now_iso()
            for o in officers:
                db["officers"].upsert({**asdict(o), "imported_at": at}, pk="number")
        return len(officers)

    def apply_central(self, officers: list[Officer], assignments: dict[str, str], source: str) -> int:
        """The roster and recorder assignments (serial -> officer number, each officer in
        ``officers``) of a signed unit policy (agent/policy): both replaced as a whole, in one
        transaction; a recorder still holding another officer then raises the docking mismatch
        alarm until `dock assign` writes it. Returns the officer count."""
        by_number = {o.number: o for o in officers}
        with self.atomic() as db:
            db.execute("DELETE FROM officers")
            db.execute("DELETE FROM assignments")
            at = now_iso()
            for o in officers:
                db["officers"].upsert({**asdict(o), "imported_at": at}, pk="number")
            for serial, number in sorted(assignments.items()):
                o = by_number[number]
                db["assignments"].insert({"serial": serial, "officer_number": number, "officer_name": o.name,
                                          "unit_number": o.unit_code, "unit_name": o.unit_name, "assigned_at": at,
                                          "actor": source}, pk="serial")
        return len(officers)

    def officers(self, unit: str | None = None) -> list[dict]:
        if unit:
            return self.query("SELECT * FROM officers WHERE unit_code = ? ORDER BY unit_code, number", [unit])
        return self.query("SELECT * FROM officers ORDER BY unit_code, number")

    # --- assignments (edge-agent dock assign) ---------------------------------------------------
    def assign(self, serial: str, officer_number: str, officer_name: str, unit_number: str, unit_name: str,
               actor: str | None = None) -> dict:
        """Record the station's assignment of ``serial`` (written into the recorder and read back
        first: agent.dock.station ``dock.assign``)."""
        row = {"serial": serial, "officer_number": officer_number, "officer_name": officer_name,
               "unit_number": unit_number, "unit_name": unit_name, "assigned_at": now_iso(), "actor": actor}
        with self.atomic() as db:
            db["assignments"].upsert(row, pk="serial")
            db.execute("UPDATE recorders SET officer_number = ?, officer_name = ?, unit_number = ?, unit_name = ? "
                       "WHERE serial = ?", [officer_number, officer_name, unit_number, unit_name, serial])
        return row

    def assignment(self, serial: str) -> dict | None:
        """The station's assignment of ``serial``, or None."""
        rows = self.query("SELECT * FROM assignments WHERE serial = ?", [serial])
        return rows[0] if rows else None

    def officer(self, number: str) -> dict | None:
        rows = self.query("SELECT * FROM officers WHERE number = ?", [number])
        return rows[0] if rows else None

    # --- recorders --------------------------------------------------------------------------
    def seen(self, serial: str, officer_number: str, officer_name: str, unit_number: str, unit_name: str,
             bay: str, at: float | None = None) -> dict:
        """Record a docking (identify answered). Returns the recorder row."""
        at = at or time.time()
        iso = now_iso()
        with self.atomic() as db:
            row = self.query("SELECT * FROM recorders WHERE serial = ?", [serial])
            if row:
                db["recorders"].update(serial, {
                    "officer_number": officer_number, "officer_name": officer_name, "unit_number": unit_number,
                    "unit_name": unit_name, "last_seen": iso, "last_seen_ts": at, "last_bay": bay,
                    "docks": row[0]["docks"] + 1})
            else:
                db["recorders"].insert({
                    "serial": serial, "officer_number": officer_number, "officer_name": officer_name,
                    "unit_number": unit_number, "unit_name": unit_name, "first_seen": iso, "last_seen": iso,
                    "last_seen_ts": at, "last_bay": bay, "docks": 1, "in_service": 1, "conflict": 0,
                    "conflict_detail": None}, pk="serial")
            db["docks"].insert({"serial": serial, "ts": at, "at": iso, "bay": bay})
        return self.query("SELECT * FROM recorders WHERE serial = ?", [serial])[0]

    def flag_conflict(self, serial: str, detail: str) -> None:
        """Two recorders claim the same serial (冲突): flagged until a technician clears it."""
        with self.atomic() as db:
            if not self.query("SELECT serial FROM recorders WHERE serial = ?", [serial]):
                iso = now_iso()
                db["recorders"].insert({"serial": serial, "first_seen": iso, "last_seen": iso,
                                        "last_seen_ts": time.time(), "docks": 0, "in_service": 1}, pk="serial")
            db["recorders"].update(serial, {"conflict": 1, "conflict_detail": detail})

    def clear_conflict(self, serial: str) -> None:
        with self.atomic() as db:
            db["recorders"].update(serial, {"conflict": 0, "conflict_detail": None})

    def set_auth(self, serial: str, ok: bool) -> None:
        """The result of the admin password check at this docking (a recorder that failed it does
        not count toward the ratio until it passes)."""
        with self.atomic() as db:
            db.execute("UPDATE recorders SET auth_ok = ?, auth_at = ? WHERE serial = ?", [int(ok), now_iso(), serial])

    def set_in_service(self, serial: str, in_service: bool) -> None:
        if not self.query("SELECT serial FROM recorders WHERE serial = ?", [serial]):
            raise EdgeError(f"记录仪未登记 / no recorder with serial {serial!r} in the registry")
        with self.atomic() as db:
            db["recorders"].update(serial, {"in_service": 1 if in_service else 0})

    # --- clock offsets kept with the recorder ----------------------------------------------
    # The offset that applies to a file is the one in force when it was recorded: the one measured
    # at the first docking that saw the file. It is kept here per file until the file is sealed, so
    # a clock set in one docking does not turn the offset of files sealed in the next into 0.
    def keep_clock(self, serial: str, keys: list[str], offset_ms: int | None, measured_at: str | None) -> None:
        """Keep (offset, when measured) for each file key not kept already (an older measurement wins:
        it was in force when the file was recorded). ``offset_ms`` None = the clock could not be read."""
        if not keys:
            return
        with self.atomic() as db:
            db.conn.executemany("INSERT OR IGNORE INTO clock_kept (serial, source_key, offset_ms, measured_at) "
                           "VALUES (?, ?, ?, ?)", [(serial, k, offset_ms, measured_at) for k in keys])

    def kept_clock(self, serial: str) -> dict[str, dict]:
        """source key -> {offset_ms, measured_at} kept for this recorder's unsealed files."""
        return {r["source_key"]: {"offset_ms": r["offset_ms"], "measured_at": r["measured_at"]}
                for r in self.query("SELECT * FROM clock_kept WHERE serial = ?", [serial])}

    def release_clock(self, serial: str, keys: list[str]) -> None:
        """These files are sealed (or no longer on the recorder): their kept offsets are done with."""
        if not keys:
            return
        with self.atomic() as db:
            db.conn.executemany("DELETE FROM clock_kept WHERE serial = ? AND source_key = ?", [(serial, k) for k in keys])

    def recorders(self) -> list[dict]:
        return self.query("SELECT * FROM recorders ORDER BY unit_number, serial")

    # --- ratio ------------------------------------------------------------------------------
    def ratio(self, min_ratio_pct: int = rule.DEFAULT_MIN_RATIO_PCT, usage_days: int = 30, at: float | None = None,
              min_rooms: int = rule.DEFAULT_MIN_ROOMS, thresholds: rule.Thresholds | None = None) -> list[RatioRow]:
        """One row per unit known from the roster or the registry. A recorder counts when
        :func:`agent.common.ratio.exclusion` says so; each one left out is listed with its reason.
        ``thresholds`` (the unit policy's, or the config's with source "config") replace
        ``min_ratio_pct`` and ``min_rooms``."""
        if thresholds is None:
            thresholds = rule.Thresholds(min_ratio_pct, min_rooms, "config")
        min_ratio_pct, min_rooms = thresholds.min_ratio_pct, thresholds.min_rooms
        at = at or time.time()
        since = at - usage_days * 86400
        units: dict[str, dict] = {}

        def unit(code: str | None, name: str | None) -> dict:
            code = code or "?"
            u = units.setdefault(code, {"name": "", "officers": 0, "counted": [], "excluded": [], "registered": 0,
                                        "used": 0, "conflicts": 0})
            if name and not u["name"]:
                u["name"] = name
            return u

        for o in self.query("SELECT unit_code, unit_name, count(*) n FROM officers GROUP BY unit_code"):
            unit(o["unit_code"], o["unit_name"])["officers"] = o["n"]
        assigned = {a["serial"]: a for a in self.query("SELECT * FROM assignments")}
        for r in self.query("SELECT r.*, (SELECT max(ts) FROM docks d WHERE d.serial = r.serial) last_dock "
                            "FROM recorders r ORDER BY r.serial"):
            # a recorder counts for the unit of its officer: the station's assignment, else the
            # officer it reports if on the roster, else (not counted) the unit it reports
            a = assigned.get(r["serial"])
            number = a["officer_number"] if a else r["officer_number"]
            off = self.officer(number) if number else None
            if a:
                u = unit(a["unit_number"], a["unit_name"])
            else:
                u = unit(off["unit_code"] if off else r["unit_number"], off["unit_name"] if off else r["unit_name"])
            u["registered"] += 1
            why = rule.exclusion(in_service=bool(r["in_service"]), assigned=off is not None,
                                 auth_ok=None if r["auth_ok"] is None else bool(r["auth_ok"]), conflict=bool(r["conflict"]))
            if why is None:
                u["counted"].append(r["serial"])
            else:
                u["excluded"].append({"serial": r["serial"], "reason": why, "text": rule.reason_text(why)})
            if r["last_dock"] and r["last_dock"] >= since:
                u["used"] += 1
            if r["conflict"]:
                u["conflicts"] += 1
        rows = []
        for code in sorted(units):
            u = units[code]
            n = len(u["counted"])
            usage = (u["used"] * 100 // u["registered"]) if u["registered"] else None
            rows.append(RatioRow(code, u["name"], u["officers"], n, rule.ratio_pct(n, u["officers"]), min_ratio_pct,
                                 bool(rule.meets_ratio(n, u["officers"], min_ratio_pct)), u["registered"], u["used"],
                                 usage, usage_days, u["conflicts"], u["counted"], u["excluded"], min_rooms,
                                 thresholds.source, thresholds.policy_version))
        return rows


def parse_roster(path: Path) -> list[Officer]:
    """Read and check officers.csv; EdgeError names the line and the problem."""
    text = read_csv_text(path)
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise EdgeError(f"{path}: 文件为空 / empty file; expected a header officer_number,name,unit") from None
    except csv.Error as exc:
        raise EdgeError(f"{path}: line 1: 表头无效 / {exc}") from None
    norm = [h.strip().lower() for h in header]
    index: dict[str, int] = {}
    for field, aliases in _COLUMNS.items():
        for i, h in enumerate(norm):
            if h in aliases:
                index[field] = i
                break
    missing = [f for f in ("officer_number", "name", "unit_code") if f not in index]
    if missing:
        raise EdgeError(f"{path}: line 1: 缺少列 / missing column(s) {', '.join(missing)} "
                        f"(header must name officer_number, name, unit[, unit_name]; got {','.join(header)})")
    officers: list[Officer] = []
    seen: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(header):
                raise EdgeError(f"{path}: line {line}: 列数与表头不符 / {len(row)} column(s), the header has {len(header)}")

            def col(field: str) -> str:
                return row[index[field]].strip() if field in index else ""

            number, name, unit_code = col("officer_number"), col("name"), col("unit_code")
            if not _NUMBER.match(number):
                raise EdgeError(f"{path}: line {line}: 警号无效 / officer number {number!r}: letters and digits, 1-32")
            if not name or len(name) > 64 or any(ord(c) < 32 for c in name):
                raise EdgeError(f"{path}: line {line}: 姓名无效 / name {name!r}: 1-64 printable characters")
            if not _NUMBER.match(unit_code):
                raise EdgeError(f"{path}: line {line}: 单位编号无效 / unit {unit_code!r}: letters and digits, 1-32")
            if number in seen:
                raise EdgeError(f"{path}: line {line}: 警号重复 / officer number {number} already on line {seen[number]}")
            seen[number] = line
            officers.append(Officer(number, name, unit_code, col("unit_name")[:64]))
    except csv.Error as exc:
        raise EdgeError(f"{path}: line {reader.line_num}: 不是有效的 CSV / not valid CSV: {exc}") from None
    if not officers:
        raise EdgeError(f"{path}: 表头下没有警员 / no officers after the header")
    return officers


def ratio_csv(rows: list[RatioRow]) -> str:
    buf = io.StringIO()
    fields = list(RatioRow.__dataclass_fields__)
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        d = r.as_dict()
        d["recorder_serials"] = " ".join(r.recorder_serials)
        d["excluded"] = "; ".join(f"{x['serial']}: {x['reason']}" for x in r.excluded)
        w.writerow(d)
    return buf.getvalue()
