"""Time helpers: every time in a signed record is ISO 8601 with offset, seconds precision."""

from __future__ import annotations

import datetime as _dt

from agent.common.errors import MetadataError


def now() -> _dt.datetime:
    """Current local time, aware, truncated to the second."""
    return _dt.datetime.now().astimezone().replace(microsecond=0)


def iso(ts: _dt.datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("naive datetime")
    return ts.replace(microsecond=0).isoformat()


def now_iso() -> str:
    return iso(now())


def parse_iso(value: str, field: str = "time") -> _dt.datetime:
    """Parse ISO 8601 *with* an offset; a clear error names the field otherwise."""
    if not isinstance(value, str) or not value:
        raise MetadataError(f"{field}: expected ISO 8601 time with offset, got {value!r}")
    try:
        ts = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise MetadataError(f"{field}: not an ISO 8601 time: {value!r}") from None
    if ts.tzinfo is None:
        raise MetadataError(f"{field}: time {value!r} has no UTC offset (e.g. +08:00)")
    return ts


def from_epoch(seconds: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(seconds).astimezone().replace(microsecond=0)
