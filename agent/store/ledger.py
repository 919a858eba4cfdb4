"""The SQLite ledger (WAL): items, their files and states, device chain head, audit log.

It is the store of record: the spool on disk and the ledger are kept in step so that the ledger
never names a sealed file that is not there, nor the reverse (see Store.recover).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

#: item states, in order; "discarded" (partial work abandoned) and "rejected" (archive refused) end a line
STATES = ("receiving", "sealed", "uploading", "archived", "purged", "discarded", "rejected")
UNARCHIVED = ("receiving", "sealed", "uploading", "rejected")

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_initial", """
        CREATE TABLE items (
            id TEXT PRIMARY KEY,
            device_seq INTEGER,
            state TEXT NOT NULL,
            kind TEXT NOT NULL,
            case_number TEXT,
            collector_id TEXT,
            collector_name TEXT,
            pending TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL,
            created_ts REAL NOT NULL,
            sealed_at TEXT,
            archived_at TEXT,
            purged_at TEXT,
            size INTEGER NOT NULL DEFAULT 0,
            content_hash TEXT,
            manifest_hash TEXT,
            item_hash TEXT,
            priority INTEGER NOT NULL DEFAULT 5,
            source_key TEXT,
            session_id TEXT,
            path TEXT NOT NULL,
            error TEXT,
            receipt TEXT
        );
        CREATE INDEX items_state ON items(state, priority, device_seq);
        CREATE INDEX items_case ON items(case_number);
        CREATE INDEX items_source ON items(source_key);
        CREATE UNIQUE INDEX items_seq ON items(device_seq) WHERE device_seq IS NOT NULL;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            item_id TEXT,
            detail TEXT NOT NULL,
            prev TEXT,
            hash TEXT NOT NULL
        );
    """),
]


class Ledger:
    """One connection shared by the threads of a process, behind a lock; WAL across processes.

    Subclasses with their own tables (the archive's database, the dock's registry) set
    ``migrations``: named migrations, each applied once and recorded in the database."""

    migrations: list[tuple[str, str]] = MIGRATIONS

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.lock = threading.RLock()
        self._migrate()

    def _migrate(self) -> None:
        with self.atomic():
            self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
            done = {r[0] for r in self.db.execute("SELECT name FROM migrations").fetchall()}
            for name, sql in self.migrations:
                if name not in done:
                    for stmt in filter(str.strip, sql.split(";")):
                        self.db.execute(stmt)
                    self.db.execute("INSERT INTO migrations VALUES (?, datetime('now'))", [name])

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

    def query(self, sql: str, params: Any = ()) -> list[dict]:
        with self.lock:
            return list(self.db.query(sql, params))

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
