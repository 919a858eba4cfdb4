"""One PostgreSQL database shared by the threads (and hosts) of a centre: the same small API as
:class:`agent.common.sqlite.Database` (``atomic()``, ``query()``, ``one()``, ``select()``, meta,
named migrations recorded in a table) over a :class:`psycopg_pool.ConnectionPool`.

SQL is written once with ``?`` placeholders (SQLite's); :func:`translate` turns them into
psycopg's ``%s`` in one place. Connections are in autocommit mode and ``atomic()`` opens one
``conn.transaction()``; inside it every call of that thread (``query``, ``one``, nested
``atomic``) uses the same connection, so it sees its own writes and joins the transaction.
Concurrency is PostgreSQL's: :meth:`PgDatabase.lock` holds a transaction-scoped advisory lock
(``pg_advisory_xact_lock``) on a name, e.g. one item of one device, across receivers on any host.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Mapping
from typing import Any, Iterator

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool

from agent.common.errors import EdgeError
from agent.common.sqlbase import SqlDatabase

SCHEMES = ("postgresql://", "postgres://")


def is_url(db: str | None) -> bool:
    return bool(db) and str(db).startswith(SCHEMES)


_TOKENS = re.compile(r"('(?:[^']|'')*')|(\?)|(%)")
_NAMED = re.compile(r"('(?:[^']|'')*')|(?<![:\w]):([A-Za-z_]\w*)|(%)")


def translate(sql: str, named: bool = False) -> str:
    """``?`` placeholders (or, ``named``, ``:name`` ones, as sqlite3 takes with a dict) to
    psycopg's ``%s`` (``%(name)s``) and a literal ``%`` to ``%%``, outside quoted strings."""
    def sub(m: re.Match) -> str:
        if m.group(1):
            return m.group(1).replace("%", "%%")
        if m.group(2):
            return f"%({m.group(2)})s" if named else "%s"
        return "%%"
    return (_NAMED if named else _TOKENS).sub(sub, sql)


def _params(params: Any) -> Any:
    """A mapping stays one (named placeholders); anything else becomes a list (so ``%%`` is
    always unescaped)."""
    return params if isinstance(params, Mapping) else list(params)


class Row(dict):
    """A result row read by column name or by position, as :class:`sqlite3.Row` is."""

    __slots__ = ("_values",)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return self._values[key]
        return dict.__getitem__(self, key)


def row_factory(cursor: psycopg.Cursor) -> Any:
    names = [c.name for c in cursor.description or ()]

    def make(values: Any) -> Row:
        r = Row(zip(names, values))
        r._values = values
        return r
    return make


class Reader:
    """A read-only connection of its own whose ``execute(sql, params)`` takes SQLite's
    placeholders and yields rows read by name or position: what the monitor's web page, terminal
    view and reports read through, on either backend."""

    def __init__(self, url: str):
        self.path = redact(url)
        try:
            self.conn = psycopg.connect(url, connect_timeout=10, autocommit=True, row_factory=row_factory)
            self.conn.read_only = True
        except psycopg.Error as exc:
            raise EdgeError(f"数据库无法连接 / cannot connect to the database {self.path}: {str(exc).strip()}") from None

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor:
        return self.conn.execute(translate(sql, isinstance(params, Mapping)), _params(params))

    def close(self) -> None:
        self.conn.close()


class ReaderPool:
    """Read-only connections kept open for a server that reads often (the monitor's web page: a
    request every 2 s per viewer, a history query per click): ``with pool.reader() as r:`` yields
    a :class:`Reader` on a pooled connection, instead of a new connection (a new server process)
    per request."""

    def __init__(self, url: str, max_size: int = 4):
        self.path = redact(url)

        def configure(conn: psycopg.Connection) -> None:
            conn.read_only = True

        try:
            self.pool = ConnectionPool(url, min_size=1, max_size=max_size, open=False, configure=configure,
                                       kwargs={"autocommit": True, "row_factory": row_factory}, name="edge-agent-read")
            self.pool.open(wait=True, timeout=15)
        except Exception as exc:  # PoolTimeout ...
            with contextlib.suppress(Exception):
                self.pool.close()
            raise EdgeError(f"数据库无法连接 / cannot connect to the database {self.path}: {exc}") from None

    @contextlib.contextmanager
    def reader(self) -> Iterator["Reader"]:
        with self.pool.connection() as conn:
            r = Reader.__new__(Reader)
            r.path, r.conn = self.path, conn
            yield r

    def close(self) -> None:
        self.pool.close()


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def read_once(url: str, sql: str, params: Any = ()) -> list[dict]:
    """One read-only query on a connection of its own (e.g. the monitor reading the archive's
    enrolment every few seconds); errors become one EdgeError naming the database."""
    try:
        with psycopg.connect(url, connect_timeout=10, row_factory=dict_row) as conn:
            conn.read_only = True
            return conn.execute(translate(sql), list(params)).fetchall()
    except psycopg.Error as exc:
        raise EdgeError(f"数据库无法读取 / cannot read the database {redact(url)}: {str(exc).strip()}") from None


class _Table:
    def __init__(self, tx: "Tx", name: str):
        self.tx, self.name = tx, name

    def insert(self, row: dict, replace: bool = False) -> None:
        cols = list(row)
        sql = (f'INSERT INTO {self.name} ({", ".join(chr(34) + c + chr(34) for c in cols)}) '
               f'VALUES ({", ".join("?" * len(cols))})')
        if replace:
            pk = self.tx.pg.primary_key(self.name)
            sets = ", ".join(f'"{c}" = excluded."{c}"' for c in cols if c not in pk)
            sql += f' ON CONFLICT ({", ".join(pk)}) ' + (f"DO UPDATE SET {sets}" if sets else "DO NOTHING")
        self.tx.execute(sql, [row[c] for c in cols])


class Tx:
    """What ``atomic()`` yields: ``execute(sql, params)`` returning a cursor (tuple rows, like
    sqlite3's), ``executemany`` and ``tx[table].insert(row, replace=)`` as in sqlite-utils."""

    def __init__(self, pg: "PgDatabase", conn: psycopg.Connection):
        self.pg, self.conn = pg, conn

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor:
        cur = self.conn.cursor(row_factory=tuple_row)
        return cur.execute(translate(sql, isinstance(params, Mapping)), _params(params))

    def executemany(self, sql: str, rows: list) -> None:
        """Many rows in one round of the pipeline; rows that are mappings fill ``:name`` placeholders."""
        if not rows:
            return
        with self.conn.cursor() as cur:
            cur.executemany(translate(sql, isinstance(rows[0], Mapping)), rows)

    def __getitem__(self, table: str) -> _Table:
        return _Table(self, table)


class PgDatabase(SqlDatabase):
    """Subclasses set ``migrations``: named migrations in PostgreSQL's dialect, each applied
    once (in one transaction, under an advisory lock so two receivers starting together do not
    both apply it) and recorded in the ``migrations`` table (:class:`agent.common.sqlbase.SqlDatabase`)."""

    dialect = "postgresql"
    _MIGRATED_AT = "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, migrate: bool = True,
                 upto: str | None = None):
        self.url = url
        self.path = redact(url)  # what messages name, like Database.path
        self._local = threading.local()
        self._pk: dict[str, list[str]] = {}
        try:  # one plain connection first: a wrong host, port or name fails at once, with PostgreSQL's reason
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            raise EdgeError(f"数据库无法连接 / cannot connect to the database {self.path}: {str(exc).strip()}") from None
        try:
            self.pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=False,
                                       kwargs={"autocommit": True}, name="edge-agent")
            self.pool.open(wait=True, timeout=15)
        except Exception as exc:  # PoolTimeout ...
            with contextlib.suppress(Exception):
                self.pool.close()
            raise EdgeError(f"数据库无法连接 / cannot connect to the database {self.path}: {exc}") from None
        if migrate:
            self.upgrade(upto)

    # --- migrations -----------------------------------------------------------------------
    def _migration_lock(self, tx: "Tx") -> None:
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('edge-agent:migrations', 0))")

    def primary_key(self, table: str) -> list[str]:
        if table not in self._pk:
            rows = self.query("SELECT a.attname AS col FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                              "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = CAST(? AS regclass) AND i.indisprimary "
                              "ORDER BY array_position(i.indkey, a.attnum)", [table])
            self._pk[table] = [f'"{r["col"]}"' for r in rows]
        return self._pk[table]

    # --- transactions ---------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic(self) -> Iterator[Tx]:
        """One transaction; nested calls (and query/one inside it) join the outer one."""
        tx = getattr(self._local, "tx", None)
        if tx is not None:
            yield tx
            return
        with self.pool.connection() as conn, conn.transaction():
            self._local.tx = tx = Tx(self, conn)
            try:
                yield tx
            finally:
                self._local.tx = None

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold ``pg_advisory_xact_lock`` on ``name`` (every receiver on every host) for the block,
        on a connection of its own; released by the commit, or by PostgreSQL if this process dies."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [name])
            yield

    def serialize(self, name: str) -> None:
        """Inside ``atomic()``: one writer at a time for ``name`` until this transaction ends
        (e.g. the audit chain: each entry links to the one before)."""
        self._local.tx.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", [name])

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        tx = getattr(self._local, "tx", None)
        if tx is not None:
            yield tx.conn
        else:
            with self.pool.connection() as conn:
                yield conn

    def query(self, sql: str, params: Any = ()) -> list[dict]:
        with self._conn() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(translate(sql), list(params))
            return cur.fetchall()

    def close(self) -> None:
        self.pool.close()


def _admin_and_name(url: str) -> tuple[str, str]:
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = info.get("dbname") or ""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise EdgeError(f"数据库名无效 / database name {name!r}: lower-case letters, digits and '_' only")
    return psycopg.conninfo.make_conninfo(url, dbname="postgres"), name


def _on_server(url: str, sql: str, zh: str, en: str) -> None:
    """Run ``sql`` (``{name}`` = the database ``url`` names) on the same server, through its
    ``postgres`` database."""
    admin, name = _admin_and_name(url)
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.format(name=name))
    except psycopg.Error as exc:
        raise EdgeError(f"数据库无法{zh} / cannot {en} the database {redact(url)}: {str(exc).strip()}") from None


def create_database(url: str) -> None:
    """CREATE DATABASE named by ``url``: benchmarks and tests that start from an empty index."""
    _on_server(url, 'CREATE DATABASE "{name}"', "创建", "create")


def drop_database(url: str) -> None:
    """DROP DATABASE named by ``url`` (WITH FORCE: its connections are closed), if it exists."""
    _on_server(url, 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "删除", "drop")
