"""The archive's storage: received items under the key ``UNIT/CASE/ITEM`` (``_pending`` when the case
number is not known yet), partial transfers under ``_tmp/DEVICE/ITEM``, refused items under
``_quarantine`` with the reason, all through the storage interface (:mod:`.backend`: a POSIX
directory, local or a shared mount); enrolled keys under ``ROOT/keys``.

Safe with several receiver processes on one root: the SQLite database (WAL) records what is held,
a file lock per item serialises manifest/finish work (on PostgreSQL, ``--db postgresql://...``: the
database, and an advisory lock per item, for receivers on several hosts sharing the storage), items appear in their place by one atomic
rename after every file is fsynced and the item verified from disk; only then is ``stored``
answered. Chunks are checked block by block against the signed manifest (:mod:`.chunks`); every
id taken from the wire is checked, and every path is checked to lie inside the root (:mod:`.paths`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from agent.common.errors import EdgeError, NotFoundError, VerifyError
from ..evidence import hashing, keys, manifest as mf
from ..evidence.verify import check_signature, verify_item
from agent.common.audit import AuditLog
from agent.common.fs import fsync_dir
from agent.common.timeutil import now_iso
from agent.wire import protocol as P
from .backend import open_storage, partial_key
from .chain import ChainHistory
from .chunks import ChunkIntake, block_table
from .merkle import MerkleLog
from .stationaudit import AUDIT_DIR, StationAudit, is_station_audit
from .paths import Root, flock, safe_case, safe_file
from . import retention_class
from .registry import Registry, check_id, open_db
from .retrieval import CHECKPOINTS, Retrieval
from .upkeep import MAX_REASON, Coalescer, DiskLow, Upkeep, printable

log = logging.getLogger(__name__)

PENDING = "_pending"
__all__ = ["ArchiveStore", "PENDING", "safe_case"]


class ArchiveStore(ChunkIntake, Retrieval, ChainHistory, MerkleLog, StationAudit, Upkeep):
    #: the archive's clock (epoch seconds): chain gap and silence are measured by it (tests inject one)
    clock = staticmethod(time.time)

    def __init__(self, root: str | os.PathLike, *, max_item: int = 64 << 30, max_manifest: int = P.DEFAULT_MAX_MANIFEST,
                 receiver: str = "archive", create: bool = True, min_free: int | None = None,
                 abandon_after_s: int | None = None, db: str | None = None):
        if "://" in str(root):
            open_storage(str(root))  # an object-store URL: refused with the reason
        self.root = Path(root).resolve()
        self._root = Root(self.root)
        if not self.root.is_dir():
            if not create:
                raise NotFoundError(f"归档根目录不存在 / {self.root}: archive root not found")
            self.root.mkdir(parents=True)
        #: the evidence bytes (partial transfers, stored items, quarantine): shared by every receiver
        self.storage = open_storage(self.root)
        self.tmp = self.root / "_tmp"
        self.quarantine_dir = self.root / "_quarantine"
        self.locks = self.tmp / "locks"
        for d in (self.tmp, self.quarantine_dir, self.locks, self.root / "keys", self.root / "_archive",
                  self.root / CHECKPOINTS):
            d.mkdir(exist_ok=True)
        self.max_item = max_item
        self.max_manifest = max_manifest
        self.receiver = receiver
        if min_free is not None:
            self.min_free = min_free
        if abandon_after_s is not None:
            self.abandon_after_s = abandon_after_s
        self.db = open_db(db, self.root)  # ROOT/archive.db, or PostgreSQL by URL
        self._key = self._archive_key()
        self.audit = AuditLog(self.db, "sha256", signer=lambda data: keys.sign(self._key, data))
        self.registry = Registry(self.root, self.db, self.audit)
        self._dev_cache: dict[str, tuple[float, dict]] = {}
        self._init_chunks()
        self._init_chain()
        self.notes = Coalescer()  # log lines about refused messages, coalesced
        self._recent_notes: dict[str, tuple[int, float]] = {}  # refusal shape -> (its row, when)

    def _archive_key(self):
        kp, pp = self.root / "_archive" / "archive.key", self.root / "_archive" / "archive.pub"
        lock = self.root / "_archive" / "key.lock"
        with flock(lock):
            if kp.exists():
                return keys.load_private(kp)
            return keys.generate(kp, pp)

    def close(self) -> None:
        self.db.close()

    # --- paths ------------------------------------------------------------------------------
    def inside(self, path: Path) -> Path:
        """``path`` if it lies inside the root, else an error (never write outside)."""
        return self._root.inside(path)

    def _partial(self, dev: str, item: str) -> str:
        """The storage key of a partial transfer: any receiver continues it from there."""
        return partial_key(check_id("device", dev), check_id("item", item))

    @contextlib.contextmanager
    def _item_lock(self, dev: str, item: str):
        """Manifest/finish work on one item, one receiver at a time: on PostgreSQL an advisory
        lock (receivers on any host), on SQLite a file lock in the root."""
        if self.db.dialect == "postgresql":
            with self.db.lock(f"item:{check_id('device', dev)}/{check_id('item', item)}"):
                yield
            return
        with flock(self._root.lock_path(self.locks, dev, item)):
            yield

    # --- wire handlers (each returns the Answer to send) ------------------------------------
    def _device(self, dev: str) -> dict:
        """The enrolled device (cached a few seconds: chunks arrive by the thousand)."""
        hit = self._dev_cache.get(dev)
        if hit and time.monotonic() - hit[0] < 5:
            return hit[1]
        try:
            row = self.registry.device(dev)
        except NotFoundError:
            raise P.ProtocolError(f"unknown device {dev}: not enrolled at this archive") from None
        self._dev_cache[dev] = (time.monotonic(), row)
        return row

    def handle(self, dev: str, item: str, kind: str, payload: bytes, props: dict[str, str],
               hashed: str | None = None) -> P.Answer:
        try:
            try:
                device = self._device(dev)
                if kind == "manifest":
                    return self.on_manifest(device, item, payload, props)
                if kind == "chunk":
                    return self.on_chunk(device, item, payload, props, hashed)
                if kind == "finish":
                    return self.on_finish(device, item, payload)
                if kind == "query":
                    return self.on_query(dev, item)
                raise P.ProtocolError(f"message kind {kind} is not accepted by the archive")
            except RecursionError:  # json: nesting deeper than the interpreter's stack
                raise P.ProtocolError(f"{kind}: JSON nested too deeply") from None
        except DiskLow as exc:  # for now: the agent sends it again later
            self.notes.log(log, "disk", "refused %s of %s/%s: %s", kind, dev, item, exc)
            return P.Answer(item=item, kind=kind, status=P.ERROR, reason=str(exc))
        except P.ProtocolError as exc:
            status = P.ERROR if kind == "chunk" else P.REJECTED
            if kind != "chunk":
                self.note_refusal(dev, item, str(exc))
            self.notes.log(log, f"refused {kind}", "refused %s of %s/%s: %s", kind, dev, item, exc)
            return P.Answer(item=item, kind=kind, status=status, reason=str(exc),
                            corr=P.chunk_corr(payload) if kind == "chunk" and "file" not in props else None)

    def on_query(self, dev: str, item: str) -> P.Answer:
        row = self.db.one("SELECT * FROM items WHERE device = ? AND item = ?", [dev, item])
        if row:
            return P.Answer(item=item, kind="query", status=P.STORED, annotations=row["annotations"],
                            receipt=self._receipt(row))
        tr = self.db.one("SELECT * FROM transfers WHERE device = ? AND item = ?", [dev, item])
        if not tr:
            return P.Answer(item=item, kind="query", status=P.UNKNOWN)
        if tr["state"] == "rejected":
            return P.Answer(item=item, kind="query", status=P.REJECTED, reason=tr["reason"])
        return P.Answer(item=item, kind="query", status=P.RECEIVING, held=self.held(dev, item))

    def on_manifest(self, device: dict, item: str, payload: bytes, props: dict[str, str]) -> P.Answer:
        dev = device["id"]
        msg = P.parse_manifest(payload, props, item=item, device=dev, max_manifest=self.max_manifest,
                               max_item=self.max_item)
        ring = self.registry.ring(dev)
        try:
            check_signature(msg.manifest, msg.sig, ring, f"manifest of {item}")
        except (VerifyError, EdgeError) as exc:
            raise P.ProtocolError(f"{exc} (enrolled key {device['key_id']})") from None
        doc = msg.doc
        unit = (doc.get("device") or {}).get("unit_code")
        if unit != device["unit"]:
            raise P.ProtocolError(f"manifest unit {unit!r} differs from the unit {device['unit']} the device is enrolled for")
        self._dest_rel(device, doc, [])  # checks the case number before anything is written
        for f in msg.files:
            safe_file(f["name"])
        table = block_table(doc)  # the blocks every chunk is checked against
        mhash = mf.manifest_hash(doc.get("hash_alg", "sha256") if doc.get("hash_alg") in hashing.available_algorithms()
                                 else "sha256", payload)
        stored = self.db.one("SELECT * FROM items WHERE device = ? AND item = ?", [dev, item])
        if stored:
            if stored["manifest_hash"] != mhash:
                raise P.ProtocolError(f"item {item} is already stored with another manifest (hash {stored['manifest_hash'][:16]}…)")
            return P.Answer(item=item, kind="manifest", status=P.STORED, annotations=stored["annotations"],
                            receipt=self._receipt(stored))
        gone = self.db.one("SELECT expired_at FROM tombstones WHERE device = ? AND item = ?", [dev, item])
        if gone:  # deleted by its retention rule (agent/archive/retention.py): never stored again
            return P.Answer(item=item, kind="manifest", status=P.REJECTED,
                            reason=f"expired: deleted by its retention rule at {gone['expired_at']} (tombstone kept)")
        seq = doc.get("device_seq")
        clash = self.db.one("SELECT item FROM items WHERE device = ? AND seq = ?", [dev, seq])
        if clash:
            raise P.ProtocolError(f"device {dev} already has item {clash['item']} at chain position {seq} (fork)")
        with self._item_lock(dev, item):
            tr = self.db.one("SELECT * FROM transfers WHERE device = ? AND item = ?", [dev, item])
            key = self._partial(dev, item)
            if tr and tr["state"] == "rejected" and tr["manifest_hash"] == mhash:
                return P.Answer(item=item, kind="manifest", status=P.REJECTED, reason=tr["reason"])
            self._forget_transfer(dev, item)
            if tr and tr["manifest_hash"] != mhash:  # the device sealed this item id anew
                self.storage.remove(key)
                with self.db.atomic() as db:
                    db.execute("DELETE FROM ranges WHERE device = ? AND item = ?", [dev, item])
                    db.execute("DELETE FROM pieces WHERE device = ? AND item = ?", [dev, item])
                    db.execute("DELETE FROM transfers WHERE device = ? AND item = ?", [dev, item])
                tr = None
            if not tr:
                self.check_space(msg.total_size)  # a new transfer: refused before the disk fills
            self.storage.create(key)
            if not self.storage.has(key, mf.MANIFEST):
                self.storage.put(key, mf.SIGNATURE, msg.sig)
                self.storage.put(key, mf.MANIFEST, msg.manifest)
            if not tr:
                files = {f["name"]: f["size"] for f in msg.files}
                with self.db.atomic() as db:
                    db.execute("INSERT INTO transfers(device, item, manifest_hash, size, files, state, started_at) "
                               "VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING", [dev, item, mhash, msg.total_size, json.dumps(files),
                                                          "receiving", now_iso()])
            held = self.held(dev, item)
            if not tr or tr["state"] == "receiving":
                self._remember_table(dev, item, table)
        return P.Answer(item=item, kind="manifest", status=P.RECEIVING, held=held)

    def on_finish(self, device: dict, item: str, payload: bytes) -> P.Answer:
        dev = device["id"]
        fin = P.parse_finish(payload)
        self._forget_transfer(dev, item)
        self.commit_ranges()
        with self._item_lock(dev, item):
            stored = self.db.one("SELECT * FROM items WHERE device = ? AND item = ?", [dev, item])
            if stored:
                return self._add_annotations(device, stored, fin)
            gone = self.db.one("SELECT expired_at FROM tombstones WHERE device = ? AND item = ?", [dev, item])
            if gone:  # deleted by its retention rule: annotations for it have nothing to attach to
                return P.Answer(item=item, kind="finish", status=P.REJECTED,
                                reason=f"expired: deleted by its retention rule at {gone['expired_at']} (tombstone kept)")
            tr = self.db.one("SELECT * FROM transfers WHERE device = ? AND item = ?", [dev, item])
            if not tr:
                return P.Answer(item=item, kind="finish", status=P.UNKNOWN, reason="no manifest received for this item")
            if tr["state"] == "rejected":
                return P.Answer(item=item, kind="finish", status=P.REJECTED, reason=tr["reason"])
            files = json.loads(tr["files"])
            declared = {f.get("name"): f.get("size") for f in fin.files if isinstance(f, dict)}
            if declared != files or fin.size != tr["size"]:
                raise P.ProtocolError("finish lists other files or sizes than the manifest")
            held = self.held(dev, item)
            missing = {n: P.missing_ranges(s, held.get(n)) for n, s in files.items()}
            if any(missing.values()):
                return P.Answer(item=item, kind="finish", status=P.INCOMPLETE, held=held,
                                reason="ranges missing: " + ", ".join(f"{n} {len(r)}" for n, r in missing.items() if r))
            key = self._partial(dev, item)
            if not self.storage.has(key, mf.MANIFEST):  # moved into place by a receiver killed before its commit
                key = self.storage.find(check_id("unit", device["unit"]), check_id("item", item)) or key
            for name in files:
                safe_file(name)
            self._write_annotations(key, fin.annotations, start=0)
            self.storage.complete(key, files)  # every file at its size, everything durable
            # what is in storage, read back and checked against the signed manifest: every file's
            # hash, the chain, sizes, signature; each block was checked against its signed hash on
            # the way in (ChunkIntake), so the read-back hashes each byte once (the file hash)
            with self.storage.local(key) as tdir:
                try:
                    rep = verify_item(tdir, self.registry.ring(dev), expected_device=dev, blocks_checked=True)
                except (VerifyError, EdgeError) as exc:
                    return self._did_not_verify(dev, item, key, tdir, tr, exc)
                anns = mf.read_annotations(tdir)
            self.verified["files"] += len(files)
            meta = mf.effective_metadata(rep.manifest, anns)
            try:
                rel = self._dest_rel(device, rep.manifest, anns)
            except P.ProtocolError as exc:
                return self._reject(dev, item, key, str(exc))
            if self.storage.exists(rel):  # a receiver died between move and commit: what is there must verify
                with self.storage.local(rel) as dest:
                    verify_item(dest, self.registry.ring(dev), expected_device=dev)
                if key != rel:
                    self.storage.remove(key)
            else:
                self.storage.move(key, rel)  # UNIT/CASE: no level may be a symlink
                from agent.common.faults import crashpoint  # fault-injection tests stop here (EDGE_AGENT_CRASH_AT)
                crashpoint("archive:after-rename")
            row = {"device": dev, "item": item, "seq": rep.device_seq, "unit": device["unit"],
                   "case_number": meta.get("case_number"), "path": rel, "manifest_hash": rep.manifest_hash,
                   "item_hash": rep.item_hash, "size": rep.bytes, "annotations": rep.annotations,
                   "stored_at": now_iso(), "receiver": self.receiver}
            with self.db.atomic() as db:  # synchronous=FULL: durable before we answer
                db["items"].insert(row, replace=True)
                self.add_leaf(db, "item", row)  # the archive-wide Merkle log (agent/archive/merkle.py)
                db.execute("UPDATE transfers SET state = 'stored' WHERE device = ? AND item = ?", [dev, item])
                db.execute("DELETE FROM ranges WHERE device = ? AND item = ?", [dev, item])
                db.execute("DELETE FROM pieces WHERE device = ? AND item = ?", [dev, item])
                retention_class.note_class(db, self.root, dev, item, device["unit"], meta, row["stored_at"])
                self.audit.append("archive", item, actor=f"archive:{self.receiver}", device=dev, seq=rep.device_seq,
                                  path=rel, bytes=rep.bytes, manifest_hash=rep.manifest_hash)
            log.info("stored %s/%s (%d bytes) at %s", dev, item, rep.bytes, rel)
            if is_station_audit(rep.manifest):  # the station's audit log: its entries checked and kept
                self.ingest_station_audit(dev, item, rel, rep.manifest)
            return P.Answer(item=item, kind="finish", status=P.STORED, annotations=rep.annotations,
                            receipt=self._receipt(row, rep.manifest))

    def _did_not_verify(self, dev: str, item: str, key: str, tdir: Path, tr: dict, exc: Exception) -> P.Answer:
        """Bytes on disk that differ from the signed manifest (every block was checked as it came,
        so: a disk fault, or power lost before the fsync): forget them once and have the agent send
        the item again; the second time the item is quarantined. Never stored, never receipted."""
        content = str(tdir / mf.FILES_DIR) in str(exc)
        if content and tr["reason"] != "content-retry":
            with self.db.atomic() as db:
                db.execute("DELETE FROM ranges WHERE device = ? AND item = ?", [dev, item])
                db.execute("DELETE FROM pieces WHERE device = ? AND item = ?", [dev, item])
                db.execute("UPDATE transfers SET reason = 'content-retry' WHERE device = ? AND item = ?", [dev, item])
            log.warning("%s/%s did not verify (%s): asking for the content again", dev, item, exc)
            return P.Answer(item=item, kind="finish", status=P.INCOMPLETE, held={},
                            reason=f"content did not verify, send it again: {exc}")
        return self._reject(dev, item, key, f"verification failed: {exc}")

    def _write_annotations(self, key: str, anns: list[P.Annotation], start: int) -> list[str]:
        written: list[str] = []
        for n, a in enumerate(anns[start:], start + 1):
            self.storage.put(key, f"{mf.ANNOTATIONS_DIR}/{n:04d}.sig", a.sig)
            self.storage.put(key, f"{mf.ANNOTATIONS_DIR}/{n:04d}.json", a.data)
            written += [f"{mf.ANNOTATIONS_DIR}/{n:04d}.json", f"{mf.ANNOTATIONS_DIR}/{n:04d}.sig"]
        return written

    def _add_annotations(self, device: dict, stored: dict, fin: P.FinishMsg) -> P.Answer:
        """Annotations that arrive after the item was stored: appended, then re-verified."""
        item, dev = stored["item"], device["id"]
        have = stored["annotations"]
        if len(fin.annotations) <= have:
            return P.Answer(item=item, kind="finish", status=P.STORED, annotations=have, receipt=self._receipt(stored))
        key = stored["path"]
        written = self._write_annotations(key, fin.annotations, start=have)
        try:
            with self.storage.local(key) as d:
                rep = verify_item(d, self.registry.ring(dev), check_files=False, expected_device=dev)
                anns = mf.read_annotations(d)
            rel = self._dest_rel(device, rep.manifest, anns)
        except (VerifyError, EdgeError) as exc:
            self.storage.delete(key, written)
            self.note_refusal(dev, item, f"annotation refused: {exc}")
            return P.Answer(item=item, kind="finish", status=P.REJECTED, reason=f"annotation refused: {exc}")
        meta = mf.effective_metadata(rep.manifest, anns)
        if rel != key:  # the case number arrived: move from _pending to the case
            self.storage.move(key, rel)
        with self.db.atomic() as db:
            db.execute("UPDATE items SET annotations = ?, case_number = ?, path = ? WHERE device = ? AND item = ?",
                       [rep.annotations, meta.get("case_number"), rel, dev, item])
            retention_class.note_class(db, self.root, dev, item, device["unit"], meta, now_iso())
            self.audit.append("annotate", item, actor=f"archive:{self.receiver}", device=dev,
                              annotations=rep.annotations, path=rel)
        row = dict(stored, annotations=rep.annotations, path=rel, case_number=meta.get("case_number"))
        return P.Answer(item=item, kind="finish", status=P.STORED, annotations=rep.annotations,
                        receipt=self._receipt(row))

    def _dest_rel(self, device: dict, manifest: dict, annotations) -> str:
        meta = mf.effective_metadata(manifest, annotations) if isinstance(manifest.get("metadata"), dict) else {}
        case = meta.get("case_number")
        case_dir = PENDING if case in (None, "") else safe_case(case)
        if is_station_audit(manifest):  # a station's audit log (agent/archive/stationaudit.py)
            case_dir = AUDIT_DIR
        unit = check_id("unit", device["unit"])
        return f"{unit}/{case_dir}/{check_id('item', manifest.get('item_id', ''))}"

    def _reject(self, dev: str, item: str, key: str, reason: str) -> P.Answer:
        """Refuse the item for good. Its bytes go to ``_quarantine/DEV/`` unless that device's
        quarantine is full (:meth:`quarantine_room`): then they are removed and only the refusal
        note is kept, so one device (a stolen one with its key) cannot fill the disk for all."""
        reason = printable(reason)[:MAX_REASON]
        with self.db.atomic() as db:
            self.db.serialize(f"quarantine:{dev}")  # receivers on several hosts: one decision at a time
            size = int(db.execute('SELECT COALESCE(SUM("end" - start), 0) FROM ranges WHERE device = ? AND item = ?',
                                  [dev, item]).fetchone()[0])  # PostgreSQL's SUM is numeric
            full = self.quarantine_room(db, dev, size)
            q = None
            if full is None:
                q = self.storage.quarantine(key, dev, f"{item}-{time.strftime('%Y%m%d%H%M%S')}", reason)
            else:
                self.storage.remove(key)
            db.execute("UPDATE transfers SET state = 'rejected', reason = ? WHERE device = ? AND item = ?", [reason, dev, item])
            db.execute("DELETE FROM ranges WHERE device = ? AND item = ?", [dev, item])
            db.execute("DELETE FROM pieces WHERE device = ? AND item = ?", [dev, item])
            if q is not None:
                db.execute("INSERT INTO quarantine(device, item, reason, at, path, bytes) VALUES (?,?,?,?,?,?)",
                           [dev, item, reason, now_iso(), q, size])
            self.audit.append("reject", item, actor=f"archive:{self.receiver}", device=dev, reason=reason,
                              **({} if full is None else {"bytes_not_kept": size, "why": full}))
        if full is None:
            log.warning("quarantined %s/%s: %s", dev, item, reason)
        else:  # the refusal note only, coalesced and capped like every other
            self.note_refusal(dev, item, f"{full}: {reason}")
            self.notes.log(log, "quarantine full", "refused %s/%s, bytes not kept (%s): %s", dev, item, full, reason)
        return P.Answer(item=item, kind="finish", status=P.REJECTED, reason=reason)

    def _receipt(self, row: dict, manifest: dict | None = None) -> dict:
        """The body of a receipt (signed by the receiver with the request's nonce,
        :class:`agent.wire.receipts.ArchiveSigner`): what the archive holds of the item, every file
        with size and hash. No path or case number: the answer tells a third party nothing."""
        if manifest is None:
            manifest = json.loads(self.storage.get(row["path"], mf.MANIFEST))
        files = [{"name": f["name"], "size": f["size"], "hash": f["hash"]} for f in manifest["files"]]
        return {"device": row["device"], "item": row["item"], "seq": row["seq"], "manifest_hash": row["manifest_hash"],
                "item_hash": row["item_hash"], "hash_alg": manifest.get("hash_alg", "sha256"), "files": files,
                "size": sum(f["size"] for f in files), "annotations": row["annotations"],
                "stored_at": row["stored_at"]}

    @property
    def signing_key(self):
        """The archive's Ed25519 key (``ROOT/_archive/archive.key``): receipts, answers, status."""
        return self._key


# --- the archive's own key (receipts, answers, status) ------------------------------------------
def _key_dir(root: str | os.PathLike) -> Path:
    d = Path(root).resolve() / "_archive"
    if not d.is_dir():
        raise NotFoundError(f"{d}: no archive key here (is {root} an archive root? `archive serve` or "
                            "`archive enroll` creates it)")
    return d


def archive_key_info(root: str | os.PathLike) -> dict:
    d = _key_dir(root)
    pub = keys.load_public(d / "archive.pub")
    out = {"key_id": keys.key_id(pub), "public": str(d / "archive.pub"), "next_key_id": None, "next_public": None,
           "retired": sorted(str(p) for p in (d / "retired").glob("*.pub")) if (d / "retired").is_dir() else []}
    if (d / "next.pub").is_file():
        out["next_key_id"] = keys.key_id(keys.load_public(d / "next.pub"))
        out["next_public"] = str(d / "next.pub")
    return out


def new_next_key(root: str | os.PathLike) -> None:
    """Step 1 of a rotation: the next key pair, to be pinned on every device first."""
    d = _key_dir(root)
    with flock(d / "key.lock"):
        if (d / "next.key").exists():
            raise EdgeError(f"{d / 'next.key'} exists already: pin {d / 'next.pub'} on the devices, then --rotate")
        keys.generate(d / "next.key", d / "next.pub")


def rotate_key(root: str | os.PathLike) -> None:
    """Step 2: the next key becomes the archive's key; the old pair moves to ``retired/``.
    Receivers load the key at start: restart them."""
    d = _key_dir(root)
    with flock(d / "key.lock"):
        if not (d / "next.key").exists():
            raise EdgeError("no next key: run `archive key --new-next` and pin next.pub on every device first")
        kid = keys.key_id(keys.load_public(d / "archive.pub"))
        (d / "retired").mkdir(exist_ok=True)
        for ext in ("key", "pub"):
            os.replace(d / f"archive.{ext}", d / "retired" / f"archive-{kid}.{ext}")
        for ext in ("key", "pub"):
            os.replace(d / f"next.{ext}", d / f"archive.{ext}")
        fsync_dir(d / "retired")
        fsync_dir(d)
