"""Finding a docked recorder's device nodes: its command channel (``/dev/ttyACM*``), its
mass-storage volume (``/dev/sd*``) and its SCSI generic node (``/dev/sg*``), matched by the
recorder's USB serial (iSerial), never by the order in which they appear.

Pure functions decide from udev property dicts (what ``udevadm info`` / ``pyudev.Device.properties``
give); :func:`start_monitor` and :func:`list_nodes` are the thin seams onto pyudev, used only where a
udev daemon runs (``/run/udev/control``); elsewhere the station polls its globs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

log = logging.getLogger(__name__)

UDEV_CONTROL = "/run/udev/control"
SUBSYSTEMS = ("tty", "block", "scsi_generic")
_INTERFACE = re.compile(r"^(\d+-[\d.]+):\d+\.\d+$")  # 1-2.3:1.0 -> USB device 1-2.3
_SERIAL_OK = re.compile(r"^[\x21-\x7e]{1,126}$")
#: iSerial values that many devices share; matching on them would pair two recorders' nodes
PLACEHOLDER_SERIALS = frozenset({"0", "00000000", "0000000000000000", "123456789ABCDEF", "0123456789ABCDEF",
                                 "0123456789", "1234567890", "000000000001", "01234567"})


@dataclass(frozen=True)
class UsbNode:
    """One device node of a USB device, as udev describes it."""

    kind: str  # command | volume | sg
    devnode: str
    usb_serial: str | None
    usb_port: str | None  # USB device path from DEVPATH, e.g. "1-2.3" (the physical port)
    vid: str = ""
    pid: str = ""
    fs_label: str = ""
    fs_type: str = ""


@dataclass
class RecorderNodes:
    """The nodes of one recorder."""

    usb_serial: str
    usb_port: str | None
    vid: str = ""
    pid: str = ""
    command: str | None = None
    volumes: list[str] = field(default_factory=list)  # partitions (or the whole disk when unpartitioned)
    sg: str | None = None


def usb_port(devpath: str) -> str | None:
    """The USB device a node hangs under, from its DEVPATH: the component before the first
    interface (``.../usb1/1-2/1-2:1.0/tty/ttyACM0`` -> ``1-2``)."""
    for part in devpath.split("/"):
        m = _INTERFACE.match(part)
        if m:
            return m.group(1)
    return None


def usb_serial(props: Mapping[str, str]) -> str | None:
    """The USB iSerial: ``ID_USB_SERIAL_SHORT`` (systemd >= 254), else ``ID_SERIAL_SHORT`` of a USB
    device. None when absent, not printable ASCII, or a well-known placeholder."""
    value = props.get("ID_USB_SERIAL_SHORT")
    if not value and props.get("ID_BUS") == "usb":
        value = props.get("ID_SERIAL_SHORT")
    if not value or not _SERIAL_OK.match(value) or value.upper() in PLACEHOLDER_SERIALS:
        return None
    return value


def node_from_udev(props: Mapping[str, str]) -> UsbNode | None:
    """A recorder-relevant node (CDC-ACM tty, USB disk or partition with a file system, USB sg
    node), or None for anything else."""
    devnode = props.get("DEVNAME", "")
    sub = props.get("SUBSYSTEM", "")
    devpath = props.get("DEVPATH", "")
    port = usb_port(devpath)
    if not devnode or port is None:
        return None  # not on USB
    if sub == "tty":
        if props.get("ID_USB_DRIVER", "cdc_acm") != "cdc_acm":
            return None  # a USB-serial adapter (ftdi_sio, ch341 ...) is not a recorder's command channel
        kind = "command"
    elif sub == "block":
        if props.get("DEVTYPE") == "disk" and not props.get("ID_FS_TYPE"):
            return None  # a partitioned disk: its partitions are the volumes
        if not props.get("ID_FS_TYPE"):
            return None
        kind = "volume"
    elif sub == "scsi_generic":
        kind = "sg"
    else:
        return None
    return UsbNode(kind, devnode, usb_serial(props), port, props.get("ID_USB_VENDOR_ID", props.get("ID_VENDOR_ID", "")),
                   props.get("ID_USB_MODEL_ID", props.get("ID_MODEL_ID", "")), props.get("ID_FS_LABEL", ""),
                   props.get("ID_FS_TYPE", ""))


def match_nodes(nodes: Iterable[UsbNode]) -> tuple[list[RecorderNodes], list[tuple[str, str]]]:
    """Group nodes into recorders by USB serial. Returns (recorders sorted by serial, refused
    (devnode, reason)). A node without a usable serial is refused, never guessed. One serial on
    two USB ports (two recorders claiming one serial, or a vendor placeholder) is refused for every
    node of it: pairing them would hand one recorder's files to the other's record."""
    by_serial: dict[str, list[UsbNode]] = {}
    refused: list[tuple[str, str]] = []
    for n in nodes:
        if n.usb_serial is None:
            refused.append((n.devnode, "无USB序列号 / no usable USB serial (absent or a placeholder): cannot be "
                                       "matched to a recorder"))
            continue
        by_serial.setdefault(n.usb_serial, []).append(n)
    out = []
    for serial in sorted(by_serial):
        group = by_serial[serial]
        ports = sorted({n.usb_port for n in group if n.usb_port})
        if len(ports) > 1:
            refused += [(n.devnode, f"USB序列号重复 / USB serial {serial} on several ports ({', '.join(ports)})")
                        for n in group]
            continue
        rec = RecorderNodes(serial, ports[0] if ports else None, group[0].vid, group[0].pid)
        for n in sorted(group, key=lambda n: n.devnode):
            if n.kind == "command":
                if rec.command is not None:
                    refused.append((n.devnode, f"两个命令通道 / a second command channel for USB serial {serial}"))
                    continue
                rec.command = n.devnode
            elif n.kind == "volume":
                rec.volumes.append(n.devnode)
            elif n.kind == "sg":
                rec.sg = n.devnode
        out.append(rec)
    return out, refused


def volume_for(command_devnode: str, nodes: Iterable[UsbNode]) -> list[str]:
    """The volumes of the recorder whose command channel is ``command_devnode`` (by USB serial);
    [] when it has none (yet) or cannot be matched."""
    recorders, _ = match_nodes(nodes)
    for r in recorders:
        if r.command == command_devnode:
            return r.volumes
    return []


def mount_point(devnode: str, mountinfo: str) -> str | None:
    """Where ``devnode`` is mounted, from the text of /proc/self/mountinfo (octal escapes decoded)."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rest = left.split(), right.split()
        if len(fields) >= 5 and len(rest) >= 2 and rest[1] == devnode:
            return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
    return None


def parse_monitor(text: str) -> list[tuple[str, dict[str, str]]]:
    """The events of a ``udevadm monitor --udev --property`` log, in order: (action, properties).
    A technician's capture of a real recorder replays through the same seam as a live event
    (``DockStation.udev_event``). Blocks without ``ACTION=`` (the banner, KERNEL lines) are skipped."""
    events = []
    for block in re.split(r"\n\s*\n", text):
        props = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep and re.fullmatch(r"[A-Z0-9_]+", key):
                props[key] = value
        if props.get("ACTION"):
            events.append((props["ACTION"], props))
    return events


def same_node(a: str, b: str) -> bool:
    """Two paths name the same device node (a by-path/by-id symlink and its target)."""
    return a == b or os.path.realpath(a) == os.path.realpath(b)


class NodeTable:
    """The recorder-relevant nodes udev has announced, kept current from its events (``add``,
    ``change``, ``bind`` update a node, ``remove`` drops it; a ``change`` that leaves a block device
    without a file system drops it too). Thread-safe: pyudev's observer thread applies events, the
    bays read. Pure: fed property dicts, by the monitor or by a test."""

    def __init__(self) -> None:
        self._nodes: dict[str, UsbNode] = {}
        self._links: dict[str, str] = {}  # DEVLINKS (by-path, by-id symlinks) -> devnode
        self._lock = threading.Lock()

    def apply(self, action: str, props: Mapping[str, str]) -> UsbNode | None:
        """Apply one event; the node it added/updated, or the node it removed (None otherwise)."""
        devnode = props.get("DEVNAME", "")
        if not devnode:
            return None
        with self._lock:
            if action == "remove":
                self._links = {k: v for k, v in self._links.items() if v != devnode}
                return self._nodes.pop(devnode, None)
            node = node_from_udev(props)
            if node is None:
                return self._nodes.pop(devnode, None) if action == "change" else None
            self._nodes[devnode] = node
            for link in props.get("DEVLINKS", "").split():
                self._links[link] = devnode
            return node

    def load(self, nodes: Iterable[UsbNode]) -> None:
        """Start from what udev knows already (``list_nodes()`` at start)."""
        with self._lock:
            for n in nodes:
                self._nodes[n.devnode] = n

    def nodes(self) -> list[UsbNode]:
        with self._lock:
            return list(self._nodes.values())

    def has(self, devnode: str) -> bool:
        with self._lock:
            return devnode in self._nodes

    def node_for(self, path: str) -> UsbNode | None:
        """The node at ``path`` (its devnode, one of its DEVLINKS, or a symlink to it)."""
        with self._lock:
            devnode = self._links.get(path, path)
            if devnode in self._nodes:
                return self._nodes[devnode]
            return next((n for n in self._nodes.values() if same_node(n.devnode, path)), None)

    def recorder(self, usb_serial: str) -> RecorderNodes | None:
        """The nodes of the recorder with this USB serial (None when unknown or refused by
        :func:`match_nodes`: no pairing is ever made on a refused serial)."""
        recorders, _ = match_nodes(self.nodes())
        return next((r for r in recorders if r.usb_serial == usb_serial), None)

    def refused(self) -> list[tuple[str, str]]:
        return match_nodes(self.nodes())[1]


# --- seams onto pyudev ------------------------------------------------------------------------------
def udev_running() -> bool:
    return os.path.exists(UDEV_CONTROL)


def detection_mode() -> tuple[str, str]:
    """How docking can be detected here: ("udev", why) where a udev daemon runs and pyudev is
    importable, else ("polling", why not): the station and ``doctor`` say the same."""
    if not udev_running():
        return "polling", f"udev 未运行 / no udev daemon ({UDEV_CONTROL} absent)"
    if importlib.util.find_spec("pyudev") is None:
        return "polling", "未安装 pyudev / pyudev not installed (pip install 'edge-agent[udev]')"
    return "udev", f"udev 事件 / udev events (pyudev, {UDEV_CONTROL})"


def list_nodes() -> list[UsbNode]:  # pragma: no cover - needs a udev database to mean anything
    """Every recorder-relevant node udev knows now ([] without pyudev)."""
    try:
        import pyudev
    except ImportError:
        return []
    ctx = pyudev.Context()
    out = []
    for sub in SUBSYSTEMS:
        for dev in ctx.list_devices(subsystem=sub):
            node = node_from_udev(dict(dev.properties))
            if node is not None:
                out.append(node)
    return out


def start_monitor(callback: Callable[[str, dict], None]):
    """Call ``callback(action, properties)`` for every udev event on tty, block and scsi_generic
    devices, from pyudev's observer thread. Returns the observer (``.stop()``), or None where udev
    does not run or pyudev is not installed: the caller then polls."""
    if not udev_running():
        return None
    try:
        import pyudev
    except ImportError:
        log.info("pyudev not installed: docking is detected by polling")
        return None
    ctx = pyudev.Context()
    monitor = pyudev.Monitor.from_netlink(ctx)
    for sub in SUBSYSTEMS:
        monitor.filter_by(sub)

    def handle(device) -> None:
        try:
            callback(device.action or "", dict(device.properties))
        except Exception:  # the observer thread must survive a bad callback
            log.exception("udev event handler failed")

    observer = pyudev.MonitorObserver(monitor, callback=handle, name="dock-udev")
    observer.daemon = True
    observer.start()
    return observer
