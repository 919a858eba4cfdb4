"""The SQLite ledger (WAL): items, their files and states, device chain head, audit log, command nonces.

It is the store of record: the spool on disk and the ledger are kept in step so that the ledger
never names a sealed file that is not there, nor the reverse (see Store.recover). Its tables are
read and written only through agent/store/repository.py.
"""

from __future__ import annotations

from agent.common.sqlite import Database

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
    # signed central commands: nonces seen recently (a replay is refused); made by CommandGate
    # itself before this migration, hence IF NOT EXISTS
    ("0002_command_nonces", """
        CREATE TABLE IF NOT EXISTS command_nonces (nonce TEXT PRIMARY KEY, ts REAL NOT NULL);
    """),
]


class Ledger(Database):
    """The agent's ledger: items, files, states, the device chain head and the audit log."""

    migrations = MIGRATIONS
