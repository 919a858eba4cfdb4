"""Copy and resume: the part of a bay's work that takes each file off the recorder into the store.

Per file: one pass that copies, hashes (whole file and per block) and fsyncs
(``Store.new_item`` / ``ItemWriter.add_stream``), resumed at the bytes already fsynced when a
recorder was unplugged mid-file (``Store.resume_item(source_key)``); an optional second read;
ffprobe; seal one item per file. :class:`BayCopy` is mixed into :class:`agent.dock.bay.Bay`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from drivers.recorder import FileRecord, FileType, RecorderError, RecorderGone, derive_recorder_id, \
    file_number

from agent.common.errors import DiskReserveError, EdgeError
from agent.common.fs import drop_cache
from agent.common.timeutil import iso
from agent.evidence import hashing
from agent.store.store import SourceError
from .erasing import sealed_summary
from .state import HAVE_STATES, PENDING, UNKNOWN_CLOCK, BayAbort, BayPart, ClockOffset

log = logging.getLogger(__name__)

PROBE_TYPES = (FileType.VIDEO, FileType.AUDIO, FileType.IMAGE)
YIELD_BYTES = 64 << 20  # give the copy slot to a waiting bay after this many bytes


def source_key(serial: str, rec: FileRecord, rel: str | None = None) -> str:
    """serial + file name + size + capture time: the same file docked again maps to the same key."""
    return f"rec:{serial}:{rel or rec.name}:{rec.size}:{rec.capture_time.isoformat()}"


def probe_decodable(path: Path, timeout: float = 30.0) -> tuple[bool | None, str]:
    """(decodable, detail) by ffprobe: False when ffprobe finds no stream or refuses the file,
    None when ffprobe is not available."""
    try:
        proc = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name",
                               "-of", "json", str(path)], capture_output=True, timeout=timeout, text=True)
    except FileNotFoundError:
        return None, "ffprobe not installed"
    except subprocess.TimeoutExpired:
        return False, f"ffprobe timed out after {timeout:g} s"
    if proc.returncode != 0:
        return False, (proc.stderr.strip().splitlines() or ["ffprobe failed"])[-1][:200]
    try:
        streams = json.loads(proc.stdout or "{}").get("streams") or []
    except ValueError:
        return False, "ffprobe output unreadable"
    if not streams:
        return False, "no audio/video stream found"
    return True, ",".join(f"{s.get('codec_type')}:{s.get('codec_name')}" for s in streams)[:200]


class _Reader:
    """A source file wrapper: ``readinto`` (what ItemWriter.add_stream needs) and ``fileno``."""

    def __init__(self, f: BinaryIO):
        self.f = f

    def readinto(self, buf) -> int:
        return self.f.readinto(buf) or 0

    def fileno(self) -> int:  # lets the copy drop the recorder file's pages once read (Store)
        return self.f.fileno()


class BayCopy(BayPart):
    """Plan, copy, resume and seal the files of one docking (mixed into ``Bay``, whose state,
    lock, ``set()``, ``_problem()`` and ``gone()`` it uses)."""

    undock_event: threading.Event
    assignment_meta: dict

    # --- plan and copy ----------------------------------------------------------------------
    def _plan(self, serial: str, records: list[FileRecord], mount: str | None) -> list[dict]:
        """One entry per file; ``mount`` None when the recorder was not switched to mass storage
        (every file already in custody): then no file has a source path."""
        store = self.station.store
        plan = []
        names: set[str] = set()
        for rec in sorted(records, key=lambda r: (r.capture_time, r.name)):
            if rec.path:
                src = Path(rec.path)
                rel = os.path.relpath(rec.path, mount)
            else:
                src = Path(mount) / rec.name if mount is not None else None
                rel = rec.name
            key = source_key(serial, rec, rel)
            row = store.find_by_source(key)
            entry = {"rec": rec, "src": src, "key": key, "row": row, "item": row["id"] if row else None,
                     "reread": None}
            if rec.name in names and not (row and row["state"] in HAVE_STATES):
                self._problem(f"同名文件 / two files named {rec.name!r}: only the first is copied this time")
                continue
            names.add(rec.name)
            plan.append(entry)
        return plan

    def _copy_all(self, plan: list[dict], info, officer: dict, serial: str) -> None:
        s = self.station
        store = s.store
        todo = [e for e in plan if not (e["row"] and e["row"]["state"] in HAVE_STATES)]
        with self.lock:
            self.st.already = len(plan) - len(todo)
            self.st.items = [e["item"] for e in plan if e["item"] and e["row"]["state"] in HAVE_STATES]
        # resumable partial copies: count what is already here
        need = 0
        for e in todo:
            w = store.resume_item(e["key"])
            have = w.partial_size(e["rec"].name) if w else 0
            e["writer"] = w
            e["have"] = have if have <= e["rec"].size else 0
            need += e["rec"].size - e["have"]
        try:
            store.check_reserve(need)
        except DiskReserveError as exc:
            raise BayAbort(f"磁盘空间不足，拒绝接入 / station disk full, docking refused: {exc}; nothing on the "
                           "recorder is erased", "dock_disk_full") from None
        s.clear_alarm("dock_disk_full", self)
        total = sum(e["rec"].size for e in todo)
        self.set("downloading", f"下载 {len(todo)} 个文件 / downloading {len(todo)} file(s)",
                 file_count=len(todo), bytes_total=total, bytes_done=0, file_index=0)
        self._rate_t0, self._rate_b0 = time.monotonic(), 0
        seq = 0
        for k, e in enumerate(todo, 1):
            if self.gone():
                raise RecorderGone("undocked")
            seq += 1
            with self.lock:
                self.st.file_index, self.st.file_name = k, e["rec"].name
            try:
                item = self._copy_one(e, info, officer, serial, seq)
            except FileSkipped as exc:
                self._problem(str(exc))
                with self.lock:
                    self.st.bytes_done += e["rec"].size
                continue
            e["item"] = item
            e["row"] = store.item(item)
            with self.lock:
                self.st.items.append(item)
                self.st.sealed += 1
            self.station.bay_changed(self, important=True)

    def _copy_one(self, e: dict, info, officer: dict, serial: str, seq: int) -> str:
        s = self.station
        cfg = s.cfg.dock
        store = s.store
        rec: FileRecord = e["rec"]
        src: Path = e["src"]
        writer = e.get("writer")
        start = e.get("have", 0)
        if writer is not None and start == 0 and writer.partial_size(rec.name):
            writer.discard("partial copy larger than the file on the recorder")
            writer = None
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if self.gone():
                raise RecorderGone("undocked") from None
            raise FileSkipped(f"文件不在存储中 / {rec.name}: listed by the recorder but not on its storage") from None
        except OSError as exc:
            if self.gone():
                raise RecorderGone("undocked") from None
            raise FileSkipped(f"无法读取 / {rec.name}: {exc.strerror}") from None
        f = os.fdopen(fd, "rb", buffering=0)
        with f:
            before = os.fstat(fd)
            fifo = stat.S_ISFIFO(before.st_mode)
            if not (stat.S_ISREG(before.st_mode) or fifo):
                raise FileSkipped(f"不是普通文件 / {rec.name}: not a regular file on the recorder")
            if not fifo and before.st_size != rec.size:
                raise FileSkipped(f"文件大小与列表不符 / {rec.name}: {before.st_size} bytes on storage, "
                                   f"{rec.size} in the recorder's list (file still being written?); not copied, not erased")
            if writer is not None and start:
                try:
                    proof = self._prove_prefix(f, fifo, writer, rec, start)
                except (SourceError, OSError) as exc:
                    if self._recorder_gone():
                        raise BayAbort(f"记录仪在复核中拔出 / recorder removed while the first {start} bytes of "
                                       f"{rec.name} were re-read; the partial copy is kept: dock it again") from None
                    raise FileSkipped(f"无法复核续传 / {rec.name}: the recorder's first {start} bytes could not be "
                                      f"read again ({exc}); not resumed now, not erased") from None
                if proof["recorder_hash"] != proof["local_hash"]:
                    writer.discard(f"resumed copy differs from the recorder in its first {start} bytes: the copy has "
                                   f"{proof['local_hash']}, the recorder {proof['recorder_hash']}")
                    store.audit.append("resume-refused", writer.id, actor="agent:dock", bay=self.name, serial=serial,
                                       file=rec.name, **proof)
                    log.warning("bay %s: %s: the %d bytes copied before the unplug differ from the recorder's; "
                                "discarded, copying again", self.name, rec.name, start)
                    with self.lock:
                        self.st.recopied += 1
                    writer, start = None, 0
                    if fifo:  # a pipe cannot be read again in this docking
                        raise FileSkipped(f"续传前段不符 / {rec.name}: the bytes copied before the unplug differ "
                                          "from the recorder's; discarded, copied again at the next docking, not erased")
                    f.seek(0)
                else:
                    e["prefix_check"] = proof
            if writer is None:
                clock: ClockOffset = e.get("clock", UNKNOWN_CLOCK)
                writer = store.new_item(self._metadata(rec, info, officer, serial, clock, seq),
                                        self._source(rec, serial, e), kind="recorder", priority=5,
                                        source_key=e["key"], clock_offset_ms=clock.offset_ms, expected_size=rec.size)
                start = 0
                store.audit.append("ingest", writer.id, actor="agent:dock", bay=self.name, serial=serial,
                                   file=rec.name, bytes=rec.size)
            elif start:
                store.audit.append("ingest", writer.id, actor="agent:dock", bay=self.name, serial=serial,
                                   file=rec.name, resumed_at=start, bytes=rec.size)
            if start:  # the recorder's first `start` bytes were just read and hashed (_prove_prefix): f is there
                with self.lock:
                    self.st.resumed_bytes += start
                    self.st.bytes_done += start
            try:
                self._limit = cfg.bay_rate_limit_mib << 20
                self._wb = _WriteBehind(writer.files_dir / rec.name, start)
                with s.pool.slot(self):
                    self._slot_bytes = self._slot_total = 0
                    try:
                        entry = writer.add_stream(rec.name, _Reader(f), expected_size=rec.size, start_offset=start,
                                                  progress=self._progress if not start else self._progress_after(start))
                    finally:
                        self._wb.close()
            except SourceError as exc:
                if self._recorder_gone():
                    raise BayAbort(f"记录仪在复制中拔出 / recorder removed while copying {rec.name} at byte "
                                   f"{exc.offset} of {rec.size}; the {exc.offset} bytes are kept: dock it again to "
                                   "resume") from None
                writer.discard(f"source changed during copy: {exc}")
                raise FileSkipped(f"文件在复制中变化 / {rec.name} changed while it was copied ({exc}); the partial "
                                   "copy was discarded, the file stays on the recorder") from None
            except (OSError, DiskReserveError) as exc:
                if isinstance(exc, DiskReserveError):
                    raise BayAbort(f"磁盘已满 / station disk full while copying {rec.name}: {exc}; the partial copy is "
                                   "kept, nothing erased", "dock_disk_full") from None
                raise
            after = os.fstat(fd)
        if not fifo and (after.st_size != before.st_size or after.st_mtime_ns != before.st_mtime_ns):
            writer.discard("source modified during copy")
            raise FileSkipped(f"文件在复制中变化 / {rec.name} was modified while it was copied; the copy was "
                               "discarded, the file stays on the recorder")
        # what was read off the recorder: the plaintext's hash and size when the spool is encrypted
        copied = {"hash": entry.get("plain_hash", entry["hash"]), "size": entry.get("plain_size", entry["size"])}
        extra: dict[str, Any] = {}
        if cfg.verify_policy == "reread" or cfg.erase_policy == "after-local-verify":
            self.set("verifying", f"复核 {rec.name} / re-reading {rec.name}")
            again = self._reread(src)
            e["reread"] = again
            if again != copied["hash"]:
                writer.discard(f"second read differs: {again} != {copied['hash']}")
                raise FileSkipped(f"复核不一致 / {rec.name}: a second read of the recorder differs from the copy; "
                                   "discarded, not erased")
            extra["verified"] = "reread"
            self.set("downloading")
        if cfg.probe and rec.type in PROBE_TYPES:
            ok, detail = probe_decodable(writer.files_dir / rec.name)
            extra["decodable"] = ok
            extra["probe"] = detail
            if ok is False:
                self._problem(f"无法解码 / {rec.name} is not decodable ({detail}); kept byte-exact as evidence")
        writer.seal(extra_metadata=extra, actor="agent:dock")
        if not self.mass_storage:
            s.registry.release_clock(serial, [e["key"]])
        self._record_copy(writer.id, rec, serial, copied, start, e.get("prefix_check"))
        return writer.id

    def _prove_prefix(self, f: BinaryIO, fifo: bool, writer, rec: FileRecord, start: int) -> dict:
        """Before a copy resumes at ``start``: read the recorder's first ``start`` bytes again and
        hash them, and hash the same bytes of the partial copy. A byte read wrong before the unplug
        would otherwise be carried into the item (the one-pass hash covers what was read, not what
        the recorder holds). Leaves ``f`` at ``start``. {bytes, recorder_hash, local_hash, alg}."""
        alg = self.station.store.alg
        self.set("verifying", f"续传前复核 {rec.name} / re-reading the first {start} bytes of {rec.name} "
                              "before resuming")
        with self.station.pool.slot(self):
            remote = _hash_prefix(f, start, alg)
            with open(writer.files_dir / rec.name, "rb", buffering=0) as local:
                mine = _hash_prefix(local, start, alg)
        self.set("downloading")
        return {"bytes": start, "alg": alg, "recorder_hash": remote, "local_hash": mine}

    def _record_copy(self, item: str, rec: FileRecord, serial: str, copied: dict, resumed_at: int = 0,
                     prefix_check: dict | None = None) -> None:
        """The copy record the erase rule rests on (audit ``copy``): the hash and size computed
        while the file was read off the recorder, and the hash and file entry of the manifest
        sealed for it, read back from the spool. A sealed manifest that does not describe the copy
        is a problem now (and the file is never erased automatically)."""
        store = self.station.store
        data = store.sealed_manifest(item)
        sealed = sealed_summary(data, rec.name) if data is not None else {"manifest_hash": None, "file": None}
        extra = {"resumed_at": resumed_at, "prefix_check": prefix_check} if resumed_at else {}
        store.audit.append("copy", item, actor="agent:dock", bay=self.name, serial=serial, file=rec.name,
                           size=copied["size"], hash=copied["hash"], alg=store.alg,
                           manifest_hash=sealed["manifest_hash"], manifest_file=sealed["file"], **extra)
        if sealed["file"] != copied:
            self._problem(f"封存清单与复制不符 / {rec.name}: the sealed manifest's entry {sealed['file']} differs from "
                          f"the copy ({copied['size']} bytes, {copied['hash'][:16]}…); it will not be erased")

    def _metadata(self, rec: FileRecord, info, officer: dict, serial: str, clock: ClockOffset, seq: int) -> dict:
        s = self.station
        end = rec.capture_time + _dt.timedelta(seconds=max(0, rec.duration))
        unit = info.unit_number.strip() or s.cfg.device.unit_code
        domain = unit[:8] if unit[:8].isdigit() and len(unit) >= 8 else s.cfg.device.unit_code[:8]
        number = rid = None
        try:
            rid = derive_recorder_id(domain, serial)
            number = file_number(domain, rid, rec.capture_time, int(rec.type), int(rec.mark),
                                 _dt.datetime.now().astimezone(), seq % 10000)
        except ValueError as exc:
            log.warning("bay %s: no file number for %s: %s", self.name, rec.name, exc)
        return {
            "case_number": None, "proof": None, "pending": list(PENDING),
            "place": s.cfg.device.location, "place_source": "station",
            "capture_start": iso(rec.capture_time), "capture_end": iso(end),
            "collector": officer,
            "unit": {"number": info.unit_number, "name": info.unit_name},
            "recorder": {"serial": serial, "id": rid},
            "file_number": number, "file_type": int(rec.type), "file_type_name": rec.type.name.lower(),
            "mark": int(rec.mark), "locked": bool(rec.locked), "duration_s": int(rec.duration),
            **clock.metadata(),
            **self.assignment_meta,
        }

    def _source(self, rec: FileRecord, serial: str, e: dict) -> dict:
        return {"type": "recorder" if not self.mass_storage else "recorder-mass-storage", "serial": serial,
                "bay": self.name, "port": self.st.path, "name": rec.name, "path": str(e["src"]), "size": rec.size,
                "capture_time": rec.capture_time.isoformat(), "duration_s": int(rec.duration),
                "file_type": int(rec.type), "mark": int(rec.mark), "locked": bool(rec.locked),
                "station": self.station.cfg.device.id}

    def _progress_after(self, start: int):
        # add_stream reports the re-hashed local bytes first (already counted), then new bytes
        skipped = [start]

        def cb(n: int) -> None:
            if skipped[0] > 0:
                skipped[0] -= n
                return
            self._progress(n)
        return cb

    def _progress(self, n: int) -> None:
        """Called by add_stream after every read (1 MiB): keep it cheap, it runs under the GIL."""
        s = self.station
        st = self.st
        st.bytes_done += n  # only this thread writes it
        self._slot_bytes += n
        if self._slot_bytes < (8 << 20) and not self._limit:
            return
        now = time.monotonic()
        dt = now - self._rate_t0
        if dt >= 1.0:
            rate = (st.bytes_done - self._rate_b0) / dt
            st.rate_bps = int(rate if not st.rate_bps else 0.5 * rate + 0.5 * st.rate_bps)
            self._rate_t0, self._rate_b0 = now, st.bytes_done
            if st.rate_bps:
                st.eta_s = int(max(0, st.bytes_total - st.bytes_done) / st.rate_bps)
        limit = self._limit
        if limit:
            self._limit_bytes = getattr(self, "_limit_bytes", 0) + n
            t0 = getattr(self, "_limit_t0", None)
            if t0 is None:
                self._limit_t0 = t0 = now
            ahead = self._limit_bytes / limit - (now - t0)
            if ahead > 0:
                time.sleep(min(ahead, 1.0))
        self._slot_total = getattr(self, "_slot_total", 0) + self._slot_bytes
        self._wb.advance(self._slot_bytes)
        self._slot_bytes = 0
        if self._slot_total >= YIELD_BYTES:
            self._slot_total = 0
            s.pool.yield_slot(self)
        if s.stop_event.is_set():
            raise BayAbort("工作站停止 / station stopping; the partial copy is kept for resume")
        if now - self._last_notify >= 0.5:
            self._last_notify = now
            s.bay_changed(self)

    def _reread(self, src: Path) -> str:
        h = hashing.new(self.station.store.alg)
        with open(src, "rb", buffering=0) as f:
            buf = bytearray(1 << 20)
            mv = memoryview(buf)
            while True:
                n = f.readinto(mv)
                if not n:
                    break
                h.update(mv[:n])
        return h.hexdigest()

    def _recorder_gone(self) -> bool:
        if self.undock_event.is_set():
            return True
        if self.msdc_mount is not None:  # the channel may be away in mass-storage mode: the volume tells
            return self._volume_gone()
        if not os.path.exists(self.st.path):
            return True
        if self.client is None:
            return not os.path.isdir(self.st.path)
        try:
            self.client.battery()
            return False
        except RecorderError:
            return True


class _WriteBehind:
    """Start writeback of the copy behind the write position (posix_fadvise DONTNEED on what was
    written LAG bytes ago): the disk works while the copy goes on, the final fsync has little left
    to wait for, and the page cache does not fill with 16 bays' dirty data."""

    LAG = 16 << 20

    def __init__(self, path: Path, start: int):
        self.path = path
        self.offset = start
        self.done = start
        self.fd: int | None = None

    def advance(self, n: int) -> None:
        self.offset += n
        if self.offset - self.done < 2 * self.LAG:
            return
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return
        end = self.offset - self.LAG
        drop_cache(self.fd, self.done, end - self.done)
        self.done = end

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FileSkipped(EdgeError):
    """This file is not copied now (reported as a bay problem); the others go on."""


def _hash_prefix(f: BinaryIO, n: int, alg: str) -> str:
    """Hash of the next ``n`` bytes of ``f`` (read, not seeked: a pipe works too)."""
    h = hashing.new(alg)
    buf = bytearray(min(n, 1 << 20) or 1)
    mv = memoryview(buf)
    while n:
        got = f.readinto(mv[:min(n, len(buf))])
        if not got:
            raise SourceError("source ended before the resume point", 0)
        h.update(mv[:got])
        n -= got
    return h.hexdigest()
