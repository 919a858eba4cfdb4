"""Health metrics of one agent: system, buffer, usage, uplink, clock and components.

:func:`collect` builds the body of the health payload (agent/health/payloads.py HEALTH_SCHEMA);
the publisher adds ``seq`` and ``alarms``. Every probe is defensive: a failing probe gives
``null``/"unknown", never an exception out of the health loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from .. import __version__
from agent.common.timeutil import now_iso, parse_iso
from agent.wire.health import component_state, jsonable, safe_key

log = logging.getLogger(__name__)

USAGE_META = "health.usage"


# --- clock --------------------------------------------------------------------------------------
class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):  # struct timex, <sys/timex.h> (Linux)
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11)]


TIME_ERROR = 5
STA_UNSYNC = 0x0040
STA_NANO = 0x2000
_libc = None


def _adjtimex() -> dict | None:
    """Read-only adjtimex(2) (modes = 0): no privilege needed."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = _libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    synced = state != TIME_ERROR and not (tx.status & STA_UNSYNC)
    offset_ms = int(tx.offset / (1_000_000 if tx.status & STA_NANO else 1000))
    return {"synchronized": synced, "source": "adjtimex", "offset_ms": offset_ms if synced else None,
            "max_error_ms": max(0, int(tx.maxerror // 1000))}


def _timedatectl() -> dict | None:
    exe = shutil.which("timedatectl")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True,
                             timeout=3)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    if out.returncode != 0 or value not in ("yes", "no"):
        return None
    return {"synchronized": value == "yes", "source": "timedatectl", "offset_ms": None, "max_error_ms": None}


def clock_state(uplink_stats: dict | None = None) -> dict:
    """Synchronised or not (kernel NTP state), and the offset when known.

    An offset the uplink measured against the archive (``clock_offset_ms`` in its stats) wins:
    it is the one that matters for evidence times."""
    st = _adjtimex() or _timedatectl() or {"synchronized": None, "source": "unknown", "offset_ms": None,
                                          "max_error_ms": None}
    off = (uplink_stats or {}).get("clock_offset_ms")
    if isinstance(off, int) and not isinstance(off, bool):
        st = dict(st, offset_ms=off)
        if st["source"] == "unknown":
            st["source"] = "uplink"
    return st


# --- usage counters (monotonic) -----------------------------------------------------------------
def _duration_s(item_dir: Path) -> int:
    try:
        meta = json.loads((item_dir / "manifest.json").read_bytes())["metadata"]
        start, end = parse_iso(meta["capture_start"]), parse_iso(meta["capture_end"])
        return max(0, int((end - start).total_seconds()))
    except (OSError, ValueError, KeyError, TypeError, Exception):
        return 0


def usage(store) -> dict:
    """items_total (sealed ever), items_archived (archived or purged), recorded_s (sum of capture
    durations of sealed items; counted once per item, kept in the ledger meta)."""
    try:
        state = json.loads(store.get_meta(USAGE_META) or "{}")
    except ValueError:
        state = {}
    last_seq, recorded = int(state.get("seq", 0)), int(state.get("recorded_s", 0))
    rows = store.sealed_after(last_seq, limit=500)
    for r in rows:
        recorded += _duration_s(Path(r["path"]))
        last_seq = r["device_seq"]
    if rows:
        store.set_meta(USAGE_META, json.dumps({"seq": last_seq, "recorded_s": recorded}))
    tot = store.totals()
    return {"items_total": tot.sealed, "items_archived": tot.archived, "recorded_s": recorded}


# --- components ---------------------------------------------------------------------------------
def component_statuses(agent, skip: tuple[str, ...] = ("health",)) -> dict[str, dict]:
    """name -> {"state", "detail"} for every component, and for the parts a component lists
    under ``status()["components"]`` (bays, cameras, microphone, sensor)."""
    out: dict[str, dict] = {}
    for c in list(getattr(agent, "components", [])):
        name = getattr(c, "name", None)
        if not name or name in skip:
            continue
        try:
            st = c.status()
        except Exception as exc:  # a broken component is itself a health fact
            log.exception("status() of %s failed", name)
            st = {"state": "error", "error": str(exc)[:200]}
        if not isinstance(st, dict):
            st = {"value": st}
        parts = st.get("components") if isinstance(st.get("components"), dict) else {}
        detail = {k: v for k, v in st.items() if k != "components"}
        if safe_key(name):
            out[name] = {"state": component_state(st), "detail": jsonable(detail)}
        for part, pst in parts.items():
            if safe_key(str(part)) and str(part) not in out:
                out[str(part)] = {"state": component_state(pst), "detail": jsonable(pst if isinstance(pst, dict) else {"value": pst})}
    return out


# --- everything ---------------------------------------------------------------------------------
_proc = psutil.Process()


def collect(agent, started: float) -> dict:
    """The health payload body (without ``seq`` and ``alarms``)."""
    cfg = agent.cfg
    store = agent.store
    st = store.status()
    oldest_pending = store.oldest_pending_annotation_ts()
    vm = psutil.virtual_memory()
    try:
        total_disk = psutil.disk_usage(str(store.data_dir)).total
    except OSError:
        total_disk = 0
    upstats: dict[str, Any] = {}
    if agent.uplink is not None and hasattr(agent.uplink, "stats"):
        try:
            upstats = dict(agent.uplink.stats() or {})
        except Exception:
            log.exception("uplink.stats() failed")
    uplink = {"connected": bool(upstats.get("connected", False))}
    for k in ("reconnects", "errors", "bytes_sent", "items_archived"):
        v = upstats.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            uplink[k] = v
    bps = upstats.get("bytes_per_s")
    if isinstance(bps, (int, float)) and not isinstance(bps, bool) and bps >= 0:
        uplink["bytes_per_s"] = round(float(bps), 1)
    ar = upstats.get("archive_reachable")
    uplink["archive_reachable"] = ar if isinstance(ar, bool) else None
    le = upstats.get("last_error")
    uplink["last_error"] = str(le)[:500] if le else None
    try:
        load1 = round(psutil.getloadavg()[0], 2)
    except (OSError, AttributeError):
        load1 = None
    return {
        "v": 1,
        "device": cfg.device.id,
        "unit_code": cfg.device.unit_code,
        "unit_name": cfg.device.unit_name,
        "kind": cfg.device.kind,
        "version": __version__,
        "ts": now_iso(),
        "uptime_s": int(time.monotonic() - started),
        "cpu_percent": round(psutil.cpu_percent(interval=None), 1),
        "load1": load1,
        "memory": {"total_bytes": vm.total, "used_percent": round(vm.percent, 1), "rss_bytes": _proc.memory_info().rss},
        "disk": {"free_bytes": st["disk"]["free_bytes"], "total_bytes": total_disk,
                 "reserve_bytes": st["disk"]["reserve_bytes"], "low": bool(st["disk"]["low"])},
        "buffer": {"items": st["unarchived_items"], "bytes": int(st["bytes_buffered"] or 0),
                   "oldest_age_s": st["oldest_unarchived_age_s"], "pending_annotation": st["pending_annotation"],
                   "oldest_pending_annotation_age_s": int(time.time() - oldest_pending) if oldest_pending else None},
        "usage": usage(store),
        "uplink": uplink,
        "clock": clock_state(upstats),
        "components": {},
        "policy_version": policy_version(store),
    }


def policy_version(store) -> int | None:
    """The version of the unit policy in force (kept by agent/policy through the store), or None."""
    try:
        v = int(store.get_meta("policy.version") or 0)
    except ValueError:
        return None
    return v or None
