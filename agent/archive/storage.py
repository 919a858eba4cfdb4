"""The archive's storage: received items under ``ROOT/UNIT/CASE/ITEM/`` (``_pending`` when the case
number is not known yet), partial transfers under ``ROOT/_tmp``, refused items under
``ROOT/_quarantine`` with the reason, enrolled keys under ``ROOT/keys``.

Safe with several receiver processes on one root: the SQLite database (WAL) records what is held,
a file lock per item serialises manifest/finish work, items appear in their place by one atomic
rename after every file is fsynced and the item verified; only then is ``stored`` answered.
Every id taken from the wire is checked, and every path is checked to lie inside the root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path

from agent.common.errors import EdgeError, NotFoundError, VerifyError
from ..evidence import hashing, keys, manifest as mf
from ..evidence.verify import StreamDigest, check_signature, verify_item
from agent.common.audit import AuditLog
from agent.common.fs import atomic_write, drop_cache, fsync_dir
from agent.common.timeutil import now_iso
from agent.wire import checkpoint as cpmod
from agent.wire import protocol as P
from .registry import ArchiveDB, Registry, check_id

log = logging.getLogger(__name__)

PENDING = "_pending"
#: transfers whose content hashes are kept in memory at once (older ones fall back to a re-read)
MAX_STREAMS = 256
_CTRL = re.compile(r"[\x00-\x1f\x7f]")


def safe_case(case: object) -> str:
    """A case number usable as one directory level; refuses paths, NUL, control characters."""
    if not isinstance(case, str) or not case.strip():
        raise P.ProtocolError("case number missing")
    if "/" in case or "\\" in case or "\x00" in case or _CTRL.search(case):
        raise P.ProtocolError(f"case number {case!r} contains a path separator, NUL or control character")
    if case in (".", "..") or case.startswith((".", "_")) or len(case) > 64 or len(case.encode()) > 255:
        raise P.ProtocolError(f"case number {case!r} is not usable as a directory name "
                              "(leading '.' or '_', or longer than 64 characters)")
    return case


class ArchiveStore:
    def __init__(self, root: str | os.PathLike, *, max_item: int = 64 << 30, max_manifest: int = P.DEFAULT_MAX_MANIFEST,
                 receiver: str = "archive", create: bool = True):
        self.root = Path(root).resolve()
        self._root_s = str(self.root)
        if not self.root.is_dir():
            if not create:
                raise NotFoundError(f"{self.root}: archive root not found")
            self.root.mkdir(parents=True)
        self.tmp = self.root / "_tmp"
        self.quarantine_dir = self.root / "_quarantine"
        self.locks = self.tmp / "locks"
        for d in (self.tmp, self.quarantine_dir, self.locks, self.root / "keys", self.root / "_archive"):
            d.mkdir(exist_ok=True)
        self.max_item = max_item
        self.max_manifest = max_manifest
        self.receiver = receiver
        self.db = ArchiveDB(self.root / "archive.db")
        self._key = self._archive_key()
        self.audit = AuditLog(self.db, "sha256", signer=lambda data: keys.sign(self._key, data))
        self.registry = Registry(self.root, self.db, self.audit)
        self._dev_cache: dict[str, tuple[float, dict]] = {}
        self._pending_ranges: list[tuple[str, str, str, int, int]] = []
        self._plock = threading.Lock()
        #: True: chunk ranges are recorded by commit_ranges() (the receiver batches them)
        self.batch_ranges = False
        self._files_cache: dict[tuple[str, str], dict[str, int]] = {}
        #: True: hash each file as its chunks arrive in order, so ``finish`` need not read it back.
        #: Off when several receivers share the work (each sees only part of the chunks).
        self.stream_verify = True
        self._streams: dict[tuple[str, str], dict[str, _Stream]] = {}
        self._hasher: _Hasher | None = None
        #: files verified at finish from the hashes taken while receiving / by reading them back
        self.verified_files = {"streamed": 0, "reread": 0}
        self._tmp_ok: dict[tuple[str, str], str] = {}  # (device, item) -> its checked files dir

    def _archive_key(self):
        kp, pp = self.root / "_archive" / "archive.key", self.root / "_archive" / "archive.pub"
        lock = self.root / "_archive" / "key.lock"
        with _flock(lock):
            if kp.exists():
                return keys.load_private(kp)
            return keys.generate(kp, pp)

    def close(self) -> None:
        self.db.close()

    # --- paths ------------------------------------------------------------------------------
    def inside(self, path: Path) -> Path:
        """``path`` if it lies inside the root, else an error (never write outside)."""
        real = os.path.realpath(path)
        if real != self._root_s and not real.startswith(self._root_s + os.sep):
            raise P.ProtocolError(f"path {path} escapes the archive root")
        return path

    def _tmp_dir(self, dev: str, item: str) -> Path:
        return self.inside(self.tmp / check_id("device", dev) / check_id("item", item))

    @contextlib.contextmanager
    def _item_lock(self, dev: str, item: str):
        with _flock(self.locks / f"{dev}__{item}.lock"):
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

    def handle(self, dev: str, item: str, kind: str, payload: bytes, props: dict[str, str]) -> P.Answer:
        try:
            device = self._device(dev)
            if kind == "manifest":
                return self.on_manifest(device, item, payload, props)
            if kind == "chunk":
                return self.on_chunk(device, item, payload, props)
            if kind == "finish":
                return self.on_finish(device, item, payload)
            if kind == "query":
                return self.on_query(dev, item)
            raise P.ProtocolError(f"message kind {kind} is not accepted by the archive")
        except P.ProtocolError as exc:
            status = P.ERROR if kind == "chunk" else P.REJECTED
            if kind != "chunk":
                self._quarantine_note(dev, item, str(exc))
            log.warning("refused %s of %s/%s: %s", kind, dev, item, exc)
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

    def commit_ranges(self) -> None:
        """Record the ranges of chunks written since the last call, in one transaction. The
        receiver calls it before it answers 'ok' for them (a crash before that: they are resent)."""
        with self._plock:
            rows, self._pending_ranges = self._pending_ranges, []
        if rows:
            self.db.fast_many("INSERT OR IGNORE INTO ranges(device, item, file, start, end) VALUES (?,?,?,?,?)", rows)

    def held(self, dev: str, item: str) -> dict[str, list[list[int]]]:
        self.commit_ranges()
        out: dict[str, list] = {}
        for r in self.db.query("SELECT file, start, end FROM ranges WHERE device = ? AND item = ?", [dev, item]):
            out.setdefault(r["file"], []).append((r["start"], r["end"]))
        return {k: P.merge_ranges(v) for k, v in out.items()}

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
        mhash = mf.manifest_hash(doc.get("hash_alg", "sha256") if doc.get("hash_alg") in hashing.available_algorithms()
                                 else "sha256", payload)
        stored = self.db.one("SELECT * FROM items WHERE device = ? AND item = ?", [dev, item])
        if stored:
            if stored["manifest_hash"] != mhash:
                raise P.ProtocolError(f"item {item} is already stored with another manifest (hash {stored['manifest_hash'][:16]}…)")
            return P.Answer(item=item, kind="manifest", status=P.STORED, annotations=stored["annotations"],
                            receipt=self._receipt(stored))
        seq = doc.get("device_seq")
        clash = self.db.one("SELECT item FROM items WHERE device = ? AND seq = ?", [dev, seq])
        if clash:
            raise P.ProtocolError(f"device {dev} already has item {clash['item']} at chain position {seq} (fork)")
        with self._item_lock(dev, item):
            tr = self.db.one("SELECT * FROM transfers WHERE device = ? AND item = ?", [dev, item])
            tdir = self._tmp_dir(dev, item)
            if tr and tr["state"] == "rejected" and tr["manifest_hash"] == mhash:
                return P.Answer(item=item, kind="manifest", status=P.REJECTED, reason=tr["reason"])
            self._files_cache.pop((dev, item), None)
            if tr and tr["manifest_hash"] != mhash:
                with self._plock:
                    self._streams.pop((dev, item), None)
                shutil.rmtree(tdir, ignore_errors=True)
                with self.db.atomic() as db:
                    db.execute("DELETE FROM ranges WHERE device = ? AND item = ?", [dev, item])
                    db.execute("DELETE FROM transfers WHERE device = ? AND item = ?", [dev, item])
                tr = None
            (tdir / mf.FILES_DIR).mkdir(parents=True, exist_ok=True)
            if not (tdir / mf.MANIFEST).is_file():
                atomic_write(tdir / mf.SIGNATURE, msg.sig)
                atomic_write(tdir / mf.MANIFEST, msg.manifest)
            if not tr:
                files = {f["name"]: f["size"] for f in msg.files}
                with self.db.atomic() as db:
                    db.execute("INSERT OR IGNORE INTO transfers(device, item, manifest_hash, size, files, state, started_at) "
                               "VALUES (?,?,?,?,?,?,?)", [dev, item, mhash, msg.total_size, json.dumps(files),
                                                          "receiving", now_iso()])
            held = self.held(dev, item)
            self._start_streams(dev, item, doc, held)
        return P.Answer(item=item, kind="manifest", status=P.RECEIVING, held=held)

    def _start_streams(self, dev: str, item: str, doc: dict, held: dict) -> None:
        """Content digests for the files of which nothing is held yet (a resumed file is read back
        in full at ``finish`` instead)."""
        alg = doc.get("hash_alg")
        if not self.stream_verify or alg not in hashing.available_algorithms():
            return
        with self._plock:
            if (dev, item) in self._streams:
                return
            sizes: dict[int, list[int]] = {}
            for sg in doc.get("segments", []):
                sizes.setdefault(sg.get("file"), []).append(sg.get("size"))
            streams = {}
            for fi, f in enumerate(doc.get("files", [])):
                if not held.get(f["name"]) and all(isinstance(n, int) and n > 0 for n in sizes.get(fi, [])):
                    streams[f["name"]] = _Stream(StreamDigest(alg, sizes.get(fi, [])))
            if len(self._streams) >= MAX_STREAMS:
                self._streams.pop(next(iter(self._streams)))
            self._streams[(dev, item)] = streams

    def _files_of(self, dev: str, item: str) -> dict[str, int] | None:
        hit = self._files_cache.get((dev, item))
        if hit is not None:
            return hit
        tr = self.db.one("SELECT manifest_hash, files, state FROM transfers WHERE device = ? AND item = ?", [dev, item])
        if not tr or tr["state"] != "receiving":
            return None
        files = json.loads(tr["files"])
        if len(self._files_cache) > 1000:
            self._files_cache.clear()
        self._files_cache[(dev, item)] = files
        return files

    def on_chunk(self, device: dict, item: str, payload: bytes, props: dict[str, str]) -> P.Answer:
        c = P.parse_chunk(payload, props)
        ans = self._on_chunk(device, item, c)
        ans.corr = c.corr
        return ans

    def _on_chunk(self, device: dict, item: str, c: P.ChunkMsg) -> P.Answer:
        dev = device["id"]
        files = self._files_of(dev, item)
        if files is None:
            q = self.on_query(dev, item)
            if q.status == P.STORED:
                return P.Answer(item=item, kind="chunk", status=P.OK, file=c.file, offset=c.offset)
            return P.Answer(item=item, kind="chunk", status=q.status if q.status != P.RECEIVING else P.UNKNOWN,
                            reason=q.reason or "no manifest received for this item: send the manifest first")
        if c.file not in files:
            raise P.ProtocolError(f"chunk for file {c.file!r} which the manifest does not list")
        size = files[c.file]
        end = c.offset + len(c.data)
        if end > size:
            raise P.ProtocolError(f"chunk {c.file}@{c.offset}+{len(c.data)} runs past the declared size {size}")
        with self._plock:
            sd = self._streams.get((dev, item), {}).get(c.file)
        if sd is not None:  # written (and queued for hashing) up to sd.wpos by this receiver, in order
            dup = end <= sd.wpos
            if not dup and c.offset != sd.wpos:  # a gap or an overlap: read back at finish instead
                with self._plock:
                    self._streams.get((dev, item), {}).pop(c.file, None)
                sd = None
        else:
            dup = any(r[:3] == (dev, item, c.file) and r[3] <= c.offset and end <= r[4] for r in self._pending_ranges) \
                or self.db.one("SELECT 1 FROM ranges WHERE device = ? AND item = ? AND file = ? AND start <= ? "
                               "AND end >= ? LIMIT 1", [dev, item, c.file, c.offset, end])
        if dup:
            return P.Answer(item=item, kind="chunk", status=P.OK, file=c.file, offset=c.offset)  # duplicate
        tdir = self._tmp_ok.get((dev, item))
        if tdir is None:  # resolved once per transfer: the file name itself is one safe level
            tdir = self._tmp_ok[(dev, item)] = str(self.inside(self._tmp_dir(dev, item) / mf.FILES_DIR))
            if len(self._tmp_ok) > 1000:
                self._tmp_ok.clear()
        path = os.path.join(tdir, c.file)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
        except FileNotFoundError:  # finished or refused meanwhile (perhaps by another receiver)
            self._files_cache.pop((dev, item), None)
            q = self.on_query(dev, item)
            status = P.OK if q.status == P.STORED else (q.status if q.status != P.RECEIVING else P.ERROR)
            return P.Answer(item=item, kind="chunk", status=status, file=c.file, offset=c.offset, reason=q.reason)
        try:
            view = memoryview(c.data)
            pos = c.offset
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
            if sd is not None and end - sd.flushed >= 2 * WRITE_BEHIND:
                # start writing back what came a while ago: finish's fsync then has little left
                drop_cache(fd, sd.flushed, end - WRITE_BEHIND - sd.flushed)
                sd.flushed = end - WRITE_BEHIND
        finally:
            os.close(fd)
        if sd is not None:
            sd.wpos = end
            if self._hasher is None:
                self._hasher = _Hasher()
            self._hasher.put(sd, c.data, c.sha256 if sd.sd.alg == "sha256" else None)
        with self._plock:
            self._pending_ranges.append((dev, item, c.file, c.offset, end))
        if not self.batch_ranges:
            self.commit_ranges()
        return P.Answer(item=item, kind="chunk", status=P.OK, file=c.file, offset=c.offset)

    def on_finish(self, device: dict, item: str, payload: bytes) -> P.Answer:
        dev = device["id"]
        fin = P.parse_finish(payload)
        self._files_cache.pop((dev, item), None)
        self.commit_ranges()
        with self._item_lock(dev, item):
            stored = self.db.one("SELECT * FROM items WHERE device = ? AND item = ?", [dev, item])
            if stored:
                return self._add_annotations(device, stored, fin)
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
            tdir = self._tmp_dir(dev, item)
            if not (tdir / mf.MANIFEST).is_file():  # moved into place by a receiver killed before its commit
                tdir = self._placed(device, item) or tdir
            for name, size in files.items():
                p = self.inside(tdir / mf.FILES_DIR / name)
                fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o640)
                try:
                    if os.fstat(fd).st_size != size:
                        os.ftruncate(fd, size)
                    os.fsync(fd)
                    drop_cache(fd)  # on disk now; hashed as it came (else read back once from disk)
                finally:
                    os.close(fd)
            self._write_annotations(tdir, fin.annotations, start=0)
            fsync_dir(tdir / mf.FILES_DIR)
            fsync_dir(tdir)
            with self._plock:
                streams = self._streams.pop((dev, item), {})
            if streams and self._hasher is not None:
                self._hasher.wait(streams.values())
            digests = {n: st.sd for n, st in streams.items() if st.ok and st.sd.complete}
            self.verified_files["streamed"] += len(digests)
            self.verified_files["reread"] += len(files) - len(digests)
            try:
                rep = verify_item(tdir, self.registry.ring(dev), expected_device=dev, digests=digests)
            except (VerifyError, EdgeError) as exc:
                content = str(tdir / mf.FILES_DIR) in str(exc)
                if content and tr["reason"] != "content-retry":
                    # written ranges whose bytes did not survive (e.g. power lost before the
                    # fsync): forget them once and have the agent send the item again
                    with self.db.atomic() as db:
                        db.execute("DELETE FROM ranges WHERE device = ? AND item = ?", [dev, item])
                        db.execute("UPDATE transfers SET reason = 'content-retry' WHERE device = ? AND item = ?",
                                   [dev, item])
                    log.warning("%s/%s did not verify (%s): asking for the content again", dev, item, exc)
                    return P.Answer(item=item, kind="finish", status=P.INCOMPLETE, held={},
                                    reason=f"content did not verify, send it again: {exc}")
                return self._reject(dev, item, tdir, f"verification failed: {exc}")
            meta = mf.effective_metadata(rep.manifest, mf.read_annotations(tdir))
            try:
                rel = self._dest_rel(device, rep.manifest, mf.read_annotations(tdir))
            except P.ProtocolError as exc:
                return self._reject(dev, item, tdir, str(exc))
            dest = self.inside(self.root / rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():  # a receiver died between rename and commit: what is there must verify
                verify_item(dest, self.registry.ring(dev), expected_device=dev)
                if tdir != dest:
                    shutil.rmtree(tdir, ignore_errors=True)
            else:
                os.rename(tdir, dest)
                fsync_dir(dest.parent)
                fsync_dir(tdir.parent)
                from agent.common.faults import crashpoint  # fault-injection tests stop here (EDGE_AGENT_CRASH_AT)
                crashpoint("archive:after-rename")
            row = {"device": dev, "item": item, "seq": rep.device_seq, "unit": device["unit"],
                   "case_number": meta.get("case_number"), "path": rel, "manifest_hash": rep.manifest_hash,
                   "item_hash": rep.item_hash, "size": rep.bytes, "annotations": rep.annotations,
                   "stored_at": now_iso(), "receiver": self.receiver}
            with self.db.atomic() as db:  # synchronous=FULL: durable before we answer
                db["items"].insert(row, replace=True)
                db.execute("UPDATE transfers SET state = 'stored' WHERE device = ? AND item = ?", [dev, item])
                db.execute("DELETE FROM ranges WHERE device = ? AND item = ?", [dev, item])
                self.audit.append("archive", item, actor=f"archive:{self.receiver}", device=dev, seq=rep.device_seq,
                                  path=rel, bytes=rep.bytes, manifest_hash=rep.manifest_hash)
            log.info("stored %s/%s (%d bytes) at %s", dev, item, rep.bytes, rel)
            return P.Answer(item=item, kind="finish", status=P.STORED, annotations=rep.annotations,
                            receipt=self._receipt(row))

    def _placed(self, device: dict, item: str) -> Path | None:
        """The item's directory under ROOT/UNIT/CASE when it was renamed there but never committed."""
        unit = self.root / check_id("unit", device["unit"])
        for cand in sorted(unit.glob(f"*/{check_id('item', item)}")):
            if (cand / mf.MANIFEST).is_file():
                return self.inside(cand)
        return None

    def _write_annotations(self, d: Path, anns: list[P.Annotation], start: int) -> list[Path]:
        written = []
        if not anns[start:]:
            return written
        adir = d / mf.ANNOTATIONS_DIR
        adir.mkdir(exist_ok=True)
        for n, a in enumerate(anns[start:], start + 1):
            atomic_write(adir / f"{n:04d}.sig", a.sig)
            atomic_write(adir / f"{n:04d}.json", a.data)
            written += [adir / f"{n:04d}.json", adir / f"{n:04d}.sig"]
        return written

    def _add_annotations(self, device: dict, stored: dict, fin: P.FinishMsg) -> P.Answer:
        """Annotations that arrive after the item was stored: appended, then re-verified."""
        item, dev = stored["item"], device["id"]
        have = stored["annotations"]
        if len(fin.annotations) <= have:
            return P.Answer(item=item, kind="finish", status=P.STORED, annotations=have, receipt=self._receipt(stored))
        d = self.inside(self.root / stored["path"])
        written = self._write_annotations(d, fin.annotations, start=have)
        try:
            rep = verify_item(d, self.registry.ring(dev), check_files=False, expected_device=dev)
            rel = self._dest_rel(device, rep.manifest, mf.read_annotations(d))
        except (VerifyError, EdgeError) as exc:
            for p in written:
                p.unlink(missing_ok=True)
            fsync_dir(d / mf.ANNOTATIONS_DIR)
            self._quarantine_note(dev, item, f"annotation refused: {exc}")
            return P.Answer(item=item, kind="finish", status=P.REJECTED, reason=f"annotation refused: {exc}")
        meta = mf.effective_metadata(rep.manifest, mf.read_annotations(d))
        if rel != stored["path"]:  # the case number arrived: move from _pending to the case
            dest = self.inside(self.root / rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(d, dest)
            fsync_dir(dest.parent)
            fsync_dir(d.parent)
        with self.db.atomic() as db:
            db.execute("UPDATE items SET annotations = ?, case_number = ?, path = ? WHERE device = ? AND item = ?",
                       [rep.annotations, meta.get("case_number"), rel, dev, item])
            self.audit.append("annotate", item, actor=f"archive:{self.receiver}", device=dev,
                              annotations=rep.annotations, path=rel)
        row = dict(stored, annotations=rep.annotations, path=rel, case_number=meta.get("case_number"))
        return P.Answer(item=item, kind="finish", status=P.STORED, annotations=rep.annotations,
                        receipt=self._receipt(row))

    def _dest_rel(self, device: dict, manifest: dict, annotations) -> str:
        meta = mf.effective_metadata(manifest, annotations) if isinstance(manifest.get("metadata"), dict) else {}
        case = meta.get("case_number")
        case_dir = PENDING if case in (None, "") else safe_case(case)
        unit = check_id("unit", device["unit"])
        return f"{unit}/{case_dir}/{check_id('item', manifest.get('item_id', ''))}"

    def _reject(self, dev: str, item: str, tdir: Path, reason: str) -> P.Answer:
        q = self.inside(self.quarantine_dir / dev / f"{item}-{time.strftime('%Y%m%d%H%M%S')}")
        q.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tdir, q)
        atomic_write(q / "REASON.txt", (reason + "\n").encode())
        with self.db.atomic() as db:
            db.execute("UPDATE transfers SET state = 'rejected', reason = ? WHERE device = ? AND item = ?", [reason, dev, item])
            db.execute("DELETE FROM ranges WHERE device = ? AND item = ?", [dev, item])
            db.execute("INSERT INTO quarantine(device, item, reason, at, path) VALUES (?,?,?,?,?)",
                       [dev, item, reason, now_iso(), str(q.relative_to(self.root))])
            self.audit.append("reject", item, actor=f"archive:{self.receiver}", device=dev, reason=reason)
        log.warning("quarantined %s/%s: %s", dev, item, reason)
        return P.Answer(item=item, kind="finish", status=P.REJECTED, reason=reason)

    def _quarantine_note(self, dev: str, item: str, reason: str) -> None:
        try:
            with self.db.atomic() as db:
                db.execute("INSERT INTO quarantine(device, item, reason, at, path) VALUES (?,?,?,?,NULL)",
                           [dev, item, reason, now_iso()])
        except Exception:
            log.exception("cannot record the refusal")

    def _receipt(self, row: dict) -> dict:
        body = {"archive": self.receiver, "device": row["device"], "item": row["item"], "seq": row["seq"],
                "path": row["path"], "manifest_hash": row["manifest_hash"], "item_hash": row["item_hash"],
                "annotations": row["annotations"], "stored_at": row["stored_at"]}
        body["sig"] = keys.sign(self._key, hashing.canonical(body))
        body["key_id"] = keys.key_id(self._key.public_key())
        return body

    # --- chain checkpoints ------------------------------------------------------------------
    def on_checkpoint(self, dev: str, payload: bytes) -> cpmod.Checkpoint | None:
        if not payload:
            return None
        try:
            cp = cpmod.parse(payload, self.registry.public(dev), device=dev)
        except (cpmod.CheckpointError, NotFoundError) as exc:
            log.warning("ignoring chain checkpoint of %s: %s", dev, exc)
            return None
        with self.db.atomic() as db:
            old = db.execute("SELECT count FROM checkpoints WHERE device = ?", [dev]).fetchone()
            if old and old[0] > cp.count:
                log.warning("checkpoint of %s went back from %d to %d items: kept the higher", dev, old[0], cp.count)
                return cp
            db.execute("INSERT INTO checkpoints(device, count, head, time, sig, received_at) VALUES (?,?,?,?,?,?) "
                       "ON CONFLICT(device) DO UPDATE SET count=excluded.count, head=excluded.head, time=excluded.time, "
                       "sig=excluded.sig, received_at=excluded.received_at",
                       [dev, cp.count, cp.head, cp.time, cp.sig, now_iso()])
        return cp

    def missing(self, device: str | None = None) -> list[dict]:
        """Per device: chain positions the signed checkpoint announces that the archive lacks."""
        out = []
        cps = self.db.query("SELECT * FROM checkpoints" + (" WHERE device = ?" if device else "") + " ORDER BY device",
                            [device] if device else [])
        for cp in cps:
            have = {r["seq"]: r for r in self.db.query("SELECT seq, manifest_hash FROM items WHERE device = ?", [cp["device"]])}
            miss = [s for s in range(1, cp["count"] + 1) if s not in have]
            head_ok = None
            if cp["count"] in have:
                head_ok = have[cp["count"]]["manifest_hash"] == cp["head"]
            out.append({"device": cp["device"], "announced": cp["count"], "held": len(have), "missing": miss,
                        "head": cp["head"], "head_matches": head_ok, "checkpoint_time": cp["time"]})
        return out

    # --- retrieval (every call is audited: 调阅监督) ------------------------------------------
    def list_items(self, *, device: str | None = None, unit: str | None = None, case: str | None = None,
                   actor: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM items WHERE 1=1", []
        for col, val in (("device", device), ("unit", unit), ("case_number", case)):
            if val:
                sql += f" AND {col} = ?"
                params.append(val)
        rows = self.db.query(sql + " ORDER BY device, seq", params)
        self.audit.append("retrieve", None, actor=actor, what="list", device=device, unit=unit, case=case, count=len(rows))
        return rows

    def find(self, item: str) -> dict:
        row = self.db.one("SELECT * FROM items WHERE item = ?", [item])
        if not row:
            raise NotFoundError(f"{item}: no such item in the archive")
        return row

    def show_item(self, item: str, actor: str | None = None) -> dict:
        row = self.find(item)
        d = self.inside(self.root / row["path"])
        m = json.loads((d / mf.MANIFEST).read_bytes())
        anns = mf.read_annotations(d)
        self.audit.append("view", item, actor=actor, device=row["device"], path=row["path"])
        return {"archive": row, "manifest": {k: v for k, v in m.items() if k != "segments"},
                "segments": len(m.get("segments", [])), "annotations": [a.record for a in anns],
                "effective_metadata": mf.effective_metadata(m, anns), "path": str(d)}

    def show_device(self, device: str, actor: str | None = None) -> dict:
        dev = self.registry.device(device)
        items = self.db.query("SELECT item, seq, case_number, size, stored_at FROM items WHERE device = ? ORDER BY seq",
                              [device])
        miss = self.missing(device)
        self.audit.append("retrieve", None, actor=actor, what="device", device=device)
        return {"device": {k: dev[k] for k in ("id", "unit", "key_id", "enrolled_at")}, "items": items,
                "checkpoint": miss[0] if miss else None,
                "quarantine": self.db.query("SELECT item, reason, at, path FROM quarantine WHERE device = ? ORDER BY id",
                                            [device])}

    def export(self, item: str, dest: Path, actor: str | None = None) -> Path:
        row = self.find(item)
        src = self.inside(self.root / row["path"])
        verify_item(src, self.registry.ring(row["device"]), expected_device=row["device"])
        target = Path(dest) / item
        if target.exists():
            raise EdgeError(f"{target}: already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, target)
        shutil.copy2(self.root / "keys" / f"{row['device']}.pub", target.parent / f"{row['device']}.pub")
        self.audit.append("export", item, actor=actor, device=row["device"], dest=str(target))
        return target

    def quarantined(self) -> list[dict]:
        return self.db.query("SELECT * FROM quarantine ORDER BY id")


#: a file being received starts writing back what lies this far behind its end
WRITE_BEHIND = 8 << 20


class _Stream:
    """One file being received in order: written up to ``wpos``, hashed by the hasher thread."""

    __slots__ = ("sd", "wpos", "flushed", "pending", "ok")

    def __init__(self, sd: StreamDigest):
        self.sd = sd
        self.wpos = 0
        self.flushed = 0  # written back (asked to be) up to here
        self.pending = 0
        self.ok = True


class _Hasher:
    """Hashes received chunks into their file's :class:`StreamDigest` on its own thread, in the
    order they were written (hashlib releases the GIL: this runs beside the receiving thread).
    The queue is bounded, so a slow hasher slows the receiver down instead of filling memory."""

    def __init__(self, depth: int = 64):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.cv = threading.Condition()
        self.th = threading.Thread(target=self._run, name="archive-hasher", daemon=True)
        self.th.start()

    def put(self, st: _Stream, data: bytes, seg_digest: str | None) -> None:
        with self.cv:
            st.pending += 1
        self.q.put((st, data, seg_digest))

    def _run(self) -> None:
        while True:
            st, data, seg_digest = self.q.get()
            try:
                st.sd.feed(data, seg_digest)
            except Exception:  # never the item's proof: finish then reads the file back
                log.exception("hashing a received chunk failed")
                st.ok = False
            finally:
                with self.cv:
                    st.pending -= 1
                    self.cv.notify_all()

    def wait(self, streams) -> None:
        with self.cv:
            self.cv.wait_for(lambda: all(st.pending == 0 for st in streams))


@contextlib.contextmanager
def _flock(path: Path):
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
