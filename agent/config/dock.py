"""``[dock]``: the docking station's bays, recorders without a command channel, copy and erase
policies (docs/dock.md).

A bay is written either as a serial-port glob (``"/dev/ttyACM*"``, the bay is named from each
matching path) or as a table ``{name, port}`` / ``{name, mount}`` (mount = plain mass-storage
recorder) / ``{name, transport = "scsi", sg | usb_port, vendor, mount}`` (a recorder driven by
vendor SCSI commands through SG_IO, docs/dock.md "SCSI bays"); all become a :class:`BaySpec`, and
a spec with only a port is written back as the plain string.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, field_validator, model_serializer, model_validator

from .base import ConfigModel, secret, unique_by

_BAY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_TRAILING_NUMBER = re.compile(r"(\d+)$")
BAY_KEYS = ("name", "port", "mount", "transport", "sg", "usb_port", "vendor")
_USB_PORT = re.compile(r"^\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}$")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAP_KEYS = ("label", "serial", "officer_number", "officer_name", "unit_number", "unit_name")


class BaySpec(ConfigModel):
    """One configured bay pattern: a serial-port glob (command channel) or a mount glob
    (plain mass-storage recorder). ``name`` is fixed for a table entry; for a glob the bay
    name comes from each matching path (``/dev/ttyACM3`` -> ``bay-3``)."""

    model_config = ConfigDict(frozen=True)

    name: str | None = Field(None, description="Fixed bay name (letters, digits, '_', '.', '-', at most 32); one fixed path, no glob.")
    port: str | None = Field(None, description="Serial command channel of the recorder: absolute path or glob.")
    mount: str | None = Field(None, description="Mount directory of a plain mass-storage recorder: absolute path or glob. "
                                                "SCSI bay: where its volume is mounted after SetMSDC when udev does not run.")
    transport: Literal["serial", "scsi"] = Field("serial", description="serial (command channel on a serial port, or "
                                                                       "mount only) or scsi (vendor SCSI commands via SG_IO).")
    sg: str | None = Field(None, description="SCSI bay: the recorder's SCSI generic node, a fixed absolute path (/dev/sg2).")
    usb_port: str | None = Field(None, description="SCSI bay (udev): the USB port of the bay, as in DEVPATH (1-2.3); "
                                                   "the sg node of whatever recorder udev shows there.")
    vendor: str | None = Field(None, description="SCSI bay: the vendor command table ([[scsi.vendors]] name or built-in "
                                                 "jieli-dv16); empty: chosen by INQUIRY / USB ids.")

    @model_validator(mode="before")
    @classmethod
    def _from_glob(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"port": data}
        if not isinstance(data, (dict, BaySpec)):
            raise ValueError("应为路径通配符或表 / expected a glob string or a table {name, port | mount}")
        return data

    @model_validator(mode="after")
    def _one_path(self) -> "BaySpec":
        if self.transport == "scsi":
            return self._scsi()
        if self.sg is not None or self.usb_port is not None or self.vendor is not None:
            raise ValueError("sg、usb_port、vendor 只用于 SCSI 仓位 / sg, usb_port and vendor belong to a SCSI bay "
                             '(transport = "scsi")')
        if (self.port is None) == (self.mount is None):
            raise ValueError("port 与 mount 须且只能给一个 / give exactly one of port (serial command channel) "
                             "or mount (mass storage only)")
        path = self.pattern
        if not path.startswith("/"):
            raise ValueError(f"须为绝对路径 / {path!r} must be an absolute path or glob, e.g. /dev/ttyACM*")
        if self.name is not None:
            if not _BAY_NAME.match(self.name):
                raise ValueError(f"名称无效 / name {self.name!r}: letters, digits, '_', '.', '-' only, at most 32")
            if glob.has_magic(path):
                raise ValueError(f"有名称的仓位只能用固定路径 / a named bay takes one fixed path, not the glob {path!r}")
        return self

    def _scsi(self) -> "BaySpec":
        if self.port is not None:
            raise ValueError("SCSI 仓位没有串口 / a SCSI bay has no serial port: give sg or usb_port")
        if self.name is None:
            raise ValueError("SCSI 仓位须有名称 / a SCSI bay needs a name (its sg node number changes with each plug)")
        if (self.sg is None) == (self.usb_port is None):
            raise ValueError("sg 与 usb_port 须且只能给一个 / give exactly one of sg (the SCSI generic node) or "
                             "usb_port (the bay's USB port, matched with udev)")
        for what, path in (("sg", self.sg), ("mount", self.mount)):
            if path is not None and (not path.startswith("/") or glob.has_magic(path)):
                raise ValueError(f"{what} 须为固定的绝对路径 / {what} {path!r} must be one fixed absolute path")
        if self.usb_port is not None and not _USB_PORT.match(self.usb_port):
            raise ValueError(f"USB端口格式应如 1-2.3 / usb_port {self.usb_port!r} must look like 1-2.3 (from udev DEVPATH)")
        if self.vendor is not None and not _TABLE_NAME.match(self.vendor):
            raise ValueError(f"命令表名称无效 / vendor {self.vendor!r}: the name of a [[scsi.vendors]] table or jieli-dv16")
        if not _BAY_NAME.match(self.name):
            raise ValueError(f"名称无效 / name {self.name!r}: letters, digits, '_', '.', '-' only, at most 32")
        return self

    @model_serializer(mode="wrap")
    def _as_toml(self, handler: Any) -> Any:
        if self.name is None and self.mount is None and self.transport == "serial":
            return self.port
        return {k: v for k, v in handler(self).items() if v is not None and not (k == "transport" and v == "serial")}

    @property
    def pattern(self) -> str:
        if self.transport == "scsi":
            return self.sg or f"usb:{self.usb_port}"
        return self.port or self.mount or ""

    @property
    def scsi(self) -> bool:
        return self.transport == "scsi"

    @property
    def mass_storage_only(self) -> bool:
        return self.port is None and self.transport == "serial"


class MassStorageRecorder(ConfigModel):
    """Identity of a recorder that has no command channel, found by its volume label
    (the mount directory's name)."""

    model_config = ConfigDict(frozen=True)

    label: str = Field(description="Volume label: the name of the recorder's mount directory.")
    serial: str = Field(description="Recorder serial number (记录仪编号).")
    officer_number: str = Field(description="Officer number of the holder (警号).")
    officer_name: str = Field("", description="Officer name (empty: from the roster).")
    unit_number: str = Field("", description="Unit code of the holder.")
    unit_name: str = Field("", description="Unit name of the holder.")

    @field_validator("label", "serial", "officer_number")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or "/" in value:
            raise ValueError("须为非空且不含 '/' / must be a non-empty name without '/'")
        return value


class DockConfig(ConfigModel):
    bays: list[BaySpec] = Field(["/dev/ttyACM*"], validate_default=True,  # type: ignore[list-item]  (a glob is a BaySpec)
                                description="Bays: serial-port globs of recorders' command channels (\"/dev/ttyACM*\"), "
                                            "or tables {name, port} / {name, mount} (mount = plain mass-storage recorder) / "
                                            "{name, transport = \"scsi\", sg | usb_port, vendor, mount} (SCSI pass-through).")
    mass_storage_map: list[MassStorageRecorder] = Field(
        [], description="Plain mass-storage recorders (no command channel): tables {label, serial, officer_number, "
                        "officer_name, unit_number, unit_name}; label = the mount directory's name.")
    poll_ms: int = Field(500, ge=50, le=2000,
                         description="How often bays are scanned for a docked recorder (ms); detection within 2 s needs <= 1000.")
    admin_password: str = secret("000000", "Recorder admin password (1-6 ASCII characters).")
    serial_timeout_ms: int = Field(1000, ge=50, le=30000, description="Answer timeout per request on the command channel (ms); 3 retries.")
    clock_threshold_s: int = Field(2, ge=0, le=3600, description="Set the recorder clock when it is off by more than this (s).")
    clock_alarm_s: int = Field(3600, ge=1, description="Raise alarm dock-clock when the recorder clock was off by more than this (s).")
    erase_policy: Literal["after-archive", "after-local-verify", "never"] = Field(
        "after-archive", description="Erase files from the recorder: after-archive (archive acknowledged the same hash), "
                                     "after-local-verify (sealed and re-read equal), or never. Important/locked files are never erased.")
    verify_policy: Literal["none", "reread"] = Field(
        "none", description="Second read of each file from the recorder, compared with the copy: none or reread "
                            "(after-local-verify always re-reads).")
    probe: bool = Field(True, description="Check audio/video files with ffprobe; undecodable ones are kept byte-exact and flagged decodable=false.")
    copy_workers: int = Field(8, ge=1, le=64,
                              description="Files copied at the same time across all bays (bounded pool, 1 MiB buffer each; the rest "
                                          "wait their turn). USB 2.0 recorders read ~30 MB/s each: 8 keeps 2 cores busy hashing.")
    bay_rate_limit_mib: int = Field(0, ge=0, description="Copy speed cap per bay in MiB/s (0 = none).")
    battery_low_pct: int = Field(20, ge=0, le=100,
                                 description="Raise alarm recorder_battery_low while a docked recorder's battery is below this "
                                             "percentage (read at each docking and while it waits); 0 = never.")
    channel_return_s: int = Field(60, ge=1, le=3600,
                                  description="A recorder whose command channel goes away after the switch to mass storage: wait this "
                                              "long (s) for it to come back before erasing; files not erased then are erased at the "
                                              "next docking.")
    volume_wait_s: int = Field(30, ge=1, le=600,
                               description="After the switch to mass storage: how long (s) to wait for the recorder's volume to "
                                           "appear and be mounted (with udev: the volume whose USB serial is the command "
                                           "channel's).")
    min_ratio_pct: int = Field(20, ge=1, le=1000,
                               description="Minimum equipment ratio, recorders that count per 100 officers (20 = 1:5, 每五人一台); "
                                           "only until a unit policy is applied (its rules.equipment replaces it); reported with the ratio and "
                                           "its source, so the monitor and its reports judge by it.")
    min_rooms: int = Field(1, ge=0, le=100,
                           description="Minimum interview rooms per unit (每个执法单位至少一间); only until a unit policy is "
                                       "applied (its rules.equipment replaces it); reported with the ratio and its source.")
    usage_days: int = Field(30, ge=1, le=3660, description="Usage window: a recorder docked within this many days counts as used.")

    @field_validator("bays")
    @classmethod
    def _bays(cls, value: list[BaySpec]) -> list[BaySpec]:
        return _unique_bay_names(value)

    @field_validator("mass_storage_map")
    @classmethod
    def _map(cls, value: list[MassStorageRecorder]) -> list[MassStorageRecorder]:
        return _unique_labels(value)

    @field_validator("admin_password")
    @classmethod
    def _password(cls, value: str) -> str:
        if not (1 <= len(value) <= 6 and value.isascii()):
            raise ValueError("须为 1 到 6 个 ASCII 字符 / 1 to 6 ASCII characters")
        return value


def _unique_bay_names(value: list[BaySpec]) -> list[BaySpec]:
    return unique_by(value, lambda bay: bay.name, "仓位名称重复 / bay name {!r} used twice")


def _unique_labels(value: list[MassStorageRecorder]) -> list[MassStorageRecorder]:
    return unique_by(value, lambda rec: rec.label, "卷标重复 / label {!r} mapped twice")


_BAYS = TypeAdapter(list[BaySpec])
_MAP = TypeAdapter(list[MassStorageRecorder])


def parse_bays(value: list) -> list[BaySpec]:
    """``bays = ["/dev/ttyREC*", {name = "bay-1", port = "/dev/serial/by-path/...-port1"},
    {name = "usb-1", mount = "/media/recorder1"}]``: the :class:`BaySpec` list (entries may be
    strings, tables or specs already); raises ``ValueError`` (pydantic's ValidationError)."""
    return _unique_bay_names(_BAYS.validate_python(value))


def parse_mass_storage_map(value: list) -> dict[str, MassStorageRecorder]:
    """``[[dock.mass_storage_map]] label = "REC1234567"  serial = "1234567"  officer_number = "000123"``:
    the records by label."""
    records = _unique_labels(_MAP.validate_python(value))
    return {r.label: r for r in records}


def bay_name_for(spec: BaySpec, path: str) -> str:
    """A stable bay name: the configured one, else ``bay-N`` from the path's trailing number,
    else ``bay-<basename>``."""
    if spec.name:
        return spec.name
    base = os.path.basename(path.rstrip("/"))
    m = _TRAILING_NUMBER.search(base)
    if m:
        return f"bay-{int(m.group(1))}"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", base)[:28] or "x"
    return f"bay-{safe}"
