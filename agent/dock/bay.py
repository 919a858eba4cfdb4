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
The parts mixed into :class:`Bay`: copying.py (plan, copy, resume, seal), erasing.py (wait for
the archive, erase per policy), clock.py (the recorder's clock offset).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from drivers.recorder import (
    AuthError,
    FileRecord,
    Function,
    ProtocolError,
    RecorderClient,
    RecorderError,
    RecorderGone,
    RecorderTimeout,
    UnsafeName,
    Unsupported,
    safe_name,
    scan_mass_storage,
)

from agent.common.errors import DiskReserveError, EdgeError
from agent.common.timeutil import now_iso
from .clock import BayClock
from .copying import BayCopy, source_key
from .erasing import resume_proven
from .erasing import BayErase
from .scsi import BayScsi
from .state import HAVE_STATES, STATES, UNKNOWN_CLOCK, BayAbort, BayState
from .volume import BayVolume

if TYPE_CHECKING:  # pragma: no cover
    from .station import DockStation

log = logging.getLogger(__name__)


#: dockings a bay remembers after the recorder has left (``BayState.history``)
HISTORY = 5


class Bay(BayCopy, BayErase, BayVolume, BayScsi, BayClock):
    """A bay and the recorder docked in it. ``run()`` is the worker thread of one docking."""

    def __init__(self, station: "DockStation", name: str, path: str, mass_storage: bool, spec=None):
        self.station = station
        self.spec = spec  # agent.config.dock.BaySpec (None: a serial or mass-storage bay built by hand)
        self.scsi = bool(spec is not None and spec.scsi)
        kind = "scsi" if self.scsi else "mass-storage" if mass_storage else "serial"
        self.st = BayState(name=name, path=path, kind=kind, since=now_iso())
        self.mass_storage = mass_storage
        self.lock = threading.RLock()
        self.thread: threading.Thread | None = None
        self.client: RecorderClient | None = None
        self.undock_event = threading.Event()
        self.ident: tuple | None = None  # identity of the docked device node (station._identity)
        self.assignment_meta: dict = {}  # sealed into each item when the station has an assignment (dock assign)
        self.msdc_mount: str | None = None  # set after SET_MSDC: the recorder's volume, which outlives its channel
        self._worker_done = True  # the worker of the last docking has passed its last look at the bay
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
            keep = {"name": self.st.name, "kind": self.st.kind, "history": list(self.st.history)}
            self.st = BayState(**keep, path=path, docked=True, since=now_iso())
            self._worker_done = False
        self.undock_event.clear()
        self.assignment_meta = {}
        self.msdc_mount = None
        self.usb_serial = self.volume_node = None
        self.station.clear_bay_alarms(self)
        self.thread = threading.Thread(target=self.run, name=f"dock-{self.name}", daemon=True)
        self.thread.start()

    def undocked(self) -> None:
        """The recorder was taken out. Once its worker has ended the bay shows empty (idle, no
        recorder) and the docking's result, error or not, goes to the bay's ``history``."""
        self.undock_event.set()
        with self.lock:
            serial = self.st.serial
            self.st.docked = False
            if not self.busy or self._worker_done:
                self._leave()
        if serial:
            self.station.release_serial(serial, self)
        self.station.clear_alarm("recorder_battery_low", self)  # about the recorder that left
        self.station.bay_changed(self, important=True)

    # --- battery and resolution ---------------------------------------------------------------
    def read_battery(self):
        """ReadDeviceBatteryDumpEnergy: the level (and charging, when the transport tells) into the
        bay's state, and the alarm ``recorder_battery_low`` raised while the level is below
        ``dock.battery_low_pct`` (0 = never), cleared at a reading at or above it and when the
        recorder leaves. Read at each docking and again while the bay waits (``_finish``)."""
        bat = self.client.battery()
        self._battery_at = time.monotonic()
        low = self.station.cfg.dock.battery_low_pct
        with self.lock:
            self.st.battery, self.st.charging = bat.level, bat.charging
            self.st.battery_low = bat.level < low
        if bat.level < low:
            self.station.alarm("recorder_battery_low", self,
                               f"记录仪电量低 {bat.level}% / recorder battery {bat.level}%, below "
                               f"dock.battery_low_pct {low}%" + ("; charging" if bat.charging else ""))
        else:
            self.station.clear_alarm("recorder_battery_low", self)
        self.station.bay_changed(self)
        return bat

    def _read_resolution(self) -> str | None:
        """ReadDeviceResolution as ``WIDTHxHEIGHT`` for the bay view and health; None when the
        recorder does not offer it (15) or answers something unusable (logged, not a docking error)."""
        try:
            return str(self.client.read_resolution())
        except (Unsupported, ProtocolError) as exc:
            log.info("bay %s: no resolution from %s: %s", self.name, self.st.serial, exc)
            return None

    def gone(self) -> bool:
        """The recorder was taken out (or the station stops). After SET_MSDC its volume tells, not its
        command channel: a recorder may drop the channel while it is mass storage."""
        if self.undock_event.is_set() or self.station.stop_event.is_set():
            return True
        if self.msdc_mount is not None:
            return self._volume_gone()
        return not os.path.exists(self.st.path)

    def channel_may_drop(self) -> bool:
        """True while the worker copies from the volume after SET_MSDC: the command channel's port may
        vanish and come back as a new device node without the recorder having left (the station's
        scan leaves such a bay alone; the worker reconnects and checks the serial itself)."""
        return self.busy and self.msdc_mount is not None and not self._volume_gone()

    def reconnect(self) -> RecorderClient:
        """The command channel again after it went away in mass-storage mode: wait up to
        ``dock.channel_return_s`` for the port, open it, IDENTIFY (the same serial, or nothing is
        erased), AUTH again (authentication lasts per connection). Audited (``channel``)."""
        from .station import _identity

        cfg = self.station.cfg.dock
        if self.client is not None:
            self.client.close()
            self.client = None
        t0 = time.monotonic()
        deadline = t0 + cfg.channel_return_s
        self.set(self.st.state, "等待记录仪命令通道恢复 / waiting for the recorder's command channel to come back "
                                "(it went away in mass-storage mode)")
        log.info("bay %s: command channel of %s gone in mass-storage mode; waiting up to %d s", self.name,
                 self.st.serial, cfg.channel_return_s)
        client = info = None
        while info is None:
            if self.gone():
                raise RecorderGone("undocked")
            if os.path.exists(self.st.path):
                try:
                    client = RecorderClient(self.st.path, timeout=cfg.serial_timeout_ms / 1000, retries=3)
                    info = client.identify()
                except RecorderError as exc:
                    log.debug("bay %s: channel not ready yet: %s", self.name, exc)
                    if client is not None:
                        client.close()
                    client = None
            if info is None:
                if time.monotonic() >= deadline:
                    raise BayAbort(f"命令通道未恢复 / the recorder's command channel did not come back within "
                                   f"{cfg.channel_return_s} s after mass storage; its files are kept on it and erased "
                                   "at the next docking")
                self.station.stop_event.wait(0.2)
        if info.serial.strip() != self.st.serial:
            client.close()
            raise BayAbort(f"命令通道换了记录仪 / the command channel came back with serial {info.serial.strip()!r}, "
                           f"not {self.st.serial}; nothing is erased")
        client.authenticate(cfg.admin_password)
        self.client = client
        self.ident = _identity(self.st.path)
        self.station.store.audit.append("channel", None, actor="agent:dock", bay=self.name, serial=self.st.serial,
                                        event="returned", after_s=round(time.monotonic() - t0, 1))
        return client

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
            if self.st.serial:  # it no longer counts toward the ratio until it passes
                st.registry.set_auth(self.st.serial, False)
                st.recorder_seen()
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
                serial = self.st.serial
                self._worker_done = True
                if not self.st.docked:  # taken out while the worker ran: the bay shows empty now
                    self._leave()
            if serial:
                st.release_serial(serial, self)
            st.bay_changed(self, important=True)

    def _leave(self) -> None:
        """(lock held) The recorder has gone and its worker has ended: the bay is empty again and
        the docking's result stays in ``history`` (newest first, the last HISTORY dockings)."""
        old = self.st
        if old.serial is None and old.state == "idle":
            self.st.state, self.st.docked = "idle", False
            return
        entry = {"serial": old.serial, "officer_number": old.officer_number, "officer_name": old.officer_name,
                 "state": old.state, "reason": old.reason, "message": old.message, "sealed": old.sealed,
                 "already": old.already, "erased": old.erased, "kept_protected": old.kept_protected,
                 "items": len(old.items), "problems": list(old.problems), "left_at": now_iso()}
        self.st = BayState(name=old.name, path=old.path, kind=old.kind, since=entry["left_at"],
                           history=[entry, *old.history][:HISTORY])

    def _fail(self, reason: str, alarm: str | None = None) -> None:
        log.error("bay %s: %s", self.name, reason)
        self.set("error", reason=reason, message=reason, rate_bps=0, eta_s=None)
        if alarm:
            self.station.alarm(alarm, self, reason)

    def _run(self) -> None:
        s = self.station
        cfg = s.cfg.dock
        self.set("identifying", "正在识别记录仪 / identifying the recorder")
        clock = UNKNOWN_CLOCK  # plain mass-storage recorders have no clock to read
        self._clock_huge = False
        if self.mass_storage:
            info, mount = self._identify_mass_storage()
        elif self.scsi:
            info, mount = self._identify_scsi(), None
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
        self._check_assignment(serial, info)
        officer = self._collector(info)
        s.store.audit.append("dock", None, actor="agent:dock", bay=self.name, serial=serial,
                             officer=info.officer_number, unit=info.unit_number, port=self.st.path)

        if not self.mass_storage:
            c = self.client
            c.authenticate(cfg.admin_password)
            s.registry.set_auth(serial, True)
            s.recorder_seen()
            bat = self.read_battery()
            resolution = self._read_resolution()
            sto = c.storage() if c.supports(Function.STORAGE) else None  # no 行标 function: not over SCSI
            self.set("charging", f"电量 {bat.level}% / battery {bat.level}%",
                     recorder_free=sto.free if sto else None, resolution=resolution)
            if sto is not None and sto.full:  # normal at the end of a long shift: copied first, then freed per policy
                log.info("bay %s: recorder %s storage full", self.name, self.st.serial)
                self.set("charging", "记录仪存储已满，先复制 / recorder storage full: copying first", recorder_full=True)
            clock, device_time = self._read_clock()
            if self.scsi:  # no listing function: set the clock, switch, list the volume (agent/dock/scsi.py)
                records, bad, mount = self._scsi_switch_and_list(serial, clock, device_time)
            else:
                # listed before the clock is set: every file here was recorded under `clock`, which is kept
                # with the recorder (registry) until each is sealed, whatever later dockings measure
                records, bad = self._list_files()
                self._keep_clock(serial, records, clock)
                self._set_clock(clock, device_time)
                if self._needs_volume(serial, records):
                    usb = self.usb_serial = self._channel_usb_serial()  # before the switch: the channel's node may go
                    mount = self._volume_after_msdc(c.set_msdc(), usb)
                    self.msdc_mount = mount  # from here on the volume, not the channel, tells whether it is docked
                else:  # nothing to copy or re-read: stay on the command channel (erase needs no volume)
                    log.info("bay %s: every file of %s is in custody already; no switch to mass storage", self.name,
                             serial)
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
        self._apply_clock(plan, serial, clock)
        self._copy_all(plan, info, officer, serial)
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

    # --- assignment (edge-agent dock assign) --------------------------------------------------
    def _check_assignment(self, serial: str, info) -> None:
        """Compare what the recorder holds with the station's assignment of it. Disagreeing: flag
        (alarm, bay view, problem, audit) and seal every file of this docking with both values
        (metadata ``assignment``): never silently one of them. ``collector`` stays what the
        recorder said: the files on it were recorded under that record."""
        a = self.station.registry.assignment(serial)
        if a is None:
            return
        device = {"officer_number": info.officer_number, "officer_name": info.officer_name,
                  "unit_number": info.unit_number, "unit_name": info.unit_name}
        station = {k: a[k] for k in ("officer_number", "officer_name", "unit_number", "unit_name")}
        agree = (device["officer_number"].strip(), device["unit_number"].strip()) == (
            station["officer_number"], station["unit_number"])
        record = {"recorder": device, "station": {**station, "assigned_at": a["assigned_at"]}, "agree": agree}
        self.assignment_meta = {"assignment": record}
        with self.lock:
            self.st.assignment = record
        if agree:
            return
        msg = (f"记录仪警员与采集站分配不符 / the recorder holds officer {device['officer_number']} "
               f"{device['officer_name']} (unit {device['unit_number']}), the station assigned "
               f"{station['officer_number']} {station['officer_name']} (unit {station['unit_number']}); files are "
               "sealed with both; write the assignment with edge-agent dock assign")
        self._problem(msg)
        self.station.alarm("recorder_officer_mismatch", self, msg)
        self.station.store.audit.append("assign-mismatch", None, actor="agent:dock", bay=self.name, serial=serial,
                                        recorder=device, station=station)

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
                           "import the roster (`edge-agent roster import officers.csv`)")
        return {"name": name, "id": number}

    def _needs_volume(self, serial: str, records: list[FileRecord]) -> bool:
        """SET_MSDC only when the volume is needed: a file not yet in custody, or a second read for
        after-local-verify. A recorder that re-enumerates at the switch would otherwise come back
        after every docking only to be switched again."""
        store = self.station.store
        policy = self.station.cfg.dock.erase_policy
        if policy == "after-local-verify" and any(not r.protected for r in records):
            return True
        for r in records:
            row = store.find_by_source(source_key(serial, r))
            if not (row and row["state"] in HAVE_STATES):
                return True
            if policy == "after-archive" and not r.protected and not self._resume_proven(row["id"]):
                return True  # resumed without a prefix check (an older version): its erase needs a second read
        return False

    def _resume_proven(self, item: str) -> bool:
        audit = self.station.store.audit
        copies = [json.loads(a["detail"]) for a in audit.entries(item_id=item, action="copy")]
        resumed = max([0, *(int(json.loads(a["detail"]).get("resumed_at") or 0)
                            for a in audit.entries(item_id=item, action="ingest"))])
        return resume_proven(copies, resumed)

    def _list_files(self) -> tuple[list[FileRecord], list[tuple[str, str]]]:
        """The recorder's files through the driver's paging (each page checked whole: a page that
        carries more or less than it announces is a ProtocolError); unsafe names are set aside
        (reported), not fatal."""
        records: list[FileRecord] = []
        bad: list[tuple[str, str]] = []
        for rec in self.client.file_records():
            try:
                safe_name(rec.name)
            except UnsafeName as exc:
                bad.append((rec.name, str(exc)))
            else:
                records.append(rec)
        return records, bad

    def _problem(self, text: str) -> None:
        log.warning("bay %s: %s", self.name, text)
        with self.lock:
            self.st.problems.append(text)
        self.station.bay_changed(self, important=True)
