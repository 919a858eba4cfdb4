"""Writing one item: its files copied, hashed and fsynced in one pass, then sealed into the
device chain (signed manifest, rename into the spool's sealed area, ledger row, chain head).

:class:`ItemWriter` is made by :meth:`Store.new_item` / :meth:`Store.resume_item`; producers (the
dock's bays, the interview room's sealer, ``ingest``) feed it files and call ``seal``.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from agent.common.errors import DiskReserveError, EdgeError
from agent.common.faults import crashpoint, pausepoint
from agent.common.fs import atomic_write, drop_cache, fsync_dir, rename_durable
from agent.common.timeutil import now_iso
from ..evidence import hashing, manifest as mf

if TYPE_CHECKING:
    from .store import Store

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
                    pausepoint("copy:8mib")  # tests: the disk fills while this copy waits
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


def _member(name: str) -> str:
    if not name or "/" in name or "\\" in name or "\x00" in name or name in (".", "..") or len(name.encode()) > 255:
        raise EdgeError(f"unsafe file name {name!r}: paths, NUL and names over 255 bytes are refused")
    return name
