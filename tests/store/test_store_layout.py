"""Only agent/store touches the agent ledger's tables (issue 13, "Everyone's toolbox").

The sources are parsed, not imported: every string literal that names a ledger table (the
``CREATE TABLE`` names of agent.store.ledger.MIGRATIONS) after FROM, INTO, UPDATE, JOIN or TABLE,
every sqlite-utils table handle ``db["items"]``, every reach into ``something.ledger`` and every
mention of the file ``ledger.db`` is reported when it is outside agent/store. A package that
declares a table of the same name in its own migrations (the archive's index has its own
``items``, ``meta`` and ``audit``) may name it. tools/ (benchmarks, simulators) is held to the
same rule except for table names: its simulators read the archive's own ``items``.
"""

from __future__ import annotations

import ast

from tests.support import pysource
import re
from pathlib import Path

from agent.store.ledger import MIGRATIONS

ROOT = Path(__file__).resolve().parents[2]
CREATE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)")
SQL_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+(?:IF NOT EXISTS\s+)?[\"`]?(\w+)")
#: the Database base class (SQLite and PostgreSQL: migrations, meta get/set) and the hash-chained audit log are the generic
#: helpers every SQLite database of the project uses over its own meta and audit tables
GENERIC = {"agent/common/sqlbase.py": {"meta"},  # the base of both (agent/common/sqlite.py, agent/common/pg.py)
           "agent/common/audit.py": {"audit", "meta"}}

LEDGER_TABLES = {t for _, sql in MIGRATIONS for t in CREATE.findall(sql)}


def _strings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def declared_tables(sources: dict[str, str]) -> set[str]:
    """Tables a package declares in its own database's ``MIGRATIONS`` or ``PG_MIGRATIONS`` (a
    module-level list; the SQLite list may be derived from the PostgreSQL one);
    a table made on the fly (``CREATE TABLE IF NOT EXISTS`` in a call) does not count."""
    out = set()
    for text in sources.values():
        for node in pysource.parse(text).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id in ("MIGRATIONS", "PG_MIGRATIONS") for t in targets) \
                    and node.value is not None:
                out |= {t for _, s in _strings(node.value) for t in CREATE.findall(s)}
    return out


def violations(rel: str, text: str, tables: set[str], own: set[str], sql: bool = True) -> list[str]:
    """Where the file ``rel`` touches one of ``tables`` (other than those in ``own``) or the ledger;
    ``sql=False`` skips the table names in string literals."""
    tree = pysource.parse(text)
    out = []
    allowed = own | GENERIC.get(rel, set())
    for line, s in _strings(tree):
        for t in SQL_TABLE.findall(s) if sql else ():
            if t in tables and t not in allowed:
                out.append(f"{rel}:{line}: SQL on the ledger's table {t!r}: {s.strip()[:80]!r}")
        if "ledger.db" in s:
            out.append(f"{rel}:{line}: opens the ledger's file: {s.strip()[:80]!r}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                and node.slice.value in tables and node.slice.value not in allowed
                and isinstance(node.value, (ast.Name, ast.Attribute))
                and (getattr(node.value, "id", None) or getattr(node.value, "attr", None)) == "db"):
            out.append(f"{rel}:{node.lineno}: sqlite-utils handle on the ledger's table {node.slice.value!r}")
        if (isinstance(node, ast.Attribute) and node.attr == "ledger"
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
            out.append(f"{rel}:{node.lineno}: reaches into the store's ledger ({ast.unparse(node)})")
    return out


def _packages() -> dict[str, dict[str, str]]:
    """Top-level package (agent/dock, agent/common, drivers …) -> {relative path: source}."""
    pkgs: dict[str, dict[str, str]] = {}
    for top in ("agent", "drivers", "tools"):
        for p in sorted((ROOT / top).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            parts = rel.split("/")
            pkg = "/".join(parts[:2]) if len(parts) > 2 else top
            pkgs.setdefault(pkg, {})[rel] = p.read_text(encoding="utf-8")
    return pkgs


def test_ledger_tables_are_known():
    assert {"items", "meta", "audit", "command_nonces"} <= LEDGER_TABLES


def test_only_the_store_touches_the_ledger():
    found = []
    for pkg, sources in _packages().items():
        if pkg == "agent/store":
            continue
        own = declared_tables(sources)
        for rel, text in sources.items():
            found += violations(rel, text, LEDGER_TABLES, own, sql=not rel.startswith("tools/"))
    assert not found, "SQL on the agent ledger outside agent/store (add a method to agent/store/repository.py):\n" \
        + "\n".join(found)


def test_the_check_sees_the_store_own_queries():
    """The scanner is the one that runs above: on agent/store itself it finds the queries it owns."""
    sources = _packages()["agent/store"]
    hits = [v for rel, text in sources.items() for v in violations(rel, text, LEDGER_TABLES, set())]
    assert any("'items'" in h for h in hits) and any("'meta'" in h for h in hits)
    assert any("'command_nonces'" in h for h in hits)


def test_the_check_reports_each_way_of_touching_the_ledger():
    bad = '''
def pending(store):
    rows = store.ledger.query(
        "SELECT collector_id, count(*) n FROM items "
        "WHERE pending != '' GROUP BY collector_id")
    with store.ledger.atomic() as db:
        db["items"].update("x", {"state": "sealed"})
        db.execute("INSERT INTO meta(key, value) VALUES (?, ?)", ["k", "v"])
    return rows
'''
    found = violations("agent/dock/example.py", bad, LEDGER_TABLES, set())
    assert sum("SQL on the ledger's table 'items'" in f for f in found) == 1
    assert sum("SQL on the ledger's table 'meta'" in f for f in found) == 1
    assert sum("sqlite-utils handle" in f for f in found) == 1
    assert sum("reaches into the store's ledger" in f for f in found) == 2
    # a package with its own table of that name (the archive's index) may name it
    assert violations("agent/archive/example.py", bad.replace("store.ledger", "self.db"), LEDGER_TABLES,
                      {"items", "meta"}) == []
    # a table made on the fly is not the package's own: the ledger's command_nonces from the wire
    made = 'def gate(store):\n    store.ledger.atomic().__enter__().execute(' \
           '"CREATE TABLE IF NOT EXISTS command_nonces (nonce TEXT PRIMARY KEY, ts REAL NOT NULL)")\n'
    assert declared_tables({"agent/wire/commands.py": made}) == set()
    assert any("'command_nonces'" in f for f in violations("agent/wire/commands.py", made, LEDGER_TABLES, set()))
    archive = 'MIGRATIONS = [("0001", """CREATE TABLE items (id TEXT); CREATE TABLE meta (k TEXT)""")]\n'
    assert declared_tables({"agent/archive/registry.py": archive}) == {"items", "meta"}
    # the file itself, opened by path
    assert violations("tools/bench/x.py", 'sqlite3.connect(str(data / "ledger.db"))', LEDGER_TABLES, set(),
                      sql=False)
    # prose is not SQL
    assert violations("agent/dock/example.py", '"""Sealed items from the ledger, into the archive."""',
                      LEDGER_TABLES, set()) == []
