"""The base of every config section: unknown keys refused, types strict, hostile values refused.

Every section of the file is one model (one module per section, ``agent/config/<section>.py``)
built on :class:`ConfigModel`; the root model is :class:`agent.config.root.Config`. A field gives
its default, its bounds and a description (docs/config.md is generated from them); a field whose
value must not be shown (``config show``) is declared with :func:`secret`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

# Hostile-value guards that hold for every key (the TOML format itself allows all of these).
MAX_TEXT = 4096              # characters in one string value (PATH_MAX; no key needs more)
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1   # TOML integers are 64-bit; tomllib accepts more

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ConfigModel(BaseModel):
    """One section (or one entry of a list of tables) of the config file."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_hostile_values(cls, value: Any) -> Any:
        check_plain(value)
        return value


def check_plain(value: Any) -> None:
    """Refuse what no key may hold: control characters (NUL, newline…), text that is not UTF-8
    (lone surrogates from a command line), over-long text, integers beyond 64 bits."""
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ValueError(f"文本过长 / text too long: {len(value)} characters, at most {MAX_TEXT}")
        m = _CONTROL.search(value)
        if m:
            raise ValueError(f"不允许控制字符 / control character U+{ord(m.group()):04X} not allowed")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("不是有效的 UTF-8 文本 / not valid UTF-8 text") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError("整数超出 64 位范围 / integer out of the 64-bit range")
    elif isinstance(value, list):
        for v in value:
            check_plain(v)
    # a table is a model of its own, which checks its own fields (so the error names the key)


def secret(default: Any, description: str, **kw: Any) -> Any:
    """A field whose value ``config show`` hides."""
    return Field(default, description=description, json_schema_extra={"secret": True}, **kw)


def is_secret(info: Any) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("secret"))


def ident(value: str) -> str:
    """A name that is safe as a path part and a topic level."""
    if not _ID_RE.match(value):
        raise ValueError("只能用字母、数字、'_'、'.'、'-'，1-64 个字符，不能是路径 / "
                         "letters, digits, '_', '.', '-' only, 1-64 characters, no path")
    return value


Ident = Annotated[str, AfterValidator(ident)]
"""A string field holding an identifier (:func:`ident`)."""


_T = TypeVar("_T")


def unique_by(value: list[_T], key: Callable[[_T], str | None], what: str) -> list[_T]:
    """``value`` unchanged when no two entries share ``key`` (None: not checked); otherwise a
    ValueError naming the entry (1-based) and ``what``: "中文 / English {!r} ...", formatted with the key."""
    seen: set[str] = set()
    for i, v in enumerate(value, 1):
        k = key(v)
        if k is None:
            continue
        if k in seen:
            raise ValueError(f"第 {i} 项 / entry {i}: " + what.format(k))
        seen.add(k)
    return value
