"""The archive's database and device registry.

``ROOT/archive.db`` (SQLite, WAL) is shared by every receiver process on the same root; writes are
short ``BEGIN IMMEDIATE`` transactions. Enrolled public keys live in ``ROOT/keys/DEVICE.pub`` so
that ``edge-agent verify --chain ROOT/UNIT --keys ROOT/keys`` works on the archive unchanged.
The archive's own audit log (调阅监督: every retrieval and export) is the same hash-chained
:class:`agent.common.audit.AuditLog` the agent uses, over this database.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.common.errors import EdgeError, NotFoundError
from ..evidence import keys, rules
from agent.common.audit import AuditLog
from agent.common.fs import atomic_write
from agent.common.pg import PgDatabase, is_url, read_once
from agent.common.sqlite import Database
from agent.common.timeutil import now_iso

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_archive", """
        CREATE TABLE devices (
            id TEXT PRIMARY KEY, unit TEXT NOT NULL, key_id TEXT NOT NULL, pubkey TEXT NOT NULL,
            enrolled_at TEXT NOT NULL, enrolled_by TEXT
        );
        CREATE TABLE transfers (
            device TEXT NOT NULL, item TEXT NOT NULL, manifest_hash TEXT NOT NULL, size INTEGER NOT NULL,
            files TEXT NOT NULL, state TEXT NOT NULL, started_at TEXT NOT NULL, reason TEXT,
            PRIMARY KEY (device, item)
        );
        CREATE TABLE ranges (
            device TEXT NOT NULL, item TEXT NOT NULL, file TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
            PRIMARY KEY (device, item, file, start, end)
        );
        CREATE TABLE items (
            device TEXT NOT NULL, item TEXT NOT NULL, seq INTEGER NOT NULL, unit TEXT NOT NULL, case_number TEXT,
            path TEXT NOT NULL, manifest_hash TEXT NOT NULL, item_hash TEXT NOT NULL, size INTEGER NOT NULL,
            annotations INTEGER NOT NULL DEFAULT 0, stored_at TEXT NOT NULL, receiver TEXT,
            PRIMARY KEY (device, item)
        );
        CREATE UNIQUE INDEX items_seq ON items(device, seq);
        CREATE INDEX items_case ON items(unit, case_number);
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY, device TEXT, item TEXT, reason TEXT NOT NULL, at TEXT NOT NULL, path TEXT
        );
        CREATE TABLE checkpoints (
            device TEXT PRIMARY KEY, count INTEGER NOT NULL, head TEXT, time TEXT NOT NULL, sig TEXT NOT NULL,
            received_at TEXT NOT NULL
        );
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            item_id TEXT, detail TEXT NOT NULL, prev TEXT, hash TEXT NOT NULL
        );
    """),
    ("0002_pieces", """
        CREATE TABLE pieces (
            device TEXT NOT NULL, item TEXT NOT NULL, file TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
            PRIMARY KEY (device, item, file, start, end)
        );
    """),
    # the chain checkpoint's annotation count (docs/evidence-format.md, "Removal of a device's last item ...")
    ("0003_checkpoint_annotations", "ALTER TABLE checkpoints ADD COLUMN annotations INTEGER"),
    ("0004_quarantine_repeats", """
        ALTER TABLE quarantine ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE quarantine ADD COLUMN last_at TEXT;
    """),
    # retention by rule (agent/archive/retention.py): custodians' signed class changes, legal holds,
    # tombstones of the items deleted when their retention ended
    ("0005_retention", """
        CREATE TABLE retention_changes (
            id INTEGER PRIMARY KEY, device TEXT NOT NULL, item TEXT NOT NULL, action TEXT NOT NULL,
            class TEXT NOT NULL, from_class TEXT NOT NULL, sealed_class TEXT NOT NULL, actor TEXT NOT NULL,
            key_id TEXT NOT NULL, time TEXT NOT NULL, reason TEXT NOT NULL, record TEXT NOT NULL, sig TEXT NOT NULL,
            state TEXT NOT NULL, approver TEXT, approver_key_id TEXT, approved_at TEXT, approval TEXT, approval_sig TEXT
        );
        CREATE INDEX retention_changes_item ON retention_changes(device, item);
        CREATE TABLE holds (
            id INTEGER PRIMARY KEY, device TEXT, item TEXT, unit TEXT, case_number TEXT, reason TEXT NOT NULL,
            placed_by TEXT NOT NULL, placed_at TEXT NOT NULL, released_by TEXT, released_at TEXT, release_reason TEXT
        );
        CREATE TABLE tombstones (
            device TEXT NOT NULL, item TEXT NOT NULL, seq INTEGER NOT NULL, unit TEXT NOT NULL, case_number TEXT,
            path TEXT NOT NULL, manifest_hash TEXT NOT NULL, item_hash TEXT NOT NULL, class TEXT NOT NULL,
            keep_until TEXT NOT NULL, expired_at TEXT NOT NULL, expired_by TEXT NOT NULL, record TEXT NOT NULL,
            PRIMARY KEY (device, item)
        );
        CREATE INDEX tombstones_item ON tombstones(item);
    """),
    # every signed chain checkpoint a device published, and the chain alarms found in them
    # (agent/archive/chain.py; docs/custody.md "Chain history")
    ("0006_chain_history", """
        CREATE TABLE chain_history (
            id INTEGER PRIMARY KEY, device TEXT NOT NULL, count INTEGER NOT NULL, head TEXT, annotations INTEGER,
            time TEXT NOT NULL, key_id TEXT NOT NULL, sig TEXT NOT NULL, payload TEXT NOT NULL,
            received_at TEXT NOT NULL, received_ts REAL NOT NULL, repeats INTEGER NOT NULL DEFAULT 0,
            last_ts REAL, finding TEXT
        );
        CREATE UNIQUE INDEX chain_history_sig ON chain_history(device, sig);
        CREATE INDEX chain_history_count ON chain_history(device, count);
        CREATE TABLE chain_alarms (
            device TEXT NOT NULL, code TEXT NOT NULL, active INTEGER NOT NULL, since TEXT NOT NULL,
            detail TEXT NOT NULL, cleared_at TEXT, PRIMARY KEY (device, code)
        );
    """),
    # the archive-wide Merkle log and its signed checkpoints (agent/archive/merkle.py)
    ("0007_merkle", """
        CREATE TABLE merkle_leaves (
            idx INTEGER PRIMARY KEY, kind TEXT NOT NULL, device TEXT NOT NULL, item TEXT NOT NULL, leaf TEXT NOT NULL,
            hash TEXT NOT NULL, added_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX merkle_leaves_item ON merkle_leaves(kind, device, item);
        CREATE TABLE merkle_checkpoints (
            id INTEGER PRIMARY KEY, size INTEGER NOT NULL, root TEXT NOT NULL, time TEXT NOT NULL, key_id TEXT NOT NULL,
            payload TEXT NOT NULL
        );
    """),
    # the highest retention class an item was given when it arrived or was annotated (agent/archive/retention.py):
    # a later policy never lowers it; only two custodians do
    ("0008_retention_floor", """
        CREATE TABLE retention_floor (
            device TEXT NOT NULL, item TEXT NOT NULL, class TEXT NOT NULL, why TEXT NOT NULL, at TEXT NOT NULL,
            PRIMARY KEY (device, item)
        );
    """),
    # approved retrieval (agent/archive/approval.py; docs/custody.md "Approved retrieval and court
    # export"): the users who request and approve, their signed requests and approvals
    ("0009_retrieval_approval", """
        CREATE TABLE retrieval_users (
            name TEXT PRIMARY KEY, key_id TEXT NOT NULL, roles TEXT NOT NULL, enrolled_at TEXT NOT NULL
        );
        CREATE TABLE retrieval_requests (
            id INTEGER PRIMARY KEY, purpose TEXT NOT NULL, unit TEXT, case_number TEXT, item TEXT,
            reason TEXT NOT NULL, requester TEXT NOT NULL, requester_key_id TEXT NOT NULL, requested_at TEXT NOT NULL,
            record TEXT NOT NULL, sig TEXT NOT NULL, state TEXT NOT NULL, approver TEXT, approver_key_id TEXT,
            approved_at TEXT, approval TEXT, approval_sig TEXT, used_at TEXT, exported TEXT
        );
    """),
    # the stations' audit logs, received as items and verified (agent/archive/stationaudit.py)
    ("0010_station_audit", """
        CREATE TABLE station_audit (
            device TEXT NOT NULL, seq INTEGER NOT NULL, ts TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            item_id TEXT, detail TEXT NOT NULL, prev TEXT, hash TEXT NOT NULL, audit_item TEXT NOT NULL,
            PRIMARY KEY (device, seq)
        );
        CREATE INDEX station_audit_item ON station_audit(device, item_id);
    """),
]


# The same migrations, by the same names, in PostgreSQL's dialect ("end" is a reserved word there;
# sizes and offsets are BIGINT; the quarantine's id is an identity column).
PG_MIGRATIONS: list[tuple[str, str]] = [
    ("0001_archive", """
        CREATE TABLE devices (
            id TEXT PRIMARY KEY, unit TEXT NOT NULL, key_id TEXT NOT NULL, pubkey TEXT NOT NULL,
            enrolled_at TEXT NOT NULL, enrolled_by TEXT
        );
        CREATE TABLE transfers (
            device TEXT NOT NULL, item TEXT NOT NULL, manifest_hash TEXT NOT NULL, size BIGINT NOT NULL,
            files TEXT NOT NULL, state TEXT NOT NULL, started_at TEXT NOT NULL, reason TEXT,
            PRIMARY KEY (device, item)
        );
        CREATE TABLE ranges (
            device TEXT NOT NULL, item TEXT NOT NULL, file TEXT NOT NULL, start BIGINT NOT NULL, "end" BIGINT NOT NULL,
            PRIMARY KEY (device, item, file, start, "end")
        );
        CREATE TABLE items (
            device TEXT NOT NULL, item TEXT NOT NULL, seq BIGINT NOT NULL, unit TEXT NOT NULL, case_number TEXT,
            path TEXT NOT NULL, manifest_hash TEXT NOT NULL, item_hash TEXT NOT NULL, size BIGINT NOT NULL,
            annotations INTEGER NOT NULL DEFAULT 0, stored_at TEXT NOT NULL, receiver TEXT,
            PRIMARY KEY (device, item)
        );
        CREATE UNIQUE INDEX items_seq ON items(device, seq);
        CREATE INDEX items_case ON items(unit, case_number);
        CREATE TABLE quarantine (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, device TEXT, item TEXT, reason TEXT NOT NULL,
            at TEXT NOT NULL, path TEXT
        );
        CREATE TABLE checkpoints (
            device TEXT PRIMARY KEY, count BIGINT NOT NULL, head TEXT, time TEXT NOT NULL, sig TEXT NOT NULL,
            received_at TEXT NOT NULL
        );
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE audit (
            seq BIGINT PRIMARY KEY, ts TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            item_id TEXT, detail TEXT NOT NULL, prev TEXT, hash TEXT NOT NULL
        )
    """),
    ("0002_pieces", """
        CREATE TABLE pieces (
            device TEXT NOT NULL, item TEXT NOT NULL, file TEXT NOT NULL, start BIGINT NOT NULL, "end" BIGINT NOT NULL,
            PRIMARY KEY (device, item, file, start, "end")
        )
    """),
    ("0003_checkpoint_annotations", "ALTER TABLE checkpoints ADD COLUMN annotations INTEGER"),
    ("0004_quarantine_repeats", """
        ALTER TABLE quarantine ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE quarantine ADD COLUMN last_at TEXT
    """),
    # retention by rule (agent/archive/retention.py): custodians' signed class changes, legal holds,
    # tombstones of the items deleted when their retention ended
    ("0005_retention", """
        CREATE TABLE retention_changes (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, device TEXT NOT NULL, item TEXT NOT NULL, action TEXT NOT NULL,
            class TEXT NOT NULL, from_class TEXT NOT NULL, sealed_class TEXT NOT NULL, actor TEXT NOT NULL,
            key_id TEXT NOT NULL, time TEXT NOT NULL, reason TEXT NOT NULL, record TEXT NOT NULL, sig TEXT NOT NULL,
            state TEXT NOT NULL, approver TEXT, approver_key_id TEXT, approved_at TEXT, approval TEXT, approval_sig TEXT
        );
        CREATE INDEX retention_changes_item ON retention_changes(device, item);
        CREATE TABLE holds (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, device TEXT, item TEXT, unit TEXT, case_number TEXT, reason TEXT NOT NULL,
            placed_by TEXT NOT NULL, placed_at TEXT NOT NULL, released_by TEXT, released_at TEXT, release_reason TEXT
        );
        CREATE TABLE tombstones (
            device TEXT NOT NULL, item TEXT NOT NULL, seq BIGINT NOT NULL, unit TEXT NOT NULL, case_number TEXT,
            path TEXT NOT NULL, manifest_hash TEXT NOT NULL, item_hash TEXT NOT NULL, class TEXT NOT NULL,
            keep_until TEXT NOT NULL, expired_at TEXT NOT NULL, expired_by TEXT NOT NULL, record TEXT NOT NULL,
            PRIMARY KEY (device, item)
        );
        CREATE INDEX tombstones_item ON tombstones(item)
    """),
    ("0006_chain_history", """
        CREATE TABLE chain_history (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, device TEXT NOT NULL, count BIGINT NOT NULL,
            head TEXT, annotations INTEGER, time TEXT NOT NULL, key_id TEXT NOT NULL, sig TEXT NOT NULL,
            payload TEXT NOT NULL, received_at TEXT NOT NULL, received_ts DOUBLE PRECISION NOT NULL,
            repeats INTEGER NOT NULL DEFAULT 0, last_ts DOUBLE PRECISION, finding TEXT
        );
        CREATE UNIQUE INDEX chain_history_sig ON chain_history(device, sig);
        CREATE INDEX chain_history_count ON chain_history(device, count);
        CREATE TABLE chain_alarms (
            device TEXT NOT NULL, code TEXT NOT NULL, active INTEGER NOT NULL, since TEXT NOT NULL,
            detail TEXT NOT NULL, cleared_at TEXT, PRIMARY KEY (device, code)
        )
    """),
    ("0007_merkle", """
        CREATE TABLE merkle_leaves (
            idx BIGINT PRIMARY KEY, kind TEXT NOT NULL, device TEXT NOT NULL, item TEXT NOT NULL, leaf TEXT NOT NULL,
            hash TEXT NOT NULL, added_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX merkle_leaves_item ON merkle_leaves(kind, device, item);
        CREATE TABLE merkle_checkpoints (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, size BIGINT NOT NULL, root TEXT NOT NULL,
            time TEXT NOT NULL, key_id TEXT NOT NULL, payload TEXT NOT NULL
        )
    """),
    # the highest retention class an item was given when it arrived or was annotated (agent/archive/retention.py):
    # a later policy never lowers it; only two custodians do
    ("0008_retention_floor", """
        CREATE TABLE retention_floor (
            device TEXT NOT NULL, item TEXT NOT NULL, class TEXT NOT NULL, why TEXT NOT NULL, at TEXT NOT NULL,
            PRIMARY KEY (device, item)
        )
    """),
    # approved retrieval (agent/archive/approval.py; docs/custody.md "Approved retrieval and court
    # export"): the users who request and approve, their signed requests and approvals
    ("0009_retrieval_approval", """
        CREATE TABLE retrieval_users (
            name TEXT PRIMARY KEY, key_id TEXT NOT NULL, roles TEXT NOT NULL, enrolled_at TEXT NOT NULL
        );
        CREATE TABLE retrieval_requests (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, purpose TEXT NOT NULL, unit TEXT, case_number TEXT, item TEXT,
            reason TEXT NOT NULL, requester TEXT NOT NULL, requester_key_id TEXT NOT NULL, requested_at TEXT NOT NULL,
            record TEXT NOT NULL, sig TEXT NOT NULL, state TEXT NOT NULL, approver TEXT, approver_key_id TEXT,
            approved_at TEXT, approval TEXT, approval_sig TEXT, used_at TEXT, exported TEXT
        )
    """),
    ("0010_station_audit", """
        CREATE TABLE station_audit (
            device TEXT NOT NULL, seq BIGINT NOT NULL, ts TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            item_id TEXT, detail TEXT NOT NULL, prev TEXT, hash TEXT NOT NULL, audit_item TEXT NOT NULL,
            PRIMARY KEY (device, seq)
        );
        CREATE INDEX station_audit_item ON station_audit(device, item_id)
    """),
]


class ArchiveDB(Database):
    """The archive's SQLite database: same helpers as the agent's ledger, its own tables."""

    migrations = MIGRATIONS

    def fast_many(self, sql: str, rows: list) -> None:
        """Rows whose loss on power failure is harmless (held chunk ranges: they are simply sent
        again), in one transaction with synchronous=NORMAL; everything that answers ``stored`` is
        committed with synchronous=FULL."""
        with self.lock:
            self.db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self.atomic():
                    self.db.conn.executemany(sql, rows)
            finally:
                self.db.execute("PRAGMA synchronous=FULL")


class PgArchiveDB(PgDatabase):
    """The archive's index on PostgreSQL: the same tables and the same SQL as :class:`ArchiveDB`."""

    migrations = PG_MIGRATIONS

    def fast_many(self, sql: str, rows: list) -> None:
        """As :meth:`ArchiveDB.fast_many`: one transaction with ``synchronous_commit = off``."""
        with self.atomic() as tx:
            tx.execute("SET LOCAL synchronous_commit = off")
            tx.executemany(sql, rows)


def check_db(db: str | None) -> str | None:
    if db and "://" in str(db) and not is_url(db):
        raise EdgeError(f"数据库地址无效 / database {db!r}: give a postgresql://USER@HOST:PORT/NAME URL or a SQLite file path")
    return db


def open_db(db: str | None, root: Path, **kw) -> ArchiveDB | PgArchiveDB:
    """The archive's index: ``postgresql://...`` on PostgreSQL, else a SQLite file (default
    ``ROOT/archive.db``; a relative path is taken inside the root)."""
    check_db(db)
    if is_url(db):
        return PgArchiveDB(str(db), **kw)
    path = Path(db) if db else Path("archive.db")
    return ArchiveDB(path if path.is_absolute() else root / path, **kw)


def check_id(kind: str, value: str) -> str:
    """Device ids, unit codes, item ids by the rules the edge applies too (agent.evidence.rules)."""
    return rules.check({"device": "device_id", "device id": "device_id", "unit": "unit_code",
                        "unit code": "unit_code", "item": "item_id"}[kind], value)


class Registry:
    def __init__(self, root: Path, db: ArchiveDB, audit: AuditLog):
        self.root = root
        self.keys_dir = root / "keys"
        self.db = db
        self.audit = audit

    def enroll(self, device: str, pubkey_pem: bytes, unit: str, *, force: bool = False, actor: str | None = None) -> dict:
        check_id("device id", device)
        check_id("unit code", unit)
        public = keys.parse_public(pubkey_pem, "public key")
        kid = keys.key_id(public)
        pem = keys.public_pem(public)
        old = self.device(device, missing_ok=True)
        if old and old["key_id"] != kid and not force:
            raise EdgeError(f"device {device} is enrolled with key {old['key_id']}; use --force to replace it "
                            "(the old key is kept for verifying its items)")
        if old and old["unit"] != unit and not force:
            raise EdgeError(f"device {device} is enrolled for unit {old['unit']}; use --force to move it to {unit}")
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        if old and old["key_id"] != kid:
            atomic_write(self.keys_dir / f"{device}.{old['key_id']}.pub.old", old["pubkey"].encode())
        atomic_write(self.keys_dir / f"{device}.pub", pem)
        with self.db.atomic() as db:
            db.execute("INSERT INTO devices(id, unit, key_id, pubkey, enrolled_at, enrolled_by) VALUES (?,?,?,?,?,?) "
                       "ON CONFLICT(id) DO UPDATE SET unit=excluded.unit, key_id=excluded.key_id, "
                       "pubkey=excluded.pubkey, enrolled_at=excluded.enrolled_at, enrolled_by=excluded.enrolled_by",
                       [device, unit, kid, pem.decode(), now_iso(), actor])
            self.audit.append("enroll", None, actor=actor, device=device, unit=unit, key_id=kid,
                              replaced=old["key_id"] if old else None)
        return {"device": device, "unit": unit, "key_id": kid}

    def enroll_annotator(self, name: str, pubkey_pem: bytes, unit: str, *, force: bool = False,
                         actor: str | None = None) -> dict:
        """Trust ``name``'s key to sign annotations of ``unit``'s items (never manifests):
        ``ROOT/keys/annotators/UNIT/NAME.pub`` (docs/evidence-format.md), audited."""
        rules.check("annotator", name)
        rules.check_unit_code(unit)
        public = keys.parse_public(pubkey_pem, "public key")
        kid = keys.key_id(public)
        dev = self.db.one("SELECT id FROM devices WHERE key_id = ?", [kid])
        if dev:
            raise EdgeError(f"注释人密钥不能是设备密钥 / key {kid} is the enrolled key of device {dev['id']}: "
                            "a device signs its own items and annotations, an annotator has a key of its own")
        path = self.keys_dir / "annotators" / unit / f"{name}.pub"
        if path.exists() and keys.key_id(keys.load_public(path)) != kid and not force:
            raise EdgeError(f"annotator {name} of unit {unit} is enrolled with another key; use --force to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, keys.public_pem(public))
        self.audit.append("enroll_annotator", None, actor=actor, annotator=name, unit=unit, key_id=kid)
        return {"annotator": name, "unit": unit, "key_id": kid, "path": str(path)}

    def device(self, device: str, missing_ok: bool = False) -> dict | None:
        row = self.db.one("SELECT * FROM devices WHERE id = ?", [device])
        if row is None and not missing_ok:
            raise NotFoundError(f"device {device} is not enrolled (`edge-agent archive enroll {device} PUBKEY --unit UNIT_CODE`)")
        return row

    def devices(self) -> list[dict]:
        return self.db.query("SELECT id, unit, key_id, enrolled_at FROM devices ORDER BY id")

    def ring(self, device: str) -> keys.KeyRing:
        row = self.device(device)
        ring = keys.KeyRing()
        ring.add(keys.parse_public(row["pubkey"].encode()), device)
        for p in self.keys_dir.glob(f"{device}.*.pub.old"):  # replaced keys: items sealed before still arrive
            public = keys.load_public(p)
            if p.name == f"{device}.{keys.key_id(public)}.pub.old":
                ring.add(public, device)
        ring.load_annotators(self.keys_dir, row["unit"])
        for other in self.db.query("SELECT id, key_id FROM devices WHERE id != ?", [device]):
            ring.device_of.setdefault(other["key_id"], other["id"])  # named in refusals, never trusted here
        return ring

    def public(self, device: str):
        return keys.parse_public(self.device(device)["pubkey"].encode())


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


def read_enrolment(root: Path) -> list[dict]:
    """The enrolled devices of the archive at ``root`` (id, unit, key_id, pubkey PEM), read-only:
    the central monitor's view of who may speak for which unit (``edge-agent monitor --enrolment``).
    ``root`` may be the postgresql:// URL of an index on PostgreSQL instead."""
    import sqlite3

    if is_url(str(root)):
        return read_once(str(root), "SELECT id, unit, key_id, pubkey FROM devices ORDER BY id")

    path = Path(root) / "archive.db"
    if not path.is_file():
        raise EdgeError(f"{root}: no archive enrolment here ({path.name} missing; the archive root "
                        "is where `edge-agent archive enroll DEVICE_ID PUBKEY --unit UNIT_CODE --root ROOT` writes)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT id, unit, key_id, pubkey FROM devices ORDER BY id")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise EdgeError(f"{path}: cannot read the enrolment ({exc})") from None
