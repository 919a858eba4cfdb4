"""``[scsi]``: vendor SCSI command tables for recorders driven by SCSI pass-through (SG_IO).

The 行标 functions (Init_Device, GetZFYInfo, WriteZFYInfo, SyncDevTime, SetMSDC, …) travel as
vendor SCSI commands whose bytes differ per manufacturer. Each ``[[scsi.vendors]]`` entry is one
table; it parses into the driver's plain :class:`drivers.recorder.scsi.VendorProfile` (the driver
knows nothing of this schema). The only publicly documented table, JieLi "DV16", is built in
(``builtin = ["jieli-dv16"]``) and written out in full in config/scsi-vendors.toml as the template
for another vendor's (docs/gat947.md 3.4, docs/recorder-protocol.md "Transports").
"""

from __future__ import annotations

from typing import Literal

from drivers.recorder.scsi import FUNCTION_KEYS, JIELI_DV16, PAYLOADS, ScsiFunction, StatusRead, VendorProfile
from pydantic import Field, field_validator, model_validator

from .base import ConfigModel, Ident, unique_by

BUILTIN = {JIELI_DV16.name: JIELI_DV16}


class ScsiFunctionSpec(ConfigModel):
    """One function's command block (a value of ``functions``)."""

    cdb: str = Field(description="Command block as hex bytes, '{len}' = the data length as two big-endian bytes; "
                                 "zero-filled to cdb_length. E.g. \"FD 81 00 00 00 03 {len}\".")
    dir: Literal["in", "out", "none"] = Field(description="Data direction: in (device to host), out (host to device), none.")
    length: int = Field(0, ge=0, le=65535, description="Data length in bytes (0 with dir = none).")
    payload: str | None = Field(None, description=f"Codec of the data: {', '.join(PAYLOADS)}.")
    check_status: bool = Field(False, description="Read the vendor's status (the status table) after the call.")
    password: bool = Field(False, description="Check the admin password first (see password).")
    before: str | None = Field(None, description="A step run first: sd_status (first byte 0 = cannot, e.g. no SD card).")
    ok: int = Field(1, ge=0, le=255, description="The 行标 result code this function reports on success "
                                                 "(1; SyncDevTime 5; SetMSDC 7).")


class ScsiStatusSpec(ConfigModel):
    """The vendor's "status of the previous command" read."""

    cdb: str = Field(description="Command block of the status read (hex, {len} as in functions).")
    length: int = Field(4, ge=1, le=255, description="Bytes the status read returns.")
    ok_byte0: int = Field(0, ge=0, le=255, description="First status byte meaning success.")


class ScsiVendor(ConfigModel):
    """One vendor table, matched to a device by INQUIRY strings or USB ids."""

    name: Ident = Field(description="Name of the table, shown in the bay view and the audit log.")
    inquiry_vendor: str = Field("", description="INQUIRY vendor identification the device reports (8 characters, compared stripped).")
    inquiry_product: str = Field("", description="INQUIRY product identification (16 characters, compared stripped).")
    usb_vid: str = Field("", description="USB vendor id, 4 hex digits (alternative to the INQUIRY strings).")
    usb_pid: str = Field("", description="USB product id, 4 hex digits.")
    cdb_length: int = Field(16, ge=6, le=16, description="Length of every command block.")
    timeout_in_ms: int = Field(2000, ge=100, le=600000, description="Timeout of a command reading from the device (ms).")
    timeout_out_ms: int = Field(10000, ge=100, le=600000, description="Timeout of a command writing to the device (ms).")
    retries: int = Field(2, ge=0, le=10, description="Re-sends of a command block after a timeout or a SCSI error.")
    zfy_info: Literal["89", "94"] = Field("89", description="ZFY_INFO layout: 89 (7/6/32/12/32) or 94 (8/7/33/13/33).")
    password: Literal["host-compare", "none"] = Field(
        "host-compare", description="Admin password check: host-compare (read the stored password with "
                                    "functions.read_password and compare on the station) or none.")
    password_length: int = Field(16, ge=1, le=64, description="Bytes of the password field on the wire.")
    time_zone: str = Field("+08:00", description="Zone of the wall-clock time SyncDevTime sends (the wire has no zone field).")
    status: ScsiStatusSpec | None = Field(None, description="The status read {cdb, length, ok_byte0}; needed by check_status.")
    functions: dict[str, ScsiFunctionSpec] = Field(
        description=f"Command blocks by function: {', '.join(FUNCTION_KEYS)}. A function left out is "
                    "'not supported' for this vendor.")

    @field_validator("usb_vid", "usb_pid")
    @classmethod
    def _hex4(cls, value: str) -> str:
        if value and not (len(value) == 4 and all(c in "0123456789abcdefABCDEF" for c in value)):
            raise ValueError("须为 4 位十六进制 / must be 4 hex digits, e.g. 1d6b")
        return value

    @model_validator(mode="after")
    def _profile(self) -> "ScsiVendor":
        if not (self.inquiry_vendor or self.inquiry_product or (self.usb_vid and self.usb_pid)):
            raise ValueError("须给出匹配条件 / give inquiry_vendor/inquiry_product or usb_vid and usb_pid")
        self.profile()  # every byte checked by the driver's own rules: ValueError names the function
        return self

    def profile(self) -> VendorProfile:
        """The driver's plain dataclass."""
        status = StatusRead(**self.status.model_dump()) if self.status else None
        functions = {k: ScsiFunction(**v.model_dump()) for k, v in self.functions.items()}
        fields = self.model_dump(exclude={"status", "functions"})
        return VendorProfile(**fields, status=status, functions=functions)


class ScsiConfig(ConfigModel):
    builtin: list[str] = Field([JIELI_DV16.name], description="Built-in vendor tables in use: jieli-dv16 (the only "
                                                               "publicly documented one; docs/gat947.md).")
    vendors: list[ScsiVendor] = Field([], description="Vendor tables of your own ([[scsi.vendors]]), tried before the "
                                                      "built-in ones; template: config/scsi-vendors.toml.")

    @field_validator("builtin")
    @classmethod
    def _builtin(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in BUILTIN:
                raise ValueError(f"未知的内置命令表 / unknown built-in table {name!r} (known: {', '.join(BUILTIN)})")
        return value

    @field_validator("vendors")
    @classmethod
    def _unique(cls, value: list[ScsiVendor]) -> list[ScsiVendor]:
        return unique_by(value, lambda v: v.name, "名称重复 / table name {!r} used twice")

    def profiles(self) -> list[VendorProfile]:
        """The driver's tables in the order they are tried: own tables first, then built-in ones."""
        return [v.profile() for v in self.vendors] + [BUILTIN[n] for n in self.builtin]
