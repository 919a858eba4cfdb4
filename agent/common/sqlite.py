"""One SQLite database (WAL) shared by the threads of a process: named migrations, one
transaction helper. The agent's ledger, the archive's index and the dock's registry are each a
subclass that names its own migrations; only the package that owns a table writes SQL for it."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils


class Database:
    """One connection shared by the threads of a process, behind a lock; WAL across processes.

    Subclasses with their own tables (the archive's database, the dock's registry) set
    ``migrations``: named migrations, each applied once and recorded in the database."""

    migrations: list[tuple[str, str]] = []
    dialect = "sqlite"

    def __init__(self, path: Path, *, migrate: bool = True, upto: str | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.lock = threading.RLock()
        if migrate:
            self.upgrade(upto)

    def _migrate(self) -> None:
        self.upgrade()

    def applied(self) -> list[str]:
        """The names of the migrations applied, in order."""
        with self.atomic():
            self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
            return [r[0] for r in self.db.execute("SELECT name FROM migrations ORDER BY name").fetchall()]

    def upgrade(self, upto: str | None = None) -> list[str]:
        """Apply the migrations not yet applied (up to and including ``upto``); returns their names."""
        done: list[str] = []
        with self.atomic():
            self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
            have = {r[0] for r in self.db.execute("SELECT name FROM migrations").fetchall()}
            for name, sql in self.migrations:
                if name not in have:
                    for stmt in filter(str.strip, sql.split(";")):
                        self.db.execute(stmt)
                    self.db.execute("INSERT INTO migrations VALUES (?, datetime('now'))", [name])
                    done.append(name)
                if name == upto:
                    break
        return done

    @contextlib.contextmanager
    def atomic(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT); nested calls join the outer one."""
        with self.lock:
            conn = self.db.conn
            if conn.in_transaction:
                yield self.db
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:   # e.g. disk full: never leave a transaction open for the next caller
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def serialize(self, name: str) -> None:
        """Inside ``atomic()``: one writer at a time for ``name``; BEGIN IMMEDIATE already is."""

    def query(self, sql: str, params: Any = ()) -> list[dict]:
        with self.lock:
            return list(self.db.query(sql, params))

    def select(self, table: str, order_by: str, limit: int | None = None, **equal: Any) -> list[dict]:
        """Rows of ``table`` whose columns equal the values given (a value of None or "" filters
        nothing), in ``order_by`` order, at most ``limit``."""
        conds = {k: v for k, v in equal.items() if v is not None and v != ""}
        where = " AND ".join(f"[{k}] = ?" for k in conds) or None
        with self.lock:
            return list(self.db[table].rows_where(where, list(conds.values()), order_by=order_by, limit=limit))

    def one(self, sql: str, params: Any = ()) -> dict | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", [key])
        return row["value"] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.atomic() as db:
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       [key, value])

    def close(self) -> None:
        with self.lock:
            self.db.conn.close()
