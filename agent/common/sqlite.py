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

from .sqlbase import SqlDatabase


class Database(SqlDatabase):
    """One connection shared by the threads of a process, behind a lock; WAL across processes.

    Subclasses with their own tables (the archive's database, the dock's registry) set
    ``migrations``: named migrations, each applied once and recorded in the database
    (:class:`agent.common.sqlbase.SqlDatabase`: migrations, ``one``, ``select``, meta)."""

    dialect = "sqlite"
    _MIGRATED_AT = "datetime('now')"

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

    def close(self) -> None:
        with self.lock:
            self.db.conn.close()
