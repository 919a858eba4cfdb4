"""The docking station component (``device.kind = dock``): watches the bays, runs one worker
per docked recorder, shares the disk through a bounded copy pool, persists bay state and reports
it, keeps the recorder registry and reports the equipment ratio.

The station never publishes: it is handed two ports (agent/common/ports.py) by the runtime, an
``AlarmPort`` for its alarms and a ``ReportPort`` for each bay's state and the ratio report; the
health component implements both and owns the topics.

Threads: ``dock-scan`` (polls the bays every ``dock.poll_ms``, writes ``bays.json``, reports
changes) and ``dock-<bay>`` (one per docked recorder). At most ``dock.copy_workers`` files are
copied at once; a bay holding a slot hands it over to a waiting bay every 64 MiB, so one big
file never starves the others, and a failing bay only fails itself.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

from drivers.recorder.sgio import SgDevice
from drivers.recorder.udev import NodeTable, detection_mode, list_nodes, mount_point, start_monitor

from agent.common import ratio as rule
from agent.common.ports import AlarmPort, ReceiptPort, ReportPort
from agent.common.timeutil import now_iso
from .bay import Bay
from .pool import FairPool
from .registry import Registry
from agent.config.dock import BaySpec, bay_name_for, parse_bays, parse_mass_storage_map

log = logging.getLogger(__name__)

#: alarms the station raises (code -> 中文, English): the titles in bays.json and ``dock status``;
#: the same words as the wire's alarm vocabulary (agent.wire.health.CODES, checked by a test)
ALARMS = {
    "dock_disk_full": ("采集站磁盘已满，拒绝接入", "station disk full, docking refused"),
    "recorder_clock": ("执法记录仪时钟严重偏差", "recorder clock far off"),
    "recorder_serial_conflict": ("两台记录仪序列号相同", "two recorders claim the same serial"),
    "recorder_auth_failed": ("记录仪管理员密码错误", "recorder admin password refused"),
    "recorder_no_answer": ("记录仪无应答或通信错误", "recorder does not answer"),
    "recorder_unsafe_name": ("记录仪文件名不安全", "recorder reported unsafe file names"),
    "recorder_battery_low": ("执法记录仪电量低", "recorder battery low"),
    "recorder_officer_mismatch": ("记录仪警员与分配不符", "recorder officer differs from the assignment"),
}
RATIO_INTERVAL_S = 3600
HEARTBEAT_S = 5.0


class DockStation:
    name = "dock"

    def __init__(self, agent, alarms: AlarmPort, report: ReportPort, receipts: ReceiptPort | None = None):
        self.agent = agent
        self.alarm_port = alarms
        self.report = report
        #: the pinned archive keys: a receipt is checked again before an after-archive erase (none: no erase)
        self.receipts = receipts
        self.cfg = agent.cfg
        self.store = agent.store
        self.stop_event = threading.Event()
        self.specs: list[BaySpec] = parse_bays(self.cfg.dock.bays)
        self.ms_map = parse_mass_storage_map(self.cfg.dock.mass_storage_map)
        self.registry = Registry(self.cfg.data_dir)
        self.pool = FairPool(self.cfg.dock.copy_workers, self.stop_event)
        self.dir = Path(self.cfg.data_dir) / "dock"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "bays.json"
        self.bays: dict[str, Bay] = {}
        self._path_names: dict[str, str] = {}
        self._serials: dict[str, Bay] = {}
        self._conflicts: set[str] = set()
        self.alarms: dict[str, dict] = {}
        self.lock = threading.RLock()
        self._dirty: set[str] = set()
        self._last_flush = 0.0
        self._state_error: int | None = None
        self._thread: threading.Thread | None = None
        self._last_ratio = 0.0
        self._ratio_due = True
        self.policy_thresholds: rule.Thresholds | None = None  # set by the unit policy (agent/policy)
        self.started_at = now_iso()
        self._wake = threading.Event()  # a udev event: scan now instead of at the next poll
        self._udev = None
        self.detection_why = ""
        self.nodes = NodeTable()  # what udev announced (udev mode): volumes are paired by USB serial from it
        self.mountinfo_path = "/proc/self/mountinfo"  # where a paired volume's mount point is read
        #: the SG_IO seam of SCSI bays: path -> device with ``execute`` (tests hand the simulator's device)
        self.open_sg = SgDevice
        agent.commands.setdefault("dock.status", lambda args, actor: self.status())
        agent.commands.setdefault("dock.ratio", lambda args, actor: self.ratio_payload())
        agent.commands["dock.erase_policy"] = self.cmd_erase_policy
        agent.commands["dock.assign"] = self.cmd_assign

    # --- component --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self.stop_event.clear()
        self._udev = start_monitor(self.udev_event)  # None without udev (or pyudev): poll only
        mode, self.detection_why = detection_mode()
        if self._udev is not None:
            try:
                self.nodes.load(list_nodes())
            except Exception:  # an unreadable udev database: events still come
                log.exception("dock: cannot list the udev devices present")
        elif mode == "udev":
            self.detection_why = "udev 监听启动失败 / the udev monitor did not start"
        log.info("dock: docking detected by %s: %s", self.detection, self.detection_why)
        self._write_state()
        self._thread = threading.Thread(target=self._loop, name="dock-scan", daemon=True)
        self._thread.start()

    @property
    def detection(self) -> str:
        """udev (events wake the scan; the poll stays as a safety net) or polling (every dock.poll_ms)."""
        return "udev" if self._udev is not None else "polling"

    def udev_event(self, action: str, props: dict) -> None:
        """One udev event (pyudev's observer thread, or a test through this same seam): keep the
        node table, wake the scan, and end the docking of a bay whose volume was removed (the
        recorder was unplugged; its mount directory may outlive it)."""
        node = self.nodes.apply(action, props)
        self._wake.set()
        if node is None or action not in ("remove", "change") or self.nodes.has(node.devnode):
            return
        with self.lock:
            bays = [b for b in self.bays.values() if b.volume_node == node.devnode and b.st.docked]
        for bay in bays:
            log.info("bay %s: volume %s of %s removed (udev): the recorder was unplugged", bay.name, node.devnode,
                     bay.st.serial)
            bay.undocked()

    def volume_mount(self, usb_serial: str) -> tuple[str, str] | None:
        """(devnode, mount point) of the mounted volume udev pairs with ``usb_serial``, or None."""
        rec = self.nodes.recorder(usb_serial)
        if rec is None or not rec.volumes:
            return None
        try:
            with open(self.mountinfo_path, encoding="utf-8", errors="surrogateescape") as f:
                info = f.read()
        except OSError:
            return None
        for devnode in rec.volumes:
            mp = mount_point(devnode, info)
            if mp:
                return devnode, mp
        return None

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()
        if self._udev is not None:
            self._udev.stop()
            self._udev = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for bay in list(self.bays.values()):
            if bay.thread is not None:
                bay.thread.join(timeout=10)
        self._write_state()

    def status(self) -> dict:
        with self.lock:
            bays = [b.snapshot() for b in sorted(self.bays.values(), key=lambda b: _bay_sort(b.name))]
        return {
            "device": self.cfg.device.id, "location": self.cfg.device.location, "updated": now_iso(),
            "updated_ts": time.time(), "pid": os.getpid(), "started": self.started_at,
            "patterns": [s.pattern for s in self.specs], "detection": self.detection,
            "detection_why": self.detection_why, "erase_policy": self.cfg.dock.erase_policy,
            "verify_policy": self.cfg.dock.verify_policy, "pool": self.pool.status(),
            "disk": {"free_bytes": self.store.free(), "reserve_bytes": self.store.reserve},
            "alarms": sorted(self.alarms.values(), key=lambda a: a["key"]),
            "bays": bays,
        }

    def cmd_erase_policy(self, args: dict, actor: str) -> dict:
        """Central command ``dock.erase_policy {"policy": ...}``: written to the config file and
        applied at once (a bay waiting for acknowledgements uses the new policy from its next check)."""
        from .. import config as config_mod
        from agent.common.errors import EdgeError

        policy = args.get("policy")
        if not isinstance(policy, str):
            raise EdgeError("dock.erase_policy needs args {policy: after-archive | after-local-verify | never}")
        config_mod.validate_value("dock.erase_policy", policy)
        old = self.cfg.dock.erase_policy
        if self.cfg.path is not None:
            config_mod.set_value(self.cfg.path, "dock.erase_policy", policy)
        self.cfg.dock.erase_policy = policy  # validated again on assignment
        self.store.audit.append("config", None, actor=actor, key="dock.erase_policy", old=old, new=policy)
        self._dirty.update(self.bays)
        return {"key": "dock.erase_policy", "old": old, "value": policy, "applies": "now"}

    def cmd_assign(self, args: dict, actor: str) -> dict:
        """``dock.assign {"serial", "officer"}`` (edge-agent dock assign): write officer and unit from
        the roster into the docked recorder (WriteZFYInfo), read it back, keep the assignment and
        audit it (assign). Refused, with nothing written, when the recorder is not docked here, the
        officer is not in the roster or a field does not fit the recorder's record."""
        from .assign import assign_docked

        return assign_docked(self, args, actor)

    # --- scanning ---------------------------------------------------------------------------
    def _loop(self) -> None:
        interval = self.cfg.dock.poll_ms / 1000
        while not self.stop_event.is_set():
            try:
                self.scan()
                self._flush(force=False)
                if time.monotonic() - self._last_flush > HEARTBEAT_S:  # `dock watch` tells a hung station by the age
                    with self.lock:
                        self._last_flush = time.monotonic()
                        self._write_state()
                if self._ratio_due or time.monotonic() - self._last_ratio > RATIO_INTERVAL_S:
                    self.report_ratio()
            except Exception:
                log.exception("dock scan failed")
            self._wake.wait(interval)
            self._wake.clear()

    def _present(self) -> dict[str, tuple[BaySpec, str]]:
        found: dict[str, tuple[BaySpec, str]] = {}
        for spec in self.specs:
            if spec.scsi:
                sg = spec.sg or self._sg_on_port(spec.usb_port or "")
                if sg and os.path.exists(sg):
                    found.setdefault(spec.name or "", (spec, sg))
                continue
            paths = sorted(glob.glob(spec.pattern)) if glob.has_magic(spec.pattern) else [spec.pattern]
            for p in paths:
                if spec.mass_storage_only:
                    if not os.path.isdir(p):
                        continue
                    try:
                        with os.scandir(p) as entries:
                            if not (os.path.ismount(p) or any(True for _ in entries)):
                                continue
                    except OSError:
                        continue
                elif not os.path.exists(p):
                    continue
                name = self._name_for(spec, p)
                found.setdefault(name, (spec, p))
        return found

    def _sg_on_port(self, usb_port: str) -> str | None:
        """The SCSI generic node udev shows on this USB port (a SCSI bay matched by ``usb_port``)."""
        return next((n.devnode for n in self.nodes.nodes() if n.kind == "sg" and n.usb_port == usb_port), None)

    def _name_for(self, spec: BaySpec, path: str) -> str:
        with self.lock:
            name = self._path_names.get(path)
            if name:
                return name
            name = bay_name_for(spec, path)
            if name in self._path_names.values():
                name = f"{name}-{len(self._path_names)}"
            self._path_names[path] = name
            return name

    def scan(self) -> None:
        present = self._present()
        with self.lock:
            for name, (spec, path) in present.items():
                bay = self.bays.get(name)
                if bay is None:
                    bay = self.bays[name] = Bay(self, name, path, spec.mass_storage_only, spec)
                ident = _identity(path)
                if bay.channel_may_drop():
                    continue  # mass storage: the channel's node may come back anew; the worker checks the serial
                if bay.st.docked and ident != bay.ident:
                    # the recorder was swapped between two scans: the old one left, a new one came
                    log.info("bay %s: a different device at %s", name, path)
                    bay.undocked()
                if not bay.st.docked and not bay.busy:
                    log.info("bay %s: recorder docked at %s", name, path)
                    bay.ident = ident
                    bay.docked_at(path)
            for name, bay in self.bays.items():
                if bay.st.docked and name not in present and not bay.channel_may_drop():
                    log.info("bay %s: recorder removed", name)
                    bay.undocked()

    # --- serial claims ----------------------------------------------------------------------
    def claim_serial(self, serial: str, bay: Bay) -> str | None:
        """Claim ``serial`` for ``bay``; the other bay's name if a recorder there has it."""
        with self.lock:
            other = self._serials.get(serial)
            if other is not None and other is not bay and other.st.docked:
                self._conflicts.add(serial)
                self.registry.flag_conflict(serial, f"{other.name} and {bay.name} at {now_iso()}")
                return other.name
            self._serials[serial] = bay
            return None

    def release_serial(self, serial: str, bay: Bay) -> None:
        with self.lock:
            if self._serials.get(serial) is bay and not bay.st.docked:
                del self._serials[serial]

    def serial_conflicted(self, serial: str) -> bool:
        with self.lock:
            return serial in self._conflicts

    # --- state out --------------------------------------------------------------------------
    def bay_changed(self, bay: Bay, important: bool = False) -> None:
        with self.lock:
            self._dirty.add(bay.name)
        if important:
            self._flush()

    def _flush(self, force: bool = True) -> None:
        with self.lock:
            if not self._dirty or (not force and time.monotonic() - self._last_flush < 1.0):
                return
            dirty, self._dirty = self._dirty, set()
            self._last_flush = time.monotonic()
            self._write_state()
            snaps = {n: self.bays[n].snapshot() for n in dirty if n in self.bays}
        for n, snap in snaps.items():
            self.report.component_state(n, snap)

    def _write_state(self) -> None:
        """Atomic (temp file + rename) but not fsynced: a display state, rewritten several times a
        second; an fsync here would queue behind the evidence writeback of every bay."""
        with self.lock:
            data = json.dumps(self.status(), ensure_ascii=False, indent=1, default=str).encode()
            tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
            try:
                try:  # a left-over temporary (or a link planted there) goes; the new one is made afresh
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                       0o644), "wb") as f:
                    f.write(data)
                os.replace(tmp, self.state_path)
                self._state_error = None
            except OSError as exc:  # a full disk must not stop the bays; the report port still carries the state
                if self._state_error != exc.errno:
                    log.error("cannot write %s: %s", self.state_path, exc)
                self._state_error = exc.errno
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    # --- alarms -----------------------------------------------------------------------------
    def alarm(self, code: str, bay: Bay, message: str) -> None:
        zh, en = ALARMS[code]
        key = f"{code}.{bay.name}"
        with self.lock:
            cur = self.alarms.get(key)
            self.alarms[key] = {"key": key, "code": code, "bay": bay.name, "message": message,
                                "title": f"{zh} / {en}", "since": cur["since"] if cur else now_iso()}
        head, _, tail = message.partition(" / ")  # the bay's "中文 / English" reason, split for the port
        self.alarm_port.raise_alarm(code, head if tail else zh, tail or message, source="dock", instance=bay.name)
        with self.lock:
            self._dirty.add(bay.name)

    def clear_bay_alarms(self, bay: Bay, keep: tuple[str, ...] = ("dock_disk_full",)) -> None:
        """A new recorder docked in ``bay``: the previous recorder's alarms end (the registry keeps
        conflicts flagged); the disk alarm ends only when a docking passes the reserve check."""
        with self.lock:
            codes = [a["code"] for a in self.alarms.values() if a["bay"] == bay.name and a["code"] not in keep]
        for code in codes:
            self.clear_alarm(code, bay)

    def clear_alarm(self, code: str, bay: Bay) -> None:
        key = f"{code}.{bay.name}"
        with self.lock:
            if self.alarms.pop(key, None) is None:
                return
        self.alarm_port.clear_alarm(code, source="dock", instance=bay.name)

    # --- ratio ------------------------------------------------------------------------------
    def recorder_seen(self) -> None:
        self._ratio_due = True

    def apply_policy_thresholds(self, t: rule.Thresholds) -> None:
        """The unit policy in force says the equipment thresholds (agent/policy hands them over
        when it applies a policy, and at start): they replace dock.min_ratio_pct / dock.min_rooms,
        and the ratio is reported again at once."""
        self.policy_thresholds = t
        self._ratio_due = True

    def thresholds(self) -> rule.Thresholds:
        """The unit policy's thresholds, or the config's while no policy has been applied."""
        if self.policy_thresholds is not None:
            return self.policy_thresholds
        return rule.Thresholds(self.cfg.dock.min_ratio_pct, self.cfg.dock.min_rooms, "config")

    def ratio_payload(self) -> dict:
        d = self.cfg.dock
        t = self.thresholds()
        rows = self.registry.ratio(usage_days=d.usage_days, thresholds=t)
        return {"device": self.cfg.device.id, "at": now_iso(), "min_ratio_pct": t.min_ratio_pct, "min_rooms": t.min_rooms,
                "thresholds": t.describe(), "usage_days": d.usage_days, "units": [r.as_dict() for r in rows],
                "pending": pending_by_officer(self.store, self.registry)}

    def report_ratio(self) -> None:
        self._ratio_due = False
        self._last_ratio = time.monotonic()
        self.report.equipment_ratio(self.ratio_payload())


def pending_by_officer(store, registry: Registry) -> list[dict]:
    """Items still waiting for case number / proof object, per officer and unit (待补录)."""
    rows = store.pending_by_collector()
    out = []
    for r in rows:
        off = registry.officer(r["collector_id"] or "") or {}
        rec = registry.query("SELECT unit_number, unit_name FROM recorders WHERE officer_number = ? "
                             "ORDER BY last_seen_ts DESC LIMIT 1", [r["collector_id"] or ""])
        unit = off.get("unit_code") or (rec[0]["unit_number"] if rec else "")
        out.append({"officer_number": r["collector_id"], "officer_name": r["collector_name"], "unit_code": unit,
                    "pending_items": r["n"], "oldest": r["oldest"]})
    return out


def _identity(path: str) -> tuple | None:
    """What tells one plugged device from the next at the same path: the node (or the symlink and
    its target) is created anew by udev for each device."""
    try:
        link = os.lstat(path)
        target = os.readlink(path) if stat.S_ISLNK(link.st_mode) else None
        node = os.stat(path)
    except OSError:
        return None
    # no times: udev chmods a new node, and a mass-storage directory changes as files are erased
    return (link.st_ino, target, node.st_ino, node.st_dev, node.st_rdev)


def _bay_sort(name: str):
    tail = name.rsplit("-", 1)[-1]
    return (0, int(tail), name) if tail.isdigit() else (1, 0, name)


def read_state(data_dir: Path | str) -> dict | None:
    """The last ``bays.json`` a station wrote (for ``dock status`` / ``dock watch``), or None."""
    p = Path(data_dir) / "dock" / "bays.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    pid = data.get("pid")
    alive = False
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
            alive = True
        except PermissionError:
            alive = True
        except OSError:
            alive = False
    data["running"] = alive
    return data
