"""The recorder's volume after the switch to mass storage (SetMSDC), mixed into
:class:`agent.dock.bay.Bay` as :class:`BayVolume`.

With udev (``DockStation.detection == "udev"``) the volume is the block device whose USB serial
(iSerial) is the command channel's, read from the station's udev node table before SetMSDC (the
channel's node may go at the switch), and mounted where /proc/self/mountinfo says: never by the
order in which devices appear. A mount path the recorder answers is then only compared (logged
and audited when it differs). Without udev the bay uses the path the recorder answers; a recorder
that answers none cannot be served (its volume could only be guessed) and nothing is copied or
erased.
"""

from __future__ import annotations

import logging
import os
import time

from drivers.recorder import RecorderGone

from .state import BayAbort, BayPart

log = logging.getLogger(__name__)

SERIAL_WAIT_S = 5.0  # the udev event of a command channel can come a little after its node


class BayVolume(BayPart):
    usb_serial: str | None = None  # the command channel's USB serial (udev), read before SetMSDC
    volume_node: str | None = None  # the block device the bay copies from (udev mode)

    def _channel_usb_serial(self) -> str | None:
        """The command channel's USB serial from the udev table (udev mode), waiting a little for
        its event; None without udev or when the node has no usable serial."""
        s = self.station
        if s.detection != "udev":
            return None
        deadline = time.monotonic() + SERIAL_WAIT_S
        while True:
            node = s.nodes.node_for(self.st.path)
            if node is not None or time.monotonic() >= deadline or self.undock_event.is_set():
                break
            s.stop_event.wait(0.05)
        if node is None or node.usb_serial is None:
            log.warning("bay %s: udev knows no usable USB serial for %s: its volume cannot be paired by serial",
                        self.name, self.st.path)
            return None
        return node.usb_serial

    def _volume_after_msdc(self, answered: str | None, usb_serial: str | None) -> str:
        """The mount directory to copy from after SetMSDC (see the module text). Audited (``volume``)."""
        s = self.station
        cfg = s.cfg.dock
        if usb_serial is None:
            if answered is None:
                why = ("udev 未运行 / udev does not run here" if s.detection != "udev" else
                       "命令通道无USB序列号 / the command channel has no usable USB serial")
                said = ("the SCSI bay has no mount configured (dock.bays mount)" if getattr(self, "scsi", False)
                        else "the recorder answered no mount path")
                raise BayAbort(f"找不到记录仪的存储卷 / {said} and its volume cannot be paired by USB serial ({why}); "
                               "nothing is copied or erased")
            self._audit_volume(answered, None, None, answered, "config" if getattr(self, "scsi", False) else "recorder")
            return answered
        deadline = time.monotonic() + cfg.volume_wait_s
        self.set(self.st.state, "等待记录仪存储卷 / waiting for the recorder's volume (matched by USB serial)")
        found = None
        while found is None:
            if self.undock_event.is_set() or s.stop_event.is_set():
                raise RecorderGone("undocked while waiting for the volume")
            found = s.volume_mount(usb_serial)
            if found is None:
                if time.monotonic() >= deadline:
                    raise BayAbort(f"记录仪存储卷未出现 / no mounted volume with USB serial {usb_serial} within "
                                   f"{cfg.volume_wait_s} s after the switch to mass storage (dock.volume_wait_s); "
                                   "nothing is copied or erased")
                s.stop_event.wait(0.1)
        devnode, mount = found
        if answered is not None and os.path.realpath(answered) != os.path.realpath(mount):
            log.warning("bay %s: the recorder answered mount path %s, its volume (USB serial %s) is %s at %s: "
                        "the volume matched by serial is used", self.name, answered, usb_serial, devnode, mount)
        self.volume_node = devnode
        self._audit_volume(mount, usb_serial, devnode, answered, "udev")
        return mount

    def _audit_volume(self, mount: str, usb_serial: str | None, devnode: str | None, answered: str | None,
                      source: str) -> None:
        log.info("bay %s: volume of %s at %s (%s%s)", self.name, self.st.serial, mount, source,
                 f", USB serial {usb_serial}, {devnode}" if usb_serial else "")
        self.station.store.audit.append("volume", None, actor="agent:dock", bay=self.name, serial=self.st.serial,
                                        usb_serial=usb_serial, devnode=devnode, mount=mount, answered=answered,
                                        source=source)

    def _volume_gone(self) -> bool:
        """After SetMSDC: the volume tells whether the recorder is still docked (udev: its block
        device; else its mount directory)."""
        if self.volume_node is not None and not self.station.nodes.has(self.volume_node):
            return True
        return self.msdc_mount is None or not os.path.isdir(self.msdc_mount)
