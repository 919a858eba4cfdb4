"""Capture times as a reviewer reads them: the recorder's clock corrected by the drift sealed with
the item (``metadata.clock_offset_ms``, recorder minus station; docs/evidence-format.md)."""

from __future__ import annotations

import datetime as _dt

from agent.common.timeutil import parse_iso


def offset(meta: dict) -> _dt.timedelta:
    """The sealed clock offset (zero when unknown: the time is then the recorder's own)."""
    off = meta.get("clock_offset_ms")
    return _dt.timedelta(milliseconds=off) if isinstance(off, int) and not isinstance(off, bool) else _dt.timedelta(0)


def capture_end(meta: dict) -> _dt.datetime:
    """The end of capture on the station's clock: ``capture_end`` minus ``clock_offset_ms``."""
    return parse_iso(meta["capture_end"], "capture_end") - offset(meta)


def capture_start(meta: dict) -> _dt.datetime:
    return parse_iso(meta["capture_start"], "capture_start") - offset(meta)
