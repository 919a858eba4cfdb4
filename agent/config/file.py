"""The config file: find it, read it (the only reader of TOML in the agent), validate it
against :class:`~agent.config.root.Config`, write the commented default, change one key."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import ValidationError

from agent.common.errors import ConfigError

from . import keys
from .explain import explain, show
from .root import Config

DEFAULT_PATH = "/etc/edge-agent/agent.toml"
ENV_VAR = "EDGE_AGENT_CONFIG"
MAX_FILE_BYTES = 1 << 20  # a config with a thousand mapped recorders is ~150 KiB

_AT_LINE = re.compile(r"\(at line (\d+), column (\d+)\)")


def config_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def _read(p: Path) -> str:
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{p}: 配置文件不存在 / config file not found (run `edge-agent --config {p} init`)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: 无法读取配置文件 / cannot read config: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{p}: 配置文件过大 / config file too large (more than {MAX_FILE_BYTES} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}: 不是 UTF-8 文本 / not UTF-8 text (第 {line} 行 / line {line})") from None


def parse_toml(text: str, path: Path | None = None) -> dict[str, Any]:
    """Parse TOML text; a syntax error names the line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = f"{path}: " if path else ""
        msg = _AT_LINE.sub(lambda m: f"(第 {m[1]} 行第 {m[2]} 列 / at line {m[1]}, column {m[2]})", str(exc))
        raise ConfigError(f"{where}TOML 语法错误 / invalid TOML: {msg}") from None


def validate(raw: dict[str, Any], text: str | None = None, path: Path | None = None) -> Config:
    """Validate parsed values; the first problem becomes one :class:`ConfigError` line."""
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(where + explain(exc, text)) from None
    cfg._path = path
    return cfg


def load(path: str | os.PathLike | None = None) -> Config:
    """Load and validate the config file; :class:`ConfigError` names file, key and line."""
    p = config_path(path)
    return loads(_read(p), p)


def loads(text: str, path: Path | None = None) -> Config:
    return validate(parse_toml(text, path), text, path)


def render_default(values: dict[str, dict[str, Any]] | None = None) -> str:
    """A commented config file with every key; ``values`` override the defaults."""
    values = values or {}
    doc = tomlkit.document()
    doc.add(tomlkit.comment("edge-agent configuration. Every key is documented in docs/config.md."))
    doc.add(tomlkit.comment("Check it with `edge-agent config validate`; change it with `edge-agent config set KEY VALUE`."))
    for section, fields in keys.SCHEMA.items():
        table = tomlkit.table()
        for key, info in fields.items():
            table.add(tomlkit.comment(info.doc))
            table.add(key, toml_item(values.get(section, {}).get(key, info.default)))
        doc.add(tomlkit.nl())
        doc.add(section, table)
    return tomlkit.dumps(doc)


def toml_item(value: Any) -> Any:
    """A plain value ready for tomlkit: a list holding tables stays a list of inline tables
    under its key (tomlkit would make it an array of tables after the section's other keys)."""
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        arr = tomlkit.array()
        for v in value:
            if isinstance(v, dict):
                t = tomlkit.inline_table()
                t.update(v)
                arr.append(t)
            else:
                arr.append(v)
        return arr.multiline(len(value) > 1)
    return value


def toml_text(value: Any) -> str:
    """A plain value written as on the right of ``KEY =`` in the file (one line)."""
    item = tomlkit.item(toml_item(value))
    if isinstance(item, tomlkit.items.Array):
        item.multiline(False)
    return item.as_string()


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    from agent.common.fs import atomic_write

    atomic_write(path, text.encode("utf-8"), mode=mode)


def parse_cli_value(dotted: str, text: str) -> Any:
    """A command-line VALUE in the key's type: ``true``/``false``, an integer, a list or table in
    TOML syntax (``["/dev/video0", "rtsp://cam2/main"]``), otherwise the text itself."""
    section, key = keys.split_key(dotted)
    kind = keys.SCHEMA[section][key].type
    if kind == "boolean":
        low = text.strip().lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{dotted}: 应为 true 或 false / expected true or false, got {show(text)}")
    if kind == "integer":
        try:
            return int(text, 0)
        except ValueError:
            raise ConfigError(f"{dotted}: 应为整数 / expected an integer, got {show(text)}") from None
    if kind == "list":
        value, problem = _toml_value(text)
        if problem and text.lstrip().startswith("["):
            raise ConfigError(f"{dotted}: TOML 语法错误 / invalid TOML value {show(text)}: {problem}")
        if not isinstance(value, list):
            raise ConfigError(f"{dotted}: 应为 TOML 列表 / expected a list in TOML syntax, e.g. '[\"a\", \"b\"]', "
                              f"got {show(text)}")
        return value
    value, _ = _toml_value(text)
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{dotted}: 应为字符串 / expected a string, got a {'list' if isinstance(value, list) else 'table'}: {show(text)}")
    return text


def _toml_value(text: str) -> tuple[Any, str | None]:
    """The value of ``text`` read as the right-hand side of a TOML key (a tomlkit item, so the
    technician's spelling is kept in the file), or None and what is wrong with it."""
    try:
        return tomlkit.parse(f"v = {text}\n")["v"], None
    except Exception as exc:  # tomlkit raises many parse error classes; tomllib says it more plainly
        try:
            tomllib.loads(f"v = {text}\n")
        except tomllib.TOMLDecodeError as plain:
            exc = plain  # type: ignore[assignment]
        return None, re.sub(r" \(?at line \d+,? col(umn)? \d+\)?$", "", str(exc))


def set_value(path: str | os.PathLike | None, dotted: str, text: Any) -> Any:
    """Validate, then atomically write one key, keeping the file's comments. ``text`` is the
    command line's VALUE (:func:`parse_cli_value`) or a plain value (a signed central command).
    A refused value leaves the file as it was, byte for byte. Returns the new plain value."""
    p = config_path(path)
    section, key = keys.split_key(dotted)
    value = parse_cli_value(dotted, text) if isinstance(text, str) else toml_item(text)
    original = _read(p)
    try:
        doc = tomlkit.parse(original)
    except Exception:  # tomlkit's own parse errors: let tomllib name the line
        parse_toml(original, p)
        raise
    if section not in doc:
        doc.add(section, tomlkit.table())
    doc[section][key] = value  # type: ignore[index]
    text_out = tomlkit.dumps(doc)
    cfg = loads(text_out, p)  # whole-file validation before anything is written
    atomic_write_text(p, text_out, mode=p.stat().st_mode & 0o777)
    return cfg.get(dotted)


def validate_value(dotted: str, value: Any) -> Any:
    """Check one plain value against its key (for changes applied in memory as well as on disk)."""
    section, key = keys.split_key(dotted)
    return getattr(getattr(validate({section: {key: value}}), section), key)
