"""The durable local store: ledger + spool. Producers create items through :class:`ItemWriter`;
the uplink and the CLI read and move them through their states.

The Store is put together from its parts, one module each: the ledger's queries
(:mod:`.repository`), writing and sealing an item (:mod:`.writer`), crash recovery and the chain
lock (:mod:`.recovery`), showing, exporting and purging local copies (:mod:`.retrieval`).

Spool layout under ``data_dir``::

    ledger.db            SQLite ledger (WAL)
    keys/device.key      Ed25519 private key (0600), keys/device.pub
    spool/incoming/ID/   items being received (files/ partial)
    spool/items/ID/      sealed items: manifest.json, manifest.sig, files/, annotations/
    chain.lock           serialises sealing across processes (the device chain has one head)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from ..config import Config
from agent.common.audit import AuditLog
from agent.common.errors import DiskReserveError, EdgeError, NotFoundError
from agent.common.fs import atomic_write, free_bytes
from agent.common.timeutil import now_iso
from ..evidence import hashing, keys, manifest as mf
from .ledger import STATES as ITEM_STATES, Ledger  # noqa: F401  (ITEM_STATES: the states an item can be in)
from .recovery import Recovery
from .repository import ItemRow, Repository
from .retrieval import Retrieval
from .writer import READ_SIZE, ItemWriter, SourceError, _member

# ItemWriter, SourceError (the dock catches it) and _member stay importable from here
__all__ = ["Store", "ItemWriter", "SourceError", "READ_SIZE", "_member"]


class Store(Repository, Recovery, Retrieval):
    """The agent's store: ledger + spool + device key. Queries are the :class:`Repository` methods."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.data_dir = Path(cfg.storage.data_dir)
        self.alg = cfg.evidence.hash_algorithm
        self.block_size = cfg.evidence.block_size
        self.max_blocks = cfg.evidence.max_blocks_per_file
        self.reserve = cfg.storage.reserve_mb * 1024 * 1024
        self.incoming = self.data_dir / "spool" / "incoming"
        self.items_dir = self.data_dir / "spool" / "items"
        for d in (self.incoming, self.items_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.data_dir / "ledger.db")
        self._key = None
        self.audit = AuditLog(self.ledger, self.alg, signer=self._sign_if_key)
        self.disk_low = False
        self.archive_pub = None
        enc = cfg.encryption
        if enc.enabled:
            from ..evidence import crypt

            if not enc.archive_public_key:
                raise EdgeError("encryption.enabled is true but encryption.archive_public_key is empty")
            self.archive_pub = crypt.load_public(Path(enc.archive_public_key))

    def block_size_for(self, size: int | None) -> int:
        """The hash-chain block size for a file of ``size`` bytes: ``evidence.block_size``, doubled
        until the file has at most ``evidence.max_blocks_per_file`` blocks (a 4 GiB recording then
        lists 1,024 blocks of 4 MiB, not 16,384 of 256 KiB). Unknown size: the configured size."""
        bs = self.block_size
        while size is not None and size > bs * self.max_blocks and bs < (1 << 30):
            bs *= 2
        return bs

    # --- keys -------------------------------------------------------------------------------
    @property
    def key_path(self) -> Path:
        return self.data_dir / "keys" / "device.key"

    @property
    def pub_path(self) -> Path:
        return self.data_dir / "keys" / "device.pub"

    @property
    def private_key(self):
        if self._key is None:
            self._key = keys.load_private(self.key_path)
        return self._key

    def _sign_if_key(self, data: bytes) -> str | None:
        if self._key is None and not self.key_path.exists():
            return None
        return keys.sign(self.private_key, data)

    def keyring(self) -> keys.KeyRing:
        ring = keys.KeyRing()
        ring.add(self.private_key.public_key(), self.cfg.device.id)
        return ring

    def verify_audit(self) -> int:
        """Check the audit chain and its head signed by this device's key; raises VerifyError
        naming the first bad entry. Returns the number of entries."""
        public = self.private_key.public_key()
        return self.audit.verify(verifier=lambda data, sig: keys.verify_sig(public, data, sig))

    def device_record(self) -> dict:
        d = self.cfg.device
        return {"id": d.id, "unit_code": d.unit_code, "unit_name": d.unit_name, "kind": d.kind,
                "location": d.location, "key_id": keys.key_id(self.private_key.public_key())}

    # --- disk reserve -----------------------------------------------------------------------
    def free(self) -> int:
        return free_bytes(self.data_dir)

    def check_reserve(self, need: int = 0) -> None:
        free = self.free()
        if free - need < self.reserve:
            self.disk_low = True
            raise DiskReserveError(
                f"磁盘空间不足 / disk reserve reached: {free // 2**20} MiB free, {need // 2**20} MiB needed, "
                f"{self.reserve // 2**20} MiB reserved ({self.data_dir}); nothing unarchived is deleted to make room")
        self.disk_low = False

    # --- producing items --------------------------------------------------------------------
    def new_item(self, metadata: dict, source: dict, *, kind: str = "file", priority: int = 5,
                 source_key: str | None = None, session: dict | None = None,
                 clock_offset_ms: int | None = None, expected_size: int = 0,
                 enforce_reserve: bool = True) -> "ItemWriter":
        """Start an item (ledger row 'receiving' first, then files). Mandatory metadata is checked
        now, before any byte is copied, except capture_end which may be given at seal time.

        ``enforce_reserve=False`` is for media already on this file system (a closed interview
        segment moved in by rename): sealing it needs no new space, and refusing would lose it."""
        probe = dict(metadata)
        probe.setdefault("capture_end", probe.get("capture_start"))
        mf.validate_metadata(probe)
        self.check_device()
        if enforce_reserve:
            self.check_reserve(expected_size)
        item_id = f"{self.cfg.device.id}-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
        path = self.incoming / item_id
        (path / mf.FILES_DIR).mkdir(parents=True)
        state = {"metadata": metadata, "source": source, "session": session, "clock_offset_ms": clock_offset_ms,
                 "kind": kind, "pid": os.getpid()}
        atomic_write(path / "pending.json", json.dumps(state, ensure_ascii=False).encode())
        collector = metadata.get("collector") or {}
        self._insert_item({
            "id": item_id, "state": "receiving", "kind": kind,
            "case_number": metadata.get("case_number"), "collector_id": collector.get("id"),
            "collector_name": collector.get("name"), "pending": ",".join(metadata.get("pending", []) or []),
            "created": now_iso(), "created_ts": time.time(), "priority": priority,
            "source_key": source_key, "session_id": (session or {}).get("id"), "path": str(path),
        })
        return ItemWriter(self, item_id, path, state)

    def resume_item(self, source_key: str) -> "ItemWriter | None":
        """The item still receiving for this source (e.g. a recorder file cut off mid-copy)."""
        row = self.receiving_for_source(source_key)
        if not row:
            return None
        path = Path(row["path"])
        try:
            state = json.loads((path / "pending.json").read_text())
        except (OSError, ValueError):
            self.discard(row["id"], "resume state unreadable")
            return None
        return ItemWriter(self, row["id"], path, state)

    def discard(self, item_id: str, reason: str, actor: str | None = None) -> None:
        row = self.item(item_id)
        if row["state"] != "receiving":
            raise EdgeError(f"{item_id}: only unsealed work can be discarded (state {row['state']})")
        shutil.rmtree(row["path"], ignore_errors=True)
        with self.ledger.atomic():
            self._update_item(item_id, state="discarded", error=reason)
            self.audit.append("discard", item_id, actor=actor, reason=reason)

    # --- reading ----------------------------------------------------------------------------
    def item(self, item_id: str) -> ItemRow:
        row = self.item_row(item_id)
        if not row:
            raise NotFoundError(f"{item_id}: no such item")
        return row

    def item_dir(self, item_id: str) -> Path:
        return Path(self.item(item_id)["path"])

    def read_manifest(self, item_id: str) -> dict:
        return json.loads((self.item_dir(item_id) / mf.MANIFEST).read_bytes())

    def sealed_manifest(self, item_id: str) -> bytes | None:
        """The item's sealed manifest exactly as written (its hash is the item's ``manifest_hash``);
        None when there is none in the spool (not sealed yet, or purged)."""
        try:
            return (self.item_dir(item_id) / mf.MANIFEST).read_bytes()
        except FileNotFoundError:
            return None

    def status(self) -> dict:
        counts = self.counts_by_state()
        pend = self.backlog()
        seq, head = self.head()
        free = self.free()
        return {
            "device": {"id": self.cfg.device.id, "unit_code": self.cfg.device.unit_code,
                       "unit_name": self.cfg.device.unit_name, "kind": self.cfg.device.kind,
                       "location": self.cfg.device.location},
            "items_by_state": counts,
            "unarchived_items": pend.items,
            "bytes_buffered": pend.bytes,
            "oldest_unarchived_age_s": int(time.time() - pend.oldest_ts) if pend.oldest_ts else None,
            "pending_annotation": self.pending_annotation_count(),
            "chain": {"seq": seq, "head": head},
            "disk": {"free_bytes": free, "reserve_bytes": self.reserve, "low": free < self.reserve},
        }

    # --- state changes ----------------------------------------------------------------------
    def set_state(self, item_id: str, state: str, audit_action: str | None = None, actor: str | None = None,
                  **fields: Any) -> None:
        with self.ledger.atomic():
            self._update_item(item_id, state=state, **fields)
            if audit_action:
                self.audit.append(audit_action, item_id, actor=actor, state=state,
                                  **{k: v for k, v in fields.items() if k != "receipt"})

    def requeue_rejected(self, item_id: str, actor: str | None = None) -> ItemRow:
        """Queue an item the archive refused (e.g. before the device was enrolled) for upload
        again; audited. Returns its row as it was (``error`` says why it had been refused)."""
        row = self.item(item_id)
        if row["state"] != "rejected":
            raise EdgeError(f"{item_id}: state {row['state']}; only refused (rejected) items can be retried")
        with self.ledger.atomic():
            self.set_state(item_id, "sealed", error=None)
            self.audit.append("upload", item_id, actor=actor, retry=True, previous_error=row["error"])
        return row

    def mark_archived(self, item_id: str, receipt: dict | None = None) -> None:
        """Archived, on the strength of the archive's signed ``receipt``: kept in the ledger and in
        the audit entry, which travels to the centre with the station's audit log (an erase there
        is matched to the receipt that allowed it: agent/archive/stationaudit.py)."""
        at = now_iso()
        with self.ledger.atomic():
            self._update_item(item_id, state="archived", archived_at=at,
                              receipt=json.dumps(receipt or {}, ensure_ascii=False))
            self.audit.append("archive", item_id, actor="agent:uplink", state="archived", archived_at=at,
                              receipt=receipt or {})

    def seal_audit_log(self, actor: str = "agent:audit") -> str | None:
        """The audit entries not yet sealed, as a signed item of the chain (agent/store/auditlog.py)."""
        from .auditlog import seal_audit_log

        return seal_audit_log(self, actor)


    # --- annotations ------------------------------------------------------------------------
    def annotate(self, item_id: str, changes: dict, reason: str = "", actor: str | None = None) -> dict:
        """Append a signed annotation (the sealed manifest stays as it was)."""
        row = self.item(item_id)
        if row["state"] in ("receiving", "discarded", "purged"):
            raise EdgeError(f"{item_id}: cannot annotate an item in state {row['state']}")
        if "case_number" in changes:  # the unit policy's case-number pattern (agent/store/policy_rules.py)
            from .policy_rules import check_case_number

            check_case_number(self, changes["case_number"])
        d = Path(row["path"])
        anns = mf.read_annotations(d)
        from agent.common.audit import current_actor
        who = actor or current_actor()
        prev = hashing.hexdigest(self.alg, anns[-1].data) if anns else None
        current = mf.effective_metadata(json.loads((d / mf.MANIFEST).read_bytes()), anns)
        rec = mf.make_annotation(item_id=item_id, manifest_hash_hex=row["manifest_hash"], seq=len(anns) + 1,
                                 prev=prev, time=now_iso(), actor=who, changes=changes, reason=reason,
                                 hash_alg=self.alg, current=current)
        data = hashing.canonical(rec)
        adir = d / mf.ANNOTATIONS_DIR
        adir.mkdir(exist_ok=True)
        n = len(anns) + 1
        atomic_write(adir / f"{n:04d}.sig", mf.signature_record(self.private_key, data))
        atomic_write(adir / f"{n:04d}.json", data)
        manifest = json.loads((d / mf.MANIFEST).read_bytes())
        meta = mf.effective_metadata(manifest, mf.read_annotations(d))
        with self.ledger.atomic():
            fields = {"case_number": meta.get("case_number"), "pending": ",".join(meta.get("pending", []))}
            if row["state"] == "archived":
                fields["state"] = "sealed"  # the annotation itself must reach the archive
            self._update_item(item_id, **fields)
            self.set_meta("annotations_total", str(self.annotations_total() + 1))  # the chain checkpoint's count
            self.audit.append("annotate", item_id, actor=who, set=changes, reason=rec["reason"])
        return rec

    def check_device(self) -> None:
        """Refuse work whose device id or unit code the archive could not file (bilingual MetadataError)."""
        mf.check_device(self.cfg.device.id, self.cfg.device.unit_code)

    def annotations_total(self) -> int:
        """Annotations this device has signed, all items together (carried by the chain checkpoint)."""
        v = self.get_meta("annotations_total")
        if v is None:  # a ledger from before the count: the audit log has every annotation
            v = str(len(self.audit.entries(action="annotate")))
            self.set_meta("annotations_total", v)
        return int(v)

    # --- the ledger's record of a sealed item (by the writer's seal and by recovery) ----------
    def _record_sealed(self, item_id: str, path: Path, manifest: dict, mhash: str, size: int) -> None:
        meta = manifest["metadata"]
        f0 = manifest["files"][0] if len(manifest["files"]) == 1 else None
        content = f0.get("plain_hash", f0["hash"]) if f0 else None
        self._record_sealed_row(item_id, {
            "device_seq": manifest["device_seq"], "sealed_at": manifest["sealed_at"],
            "manifest_hash": mhash, "item_hash": manifest["item_hash"], "size": size,
            "content_hash": content, "path": str(path), "case_number": meta.get("case_number"),
            "pending": ",".join(meta.get("pending", [])),
        }, manifest["device_seq"], mhash)

    def close(self) -> None:
        self.ledger.close()
