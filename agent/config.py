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

from .errors import ConfigError

DEFAULT_PATH = "/etc/edge-agent/agent.toml"
ENV_VAR = "EDGE_AGENT_CONFIG"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _ident(value: str) -> str | None:
    return None if _ID_RE.match(value) else "letters, digits, '_', '.', '-' only, 1-64 characters, no path"


def _hash_alg(value: str) -> str | None:
    from .evidence.hashing import available_algorithms

    if value not in available_algorithms():
        return f"not available here; choose one of {', '.join(available_algorithms())}"
    return None


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
        "block_size": F(int, 4 * 1024 * 1024, "Block size (bytes) a file is split into for the hash chain.", min=4096, max=1 << 30),
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
        "max_inflight": F(int, 16, "Chunks in flight at most (also bounded by the broker's Receive Maximum).", min=1, max=65535),
    },
    "health": {
        "interval_s": F(int, 30, "Seconds between health reports.", min=1, max=3600),
        "backlog_alarm_s": F(int, 24 * 3600, "Raise an alarm when the oldest unarchived item is older (s).", min=60),
        "pending_alarm_s": F(int, 7 * 24 * 3600, "Raise an alarm when an item waits for annotation longer (s).", min=60),
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
    from .store.fsutil import atomic_write

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
