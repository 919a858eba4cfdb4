"""The ``[dock]`` config section, parsed into records the station uses (docs/dock.md).

``agent/config.py`` declares the keys; the checks here are called from there (lazily) so an
error names the key and what is wrong with it, before the station starts.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

_BAY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_TRAILING_NUMBER = re.compile(r"(\d+)$")
BAY_KEYS = ("name", "port", "mount")
MAP_KEYS = ("label", "serial", "officer_number", "officer_name", "unit_number", "unit_name")


@dataclass(frozen=True)
class BaySpec:
    """One configured bay pattern: a serial-port glob (command channel) or a mount glob
    (plain mass-storage recorder). ``name`` is fixed for a table entry; for a glob the bay
    name comes from each matching path (``/dev/ttyACM3`` -> ``bay-3``)."""

    port: str | None = None
    mount: str | None = None
    name: str | None = None

    @property
    def pattern(self) -> str:
        return self.port or self.mount or ""

    @property
    def mass_storage_only(self) -> bool:
        return self.port is None


@dataclass(frozen=True)
class MassStorageRecorder:
    """Identity of a recorder that has no command channel, found by its volume label
    (the mount directory's name)."""

    label: str
    serial: str
    officer_number: str
    officer_name: str = ""
    unit_number: str = ""
    unit_name: str = ""


def check_bays(value: list) -> str | None:
    try:
        parse_bays(value)
    except ValueError as exc:
        return str(exc)
    return None


def parse_bays(value: list) -> list[BaySpec]:
    """``bays = ["/dev/ttyREC*", {name = "bay-1", port = "/dev/serial/by-path/...-port1"},
    {name = "usb-1", mount = "/media/recorder1"}]``."""
    out: list[BaySpec] = []
    names: set[str] = set()
    for i, entry in enumerate(value, 1):
        if isinstance(entry, str):
            if not entry.startswith("/") or "\x00" in entry:
                raise ValueError(f"entry {i}: {entry!r} must be an absolute path or glob, e.g. /dev/ttyACM*")
            out.append(BaySpec(port=entry))
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"entry {i}: expected a glob string or a table {{name, port | mount}}")
        unknown = set(entry) - set(BAY_KEYS)
        if unknown:
            raise ValueError(f"entry {i}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(BAY_KEYS)})")
        port, mount, name = entry.get("port"), entry.get("mount"), entry.get("name")
        if (port is None) == (mount is None):
            raise ValueError(f"entry {i}: give exactly one of port (serial command channel) or mount (mass storage only)")
        path = port or mount
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            raise ValueError(f"entry {i}: {path!r} must be an absolute path or glob")
        if name is not None:
            if not isinstance(name, str) or not _BAY_NAME.match(name):
                raise ValueError(f"entry {i}: name {name!r}: letters, digits, '_', '.', '-' only, at most 32")
            if glob.has_magic(path):
                raise ValueError(f"entry {i}: a named bay takes one fixed path, not the glob {path!r}")
            if name in names:
                raise ValueError(f"entry {i}: bay name {name!r} used twice")
            names.add(name)
        out.append(BaySpec(port=port, mount=mount, name=name))
    return out


def check_mass_storage_map(value: list) -> str | None:
    try:
        parse_mass_storage_map(value)
    except ValueError as exc:
        return str(exc)
    return None


def parse_mass_storage_map(value: list) -> dict[str, MassStorageRecorder]:
    """``[[dock.mass_storage_map]] label = "REC1234567"  serial = "1234567"  officer_number = "000123"``."""
    out: dict[str, MassStorageRecorder] = {}
    for i, entry in enumerate(value, 1):
        if not isinstance(entry, dict):
            raise ValueError(f"entry {i}: expected a table {{label, serial, officer_number, ...}}")
        unknown = set(entry) - set(MAP_KEYS)
        if unknown:
            raise ValueError(f"entry {i}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(MAP_KEYS)})")
        for key in ("label", "serial", "officer_number"):
            v = entry.get(key)
            if not isinstance(v, str) or not v.strip() or "\x00" in v or "/" in v:
                raise ValueError(f"entry {i}: {key} is required (a non-empty name without '/')")
        for key in MAP_KEYS:
            if key in entry and not isinstance(entry[key], str):
                raise ValueError(f"entry {i}: {key} must be a string")
        if entry["label"] in out:
            raise ValueError(f"entry {i}: label {entry['label']!r} mapped twice")
        out[entry["label"]] = MassStorageRecorder(**{k: entry.get(k, "") for k in MAP_KEYS})
    return out


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
