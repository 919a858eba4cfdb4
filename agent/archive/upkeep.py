"""Keeping the archive bounded whatever arrives: log lines and refusal records coalesced and
capped, abandoned partial transfers removed, new transfers refused before the disk fills.

Nothing here ever removes evidence: only partial transfers (the agent still holds its copy and
starts again by query) and notes about refused messages (their count survives in ``repeats`` and
in ``meta``).
"""

from __future__ import annotations

import logging
import re
import threading
import time

from agent.common.timeutil import now_iso
from agent.wire import protocol as P
from .backend import partial_key

log = logging.getLogger(__name__)

#: refusal notes (quarantine rows without a quarantined item) kept at most; the oldest go first
MAX_NOTES = 10_000
#: a refusal like a recorded one within this many seconds adds to that one's count
NOTE_WINDOW_S = 3600
#: characters of a reason kept
MAX_REASON = 500


class Coalescer:
    """Log lines of one kind: the first ``burst`` in each ``window`` seconds as they come, then
    one line "N more like this" when the window ends (on the next line of that kind, or
    :meth:`flush`). Each line is cut at ``max_len`` characters."""

    def __init__(self, burst: int = 10, window: float = 60.0, max_len: int = 1000, clock=time.monotonic):
        self.burst, self.window, self.max_len, self.clock = burst, window, max_len, clock
        self._lock = threading.Lock()
        self._state: dict[str, list] = {}  # kind -> [window start, lines in window, suppressed]
        self.suppressed_total = 0

    def log(self, logger: logging.Logger, kind: str, msg: str, *args, level: int = logging.WARNING,
            exc_info=None) -> bool:
        now = self.clock()
        with self._lock:
            st = self._state.get(kind)
            if st is None or now - st[0] >= self.window:
                if st and st[2]:
                    self._summary(logger, kind, st[2])
                st = self._state[kind] = [now, 0, 0]
            st[1] += 1
            if st[1] > self.burst:
                st[2] += 1
                self.suppressed_total += 1
                return False
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg} {args!r}"
        if len(text) > self.max_len:
            text = text[:self.max_len] + f"… ({len(text)} characters)"
        # a traceback only for the first of a kind in each window: the rest are "like this"
        logger.log(level, "%s", printable(text), exc_info=exc_info if st[1] == 1 else None)
        return True

    def flush(self, logger: logging.Logger) -> None:
        now = self.clock()
        with self._lock:
            for kind, st in list(self._state.items()):
                if now - st[0] >= self.window:
                    if st[2]:
                        self._summary(logger, kind, st[2])
                    del self._state[kind]

    def _summary(self, logger: logging.Logger, kind: str, n: int) -> None:
        logger.warning("%d more like this (%s) in %.0f s", n, kind, self.window)


def printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_SHAPE = re.compile(r"[0-9a-fA-F]{8,}|\d+")


def shape(reason: str) -> str:
    """What refusals "like this one" share: the reason without its numbers and ids."""
    return _SHAPE.sub("#", reason)[:160]


class Upkeep:
    """Mixed into :class:`agent.archive.storage.ArchiveStore`."""

    #: free space (bytes) the archive keeps: below it (plus the item's size) new transfers are refused
    min_free = 2048 << 20
    #: a partial transfer untouched this long is removed
    abandon_after_s = 72 * 3600
    #: one device's quarantine: items with their bytes kept at most, and their bytes at most
    #: (archive.quarantine_max_items, archive.quarantine_max_mb); beyond, only the refusal note
    quarantine_max_items = 20
    quarantine_max_bytes = 4096 << 20

    # --- quarantine ---------------------------------------------------------------------------
    def quarantine_room(self, db, dev: str, size: int) -> str | None:
        """None when device ``dev``'s quarantine can take an item of ``size`` bytes more; else why
        not (bilingual, naming the limit). Inside the transaction that quarantines."""
        n, held = map(int, db.execute("SELECT count(*), COALESCE(SUM(bytes), 0) FROM quarantine WHERE device = ? "
                                      "AND path IS NOT NULL", [dev]).fetchone())
        if n >= self.quarantine_max_items or held + size > self.quarantine_max_bytes:
            return (f"该设备隔离区已满，未保留数据 / bytes not kept: device {dev}'s quarantine holds {n} item(s), "
                    f"{held} bytes (limits archive.quarantine_max_items = {self.quarantine_max_items}, "
                    f"archive.quarantine_max_mb = {self.quarantine_max_bytes >> 20}); this item has {size} bytes")
        return None

    def quarantined_bytes(self, dev: str) -> tuple[int, int]:
        """(items, bytes) held in device ``dev``'s quarantine."""
        row = self.db.one("SELECT count(*) AS n, COALESCE(SUM(bytes), 0) AS b FROM quarantine WHERE device = ? "
                          "AND path IS NOT NULL", [dev])
        return int(row["n"]), int(row["b"])

    # --- refusal notes --------------------------------------------------------------------------
    def note_refusal(self, dev: str | None, item: str | None, reason: str) -> None:
        """Record a refused message: coalesced with a recent one like it (same reason but for numbers
        and ids; its ``repeats`` count grows), at most MAX_NOTES rows; never fails."""
        reason = printable(str(reason))[:MAX_REASON]
        dev = printable(dev)[:64] if dev else None
        item = printable(item)[:64] if item else None
        key = shape(reason)
        recent = self._recent_notes
        try:
            with self.db.atomic() as db:
                hit = recent.get(key)
                if hit and time.monotonic() - hit[1] < NOTE_WINDOW_S:
                    cur = db.execute("UPDATE quarantine SET repeats = repeats + 1, last_at = ? WHERE id = ?",
                                     [now_iso(), hit[0]])
                    if cur.rowcount:
                        return
                cur = db.execute("INSERT INTO quarantine(device, item, reason, at, path, repeats, last_at) "
                                 "VALUES (?,?,?,?,NULL,0,?) RETURNING id", [dev, item, reason, now_iso(), now_iso()])
                if len(recent) > 1000:
                    recent.clear()
                recent[key] = (cur.fetchone()[0], time.monotonic())
                n = db.execute("SELECT count(*) FROM quarantine WHERE path IS NULL").fetchone()[0]
                if n > MAX_NOTES:
                    old = db.execute("SELECT id, repeats FROM quarantine WHERE path IS NULL ORDER BY id LIMIT ?",
                                     [n - MAX_NOTES]).fetchall()
                    db.execute(f"DELETE FROM quarantine WHERE id IN ({','.join('?' * len(old))})", [r[0] for r in old])
                    dropped = sum(1 + r[1] for r in old)
                    db.execute("INSERT INTO meta(key, value) VALUES ('notes_dropped', ?) ON CONFLICT(key) DO UPDATE "
                               "SET value = CAST(CAST(meta.value AS INTEGER) + CAST(excluded.value AS INTEGER) AS TEXT)", [str(dropped)])
        except Exception:
            log.exception("cannot record the refusal")

    def notes_dropped(self) -> int:
        row = self.db.one("SELECT value FROM meta WHERE key = 'notes_dropped'")
        return int(row["value"]) if row else 0

    # --- disk watermark -------------------------------------------------------------------------
    def check_space(self, size: int) -> None:
        """Refuse a new transfer that would bring the root's free space below the watermark."""
        if not self.min_free:
            return
        free = self.storage.free_bytes()
        if free - size < self.min_free:
            raise DiskLow(f"存档磁盘空间不足，暂不接收新的传输 / archive disk low: {free >> 20} MiB free, "
                          f"the item needs {(size + (1 << 20) - 1) >> 20} MiB and {self.min_free >> 20} MiB are kept free; "
                          "send again later")

    # --- partial transfers ----------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> dict[str, int]:
        """Remove partial transfers untouched for ``abandon_after_s`` (their rows, ranges, pieces
        and ``_tmp`` directory) and ``_tmp`` directories no transfer owns; leftover atomic-write
        temporaries too. Returns what was removed."""
        now = time.time() if now is None else now
        out = {"transfers": 0, "orphans": 0}
        rows = self.db.query("SELECT device, item FROM transfers WHERE state = 'receiving'")
        live = {(r["device"], r["item"]) for r in rows}
        st = self.storage
        for dev, item in live:
            key = partial_key(dev, item)
            if now - st.touched(key) < self.abandon_after_s:
                continue
            with self._item_lock(dev, item):
                if now - st.touched(key) < self.abandon_after_s:
                    continue
                self._forget_transfer(dev, item)
                with self.db.atomic() as db:
                    for t in ("ranges", "pieces", "transfers"):
                        db.execute(f"DELETE FROM {t} WHERE device = ? AND item = ? "
                                   + ("AND state = 'receiving'" if t == "transfers" else ""), [dev, item])
                    self.audit.append("abandon", item, actor=f"archive:{self.receiver}", device=dev,
                                      reason=f"no chunk for {self.abandon_after_s // 3600} h")
                st.remove(key)
                out["transfers"] += 1
        devs = set()
        for dev, item in list(st.partials()):
            devs.add(dev)
            key = partial_key(dev, item)
            if (dev, item) in live or now - st.touched(key) < 600:
                continue  # a transfer being opened right now has its directory before its row
            if self.db.one("SELECT 1 FROM transfers WHERE device = ? AND item = ? AND state = 'receiving'", [dev, item]):
                continue
            st.remove(key)
            out["orphans"] += 1
        for dev in devs:
            st.prune(dev)  # only if empty
        for old in self.locks.glob("*__*.lock"):  # per-item lock files of earlier versions (now striped)
            old.unlink(missing_ok=True)
        if any(out.values()):
            log.info("removed %d abandoned partial transfer(s) and %d orphaned _tmp directories",
                     out["transfers"], out["orphans"])
        return out


class DiskLow(P.ProtocolError):
    """The archive's disk is below its watermark: a new transfer is refused for now."""

