"""The ledger's repository: every query and update of the ledger's tables, as named methods.

Only this package writes SQL against the ledger (the tables of :data:`agent.store.ledger.MIGRATIONS`:
items, meta, audit, command_nonces). The dock, room, uplink, health, wire and CLI call the methods
below on the :class:`~agent.store.store.Store` (which mixes this class in); ``tests/store/test_store_layout.py``
fails when SQL against these tables appears anywhere else.

Rows come back as typed dicts (:class:`ItemRow` …): callers keep reading columns by name, and a
type checker knows the columns. Small summaries are frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, TypedDict

from .ledger import UNARCHIVED, Ledger

#: states an item is in once it is sealed and before it has left the device (for annotation counts)
_NOT_PENDING = ("discarded", "purged", "receiving")


class ItemRow(TypedDict):
    """One row of the ``items`` table (see ledger.MIGRATIONS)."""

    id: str
    device_seq: int | None
    state: str
    kind: str
    case_number: str | None
    collector_id: str | None
    collector_name: str | None
    pending: str
    created: str
    created_ts: float
    sealed_at: str | None
    archived_at: str | None
    purged_at: str | None
    size: int
    content_hash: str | None
    manifest_hash: str | None
    item_hash: str | None
    priority: int
    source_key: str | None
    session_id: str | None
    path: str
    error: str | None
    receipt: str | None


class PendingByCollector(TypedDict):
    """Sealed items still waiting for case number / proof (待补录), per collecting officer."""

    collector_id: str | None
    collector_name: str | None
    n: int
    oldest: str


class SessionSegment(TypedDict):
    """A sealed segment of an interview session: its source key and item hash."""

    source_key: str
    item_hash: str | None


class Refusal(TypedDict):
    """An item the archive refused, and why."""

    id: str
    error: str | None


class SealedPath(TypedDict):
    device_seq: int
    path: str


@dataclass(frozen=True)
class Backlog:
    """Items not yet archived: how many, their bytes, the creation time of the oldest."""

    items: int
    bytes: int
    oldest_ts: float | None


@dataclass(frozen=True)
class Totals:
    """Items ever sealed (with a chain position) and, of those, archived or purged."""

    sealed: int
    archived: int


def _in(values: Iterable[Any]) -> str:
    return ",".join("?" * len(list(values)))


class Repository:
    """Named queries over ``self.ledger``; mixed into Store."""

    ledger: Ledger

    # --- items: reading -------------------------------------------------------------------------
    def item_row(self, item_id: str) -> ItemRow | None:
        return self.ledger.one("SELECT * FROM items WHERE id = ?", [item_id])

    def items(self, state: str | None = None, case: str | None = None, limit: int | None = None) -> list[ItemRow]:
        """Items in creation order, optionally of one state and/or case number."""
        return self.ledger.select("items", "created_ts", limit=int(limit) if limit else None,
                                  state=state, case_number=case)

    def item_ids(self) -> set[str]:
        return {r["id"] for r in self.ledger.query("SELECT id FROM items")}

    def receiving_for_source(self, source_key: str) -> ItemRow | None:
        """The newest item still receiving for this source (a copy cut off mid-way)."""
        return self.ledger.one("SELECT * FROM items WHERE source_key = ? AND state = 'receiving' "
                               "ORDER BY created_ts DESC LIMIT 1", [source_key])

    def find_by_source(self, source_key: str) -> ItemRow | None:
        """The newest item (not discarded) made from this source."""
        return self.ledger.one("SELECT * FROM items WHERE source_key = ? AND state NOT IN ('discarded') "
                               "ORDER BY created_ts DESC LIMIT 1", [source_key])

    def duplicate_of(self, content_hash: str | None, case_number: str, exclude_id: str) -> str | None:
        """Id of another (not discarded) item of this case with the same content, if any."""
        row = self.ledger.one("SELECT id FROM items WHERE content_hash = ? AND case_number = ? "
                              "AND state NOT IN ('discarded') AND id != ?", [content_hash, case_number, exclude_id])
        return row["id"] if row else None

    def session_segments(self, session_id: str, source_prefix: str) -> list[SessionSegment]:
        """Sealed (or later) items of an interview session whose source key starts with ``source_prefix``."""
        return self.ledger.query(
            "SELECT source_key, item_hash FROM items WHERE session_id = ? AND source_key LIKE ? "
            "AND state NOT IN ('receiving', 'discarded')", [session_id, source_prefix + "%"])

    def next_to_send(self, below: int | None = None, exclude: Iterable[str] = ()) -> ItemRow | None:
        """The uplink's next item: sealed or uploading, best priority then chain order; with
        ``below`` only priorities under it; never one of ``exclude`` (already in hand)."""
        sql = "SELECT * FROM items WHERE state IN ('sealed', 'uploading')"
        params: list = []
        if below is not None:
            sql += " AND priority < ?"
            params.append(below)
        exclude = list(exclude)
        if exclude:
            sql += f" AND id NOT IN ({_in(exclude)})"
            params += exclude
        return self.ledger.one(sql + " ORDER BY priority, device_seq LIMIT 1", params)

    def sealed_after(self, seq: int, limit: int = 500) -> list[SealedPath]:
        """Chain positions after ``seq`` with their paths, in order, at most ``limit``."""
        return self.ledger.query("SELECT device_seq, path FROM items WHERE device_seq > ? "
                                 "ORDER BY device_seq LIMIT ?", [seq, int(limit)])

    # --- items: summaries -----------------------------------------------------------------------
    def counts_by_state(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.ledger.query("SELECT state, count(*) n FROM items GROUP BY state")}

    def backlog(self) -> Backlog:
        """Items not yet archived (receiving, sealed, uploading, rejected)."""
        r = self.ledger.one("SELECT count(*) n, coalesce(sum(size),0) b, min(created_ts) oldest FROM items "
                            f"WHERE state IN ({_in(UNARCHIVED)})", list(UNARCHIVED))
        return Backlog(items=r["n"], bytes=r["b"], oldest_ts=r["oldest"])

    def pending_annotation_count(self) -> int:
        """Items (receiving ones included) still missing mandatory metadata."""
        return self.ledger.one("SELECT count(*) n FROM items WHERE pending != '' AND kind != 'audit' "
                               "AND state NOT IN ('discarded','purged')")["n"]

    def oldest_pending_annotation_ts(self) -> float | None:
        """Creation time of the oldest sealed item still missing mandatory metadata."""
        return self.ledger.one(f"SELECT min(created_ts) t FROM items WHERE pending != '' AND kind != 'audit' "
                               f"AND state NOT IN ({_in(_NOT_PENDING)})", list(_NOT_PENDING))["t"]

    def pending_by_collector(self) -> list[PendingByCollector]:
        """Sealed items waiting for case number / proof (待补录), grouped by collecting officer."""
        return self.ledger.query(
            "SELECT collector_id, collector_name, count(*) n, min(created) oldest FROM items "
            f"WHERE pending != '' AND state NOT IN ({_in(_NOT_PENDING)}) "
            "GROUP BY collector_id, collector_name ORDER BY collector_id", list(_NOT_PENDING))

    def refusals(self) -> list[Refusal]:
        """Items the archive refused, in chain order."""
        return self.ledger.query("SELECT id, error FROM items WHERE state = 'rejected' ORDER BY device_seq")

    def refused_as_unknown_device(self) -> int:
        """Items the archive refused because it does not know (has not enrolled) this device."""
        return self.ledger.one("SELECT count(*) n FROM items WHERE state = 'rejected' AND "
                               "(error LIKE '%not enrolled%' OR error LIKE '%unknown device%')")["n"]

    def totals(self) -> Totals:
        r = self.ledger.one("SELECT count(*) n, sum(state IN ('archived','purged')) a FROM items "
                            "WHERE device_seq IS NOT NULL")
        return Totals(sealed=r["n"] or 0, archived=int(r["a"] or 0))

    # --- items: writing (callers hold ledger.atomic() when they audit alongside) ----------------
    def _insert_item(self, row: dict) -> None:
        with self.ledger.atomic() as db:
            db["items"].insert(row)

    def _update_item(self, item_id: str, **fields: Any) -> None:
        with self.ledger.atomic() as db:
            db["items"].update(item_id, fields)

    def _record_sealed_row(self, item_id: str, fields: dict, seq: int, manifest_hash: str) -> None:
        """The item is sealed at chain position ``seq``: its row and the chain head, in one transaction."""
        with self.ledger.atomic() as db:
            db["items"].update(item_id, {"state": "sealed", **fields})
            for key, value in (("head_seq", str(seq)), ("head_hash", manifest_hash)):
                db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value", [key, value])

    # --- meta and the chain head ----------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A small value kept in the ledger (e.g. the uplink's birth sequence, the active alarms)."""
        return self.ledger.get_meta(key, default)

    def set_meta(self, key: str, value: str) -> None:
        self.ledger.set_meta(key, value)

    def head(self) -> tuple[int, str | None]:
        """The device chain head: (sequence number of the last sealed item, its manifest hash)."""
        seq = int(self.ledger.get_meta("head_seq", "0") or 0)
        return seq, self.ledger.get_meta("head_hash")

    # --- central commands -----------------------------------------------------------------------
    def use_nonce(self, nonce: str, ts: float, forget_before: float) -> bool:
        """Record a command's nonce; False when it was used already (a replay). Nonces older
        than ``forget_before`` (epoch seconds) are forgotten first."""
        with self.ledger.atomic() as db:
            db.execute("DELETE FROM command_nonces WHERE ts < ?", [forget_before])
            if db.execute("SELECT 1 FROM command_nonces WHERE nonce = ?", [nonce]).fetchone():
                return False
            db.execute("INSERT INTO command_nonces VALUES (?, ?)", [nonce, ts])
        return True
