"""Custody test helpers: real items sealed by a station's store and stored by the archive's own
storage code (manifest, chunk, finish, in process), on SQLite or a fresh PostgreSQL database."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import uuid
from pathlib import Path

import psycopg

from agent.archive.storage import ArchiveStore
from agent.common.timeutil import iso
from agent.evidence import keys, manifest as mf
from agent.store.ingest import ingest
from agent.wire import protocol as P
from tests.support.spine import META
from tests.support.uplink import agent_config, open_store

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def pg_database():
    """The URL of a fresh database on the local PostgreSQL, dropped afterwards."""
    name = "edge_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


class Centre:
    """One station (dock-0001, unit 330100000000) and the archive at tmp/archive."""

    def __init__(self, tmp: Path, db: str | None = None, device: str = "dock-0001"):
        self.tmp = tmp
        self.store = open_store(agent_config(tmp, 1, device=device))
        self.root = tmp / "archive"
        self.db = db
        self.st = ArchiveStore(self.root, db=db)
        self.st.registry.enroll(device, self.store.pub_path.read_bytes(), self.store.cfg.device.unit_code)

    def item(self, end: dt.datetime, minutes: int = 5, officer: tuple[str, str] = ("33010001", "张三"),
             store: bool = True, **meta) -> str:
        """An item captured until ``end``, sealed (extra metadata: mark, evidence_mark, clock_offset_*)
        and, unless ``store`` is False, stored at the archive."""
        p = self.tmp / f"f-{os.urandom(4).hex()}.bin"
        p.write_bytes(os.urandom(3000))
        m = dict(META, collector={"name": officer[1], "id": officer[0]},
                 capture_start=iso(end - dt.timedelta(minutes=minutes)), capture_end=iso(end), **meta)
        item = ingest(self.store, [p], m)["item_id"]
        if store:
            self.archive(item)
        return item

    def archive(self, item: str, finish: bool = True) -> None:
        st, d = self.st, self.store.item_dir(item)
        dev = st.registry.device(self.store.cfg.device.id)
        assert st.on_manifest(dev, item, (d / mf.MANIFEST).read_bytes(),
                              dict(P.manifest_props((d / mf.SIGNATURE).read_bytes()))).status == "receiving"
        f = json.loads((d / mf.MANIFEST).read_bytes())["files"][0]
        data = (d / "files" / f["name"]).read_bytes()
        assert st.on_chunk(dev, item, data, dict(P.chunk_props(f["name"], 0, data))).status == "ok"
        if finish:
            assert st.on_finish(dev, item, P.finish_payload([f], [])).status == "stored"

    def second(self) -> ArchiveStore:
        """Another process's view of the same archive (its own connection)."""
        return ArchiveStore(self.root, db=self.db)

    def custodian(self, name: str) -> object:
        """A custodian's key pair (private key returned), enrolled at the archive."""
        from agent.archive.retention import Retention

        k = keys.generate(self.tmp / f"{name}.key", self.tmp / f"{name}.pub")
        Retention(self.st).enroll_custodian(name, (self.tmp / f"{name}.pub").read_bytes())
        return k

    def close(self) -> None:
        self.st.close()
