"""The monitor's tables, as named migrations in SQLite's dialect (:data:`MIGRATIONS`) and the same
migrations by the same names in PostgreSQL's (:data:`PG_MIGRATIONS`: REAL is DOUBLE PRECISION,
counts and sizes BIGINT, ``INTEGER PRIMARY KEY`` row ids identity columns). A migration is never
edited once released; a new one goes at the end of both lists.

History (0005): ``status_events`` holds each change of a device's state (online/offline, a new
birth) with when it began, ``alarm_events`` each raise and clear; both are read by device, unit
and time range (:mod:`agent.monitor.history`, ``edge-agent monitor history``, ``/api/history``).
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_initial", """
        CREATE TABLE devices (
            id TEXT PRIMARY KEY,
            unit_code TEXT,
            unit_name TEXT,
            kind TEXT,
            version TEXT,
            state TEXT NOT NULL DEFAULT 'unknown',
            bdseq INTEGER,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            status_ts REAL,
            health TEXT,
            health_ts REAL,
            components TEXT NOT NULL DEFAULT '{}',
            unit_conflicts INTEGER NOT NULL DEFAULT 0,
            last_conflict TEXT
        );
        CREATE TABLE units (
            code TEXT PRIMARY KEY,
            name TEXT,
            officers INTEGER,
            officers_source TEXT,
            officers_updated TEXT,
            recorders INTEGER
        );
        CREATE TABLE roster (
            unit_code TEXT NOT NULL,
            officer_id TEXT NOT NULL,
            name TEXT,
            PRIMARY KEY (unit_code, officer_id)
        );
        CREATE TABLE ratio_reports (
            device TEXT NOT NULL,
            unit_code TEXT NOT NULL,
            unit_name TEXT,
            recorders INTEGER NOT NULL,
            officers INTEGER,
            serials TEXT,
            at TEXT,
            received REAL NOT NULL,
            PRIMARY KEY (device, unit_code)
        );
        CREATE TABLE ratio_history (
            id INTEGER PRIMARY KEY,
            device TEXT NOT NULL,
            unit_code TEXT NOT NULL,
            recorders INTEGER NOT NULL,
            officers INTEGER,
            serials TEXT,
            received REAL NOT NULL
        );
        CREATE INDEX ratio_history_unit ON ratio_history(unit_code, received);
        CREATE TABLE alarms (
            device TEXT NOT NULL,
            key TEXT NOT NULL,
            code TEXT NOT NULL,
            unit_code TEXT,
            severity TEXT NOT NULL,
            active INTEGER NOT NULL,
            since TEXT,
            cleared TEXT,
            ts TEXT,
            message_zh TEXT,
            message_en TEXT,
            source TEXT,
            updated REAL NOT NULL,
            PRIMARY KEY (device, key)
        );
        CREATE TABLE alarm_events (
            id INTEGER PRIMARY KEY,
            device TEXT NOT NULL,
            unit_code TEXT,
            key TEXT NOT NULL,
            code TEXT NOT NULL,
            severity TEXT,
            event TEXT NOT NULL,
            ts TEXT,
            received REAL NOT NULL
        );
        CREATE INDEX alarm_events_unit ON alarm_events(unit_code, received);
        CREATE TABLE usage_daily (
            device TEXT NOT NULL,
            day TEXT NOT NULL,
            unit_code TEXT,
            kind TEXT,
            first_items_total INTEGER, first_items_archived INTEGER, first_recorded_s INTEGER,
            items_total INTEGER, items_archived INTEGER, recorded_s INTEGER,
            pending_annotation INTEGER,
            samples INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (device, day)
        );
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """),
    ("0002_signed", """
        CREATE TABLE signed_seen (
            topic TEXT PRIMARY KEY,
            device TEXT NOT NULL,
            key_id TEXT NOT NULL,
            ord TEXT NOT NULL
        );
        CREATE TABLE rejections (
            device TEXT NOT NULL,
            reason TEXT NOT NULL,
            count INTEGER NOT NULL,
            last_at REAL,
            last_detail TEXT,
            PRIMARY KEY (device, reason)
        );
    """),
    ("0003_ratio_thresholds", """
        ALTER TABLE ratio_reports ADD COLUMN min_ratio_pct INTEGER;
        ALTER TABLE ratio_reports ADD COLUMN min_rooms INTEGER;
        ALTER TABLE ratio_history ADD COLUMN min_ratio_pct INTEGER;
        ALTER TABLE ratio_history ADD COLUMN min_rooms INTEGER
    """),
    ("0004_ratio_threshold_source", """
        ALTER TABLE ratio_reports ADD COLUMN threshold_source TEXT;
        ALTER TABLE ratio_reports ADD COLUMN policy_version INTEGER;
        ALTER TABLE ratio_reports ADD COLUMN policy_key_id TEXT;
        ALTER TABLE ratio_history ADD COLUMN threshold_source TEXT;
        ALTER TABLE ratio_history ADD COLUMN policy_version INTEGER;
        ALTER TABLE ratio_history ADD COLUMN policy_key_id TEXT
    """),
    ("0005_history", """
        CREATE TABLE status_events (
            id INTEGER PRIMARY KEY,
            device TEXT NOT NULL,
            unit_code TEXT,
            kind TEXT,
            state TEXT NOT NULL,
            bdseq INTEGER,
            source TEXT NOT NULL,
            ts TEXT,
            at REAL NOT NULL,
            received REAL NOT NULL
        );
        CREATE INDEX status_events_device ON status_events(device, at);
        CREATE INDEX status_events_unit ON status_events(unit_code, at);
        CREATE INDEX alarm_events_device ON alarm_events(device, received)
    """),
]


# The same migrations, by the same names, in PostgreSQL's dialect.
PG_MIGRATIONS: list[tuple[str, str]] = [
    ("0001_initial", """
        CREATE TABLE devices (
            id TEXT PRIMARY KEY,
            unit_code TEXT,
            unit_name TEXT,
            kind TEXT,
            version TEXT,
            state TEXT NOT NULL DEFAULT 'unknown',
            bdseq BIGINT,
            first_seen DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            status_ts DOUBLE PRECISION,
            health TEXT,
            health_ts DOUBLE PRECISION,
            components TEXT NOT NULL DEFAULT '{}',
            unit_conflicts INTEGER NOT NULL DEFAULT 0,
            last_conflict TEXT
        );
        CREATE TABLE units (
            code TEXT PRIMARY KEY,
            name TEXT,
            officers INTEGER,
            officers_source TEXT,
            officers_updated TEXT,
            recorders INTEGER
        );
        CREATE TABLE roster (
            unit_code TEXT NOT NULL,
            officer_id TEXT NOT NULL,
            name TEXT,
            PRIMARY KEY (unit_code, officer_id)
        );
        CREATE TABLE ratio_reports (
            device TEXT NOT NULL,
            unit_code TEXT NOT NULL,
            unit_name TEXT,
            recorders INTEGER NOT NULL,
            officers INTEGER,
            serials TEXT,
            at TEXT,
            received DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (device, unit_code)
        );
        CREATE TABLE ratio_history (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            device TEXT NOT NULL,
            unit_code TEXT NOT NULL,
            recorders INTEGER NOT NULL,
            officers INTEGER,
            serials TEXT,
            received DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX ratio_history_unit ON ratio_history(unit_code, received);
        CREATE TABLE alarms (
            device TEXT NOT NULL,
            key TEXT NOT NULL,
            code TEXT NOT NULL,
            unit_code TEXT,
            severity TEXT NOT NULL,
            active INTEGER NOT NULL,
            since TEXT,
            cleared TEXT,
            ts TEXT,
            message_zh TEXT,
            message_en TEXT,
            source TEXT,
            updated DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (device, key)
        );
        CREATE TABLE alarm_events (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            device TEXT NOT NULL,
            unit_code TEXT,
            key TEXT NOT NULL,
            code TEXT NOT NULL,
            severity TEXT,
            event TEXT NOT NULL,
            ts TEXT,
            received DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX alarm_events_unit ON alarm_events(unit_code, received);
        CREATE TABLE usage_daily (
            device TEXT NOT NULL,
            day TEXT NOT NULL,
            unit_code TEXT,
            kind TEXT,
            first_items_total BIGINT, first_items_archived BIGINT, first_recorded_s BIGINT,
            items_total BIGINT, items_archived BIGINT, recorded_s BIGINT,
            pending_annotation INTEGER,
            samples INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (device, day)
        );
        CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    """),
    ("0002_signed", """
        CREATE TABLE signed_seen (
            topic TEXT PRIMARY KEY,
            device TEXT NOT NULL,
            key_id TEXT NOT NULL,
            ord TEXT NOT NULL
        );
        CREATE TABLE rejections (
            device TEXT NOT NULL,
            reason TEXT NOT NULL,
            count BIGINT NOT NULL,
            last_at DOUBLE PRECISION,
            last_detail TEXT,
            PRIMARY KEY (device, reason)
        );
    """),
    ("0003_ratio_thresholds", """
        ALTER TABLE ratio_reports ADD COLUMN min_ratio_pct INTEGER;
        ALTER TABLE ratio_reports ADD COLUMN min_rooms INTEGER;
        ALTER TABLE ratio_history ADD COLUMN min_ratio_pct INTEGER;
        ALTER TABLE ratio_history ADD COLUMN min_rooms INTEGER
    """),
    ("0004_ratio_threshold_source", """
        ALTER TABLE ratio_reports ADD COLUMN threshold_source TEXT;
        ALTER TABLE ratio_reports ADD COLUMN policy_version INTEGER;
        ALTER TABLE ratio_reports ADD COLUMN policy_key_id TEXT;
        ALTER TABLE ratio_history ADD COLUMN threshold_source TEXT;
        ALTER TABLE ratio_history ADD COLUMN policy_version INTEGER;
        ALTER TABLE ratio_history ADD COLUMN policy_key_id TEXT
    """),
    ("0005_history", """
        CREATE TABLE status_events (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            device TEXT NOT NULL,
            unit_code TEXT,
            kind TEXT,
            state TEXT NOT NULL,
            bdseq BIGINT,
            source TEXT NOT NULL,
            ts TEXT,
            at DOUBLE PRECISION NOT NULL,
            received DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX status_events_device ON status_events(device, at);
        CREATE INDEX status_events_unit ON status_events(unit_code, at);
        CREATE INDEX alarm_events_device ON alarm_events(device, received)
    """),
]
