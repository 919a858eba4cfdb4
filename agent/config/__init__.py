"""The one configuration schema of edge-agent, its loader and its writer.

The configuration is a single TOML file (default ``/etc/edge-agent/agent.toml``; overridden by
``--config PATH`` or ``$EDGE_AGENT_CONFIG``). Every key is declared once in :data:`SCHEMA` with its
type, default and description; unknown sections and keys are refused, and every error names the
key (and the line of the file when it can be found).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

import tomlkit

from agent.common.errors import ConfigError

from . import dock as _dock

DEFAULT_PATH = "/etc/edge-agent/agent.toml"
ENV_VAR = "EDGE_AGENT_CONFIG"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _ident(value: str) -> str | None:
    return None if _ID_RE.match(value) else "letters, digits, '_', '.', '-' only, 1-64 characters, no path"


def _hash_alg(value: str) -> str | None:
    from agent.common.canon import available_algorithms

    if value not in available_algorithms():
        return f"not available here; choose one of {', '.join(available_algorithms())}"
    return None


def _room_cameras(value: list) -> str | None:
    if not 1 <= len(value) <= 2:
        return "give 1 or 2 camera sources (main = frontal shot, then panorama)"
    for v in value:
        if not isinstance(v, str) or not v.strip() or "\x00" in v:
            return f"camera source {v!r}: expected a device path, rtsp://URL or file:PATH"
    return None


def _room_size(value: str) -> str | None:
    m = re.fullmatch(r"(\d{3,4})x(\d{3,4})", value)
    if not m:
        return "expected WIDTHxHEIGHT, e.g. 1920x1080"
    w, h = int(m.group(1)), int(m.group(2))
    if w < 704 or h < 576:
        return "below the minimum 704x576 (GA/T interview-room recording)"
    if w % 2 or h % 2 or w > 3840 or h > 2160:
        return "width and height must be even and at most 3840x2160"
    return None


def _room_lines(value: list) -> str | None:
    known = ("rec", "case", "room", "collector", "time", "env")
    bad = [v for v in value if v not in known]
    if bad or not value:
        return f"choose lines from {', '.join(known)} (at least one)"
    return None


def _groups(value: list) -> str | None:
    bad = [v for v in value if not isinstance(v, str) or not v]
    return f"group names must be non-empty strings: {bad!r}" if bad else None


@dataclasses.dataclass(frozen=True)
class Field:
    type: type
    default: Any
    doc: str
    choices: tuple | None = None
    min: int | None = None
    max: int | None = None
    check: Callable[[Any], str | None] | None = None
    secret: bool = False


F = Field

SCHEMA: dict[str, dict[str, Field]] = {
    "device": {
        "id": F(str, "dev-0001", "Device id, unique in the fleet (enrolled at the archive).", check=_ident),
        "unit_code": F(str, "330100000000", "Enforcement unit code (执法单位代码).", check=_ident),
        "unit_name": F(str, "示例执法单位", "Enforcement unit name (执法单位名称)."),
        "kind": F(str, "dock", "Kind of box: dock (docking station) or room (interview room).", choices=("dock", "room")),
        "location": F(str, "未设置地点 / location not set", "Place of the box; used as capture place (采集地点) where the source gives none."),
    },
    "storage": {
        "data_dir": F(str, "/var/lib/edge-agent", "Data directory: ledger, spool, keys."),
        "reserve_mb": F(int, 1024, "Free disk to keep in reserve (MiB); new work is refused below it.", min=0),
        "retention_days": F(int, 7, "Days to keep a local copy after the archive acknowledged it (0 = purge at once).", min=0),
    },
    "evidence": {
        "hash_algorithm": F(str, "sha256", "Hash of segments, links and manifests: sha256 or sm3.", check=_hash_alg),
        "block_size": F(int, 256 * 1024, "Block size (bytes) a file is split into for the hash chain. Equal to uplink.chunk_size, each chunk's SHA-256 is its block's hash: neither the agent nor the archive hashes those bytes twice.", min=4096, max=1 << 30),
        "max_blocks_per_file": F(int, 1024, "A file that would have more blocks uses the smallest block of block_size times a power of two that keeps it within this many (keeps manifests small).", min=16, max=1 << 20),
    },
    "mqtt": {
        "host": F(str, "127.0.0.1", "MQTT broker host."),
        "port": F(int, 1883, "MQTT broker port (8883 for TLS).", min=1, max=65535),
        "topic_prefix": F(str, "edge", "Root of the topic tree.", check=_ident),
        "username": F(str, "", "MQTT user name (empty: none)."),
        "password": F(str, "", "MQTT password (empty: none).", secret=True),
        "tls": F(bool, False, "Use TLS (server verification)."),
        "cafile": F(str, "", "CA bundle that signed the broker's certificate."),
        "certfile": F(str, "", "Client certificate (mutual TLS, per-device identity)."),
        "keyfile": F(str, "", "Client private key.", secret=False),
        "keepalive": F(int, 30, "Keepalive seconds.", min=5, max=3600),
    },
    "uplink": {
        "enabled": F(bool, True, "Upload sealed items to the archive."),
        "chunk_size": F(int, 256 * 1024, "Chunk size in bytes (never above the broker's maximum packet size).", min=1024, max=64 * 1024 * 1024),
        "bandwidth_limit": F(int, 0, "Upload bandwidth cap in bytes/s (0 = unlimited).", min=0),
        "ack_timeout_s": F(int, 30, "Seconds to wait for the archive's answer before retransmitting.", min=1, max=3600),
        "max_inflight": F(int, 32, "Chunks in flight at most (also bounded by the broker's Receive Maximum, less 2 kept for status and health).", min=1, max=65535),
        "parallel_items": F(int, 2, "Items sent at once: one item's manifest and last answers overlap another's chunks (all share max_inflight).", min=1, max=8),
    },
    "archive": {
        "root": F(str, "/var/lib/edge-agent-archive", "Archive root (archive serve): items under ROOT/UNIT/CASE/ITEM, keys under ROOT/keys."),
        "max_item_mb": F(int, 64 * 1024, "Largest item (MiB, all files) the archive accepts; larger ones are refused.", min=1),
        "max_manifest_kb": F(int, 4096, "Largest manifest (KiB) the archive accepts.", min=4, max=1024 * 1024),
        "share_group": F(str, "", "Shared-subscription group ($share/GROUP/...) so several receivers split the work (empty: none).", check=lambda v: None if v == "" else _ident(v)),
    },
    "health": {
        "interval_s": F(int, 30, "Seconds between health reports.", min=1, max=3600),
        "backlog_alarm_s": F(int, 24 * 3600, "Raise an alarm when the oldest unarchived item is older (s).", min=60),
        "pending_alarm_s": F(int, 7 * 24 * 3600, "Raise an alarm when an item waits for annotation longer (s).", min=60),
        "clock_alarm": F(bool, True, "Raise clock_unsynced when the kernel reports the clock unsynchronised (NTP/PTP)."),
        "clock_drift_alarm_ms": F(int, 2000, "Raise clock_drift when the measured clock offset exceeds this (ms).", min=10),
        "disk_warn_factor": F(int, 2, "Warn (disk_low, severity warning) below this many times storage.reserve_mb free; "
                              "critical below the reserve itself.", min=1, max=100),
    },
    # --- [dock] (docking station, issue 4; owner: dock) -----------------------------------
    "dock": {
        "bays": F(list, ["/dev/ttyACM*"], "Bays: serial-port globs of recorders' command channels (\"/dev/ttyACM*\"), or tables {name, port} / {name, mount} (mount = plain mass-storage recorder).",
                  check=lambda v: _dock.check_bays(v)),
        "mass_storage_map": F(list, [], "Plain mass-storage recorders (no command channel): tables {label, serial, officer_number, officer_name, unit_number, unit_name}; label = the mount directory's name.",
                              check=lambda v: _dock.check_mass_storage_map(v)),
        "poll_ms": F(int, 500, "How often bays are scanned for a docked recorder (ms); detection within 2 s needs <= 1000.", min=50, max=2000),
        "admin_password": F(str, "000000", "Recorder admin password (1-6 ASCII characters).", secret=True,
                            check=lambda v: None if 1 <= len(v) <= 6 and v.isascii() else "1 to 6 ASCII characters"),
        "serial_timeout_ms": F(int, 1000, "Answer timeout per request on the command channel (ms); 3 retries.", min=50, max=30000),
        "clock_threshold_s": F(int, 2, "Set the recorder clock when it is off by more than this (s).", min=0, max=3600),
        "clock_alarm_s": F(int, 3600, "Raise alarm dock-clock when the recorder clock was off by more than this (s).", min=1),
        "erase_policy": F(str, "after-archive", "Erase files from the recorder: after-archive (archive acknowledged the same hash), after-local-verify (sealed and re-read equal), or never. Important/locked files are never erased.",
                          choices=("after-archive", "after-local-verify", "never")),
        "verify_policy": F(str, "none", "Second read of each file from the recorder, compared with the copy: none or reread (after-local-verify always re-reads).", choices=("none", "reread")),
        "probe": F(bool, True, "Check audio/video files with ffprobe; undecodable ones are kept byte-exact and flagged decodable=false."),
        "copy_workers": F(int, 8, "Files copied at the same time across all bays (bounded pool, 1 MiB buffer each; the rest wait their turn). USB 2.0 recorders read ~30 MB/s each: 8 keeps 2 cores busy hashing.", min=1, max=64),
        "bay_rate_limit_mib": F(int, 0, "Copy speed cap per bay in MiB/s (0 = none).", min=0),
        "min_ratio_pct": F(int, 20, "Minimum equipment ratio, recorders in service per 100 officers (20 = 1:5, 每五人一台).", min=1, max=1000),
        "usage_days": F(int, 30, "Usage window: a recorder docked within this many days counts as used.", min=1, max=3660),
    },
    # --- [room] (interview room, issue 5; owner: room session) ---------------------------
    "room": {
        "name": F(str, "第一询问室 / Interview room 1", "Room name, burned into the picture and recorded as metadata."),
        "cameras": F(list, ["/dev/video0"], "Camera sources, main (frontal) first, then panorama: /dev/videoN, rtsp://URL, or file:PATH (played at real-time pace, looped).", check=_room_cameras),
        "layout": F(str, "pip", "Picture: pip (panorama inset in the main picture), side (side by side) or single.", choices=("pip", "side", "single")),
        "inset_corner": F(str, "bottom-right", "Corner of the panorama inset (pip).", choices=("top-left", "top-right", "bottom-left", "bottom-right")),
        "inset_percent": F(int, 30, "Inset width as a percentage of the picture width (pip).", min=10, max=50),
        "size": F(str, "1920x1080", "Recorded picture size WIDTHxHEIGHT (at least 704x576).", check=_room_size),
        "fps": F(int, 30, "Recorded frames per second (fixed; late frames are repeated).", min=5, max=60),
        "segment_seconds": F(int, 10, "Length of a segment; each closed segment is sealed and uploaded at once.", min=2, max=600),
        "preset": F(str, "ultrafast", "x264 preset (CPU against size).", choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")),
        "crf": F(int, 23, "x264 constant quality (lower = better, bigger).", min=10, max=40),
        "microphone": F(str, "default", "Audio input: default, part of a PortAudio device name, tone (440 Hz demo) or none (silent track).") ,
        "sensor_port": F(str, "", "RS-485 temperature/humidity transmitter (Modbus RTU) serial port; empty = none."),
        "sensor_slave": F(int, 1, "Modbus slave id of the sensor.", min=1, max=247),
        "sensor_baudrate": F(int, 9600, "Sensor serial speed.", choices=(1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)),
        "overlay_corner": F(str, "top-left", "Corner of the burned-in text box.", choices=("top-left", "top-right", "bottom-left", "bottom-right")),
        "overlay_lines": F(list, ["rec", "case", "room", "collector", "time", "env"], "Overlay lines, in order: rec, case, room, collector, time, env.", check=_room_lines),
        "overlay_scale": F(int, 100, "Overlay text size in percent (100 = 37 px glyph box at 1080 lines).", min=50, max=300),
        "camera_lost_s": F(int, 2, "A camera with no new frame for this many seconds is lost (placeholder, gap, alarm).", min=1, max=60),
    },
    # --- [control] (local control socket; owner: room session) -----------------------------
    "control": {
        "groups": F(list, ["edge-agent"], "Unix groups allowed on the control socket (data_dir/control.sock, mode 0660); root and the agent's own user always are.", check=_groups),
    },
    # --- [encryption] (encryption at rest; owner: lead) ------------------------------------
    "encryption": {
        "enabled": F(bool, False, "Encrypt every item on this device with a fresh AES-256-GCM key sealed to the archive's X25519 key (a stolen box reveals no recording)."),
        "archive_public_key": F(str, "", "The archive's X25519 public key (PEM), from `edge-agent crypt keygen`; required when enabled."),
    },
    # --- [roles] (who may do what on the local CLI; owner: lead) ---------------------------
    "roles": {
        "enforce": F(bool, True, "Check the caller's Unix groups before commands that change evidence or settings (root is always allowed)."),
        "technician_group": F(str, "edge-tech", "Group of technicians: init, config set, recover, doctor, dock/room set-up."),
        "operator_group": F(str, "edge-operator", "Group of operators: ingest, annotate, room start/stop, export."),
        "auditor_group": F(str, "edge-audit", "Group of auditors: audit list/verify/export, verify, items show/list."),
    },
    # --- [commands] (signed central commands; owner: lead) ---------------------------------
    "commands": {
        "operator_keys_dir": F(str, "", "Directory of trusted operator public keys (*.pub, PEM); empty = data_dir/keys/operators. Commands not signed by one of them are refused."),
        "max_age_s": F(int, 300, "A command older (or further in the future) than this many seconds is refused as expired.", min=10, max=86400),
    },
    "log": {
        "level": F(str, "info", "Log level.", choices=("debug", "info", "warning", "error")),
        "format": F(str, "auto", "auto (journald under systemd, else JSON lines), json or text.", choices=("auto", "json", "text")),
    },
}

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a table"}


class Section:
    """Attribute access to one validated section."""

    def __init__(self, name: str, values: dict[str, Any]):
        self._name = name
        self.__dict__.update(values)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class Config:
    """A validated configuration; sections as attributes (``cfg.device.id``)."""

    def __init__(self, data: dict[str, dict[str, Any]], path: Path | None = None):
        self.path = path
        self._data = data
        for name, values in data.items():
            setattr(self, name, Section(name, values))

    def as_dict(self, redact: bool = True) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for section, values in self._data.items():
            out[section] = {}
            for key, value in values.items():
                field = SCHEMA.get(section, {}).get(key)
                if redact and field is not None and field.secret and value:
                    value = "********"
                out[section][key] = value
        return out

    def get(self, dotted: str) -> Any:
        section, key = _split_key(dotted)
        return self._data[section][key]

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    @classmethod
    def defaults(cls, **overrides: Any) -> "Config":
        raw: dict[str, dict[str, Any]] = {}
        for dotted, value in overrides.items():
            section, key = dotted.split("__", 1) if "__" in dotted else dotted.split(".", 1)
            raw.setdefault(section, {})[key] = value
        return cls(validate(raw))


def _split_key(dotted: str) -> tuple[str, str]:
    if dotted.count(".") != 1:
        raise ConfigError(f"{dotted}: a key is written SECTION.KEY, e.g. device.id")
    section, key = dotted.split(".")
    if section not in SCHEMA:
        raise ConfigError(f"[{section}]: unknown section (known: {', '.join(SCHEMA)})")
    if key not in SCHEMA[section]:
        raise ConfigError(f"{dotted}: unknown key (known in [{section}]: {', '.join(SCHEMA[section])})")
    return section, key


def _check_value(dotted: str, field: Field, value: Any) -> Any:
    want = field.type
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{dotted}: expected {_TYPE_NAMES.get(want, want.__name__)}, got {value!r}")
    if want is str and "\x00" in value:
        raise ConfigError(f"{dotted}: NUL character not allowed")
    if field.choices and value not in field.choices:
        raise ConfigError(f"{dotted}: {value!r} is not one of {', '.join(map(str, field.choices))}")
    if field.min is not None and value < field.min:
        raise ConfigError(f"{dotted}: {value} is below the minimum {field.min}")
    if field.max is not None and value > field.max:
        raise ConfigError(f"{dotted}: {value} is above the maximum {field.max}")
    if field.check:
        problem = field.check(value)
        if problem:
            raise ConfigError(f"{dotted}: {value!r}: {problem}")
    return value


def validate(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate a parsed TOML document against :data:`SCHEMA`; return it with defaults filled in."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a TOML document of tables")
    for section in raw:
        if section not in SCHEMA:
            raise ConfigError(f"[{section}]: unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: expected a table [{section}]")
    out: dict[str, dict[str, Any]] = {}
    for section, fields in SCHEMA.items():
        given = raw.get(section, {})
        for key in given:
            if key not in fields:
                raise ConfigError(f"{section}.{key}: unknown key (known in [{section}]: {', '.join(fields)})")
        out[section] = {}
        for key, field in fields.items():
            value = given.get(key, field.default)
            if isinstance(value, tomlkit.items.Item):  # type: ignore[attr-defined]
                value = value.unwrap()
            out[section][key] = _check_value(f"{section}.{key}", field, value)
    return out


def _line_of(text: str, dotted: str) -> int | None:
    section, _, key = dotted.partition(".")
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        m = re.match(r"^\[([^\]]+)\]", stripped)
        if m:
            current = m.group(1).strip()
            continue
        if current == section and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return None


def config_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(path: str | os.PathLike | None = None) -> Config:
    """Load and validate the config file; :class:`ConfigError` names file, key and line."""
    p = config_path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found (run `edge-agent init --config {p}`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config: {exc}") from None
    return loads(text, p)


def loads(text: str, path: Path | None = None) -> Config:
    where = f"{path}: " if path else ""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}invalid TOML: {exc}") from None
    try:
        data = validate(raw)
    except ConfigError as exc:
        key = str(exc).split(":", 1)[0]
        line = _line_of(text, key) if "." in key else None
        suffix = f" (line {line})" if line else ""
        raise ConfigError(f"{where}{exc}{suffix}") from None
    return Config(data, path)


def render_default(values: dict[str, dict[str, Any]] | None = None) -> str:
    """A commented config file with every key; ``values`` override the defaults."""
    values = values or {}
    doc = tomlkit.document()
    doc.add(tomlkit.comment("edge-agent configuration. Every key is documented in docs/config.md."))
    doc.add(tomlkit.comment("Check it with `edge-agent config validate`; change it with `edge-agent config set KEY VALUE`."))
    for section, fields in SCHEMA.items():
        table = tomlkit.table()
        for key, field in fields.items():
            value = values.get(section, {}).get(key, field.default)
            table.add(tomlkit.comment(field.doc))
            table.add(key, value)
        doc.add(tomlkit.nl())
        doc.add(section, table)
    return tomlkit.dumps(doc)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    from agent.common.fs import atomic_write

    atomic_write(path, text.encode("utf-8"), mode=mode)


def parse_cli_value(dotted: str, text: str) -> Any:
    """Turn a command-line string into the key's type (``true``, ``42``, text)."""
    section, key = _split_key(dotted)
    field = SCHEMA[section][key]
    if field.type is bool:
        low = text.strip().lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{dotted}: expected true or false, got {text!r}")
    if field.type is int:
        try:
            return int(text, 0)
        except ValueError:
            raise ConfigError(f"{dotted}: expected an integer, got {text!r}") from None
    return text


def set_value(path: str | os.PathLike | None, dotted: str, text: str) -> Any:
    """Validate then atomically write one key, keeping the file's comments."""
    p = config_path(path)
    section, key = _split_key(dotted)
    value = parse_cli_value(dotted, text)
    try:
        doc = tomlkit.parse(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except Exception as exc:  # tomlkit raises its own parse errors
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    if section not in doc:
        doc.add(section, tomlkit.table())
    doc[section][key] = value  # type: ignore[index]
    text_out = tomlkit.dumps(doc)
    loads(text_out, p)  # whole-file validation before anything is written
    atomic_write_text(p, text_out, mode=p.stat().st_mode & 0o777)
    return value
