"""What the SQLite database (:class:`agent.common.sqlite.Database`) and the PostgreSQL one
(:class:`agent.common.pg.PgDatabase`) share above their connections: named migrations recorded in
a ``migrations`` table, ``one()``, ``select()`` and the ``meta`` key/value table. SQL is written
once with ``?`` placeholders and double-quoted identifiers, which both dialects read.

A subclass gives ``atomic()`` (a transaction whose ``execute(sql, params)`` returns a cursor with
``fetchall()``; nested calls join the outer one), ``query()``, and what differs in the migration
step: ``_MIGRATED_AT`` (the time of applying, in SQL) and ``_migration_lock()``."""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator

from .errors import EdgeError

_MIGRATIONS_TABLE = "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT)"


class SqlDatabase:
    #: named migrations in this database's dialect, applied in order, each once
    migrations: list[tuple[str, str]] = []
    dialect = ""
    #: the SQL expression stored as a migration's ``applied_at``
    _MIGRATED_AT = "CURRENT_TIMESTAMP"

    # --- given by the dialect ---------------------------------------------------------------
    @contextlib.contextmanager
    def atomic(self) -> Iterator[Any]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def query(self, sql: str, params: Any = ()) -> list[dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _migration_lock(self, tx: Any) -> None:
        """Inside the migration transaction: keep other processes from migrating at the same time
        (SQLite's BEGIN IMMEDIATE already does)."""

    # --- migrations -------------------------------------------------------------------------
    def applied(self) -> list[str]:
        """The names of the migrations applied, in order."""
        with self.atomic() as tx:
            tx.execute(_MIGRATIONS_TABLE)
            return [r[0] for r in tx.execute("SELECT name FROM migrations ORDER BY name").fetchall()]

    def upgrade(self, upto: str | None = None) -> list[str]:
        """Apply the migrations not yet applied (up to and including ``upto``), in one
        transaction; returns their names."""
        done: list[str] = []
        with self.atomic() as tx:
            self._migration_lock(tx)
            tx.execute(_MIGRATIONS_TABLE)
            have = {r[0] for r in tx.execute("SELECT name FROM migrations").fetchall()}
            ours = [n for n, _ in self.migrations]
            if have and not have & set(ours):  # e.g. the archive's index given as the monitor's database
                raise EdgeError(f"数据库不匹配 / {self.path}: its migrations ({', '.join(sorted(have)[:3])}, ...) are "
                                f"another program's, not these ({ours[0]}, ...): wrong database?")
            for name, sql in self.migrations:
                if name not in have:
                    for stmt in filter(str.strip, sql.split(";")):
                        try:
                            tx.execute(stmt)
                        except Exception as exc:  # sqlite3.Error, psycopg.Error: the transaction is undone
                            raise EdgeError(f"数据库迁移失败 / {self.path}: migration {name} failed and was undone: "
                                            f"{str(exc).strip()}") from None
                    tx.execute(f"INSERT INTO migrations VALUES (?, {self._MIGRATED_AT})", [name])
                    done.append(name)
                if name == upto:
                    break
        return done

    # --- reading ----------------------------------------------------------------------------
    def one(self, sql: str, params: Any = ()) -> dict | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def select(self, table: str, order_by: str, limit: int | None = None, **equal: Any) -> list[dict]:
        """Rows of ``table`` whose columns equal the values given (a value of None or "" filters
        nothing), in ``order_by`` order, at most ``limit``."""
        conds = {k: v for k, v in equal.items() if v is not None and v != ""}
        where = " AND ".join(f'"{k}" = ?' for k in conds)
        sql = f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "") + f" ORDER BY {order_by}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.query(sql, list(conds.values()))

    # --- the meta table ---------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", [key])
        return row["value"] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.atomic() as db:
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       [key, value])


_SQLITE_WORDS = [(re.compile(r"\bBIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY\b"), "INTEGER PRIMARY KEY"),
                 (re.compile(r"\bBIGINT\b"), "INTEGER"),
                 (re.compile(r"\bDOUBLE PRECISION\b"), "REAL")]


def sqlite_dialect(migrations: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Named migrations written once, in PostgreSQL's dialect, as SQLite runs them: an identity
    row id is ``INTEGER PRIMARY KEY`` (SQLite's rowid), ``BIGINT`` is ``INTEGER`` and ``DOUBLE
    PRECISION`` is ``REAL`` (SQLite's integers are 64-bit and its reals doubles). Everything else
    (``"end"`` quoted, ``ON CONFLICT``, indexes) both read alike."""
    out = []
    for name, sql in migrations:
        for word, sqlite in _SQLITE_WORDS:
            sql = word.sub(sqlite, sql)
        out.append((name, sql))
    return out
