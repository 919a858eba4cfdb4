"""Turn pydantic's validation errors into one line a technician can act on: the key as
``SECTION.KEY``, what is wrong in Chinese and English, and the line of the file."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from . import keys

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*("?)([A-Za-z0-9_.\- "']+?)\1\s*=""")

_KINDS = {
    "string_type": "应为字符串 / expected a string",
    "int_type": "应为整数 / expected an integer",
    "int_parsing": "应为整数 / expected an integer",
    "bool_type": "应为 true 或 false / expected true or false",
    "list_type": "应为列表 / expected a list",
    "dict_type": "应为表 / expected a table",
    "model_type": "应为表 / expected a table",
    "model_attributes_type": "应为表 / expected a table",
}


def show(value: Any, limit: int = 60) -> str:
    """A value as the technician wrote it, cut to one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _norm(name: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in name.split("."))


def line_of(text: str, section: str, key: str | None = None) -> int | None:
    """The line where ``[section]`` (key None) or ``section.key`` is written: under its table
    header, as a dotted key at the top, or as its own ``[[section.key]]`` header."""
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            current = _norm(m.group(1))
            if current == section and key is None:
                return number
            if key is not None and current == f"{section}.{key}":
                return number
            continue
        m = _KEY.match(line)
        if not m:
            continue
        name = _norm(m.group(2))
        full = f"{current}.{name}" if current else name
        if full == section and key is None or current == "" and name == section:
            return number
        if key is not None and (full == f"{section}.{key}" or full.startswith(f"{section}.{key}.")):
            return number
    return None


def _detail(err: dict[str, Any], section: str | None, key: str | None) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind in _KINDS:
        return f"{_KINDS[kind]}, got {show(value)}"
    if kind == "greater_than_equal":
        return f"{value} 小于最小值 {ctx['ge']} / {value} is below the minimum {ctx['ge']}"
    if kind == "less_than_equal":
        return f"{value} 大于最大值 {ctx['le']} / {value} is above the maximum {ctx['le']}"
    if kind == "literal_error":
        info = keys.SCHEMA.get(section or "", {}).get(key or "")
        choices = ", ".join(map(str, info.choices)) if info and info.choices else ctx.get("expected", "")
        return f"{show(value)} 不是可选值 / {show(value)} is not one of {choices}"
    if kind == "value_error":
        problem = ctx.get("error", err["msg"])
        return str(problem) if isinstance(value, (list, dict)) else f"{show(value)}: {problem}"
    return f"{err['msg']}, got {show(value)}"


def explain(exc: ValidationError, text: str | None = None) -> str:
    """The first problem of ``exc`` as ``KEY: problem (第 N 行 / line N)``."""
    err = exc.errors()[0]
    loc = [p for p in err["loc"]]
    section = str(loc[0]) if loc else None
    key = str(loc[1]) if len(loc) > 1 else None
    if not loc:  # a check across sections (Config's own validator): its message starts with the key
        message = str((err.get("ctx") or {}).get("error", err["msg"]))
        section, _, key = message.partition(":")[0].partition(".")
    elif err["type"] == "extra_forbidden" and len(loc) == 1:
        message = keys.unknown_section(section)
        key = None
    elif err["type"] == "extra_forbidden" and len(loc) == 2 and section in keys.SCHEMA:
        message = keys.unknown_key(section, key)
    elif len(loc) == 1:
        message = f"{section}: {_detail(err, None, None)}".replace("expected a table,", f"expected a table [{section}],")
    else:
        where = [f"{section}.{key}"]
        rest = loc[2:]
        for i, part in enumerate(rest):
            if isinstance(part, int):
                where.append(f"第 {part + 1} 项 / entry {part + 1}")
            elif err["type"] == "extra_forbidden" and i == len(rest) - 1:
                where.append(f"{keys._name(str(part))}: 未知的键 / unknown key")
            elif err["type"] == "missing" and i == len(rest) - 1:
                where.append(f"缺少 {part} / {part} is required")
            else:
                where.append(str(part))
        if err["type"] in ("extra_forbidden", "missing") and rest:
            message = ": ".join(where)
        else:
            message = ": ".join(where + [_detail(err, section, key if len(loc) == 2 else None)])
    line = line_of(text, section, key) if text and section else None
    return message + (f" (第 {line} 行 / line {line})" if line else "")
