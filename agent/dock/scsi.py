"""A SCSI bay (``[[dock.bays]] transport = "scsi"``): a recorder driven by the GA/T 947 functions
as vendor SCSI commands through SG_IO (drivers/recorder/scsi.py, docs/gat947.md), mixed into
:class:`agent.dock.bay.Bay` as :class:`BayScsi`.

The 行标 functions have no file listing, no erase and (in the public table) no clock read, so a
SCSI docking goes: open the sg node through the station's seam (``DockStation.open_sg``), choose
the vendor table (the bay's ``vendor``, else by INQUIRY / USB ids), Init_Device, password,
GetZFYInfo; battery and resolution; SyncDevTime (the offset stays unknown, never 0); SetMSDC; the
volume (udev: by the sg node's USB serial; else the bay's ``mount``); list the files on the volume;
copy, hash, seal; erase after the archive's verified receipt by deleting the file on the volume,
under the same rule as every bay (agent/dock/erasing.py).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time

from drivers.recorder import FileRecord, RecorderError, RecorderGone, scan_mass_storage
from drivers.recorder.commands import Recorder
from drivers.recorder.scsi import ScsiTransport, inquiry, open_scsi

from .state import BayAbort, BayPart, ClockOffset

log = logging.getLogger(__name__)


class BayScsi(BayPart):
    scsi: bool = False
    spec = None

    def _identify_scsi(self):
        """Open the recorder on the bay's sg node with its vendor table; Init_Device, the admin
        password (kept by the transport and checked before each protected function, as the table
        says) and GetZFYInfo."""
        s = self.station
        cfg = s.cfg.dock
        profiles = s.cfg.scsi.profiles()
        node = s.nodes.node_for(self.st.path)
        vid, pid = (node.vid, node.pid) if node is not None else ("", "")
        device = s.open_sg(self.st.path)
        try:
            vendor = self.spec.vendor if self.spec is not None else None
            if vendor:
                profile = next((p for p in profiles if p.name == vendor), None)
                if profile is None:  # the config check refuses this; a table removed under a running station
                    raise BayAbort(f"未知的命令表 / vendor table {vendor!r} is not configured ([scsi])")
                v, p, rev = inquiry(device)
                log.info("bay %s: INQUIRY %r %r %r; table %s (dock.bays vendor)", self.name, v, p, rev, vendor)
                rec = Recorder(ScsiTransport(device, profile))
            else:
                rec = open_scsi(device, profiles, usb_vid=vid, usb_pid=pid)
        except BaseException:
            device.close()
            raise
        self.client = rec  # type: ignore[assignment]  (a Recorder over SCSI; RecorderClient is the serial one)
        with self.lock:
            self.st.message = f"命令表 / vendor table {rec.transport.profile.name}"
        rec.init_device()
        rec.authenticate(cfg.admin_password)
        return rec.get_zfy_info()

    def _scsi_switch_and_list(self, serial: str, clock: ClockOffset, device_time: _dt.datetime | None
                              ) -> tuple[list[FileRecord], list[tuple[str, str]], str]:
        """SyncDevTime, SetMSDC, the volume, its files: (records, refused names, mount)."""
        self._set_clock(clock, device_time)  # before the switch: the table's functions are sent to the disk
        usb = self.usb_serial = self._channel_usb_serial()
        self.client.set_msdc()  # answers no path over SCSI: the volume is found by USB serial or configured
        configured = self.spec.mount if self.spec is not None else None
        mount = self._volume_after_msdc(configured, usb)
        if usb is None:
            self._wait_mounted(mount)
        self.msdc_mount = mount
        try:
            records = scan_mass_storage(mount, probe=False)
        except RecorderError as exc:
            raise BayAbort(f"无法读取记录仪存储 / cannot list the recorder's files on its volume {mount}: {exc}") from None
        self._keep_clock(serial, records, clock)
        return records, [], mount

    def _wait_mounted(self, mount: str) -> None:
        """The configured mount directory (no udev): wait up to ``dock.volume_wait_s`` for the system
        to mount the volume there (a mount point, or files in it)."""
        cfg = self.station.cfg.dock
        deadline = time.monotonic() + cfg.volume_wait_s
        while True:
            try:
                if os.path.ismount(mount) or (os.path.isdir(mount) and any(True for _ in os.scandir(mount))):
                    return
            except OSError:
                pass
            if self.undock_event.is_set() or self.station.stop_event.is_set():
                raise RecorderGone("undocked while waiting for the volume")
            if time.monotonic() >= deadline:
                raise BayAbort(f"记录仪存储卷未挂载 / nothing mounted at {mount} within {cfg.volume_wait_s} s after "
                               "the switch to mass storage (dock.volume_wait_s); nothing is copied or erased")
            self.station.stop_event.wait(0.1)
