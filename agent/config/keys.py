"""The keys of the schema as a technician names them (``SECTION.KEY``): lookup with a suggestion
for a typo, and a flat description of every key (type, default, bounds) for docs/config.md."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

import annotated_types
from pydantic import BaseModel

from agent.common.errors import ConfigError

from .base import is_secret
from .root import Config


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One key of the schema, described for people (docs/config.md, error messages)."""

    type: str                     # string, integer, boolean, list
    default: Any                  # as written in TOML
    doc: str
    choices: tuple | None = None
    min: int | None = None
    max: int | None = None
    secret: bool = False


def section_models() -> dict[str, type[BaseModel]]:
    return {name: info.annotation for name, info in Config.model_fields.items()}  # type: ignore[misc]


def _type_name(annotation: Any) -> tuple[str, tuple | None]:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        args = typing.get_args(annotation)
        return _type_name(type(args[0]))[0], args
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (list, tuple):
        return "list", None
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a)[0] for a in typing.get_args(annotation) if a is not type(None)), None
    return {str: "string", int: "integer", bool: "boolean", dict: "table"}.get(annotation, getattr(annotation, "__name__", str(annotation))), None


def _describe(model: type[BaseModel]) -> dict[str, KeyInfo]:
    defaults = model().model_dump(mode="json", exclude_none=True)
    out = {}
    for key, field in model.model_fields.items():
        kind, choices = _type_name(field.annotation)
        lo = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
        hi = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
        out[key] = KeyInfo(kind, defaults.get(key), field.description or "", choices, lo, hi, is_secret(field))
    return out


SCHEMA: dict[str, dict[str, KeyInfo]] = {name: _describe(model) for name, model in section_models().items()}
"""Every section and key, described (built from the models; the models are the schema)."""


def did_you_mean(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"; 是否应为 / did you mean {close[0]}?" if close else ""


def _name(word: str) -> str:
    """A name from the file, safe to print on one line."""
    return word if word.isprintable() and len(word) <= 64 else repr(word[:64])


def unknown_section(section: str) -> str:
    section = _name(section)
    return (f"[{section}]: 未知的节 / unknown section (known: {', '.join(SCHEMA)})"
            f"{did_you_mean(section, list(SCHEMA))}")


def unknown_key(section: str, key: str) -> str:
    known, key = list(SCHEMA[section]), _name(key)
    return (f"{section}.{key}: 未知的键 / unknown key (known in [{section}]: {', '.join(known)})"
            f"{did_you_mean(key, known)}")


def split_key(dotted: str) -> tuple[str, str]:
    """``"device.id"`` -> ``("device", "id")``; a typo is refused with the closest key named."""
    if dotted.count(".") != 1:
        raise ConfigError(f"{_name(dotted)}: 键的写法是 节.键 / a key is written SECTION.KEY, e.g. device.id")
    section, key = dotted.split(".")
    if section not in SCHEMA:
        raise ConfigError(unknown_section(section))
    if key not in SCHEMA[section]:
        raise ConfigError(unknown_key(section, key))
    return section, key
