"""One bay of the docking station: the state machine a docked recorder goes through.

    idle -> identifying -> charging -> downloading (file k of n) -> [verifying] -> uploading -> done
                                                   \\-> error(reason) from any step

Per recorder: identify -> authenticate -> read clock (drift kept in every item as
``clock_offset_ms``; set past ``dock.clock_threshold_s``; alarm past ``dock.clock_alarm_s``) ->
list files -> copy each file in one pass with hashing and fsync (``Store.new_item`` /
``ItemWriter.add_stream``; resumed with ``Store.resume_item(source_key)``) -> optional second
read -> seal one item per file (case number and proof object pending) -> the uplink drains the
ledger (priority 5) -> erase per policy. Nothing is ever erased unless the erase policy's
condition holds for that exact file; important/locked files are never erased automatically.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from drivers.recorder import (
    AuthError,
    FileRecord,
    FileType,
    ProtocolError,
    RecorderClient,
    RecorderError,
    RecorderGone,
    RecorderRefused,
    RecorderTimeout,
    UnsafeName,
    derive_recorder_id,
    file_number,
    safe_name,
    scan_mass_storage,
)
from drivers.recorder.protocol import Command, Result
from drivers.recorder.zfy import decode_file_record

from agent.common.errors import DiskReserveError, EdgeError
from ..evidence import hashing
from agent.common.fs import drop_cache
from ..store.store import SourceError
from agent.common.timeutil import iso, now_iso

if TYPE_CHECKING:  # pragma: no cover
    from .station import DockStation

log = logging.getLogger(__name__)

STATES = ("idle", "identifying", "charging", "downloading", "verifying", "uploading", "done", "error")
LABELS = {
    "idle": "空闲 / Idle",
    "identifying": "识别中 / Identifying",
    "charging": "充电中 / Charging",
    "downloading": "下载中 / Downloading",
    "verifying": "校验中 / Verifying",
    "uploading": "上传中 / Uploading",
    "done": "完成 / Done",
    "error": "故障 / Error",
}
PENDING = ["case_number", "proof"]
HAVE_STATES = ("sealed", "uploading", "archived", "purged", "rejected")
PROBE_TYPES = (FileType.VIDEO, FileType.AUDIO, FileType.IMAGE)
YIELD_BYTES = 64 << 20  # give the copy slot to a waiting bay after this many bytes


class BayAbort(EdgeError):
    """Stop work on this recorder; ``reason`` is the bilingual bay error."""

    def __init__(self, reason: str, alarm: str | None = None):
        super().__init__(reason)
        self.alarm = alarm


@dataclass
class BayState:
    """What ``dock status`` shows and ``P/dev/D/component/bay-N`` carries (retained)."""

    name: str
    path: str = ""
    kind: str = "serial"  # serial (command channel) or mass-storage
    state: str = "idle"
    label: str = LABELS["idle"]
    docked: bool = False
    since: str = ""
    reason: str | None = None
    message: str | None = None
    serial: str | None = None
    officer_number: str | None = None
    officer_name: str | None = None
    unit_number: str | None = None
    unit_name: str | None = None
    battery: int | None = None
    charging: bool | None = None
    recorder_free: int | None = None
    recorder_full: bool = False
    clock_offset_ms: int | None = None
    clock_set: bool = False
    file_index: int = 0
    file_count: int = 0
    file_name: str | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    rate_bps: int = 0
    eta_s: int | None = None
    resumed_bytes: int = 0
    items: list[str] = field(default_factory=list)
    sealed: int = 0
    already: int = 0
    archived: int = 0
    erased: int = 0
    kept_protected: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)  # shallow: much cheaper than asdict() under the copy threads' GIL
        d["items"] = list(self.items)
        d["problems"] = list(self.problems)
        d["label"] = LABELS[self.state]
        return d


def source_key(serial: str, rec: FileRecord, rel: str | None = None) -> str:
    """serial + file name + size + capture time: the same file docked again maps to the same key."""
    return f"rec:{serial}:{rel or rec.name}:{rec.size}:{rec.capture_time.isoformat()}"


def erase_decision(policy: str, rec: FileRecord, row: dict | None, *, reread_hash: str | None = None,
                   conflict: bool = False) -> tuple[bool, str]:
    """May this file be erased from the recorder now? (erase?, why) — the one place the rule lives.

    after-archive: the archive acknowledged the item and its content hash equals the hash read
    from the recorder (and the receipt's hash, when it names one). after-local-verify: sealed
    locally and a second read of the recorder gave the same hash. never: never."""
    if rec.protected:
        return False, "重点/锁定文件不自动删除 / important or locked file: never erased automatically"
    if conflict:
        return False, "序列号冲突，暂不删除 / serial conflict: erase withheld"
    if policy == "never":
        return False, "策略为不删除 / erase policy is never"
    if row is None or not row.get("content_hash"):
        return False, "本地无对应资料 / no sealed item for this file"
    if row.get("size") not in (None, rec.size):
        return False, "大小不符 / sealed size differs from the recorder's file"
    if policy == "after-local-verify":
        if row["state"] not in HAVE_STATES or row["state"] == "rejected":
            return False, "尚未封存 / not sealed yet"
        if reread_hash is None:
            return False, "未复核 / not re-read from the recorder"
        if reread_hash != row["content_hash"]:
            return False, "复核哈希不符 / second read differs from the sealed copy"
        return True, "本地复核一致 / sealed and re-read equal"
    if policy == "after-archive":
        if row["state"] not in ("archived", "purged") or not row.get("archived_at"):
            return False, "等待归档确认 / waiting for the archive's acknowledgement"
        receipt = {}
        try:
            receipt = json.loads(row.get("receipt") or "{}") or {}
        except ValueError:
            return False, "归档回执无法解析 / archive receipt unreadable"
        for key in ("content_hash", "hash", "sha256"):
            if isinstance(receipt, dict) and receipt.get(key) and receipt[key] != row["content_hash"]:
                return False, "归档哈希不符 / the archive acknowledged a different hash"
        return True, "归档已确认 / archive acknowledged the same hash"
    return False, f"unknown erase policy {policy!r}"


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


class Bay:
    """A bay and the recorder docked in it. ``run()`` is the worker thread of one docking."""

    def __init__(self, station: "DockStation", name: str, path: str, mass_storage: bool):
        self.station = station
        self.st = BayState(name=name, path=path, kind="mass-storage" if mass_storage else "serial",
                           since=now_iso())
        self.mass_storage = mass_storage
        self.lock = threading.RLock()
        self.thread: threading.Thread | None = None
        self.client: RecorderClient | None = None
        self.undock_event = threading.Event()
        self.ident: tuple | None = None  # identity of the docked device node (station._identity)
        self._last_notify = 0.0
        self._rate_t0 = 0.0
        self._rate_b0 = 0

    # --- state ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.st.name

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def set(self, state: str, message: str | None = None, **fields: Any) -> None:
        assert state in STATES, state
        with self.lock:
            changed = state != self.st.state
            self.st.state = state
            if changed:
                self.st.since = now_iso()
            if message is not None:
                self.st.message = message
            for k, v in fields.items():
                setattr(self.st, k, v)
        self.station.bay_changed(self, important=True)

    def snapshot(self) -> dict:
        with self.lock:
            return self.st.as_dict()

    def docked_at(self, path: str) -> None:
        """A recorder appeared in this bay: reset and start the worker."""
        with self.lock:
            keep = {"name": self.st.name, "kind": self.st.kind}
            self.st = BayState(**keep, path=path, docked=True, since=now_iso())
        self.undock_event.clear()
        self.station.clear_bay_alarms(self)
        self.thread = threading.Thread(target=self.run, name=f"dock-{self.name}", daemon=True)
        self.thread.start()

    def undocked(self) -> None:
        """The recorder was taken out. A finished bay goes idle; an error stays visible."""
        self.undock_event.set()
        with self.lock:
            self.st.docked = False
            if self.st.state != "error" and not self.busy:
                self.st.state, self.st.since, self.st.message = "idle", now_iso(), None
        if self.st.serial:
            self.station.release_serial(self.st.serial, self)
        self.station.bay_changed(self, important=True)

    def gone(self) -> bool:
        return self.undock_event.is_set() or not os.path.exists(self.st.path) or self.station.stop_event.is_set()

    # --- worker -----------------------------------------------------------------------------
    def run(self) -> None:
        st = self.station
        try:
            self._run()
        except BayAbort as exc:
            self._fail(str(exc), exc.alarm)
        except DiskReserveError as exc:
            self._fail(f"磁盘空间不足，拒绝接入 / station disk full: {exc}; nothing on the recorder is erased",
                       "dock_disk_full")
        except InterruptedError:
            self._fail("工作站停止 / station stopping; partial copies are kept and resumed at the next docking")
        except RecorderGone:
            self._fail("记录仪已拔出 / recorder removed before the work finished; dock it again to resume")
        except RecorderTimeout as exc:
            self._fail(f"记录仪无应答 / recorder does not answer: {exc}", "recorder_no_answer")
        except AuthError as exc:
            log.info("bay %s: %s", self.name, exc)
            self._fail("管理员密码错误 / wrong admin password: the recorder refused dock.admin_password; "
                       "nothing copied or erased", "recorder_auth_failed")
        except (ProtocolError, RecorderError) as exc:
            self._fail(f"记录仪通信错误 / recorder protocol error: {exc}", "recorder_no_answer")
        except EdgeError as exc:
            self._fail(f"处理失败 / {exc}")
        except Exception as exc:  # a bug must not take the station down; the bay shows it
            log.exception("bay %s: unexpected failure", self.name)
            self._fail(f"内部错误 / internal error: {type(exc).__name__}: {exc}")
        finally:
            if self.client is not None:
                self.client.close()
                self.client = None
            with self.lock:
                if not self.st.docked and self.st.state != "error":
                    self.st.state, self.st.since, self.st.message = "idle", now_iso(), None
            if self.st.serial:
                st.release_serial(self.st.serial, self)
            st.bay_changed(self, important=True)

    def _fail(self, reason: str, alarm: str | None = None) -> None:
        log.error("bay %s: %s", self.name, reason)
        self.set("error", reason=reason, message=reason, rate_bps=0, eta_s=None)
        if alarm:
            self.station.alarm(alarm, self, reason)

    def _run(self) -> None:
        s = self.station
        cfg = s.cfg.dock
        self.set("identifying", "正在识别记录仪 / identifying the recorder")
        if self.mass_storage:
            info, mount = self._identify_mass_storage()
            offset_ms = None
        else:
            self.client = RecorderClient(self.st.path, timeout=cfg.serial_timeout_ms / 1000, retries=3)
            info = self.client.identify()
            mount = None
        serial = info.serial.strip()
        if not serial:
            raise BayAbort("记录仪序列号为空 / the recorder reports an empty serial; it cannot be registered")
        with self.lock:
            self.st.serial, self.st.officer_number, self.st.officer_name = serial, info.officer_number, info.officer_name
            self.st.unit_number, self.st.unit_name = info.unit_number, info.unit_name
        other = s.claim_serial(serial, self)
        if other is not None:
            raise BayAbort(f"序列号冲突 / serial {serial} is already docked in {other}: two recorders claim the same "
                           "serial; this one is not processed and nothing is erased from either", "recorder_serial_conflict")
        s.registry.seen(serial, info.officer_number, info.officer_name, info.unit_number, info.unit_name, self.name)
        s.recorder_seen()
        officer = self._collector(info)
        s.store.audit.append("dock", None, actor="agent:dock", bay=self.name, serial=serial,
                             officer=info.officer_number, unit=info.unit_number, port=self.st.path)

        if not self.mass_storage:
            c = self.client
            c.authenticate(cfg.admin_password)
            bat = c.battery()
            sto = c.storage()
            self.set("charging", f"电量 {bat.level}% / battery {bat.level}%", battery=bat.level, charging=bat.charging,
                     recorder_free=sto.free)
            if sto.full:  # normal at the end of a long shift: copied first, then freed per policy
                log.info("bay %s: recorder %s storage full", self.name, self.st.serial)
                self.set("charging", "记录仪存储已满，先复制 / recorder storage full: copying first", recorder_full=True)
            offset_ms = self._clock()
            mount = c.mass_storage()
            records, bad = self._list_files()
        else:
            try:
                records = scan_mass_storage(mount, probe=False)
            except RecorderError as exc:
                raise BayAbort(f"无法读取记录仪存储 / cannot list the recorder's files: {exc}") from None
            bad = []
        for name, why in bad:
            self._problem(f"文件名被拒绝 / file name refused: {name!r}: {why}")
            s.store.audit.append("dock", None, actor="agent:dock", bay=self.name, serial=serial, refused_name=repr(name),
                                 reason=why)
        if bad:
            s.alarm("recorder_unsafe_name", self, f"记录仪报告不安全的文件名 / recorder reported {len(bad)} unsafe file name(s)")

        plan = self._plan(serial, records, mount)
        self._copy_all(plan, info, officer, serial, offset_ms)
        self._finish(plan, serial)

    # --- identify ---------------------------------------------------------------------------
    def _identify_mass_storage(self):
        from drivers.recorder import ZfyInfo

        mount = self.st.path
        label = os.path.basename(mount.rstrip("/"))
        rec = self.station.ms_map.get(label)
        if rec is None:
            raise BayAbort(f"未登记的U盘式记录仪 / mass-storage recorder {label!r} is not mapped: add it to "
                           "dock.mass_storage_map (label, serial, officer_number)")
        off = self.station.registry.officer(rec.officer_number) or {}
        info = ZfyInfo(rec.serial, rec.officer_number, rec.officer_name or off.get("name", ""),
                       rec.unit_number or off.get("unit_code", ""), rec.unit_name or off.get("unit_name", ""))
        return info, mount

    def _collector(self, info) -> dict:
        name = info.officer_name.strip()
        number = info.officer_number.strip()
        if not number:
            raise BayAbort("记录仪未写入警号 / the recorder has no officer number (ZFY_INFO empty); assign it with the "
                           "vendor tool before docking")
        if not name:
            off = self.station.registry.officer(number)
            name = (off or {}).get("name", "")
        if not name:
            raise BayAbort(f"警员 {number} 无姓名 / officer {number} has no name on the recorder or in the roster; "
                           "import the roster (edge-agent roster import)")
        return {"name": name, "id": number}

    def _clock(self) -> int:
        cfg = self.station.cfg.dock
        c = self.client
        before = time.time()
        device = c.read_clock()
        after = time.time()
        offset_ms = int(round((device.timestamp() - (before + after) / 2) * 1000))
        with self.lock:
            self.st.clock_offset_ms = offset_ms
        huge = abs(offset_ms) > cfg.clock_alarm_s * 1000 or not 2000 <= device.year <= 2090
        if huge:
            self.station.alarm("recorder_clock", self,
                               f"记录仪时钟严重偏差 / recorder clock {device.isoformat()} is off by {offset_ms // 1000} s")
            self._problem(f"时钟严重偏差 / recorder clock was {device.isoformat()} ({offset_ms // 1000} s off); "
                          "capture times from this recorder need review")
        was_set = False
        if abs(offset_ms) > cfg.clock_threshold_s * 1000:
            tz = device.tzinfo or _dt.timezone(_dt.timedelta(hours=8))
            try:
                c.set_clock(_dt.datetime.now(tz))
                was_set = True
            except RecorderRefused as exc:
                self._problem(f"时间同步失败 / time sync refused: {exc}")
        with self.lock:
            self.st.clock_set = was_set
        self.station.store.audit.append("clock", None, actor="agent:dock", bay=self.name, serial=self.st.serial,
                                        device_time=device.isoformat(), offset_ms=offset_ms, set=was_set, huge=huge)
        return offset_ms

    def _list_files(self) -> tuple[list[FileRecord], list[tuple[str, str]]]:
        """LIST_FILES page by page; unsafe names are set aside (reported), not fatal."""
        records: list[FileRecord] = []
        bad: list[tuple[str, str]] = []
        total = None
        seen = 0
        while total is None or seen < total:
            code, data = self.client.request(Command.LIST_FILES, struct.pack(">H", seen))
            if code != Result.OK:
                raise ProtocolError(f"文件列表失败 / list files refused (result {code})")
            if len(data) < 3:
                raise ProtocolError("文件列表应答过短 / file list answer too short")
            page_total, count = struct.unpack_from(">HB", data)
            if total is None:
                total = page_total
            elif page_total != total:
                raise ProtocolError(f"文件列表在读取中变化 / file list changed while reading ({total} -> {page_total})")
            if count == 0 and seen < total:
                raise ProtocolError("文件列表分页为空 / empty file list page before the end")
            off = 3
            for _ in range(count):
                rec, off = decode_file_record(data, off)
                seen += 1
                try:
                    safe_name(rec.name)
                    records.append(rec)
                except UnsafeName as exc:
                    bad.append((rec.name, str(exc)))
            if seen > total:
                raise ProtocolError("文件列表超出总数 / more files than announced")
        return records, bad

    # --- plan and copy ----------------------------------------------------------------------
    def _plan(self, serial: str, records: list[FileRecord], mount: str) -> list[dict]:
        store = self.station.store
        plan = []
        names: set[str] = set()
        for rec in sorted(records, key=lambda r: (r.capture_time, r.name)):
            if rec.path:
                src = Path(rec.path)
                rel = os.path.relpath(rec.path, mount)
            else:
                src = Path(mount) / rec.name
                rel = rec.name
            key = source_key(serial, rec, rel)
            row = store.find_by_source(key)
            entry = {"rec": rec, "src": src, "key": key, "row": row, "item": row["id"] if row else None,
                     "hash": row["content_hash"] if row else None, "reread": None}
            if rec.name in names and not (row and row["state"] in HAVE_STATES):
                self._problem(f"同名文件 / two files named {rec.name!r}: only the first is copied this time")
                continue
            names.add(rec.name)
            plan.append(entry)
        return plan

    def _copy_all(self, plan: list[dict], info, officer: dict, serial: str, offset_ms: int | None) -> None:
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
                item = self._copy_one(e, info, officer, serial, offset_ms, seq)
            except _FileSkipped as exc:
                self._problem(str(exc))
                with self.lock:
                    self.st.bytes_done += e["rec"].size
                continue
            e["item"] = item
            e["row"] = store.item(item)
            e["hash"] = e["row"]["content_hash"]
            with self.lock:
                self.st.items.append(item)
                self.st.sealed += 1
            self.station.bay_changed(self, important=True)

    def _copy_one(self, e: dict, info, officer: dict, serial: str, offset_ms: int | None, seq: int) -> str:
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
            raise _FileSkipped(f"文件不在存储中 / {rec.name}: listed by the recorder but not on its storage") from None
        except OSError as exc:
            if self.gone():
                raise RecorderGone("undocked") from None
            raise _FileSkipped(f"无法读取 / {rec.name}: {exc.strerror}") from None
        f = os.fdopen(fd, "rb", buffering=0)
        with f:
            before = os.fstat(fd)
            fifo = stat.S_ISFIFO(before.st_mode)
            if not (stat.S_ISREG(before.st_mode) or fifo):
                raise _FileSkipped(f"不是普通文件 / {rec.name}: not a regular file on the recorder")
            if not fifo and before.st_size != rec.size:
                raise _FileSkipped(f"文件大小与列表不符 / {rec.name}: {before.st_size} bytes on storage, "
                                   f"{rec.size} in the recorder's list (file still being written?); not copied, not erased")
            if writer is None:
                writer = store.new_item(self._metadata(rec, info, officer, serial, offset_ms, seq),
                                        self._source(rec, serial, e), kind="recorder", priority=5,
                                        source_key=e["key"], clock_offset_ms=offset_ms, expected_size=rec.size)
                start = 0
                store.audit.append("ingest", writer.id, actor="agent:dock", bay=self.name, serial=serial,
                                   file=rec.name, bytes=rec.size)
            elif start:
                store.audit.append("ingest", writer.id, actor="agent:dock", bay=self.name, serial=serial,
                                   file=rec.name, resumed_at=start, bytes=rec.size)
            if start:
                if fifo:
                    _skip(f, start)
                else:
                    f.seek(start)
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
                raise _FileSkipped(f"文件在复制中变化 / {rec.name} changed while it was copied ({exc}); the partial "
                                   "copy was discarded, the file stays on the recorder") from None
            except (OSError, DiskReserveError) as exc:
                if isinstance(exc, DiskReserveError):
                    raise BayAbort(f"磁盘已满 / station disk full while copying {rec.name}: {exc}; the partial copy is "
                                   "kept, nothing erased", "dock_disk_full") from None
                raise
            after = os.fstat(fd)
        if not fifo and (after.st_size != before.st_size or after.st_mtime_ns != before.st_mtime_ns):
            writer.discard("source modified during copy")
            raise _FileSkipped(f"文件在复制中变化 / {rec.name} was modified while it was copied; the copy was "
                               "discarded, the file stays on the recorder")
        extra: dict[str, Any] = {}
        if cfg.verify_policy == "reread" or cfg.erase_policy == "after-local-verify":
            self.set("verifying", f"复核 {rec.name} / re-reading {rec.name}")
            again = self._reread(src)
            e["reread"] = again
            if again != entry["hash"]:
                writer.discard(f"second read differs: {again} != {entry['hash']}")
                raise _FileSkipped(f"复核不一致 / {rec.name}: a second read of the recorder differs from the copy; "
                                   "discarded, not erased")
            extra["verified"] = "reread"
            self.set("downloading")
        if cfg.probe and rec.type in PROBE_TYPES:
            ok, detail = probe_decodable(writer.files_dir / rec.name)
            extra["decodable"] = ok
            extra["probe"] = detail
            if ok is False:
                self._problem(f"无法解码 / {rec.name} is not decodable ({detail}); kept byte-exact as evidence")
        m = writer.seal(extra_metadata=extra, actor="agent:dock")
        return m["item_id"] if "item_id" in m else writer.id

    def _metadata(self, rec: FileRecord, info, officer: dict, serial: str, offset_ms: int | None, seq: int) -> dict:
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
            "clock_offset_ms": offset_ms,
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
        if self.undock_event.is_set() or not os.path.exists(self.st.path):
            return True
        if self.client is None:
            return not os.path.isdir(self.st.path)
        try:
            self.client.battery()
            return False
        except RecorderError:
            return True

    # --- after copying: upload and erase ---------------------------------------------------
    def _finish(self, plan: list[dict], serial: str) -> None:
        s = self.station
        cfg = s.cfg.dock
        policy = cfg.erase_policy
        candidates = [e for e in plan if e["item"]]
        for e in candidates:
            if e["rec"].protected:
                with self.lock:
                    self.st.kept_protected += 1
        if policy == "after-local-verify":
            for e in candidates:
                if e["reread"] is None and not e["rec"].protected and e["row"]:
                    self.set("verifying", f"复核 {e['rec'].name} / re-reading {e['rec'].name}")
                    try:
                        e["reread"] = self._reread(e["src"])
                    except OSError as exc:
                        self._problem(f"复核失败 / {e['rec'].name}: {exc.strerror}")
            self._erase_ready(candidates, serial, policy)
        elif policy == "after-archive":
            waiting = [e for e in candidates if not e["rec"].protected]
            self.set("uploading", "已保存，可取走 / saved: you may remove the recorder (erased after archiving)")
            while waiting and not self.gone():
                self._refresh_rows(candidates)
                policy = cfg.erase_policy  # a central command may change it while the bay waits
                if policy != "after-archive":
                    self._erase_ready(waiting, serial, policy)
                    waiting = []
                    break
                self._erase_ready(waiting, serial, policy)
                waiting = [e for e in waiting if not e.get("erased") and not e.get("erase_final")]
                with self.lock:
                    self.st.archived = sum(1 for e in candidates if e["row"] and e["row"]["state"] in ("archived", "purged"))
                s.bay_changed(self)
                if not waiting:
                    break
                s.stop_event.wait(1.0)
            if waiting:
                return  # undocked or stopping: erase happens at the next docking
        with self.lock:
            problems = list(self.st.problems)
            archived = sum(1 for e in candidates if e["row"] and e["row"]["state"] in ("archived", "purged"))
            self.st.archived = archived
        if problems:
            self.set("error", reason=f"{len(problems)} 个问题 / {len(problems)} problem(s): {problems[0]}",
                     message="部分文件未处理，请联系管理员 / some files need attention: see problems", rate_bps=0, eta_s=None)
        else:
            s.clear_alarm("recorder_no_answer", self)
            self.set("done", "完成，可取走 / done: you may remove the recorder", rate_bps=0, eta_s=None)

    def _refresh_rows(self, entries: list[dict]) -> None:
        store = self.station.store
        for e in entries:
            if e["item"]:
                try:
                    e["row"] = store.item(e["item"])
                except EdgeError:
                    e["row"] = None

    def _erase_ready(self, entries: list[dict], serial: str, policy: str) -> None:
        s = self.station
        conflict = s.serial_conflicted(serial)
        for e in entries:
            if e.get("erased") or e.get("erase_final"):
                continue
            rec: FileRecord = e["rec"]
            ok, why = erase_decision(policy, rec, e["row"], reread_hash=e["reread"], conflict=conflict)
            if not ok:
                if rec.protected or policy == "never" or conflict:
                    e["erase_final"] = True
                continue
            self._erase(e, serial, policy, why)

    def _erase(self, e: dict, serial: str, policy: str, why: str) -> None:
        s = self.station
        rec: FileRecord = e["rec"]
        detail = dict(bay=self.name, serial=serial, file=rec.name, size=rec.size, hash=e["row"]["content_hash"],
                      policy=policy, why=why)
        try:
            if self.mass_storage:
                os.unlink(e["src"])
            else:
                self.client.erase(rec.name)
        except RecorderRefused as exc:
            e["erase_final"] = True
            s.store.audit.append("erase", e["item"], actor="agent:dock", result="refused", error=str(exc), **detail)
            if exc.result == Result.PROTECTED:
                with self.lock:
                    self.st.kept_protected += 1
            else:
                self._problem(f"删除失败 / erase of {rec.name} refused: {exc}")
            return
        except FileNotFoundError:
            e["erase_final"] = True
            s.store.audit.append("erase", e["item"], actor="agent:dock", result="already gone", **detail)
            return
        e["erased"] = True
        s.store.audit.append("erase", e["item"], actor="agent:dock", result="erased", **detail)
        with self.lock:
            self.st.erased += 1
        log.info("bay %s: erased %s from recorder %s (%s)", self.name, rec.name, serial, why)

    def _problem(self, text: str) -> None:
        log.warning("bay %s: %s", self.name, text)
        with self.lock:
            self.st.problems.append(text)
        self.station.bay_changed(self, important=True)


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


class _FileSkipped(EdgeError):
    """This file is not copied now (reported as a bay problem); the others go on."""


def _skip(f: BinaryIO, n: int) -> None:
    buf = bytearray(min(n, 1 << 20))
    mv = memoryview(buf)
    while n:
        got = f.readinto(mv[:min(n, len(buf))])
        if not got:
            raise SourceError("source ended while skipping to the resume point", 0)
        n -= got
