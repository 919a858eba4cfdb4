"""The durable local store: ledger + spool. Producers create items through :class:`ItemWriter`;
the uplink and the CLI read and move them through their states.

Spool layout under ``data_dir``::

    ledger.db            SQLite ledger (WAL)
    keys/device.key      Ed25519 private key (0600), keys/device.pub
    spool/incoming/ID/   items being received (files/ partial)
    spool/items/ID/      sealed items: manifest.json, manifest.sig, files/, annotations/
    chain.lock           serialises sealing across processes (the device chain has one head)
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import io
import json
import logging
import os
import queue
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ..config import Config
from agent.common.errors import DiskReserveError, EdgeError, NotFoundError
from ..evidence import hashing, keys, manifest as mf
from ..evidence.verify import verify_item
from agent.common.faults import crashpoint
from agent.common.timeutil import now_iso
from agent.common.audit import AuditLog
from agent.common.fs import atomic_write, drop_cache, free_bytes, fsync_dir, rename_durable
from .ledger import Ledger
from .repository import ItemRow, Repository

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20


def _drop_cache(src, dest, upto: int) -> None:
    """Tell the kernel the bytes copied so far will not be read again soon: the source's pages and
    the copy's (for the copy this also starts writing them back). Sixteen recorders copied at once
    would otherwise fill the page cache with data nobody reads, and the kernel spends CPU reclaiming
    it while the copy needs that CPU for hashing. Sources that are not files are left alone."""
    for f in (src, dest):
        try:
            fd = f.fileno()
        except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
            continue
        drop_cache(fd, 0, upto)


class _Beside:
    """Runs ``fn`` over each submitted buffer, in order, on one helper thread: the whole-file hash
    of a copy runs there while the copying thread hashes the blocks and writes (hashlib releases
    the GIL, so on two cores the two SHA-256 passes run side by side instead of one after the
    other). ``submit`` returns an event set once that buffer may be reused."""

    def __init__(self, fn: Callable[[memoryview], None]):
        self.fn = fn
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.th = threading.Thread(target=self._run, name="hash-whole", daemon=True)
        self.th.start()

    def _run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            data, done = job
            try:
                if self.error is None:
                    self.fn(data)
            except BaseException as exc:  # reported by close(); the copy is then refused
                self.error = exc
            finally:
                done.set()

    def submit(self, data: memoryview) -> threading.Event:
        done = threading.Event()
        self.q.put((data, done))
        return done

    def close(self) -> None:
        """Wait until every submitted buffer is done; raise what the helper met, if anything."""
        self.q.put(None)
        self.th.join()
        if self.error is not None:
            raise self.error


_chain_thread_lock = threading.RLock()


class Store(Repository):
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
        enc = getattr(cfg, "encryption", None)
        if enc is not None and enc.enabled:
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

    # --- chain head -------------------------------------------------------------------------
    def _chain_lock(self):
        return _ChainLock(self.data_dir / "chain.lock")

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
        self.set_state(item_id, "archived", "archive", actor="agent:uplink", archived_at=now_iso(),
                       receipt=json.dumps(receipt or {}, ensure_ascii=False))

    def purge_expired(self, at: float | None = None) -> list[str]:
        """Remove local copies of archived items older than the retention; never unarchived ones."""
        at = at or time.time()
        keep = self.cfg.storage.retention_days * 86400
        purged = []
        for row in self.items(state="archived"):
            archived = _dt.datetime.fromisoformat(row["archived_at"]).timestamp()
            if at - archived >= keep:
                shutil.rmtree(row["path"], ignore_errors=True)
                self.set_state(row["id"], "purged", "purge", actor="agent:retention", purged_at=now_iso())
                purged.append(row["id"])
        return purged

    # --- annotations ------------------------------------------------------------------------
    def annotate(self, item_id: str, changes: dict, reason: str = "", actor: str | None = None) -> dict:
        """Append a signed annotation (the sealed manifest stays as it was)."""
        row = self.item(item_id)
        if row["state"] in ("receiving", "discarded", "purged"):
            raise EdgeError(f"{item_id}: cannot annotate an item in state {row['state']}")
        d = Path(row["path"])
        anns = mf.read_annotations(d)
        from agent.common.audit import current_actor
        who = actor or current_actor()
        prev = hashing.hexdigest(self.alg, anns[-1].data) if anns else None
        rec = mf.make_annotation(item_id=item_id, manifest_hash_hex=row["manifest_hash"], seq=len(anns) + 1,
                                 prev=prev, time=now_iso(), actor=who, changes=changes, reason=reason,
                                 hash_alg=self.alg)
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
            self.audit.append("annotate", item_id, actor=who, set=changes, reason=reason)
        return rec

    # --- recovery ---------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """After a crash: roll sealed-but-unrecorded items forward, discard interrupted one-shot work
        (resumable work, with a source key, is kept for resume), remove orphans. Audited."""
        actions: list[str] = []
        with self._chain_lock():
            for row in self.items(state="receiving"):
                path = Path(row["path"])
                sealed_dir = self.items_dir / row["id"]
                for cand in (sealed_dir, path):
                    if (cand / mf.MANIFEST).is_file() and (cand / mf.SIGNATURE).is_file():
                        if self._roll_forward(row, cand):
                            actions.append(f"{row['id']}: sealed before the crash, recorded now")
                        break
                else:
                    if _owner_alive(path):
                        continue  # another live process (e.g. a CLI ingest) is still writing it
                    if row["source_key"]:
                        actions.append(f"{row['id']}: partial copy kept for resume")
                        continue
                    shutil.rmtree(path, ignore_errors=True)
                    with self.ledger.atomic():
                        self._update_item(row["id"], state="discarded", error="interrupted before sealing")
                        self.audit.append("recover", row["id"], actor="agent:recover", result="discarded",
                                          reason="interrupted before sealing")
                    actions.append(f"{row['id']}: interrupted before sealing, discarded")
            known = self.item_ids()
            for parent in (self.incoming, self.items_dir):
                for d in parent.iterdir():
                    if d.name not in known:
                        shutil.rmtree(d, ignore_errors=True)
                        self.audit.append("recover", d.name, actor="agent:recover", result="orphan removed",
                                          path=str(d))
                        actions.append(f"{d.name}: orphan directory removed")
        for a in actions:
            log.warning("recovery: %s", a)
        return actions

    def settle_unrecorded(self) -> list[str]:
        """Call with the chain lock held: record items that a process killed mid-seal left sealed on
        disk but not in the ledger, so that the next seal does not reuse their chain position (a
        fork). Holding the chain lock, no live sealer can be between its manifest and its ledger row."""
        done = []
        for row in self.items(state="receiving"):
            for cand in (self.items_dir / row["id"], Path(row["path"])):
                if (cand / mf.MANIFEST).is_file() and (cand / mf.SIGNATURE).is_file():
                    if self._roll_forward(row, cand):
                        log.warning("recovery: %s was sealed by a process that died; recorded now", row["id"])
                        done.append(row["id"])
                    break
        return done

    def _roll_forward(self, row: dict, cand: Path) -> bool:
        seq, head = self.head()
        try:
            rep = verify_item(cand, self.keyring())
        except EdgeError as exc:
            log.error("recovery: %s has a manifest that does not verify (%s); kept for inspection", cand, exc)
            return False
        if rep.device_seq != seq + 1 or rep.prev_manifest_hash != head:
            log.error("recovery: %s does not extend the chain head %s; kept for inspection", cand, seq)
            return False
        target = self.items_dir / row["id"]
        if cand != target:
            rename_durable(cand, target)
        self._record_sealed(row["id"], target, rep.manifest, rep.manifest_hash, rep.bytes)
        self.audit.append("recover", row["id"], actor="agent:recover", result="sealed", seq=rep.device_seq)
        return True

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


class _ChainLock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        _chain_thread_lock.acquire()
        self.fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        _chain_thread_lock.release()


class ItemWriter:
    """Copies, hashes and fsyncs an item's files in one pass, then seals it into the device chain."""

    def __init__(self, store: Store, item_id: str, path: Path, state: dict):
        self.store = store
        self.id = item_id
        self.path = path
        self.state = state
        self.files: list[dict] = []
        self.segments: list[tuple[int, int, int, bytes]] = []
        self.gaps: list[dict] = list(state.get("gaps", []))
        self.cipher = None
        if store.archive_pub is not None:
            from ..evidence.crypt import ItemCipher

            self.cipher = ItemCipher.new(item_id, store.archive_pub)

    @property
    def files_dir(self) -> Path:
        return self.path / mf.FILES_DIR

    def partial_size(self, name: str) -> int:
        """Bytes of ``name`` already safely in the spool (0 for encrypted items: they restart)."""
        if self.cipher is not None:
            return 0
        p = self.files_dir / _member(name)
        return p.stat().st_size if p.exists() else 0

    def add_stream(self, name: str, src: BinaryIO, *, expected_size: int | None = None, start_offset: int = 0,
                   progress: Callable[[int], None] | None = None, read_size: int = READ_SIZE,
                   size_hint: int | None = None) -> dict:
        """Copy ``src`` (positioned at ``start_offset``) into the item, hashing each block as it passes.

        With ``start_offset`` > 0 the first bytes already in the spool (an earlier, interrupted copy)
        are re-hashed from local disk and the copy continues after them.
        """
        if self.cipher is not None:
            return self._add_stream_encrypted(name, src, expected_size=expected_size, progress=progress,
                                              read_size=read_size, size_hint=size_hint)
        alg, bs = self.store.alg, self.store.block_size_for(expected_size if expected_size is not None else size_hint)
        name = _member(name)
        dest = self.files_dir / name
        fidx = len(self.files)
        whole = hashing.new(alg)
        block = hashing.new(alg)
        in_block = 0
        offset = 0
        block_start = 0
        segs: list[tuple[int, int, int, bytes]] = []

        def blocks(view: memoryview) -> None:  # the per-block hashes, in order
            nonlocal in_block, block, block_start
            pos = 0
            while pos < len(view):
                take = min(bs - in_block, len(view) - pos)
                block.update(view[pos:pos + take])
                in_block += take
                pos += take
                if in_block == bs:
                    segs.append((fidx, block_start, bs, block.digest()))
                    block_start += bs
                    block = hashing.new(alg)
                    in_block = 0

        mode = "r+b" if start_offset else "wb"
        if start_offset:
            have = dest.stat().st_size if dest.exists() else 0
            if have < start_offset:
                raise EdgeError(f"{dest}: only {have} bytes on disk, cannot resume at {start_offset}")
        bufs = [memoryview(bytearray(read_size)), memoryview(bytearray(read_size))]  # read into each in turn
        mv = bufs[0]
        busy: list[threading.Event | None] = [None, None]  # set once the whole-file hash is done with it
        beside: _Beside | None = None
        fd = open(dest, mode)
        try:
            if start_offset:
                with open(dest, "rb") as old:
                    remaining = start_offset
                    while remaining:
                        n = old.readinto(mv[:min(read_size, remaining)])
                        if not n:
                            break
                        whole.update(mv[:n])
                        blocks(mv[:n])
                        offset += n
                        remaining -= n
                fd.seek(start_offset)
                fd.truncate()
                if progress:
                    progress(start_offset)
            since_check = 0
            beside = _Beside(whole.update)  # the whole-file hash, beside the block hashes and the copy here
            k = 0
            while True:
                k ^= 1
                if busy[k] is not None:
                    busy[k].wait()
                try:
                    n = src.readinto(bufs[k])
                except OSError as exc:
                    fd.flush()
                    raise SourceError(f"{name}: source read failed at byte {offset}: {exc.strerror or exc}",
                                      offset) from None
                if not n:
                    break
                chunk = bufs[k][:n]
                busy[k] = beside.submit(chunk)
                blocks(chunk)
                offset += n
                try:
                    fd.write(chunk)
                except OSError as exc:
                    fd.flush()
                    if exc.errno == 28:
                        self.store.disk_low = True
                        raise DiskReserveError(f"磁盘已满 / disk full while copying {name} at byte {offset}") from None
                    raise
                since_check += n
                if offset >= (8 << 20):
                    crashpoint("copy:8mib")
                if since_check >= (64 << 20):
                    since_check = 0
                    left = (expected_size - offset) if expected_size else 0
                    self.store.check_reserve(max(left, 0))
                    _drop_cache(src, fd, offset)
                if progress:
                    progress(n)
            fd.flush()
            os.fsync(fd.fileno())
            _drop_cache(src, fd, offset)
            done, beside = beside, None
            done.close()  # every byte is in the whole-file hash
        finally:
            if beside is not None:
                try:
                    beside.close()
                except BaseException:
                    pass  # the copy failed already; that error is the one to report
            fd.close()
        if in_block or offset == 0:
            segs.append((fidx, block_start, in_block, block.digest()))
        if expected_size is not None and offset != expected_size:
            raise SourceError(f"{name}: got {offset} bytes, expected {expected_size} (source cut off or changed)",
                              offset)
        entry = {"name": name, "size": offset, "hash": whole.hexdigest()}
        self.files.append(entry)
        self.segments.extend(segs)
        return entry

    def _add_stream_encrypted(self, name: str, src: BinaryIO, *, expected_size: int | None,
                              progress: Callable[[int], None] | None, read_size: int,
                              size_hint: int | None = None) -> dict:
        """As add_stream, storing AES-256-GCM blocks; one stored block is one chain segment."""
        alg, bs = self.store.alg, self.store.block_size_for(expected_size if expected_size is not None else size_hint)
        name = _member(name)
        fidx = len(self.files)
        whole_ct, whole_pt = hashing.new(alg), hashing.new(alg)
        segs: list[tuple[int, int, int, bytes]] = []
        pending = bytearray()
        out_off = 0
        total = 0
        bidx = 0

        def flush(fd, final: bool) -> None:
            nonlocal out_off, bidx
            while len(pending) >= bs or (final and (pending or bidx == 0)):
                block = bytes(pending[:bs])
                del pending[:bs]
                ct = self.cipher.encrypt_block(fidx, bidx, block)
                whole_ct.update(ct)
                fd.write(ct)
                segs.append((fidx, out_off, len(ct), hashing.digest(alg, ct)))
                out_off += len(ct)
                bidx += 1
                if final and not pending:
                    break

        with open(self.files_dir / name, "wb") as fd:
            while True:
                try:
                    data = src.read(read_size)
                except OSError as exc:
                    raise SourceError(f"{name}: source read failed at byte {total}: {exc.strerror or exc}", 0) from None
                if not data:
                    break
                whole_pt.update(data)
                pending += data
                total += len(data)
                try:
                    flush(fd, False)
                except OSError as exc:
                    if exc.errno == 28:
                        self.store.disk_low = True
                        raise DiskReserveError(f"磁盘已满 / disk full while copying {name} at byte {total}") from None
                    raise
                if progress:
                    progress(len(data))
            flush(fd, True)
            fd.flush()
            os.fsync(fd.fileno())
        if expected_size is not None and total != expected_size:
            raise SourceError(f"{name}: got {total} bytes, expected {expected_size} (source cut off or changed)", 0)
        entry = {"name": name, "size": out_off, "hash": whole_ct.hexdigest(), "plain_size": total,
                 "plain_hash": whole_pt.hexdigest()}
        self.files.append(entry)
        self.segments.extend(segs)
        return entry

    def add_path(self, name: str, path: Path, *, move: bool = False) -> dict:
        """Add a finished file (e.g. a closed media segment); ``move`` renames it into the spool
        (with encryption at rest it is encrypted into the spool and the plaintext removed)."""
        if move and self.cipher is not None:
            with open(path, "rb") as f:
                entry = self.add_stream(name, f, size_hint=os.fstat(f.fileno()).st_size)
            os.unlink(path)
            return entry
        if move:
            target = self.files_dir / _member(name)
            try:
                os.replace(path, target)
                fsync_dir(self.files_dir)
                with open(target, "rb") as f:
                    return self._hash_in_place(name, f)
            except OSError as exc:
                if exc.errno != 18:  # EXDEV: fall back to a copy
                    raise
        with open(path, "rb") as f:
            entry = self.add_stream(name, f, size_hint=os.fstat(f.fileno()).st_size)
        if move:
            os.unlink(path)
        return entry

    def _hash_in_place(self, name: str, f: BinaryIO) -> dict:
        alg, bs = self.store.alg, self.store.block_size_for(os.fstat(f.fileno()).st_size)
        fidx = len(self.files)
        whole = hashing.new(alg)
        off = 0
        while True:
            blk = f.read(bs)
            if not blk and off:
                break
            whole.update(blk)
            self.segments.append((fidx, off, len(blk), hashing.digest(alg, blk)))
            off += len(blk)
            if not blk:
                break
        entry = {"name": _member(name), "size": off, "hash": whole.hexdigest()}
        self.files.append(entry)
        return entry

    def add_gap(self, start: str, end: str, component: str, reason: str) -> None:
        self.gaps.append({"start": start, "end": end, "component": component, "reason": reason})

    def content_hash(self) -> str | None:
        """Hash of the content as read from the source (the plaintext when encrypted)."""
        if len(self.files) != 1:
            return None
        return self.files[0].get("plain_hash", self.files[0]["hash"])

    def seal(self, capture_end: str | None = None, extra_metadata: dict | None = None,
             extra_source: dict | None = None, session: dict | None = None, actor: str | None = None) -> dict:
        """Write the signed manifest, move the item into the spool's sealed area, extend the chain."""
        st = self.store
        meta = dict(self.state["metadata"])
        if capture_end:
            meta["capture_end"] = capture_end
        meta.setdefault("capture_end", now_iso())
        if extra_metadata:
            meta.update(extra_metadata)
        source = dict(self.state["source"])
        if extra_source:
            source.update(extra_source)
        session = session if session is not None else self.state.get("session")
        with st._chain_lock():
            st.settle_unrecorded()
            seq, head = st.head()
            m = mf.build(item_id=self.id, hash_alg=st.alg, device=st.device_record(), metadata=meta, source=source,
                         ingest_time=now_iso(), clock_offset_ms=self.state.get("clock_offset_ms"),
                         device_seq=seq + 1, prev_manifest_hash=head, block_size=st.block_size,
                         files=self.files, segment_hashes=self.segments, session=session, gaps=self.gaps,
                         sealed_at=now_iso(), encryption=self.cipher.header if self.cipher else None)
            data = mf.encode(m)
            atomic_write(self.path / mf.SIGNATURE, mf.signature_record(st.private_key, data))
            crashpoint("seal:after-sig")
            atomic_write(self.path / mf.MANIFEST, data)
            crashpoint("seal:after-manifest")
            try:
                os.unlink(self.path / "pending.json")
            except FileNotFoundError:
                pass
            target = st.items_dir / self.id
            rename_durable(self.path, target)
            crashpoint("seal:after-rename")
            self.path = target
            mhash = mf.manifest_hash(st.alg, data)
            st._record_sealed(self.id, target, m, mhash, sum(f["size"] for f in self.files))
            crashpoint("seal:after-ledger")
            st.audit.append("seal", self.id, actor=actor, seq=seq + 1, manifest_hash=mhash,
                            case=meta.get("case_number"), files=[f["name"] for f in self.files])
        return m

    def discard(self, reason: str) -> None:
        self.store.discard(self.id, reason)


class SourceError(EdgeError):
    """The source stopped or changed mid-copy; ``offset`` bytes are safely in the spool."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def _owner_alive(path: Path) -> bool:
    try:
        pid = json.loads((path / "pending.json").read_text()).get("pid")
    except (OSError, ValueError):
        return False
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _member(name: str) -> str:
    if not name or "/" in name or "\\" in name or "\x00" in name or name in (".", "..") or len(name.encode()) > 255:
        raise EdgeError(f"unsafe file name {name!r}: paths, NUL and names over 255 bytes are refused")
    return name
