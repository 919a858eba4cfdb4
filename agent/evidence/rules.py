"""The value rules shared by the edge and the archive: case numbers, unit codes, device and item ids.

One function per value, used by both sides (docs/evidence-format.md, "Values the archive files
by"): the edge refuses at ingest whatever the archive would refuse, so anything the edge seals the
archive accepts. ``*_problem`` returns the broken rule as ``(中文, English)`` or ``None``;
``check_*`` raises :class:`MetadataError` with one bilingual line that names the value and the rule.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from agent.common.errors import MetadataError

#: device ids, unit codes and item ids are single directory names at the archive
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ID_MAX = 64
#: an item id is DEVICE-YYYYMMDDhhmmss-XXXXXX (22 characters after the device id) and must itself
#: fit ID_MAX, so a device id may have at most this many characters
DEVICE_ID_MAX = ID_MAX - 22
CASE_MAX_CHARS = 64
CASE_MAX_BYTES = 255
#: Unicode categories refused in a case number: controls, format characters (zero-width, bidi
#: overrides, BOM), surrogates, private use, line and paragraph separators
_CASE_BAD_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Zl", "Zp")

Problem = tuple[str, str]


def _id_problem(value: Any, limit: int) -> Problem | None:
    if not isinstance(value, str):
        return ("不是文本", "not a string")
    if not value:
        return ("为空", "empty")
    if len(value) > limit:
        return (f"超过 {limit} 个字符", f"longer than {limit} characters")
    if not _ID.match(value) or not value.isascii():
        return ("只能用字母、数字、“_”“.”“-”，以字母或数字开头，不得含路径",
                "letters, digits, '_', '.', '-' only, starting with a letter or digit, no path")
    return None


#: names at the archive's root that a unit's directory must not take
RESERVED_UNIT_CODES = frozenset({"keys", "archive.db", "archive.db-wal", "archive.db-shm", "archive.db-journal"})


def unit_code_problem(value: Any) -> Problem | None:
    """执法单位代码: one directory level at the archive (ROOT/UNIT/...)."""
    if value in RESERVED_UNIT_CODES:
        return ("是归档根目录的保留名", f"a reserved name at the archive root ({', '.join(sorted(RESERVED_UNIT_CODES))})")
    return _id_problem(value, ID_MAX)


def device_id_problem(value: Any) -> Problem | None:
    """A device id: its item ids (DEVICE-YYYYMMDDhhmmss-XXXXXX) must be valid item ids."""
    return _id_problem(value, DEVICE_ID_MAX)


def item_id_problem(value: Any) -> Problem | None:
    return _id_problem(value, ID_MAX)


def case_number_problem(value: Any) -> Problem | None:
    """案件编号 as sealed: one directory level at the archive (ROOT/UNIT/CASE/ITEM)."""
    if not isinstance(value, str):
        return ("不是文本", "not a string")
    if not value:
        return ("为空", "empty")
    if value != value.strip():
        return ("首尾不得有空白", "leading or trailing white space")
    if len(value) > CASE_MAX_CHARS:
        return (f"超过 {CASE_MAX_CHARS} 个字符", f"longer than {CASE_MAX_CHARS} characters")
    for ch in value:
        if unicodedata.category(ch) in _CASE_BAD_CATEGORIES:
            return (f"含控制、格式或不可见字符 U+{ord(ch):04X}",
                    f"contains the control, format or invisible character U+{ord(ch):04X}")
    if len(value.encode("utf-8")) > CASE_MAX_BYTES:
        return (f"UTF-8 超过 {CASE_MAX_BYTES} 字节", f"longer than {CASE_MAX_BYTES} bytes in UTF-8")
    if "/" in value or "\\" in value:
        return ("不得含“/”或“\\”", "must not contain '/' or '\\' (a path separator)")
    if value.startswith((".", "_")):
        return ("不得以“.”或“_”开头（归档保留：_pending、_tmp、_quarantine）",
                "must not start with '.' or '_' (reserved at the archive: _pending, _tmp, _quarantine)")
    return None


_LABELS = {
    "case_number": ("案件编号", "case number"),
    "unit_code": ("单位代码", "unit code"),
    "device_id": ("设备编号", "device id"),
    "item_id": ("证据编号", "item id"),
    "annotator": ("注释人", "annotator name"),
}
_RULES = {"case_number": case_number_problem, "unit_code": unit_code_problem,
          "device_id": device_id_problem, "item_id": item_id_problem,
          "annotator": lambda v: _id_problem(v, ID_MAX)}


def message(kind: str, value: Any, problem: Problem) -> str:
    zh, en = _LABELS[kind]
    return f"{zh} {value!r} 不可用：{problem[0]} / {en} {value!r} refused: {problem[1]}"


def check(kind: str, value: Any) -> str:
    """``value`` if it satisfies the rule for ``kind``, else :class:`MetadataError`."""
    problem = _RULES[kind](value)
    if problem:
        raise MetadataError(message(kind, value, problem))
    return value


def check_case_number(value: Any) -> str:
    return check("case_number", value)


def check_unit_code(value: Any) -> str:
    return check("unit_code", value)


def check_device_id(value: Any) -> str:
    return check("device_id", value)


def check_item_id(value: Any) -> str:
    return check("item_id", value)
