"""A fresh PostgreSQL database per test on the real server at 127.0.0.1:5432 (trust auth on
these machines): created before, dropped (WITH FORCE) after."""

from __future__ import annotations

import contextlib
import uuid
from typing import Iterator

import psycopg

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def fresh_database(prefix: str = "edge_test_") -> Iterator[str]:
    """The postgresql:// URL of a new empty database, dropped on exit."""
    name = prefix + uuid.uuid4().hex[:12]
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
