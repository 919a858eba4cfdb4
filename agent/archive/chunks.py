"""Chunks: each one is checked against the signed manifest before a byte of it is written.

A chunk is one sealed block (``segments`` of the manifest, :mod:`agent.evidence.blocks`): it is
written only when its offset is that block's offset, its length the block's size and its hash the
block's hash in the manifest the device signed. So a chunk from anyone but the device (or one
corrupted anywhere on the way) can never be written; it is refused with the range to send again,
and the item goes on. A block already held is never written again.

Blocks are written into the transfer's key in the evidence storage (:mod:`.backend`), the ranges
held recorded in the index: any receiver continues where another stopped.

A block larger than the broker lets one message be travels as consecutive pieces; pieces are
written into the block's place (never into a held block), recorded in ``pieces``, and when they
cover the block it is read back and hashed: equal to the manifest's hash, the block is held;
otherwise its pieces are forgotten and the range is asked for again (a stranger's piece can delay
such a block, never corrupt it).
"""

from __future__ import annotations

import collections
import json
import logging
import threading

from ..evidence import hashing, manifest as mf
from ..evidence.blocks import Block, BlockError, BlockTable
from agent.wire import protocol as P

log = logging.getLogger(__name__)

#: block tables of transfers kept in memory (older ones are read again from the manifest on disk)
MAX_TABLES = 256


class ChunkRefused(P.ProtocolError):
    """One chunk refused; the item goes on. Names the range the device should send again."""

    def __init__(self, reason: str, file: str | None = None, offset: int | None = None):
        super().__init__(reason)
        self.file, self.offset = file, offset


def block_table(doc: dict) -> BlockTable:
    try:
        return BlockTable.from_manifest(doc)
    except BlockError as exc:
        raise P.ProtocolError(f"manifest segments: {exc}") from None


class ChunkIntake:
    """Mixed into :class:`agent.archive.storage.ArchiveStore` (uses its db, paths and locks)."""

    def _init_chunks(self) -> None:
        self._pending_ranges: list[tuple[str, str, str, int, int]] = []
        self._plock = threading.Lock()
        #: True: chunk ranges are recorded by commit_ranges() (the receiver batches them)
        self.batch_ranges = False
        self._tables: collections.OrderedDict[tuple[str, str], BlockTable] = collections.OrderedDict()
        #: counters: blocks checked whole, blocks assembled from pieces, chunks refused, files re-read at finish
        self.verified = collections.Counter()

    def _forget_transfer(self, dev: str, item: str) -> None:
        with self._plock:
            self._tables.pop((dev, item), None)

    def _table(self, dev: str, item: str) -> BlockTable | None:
        """The block table of a transfer being received, or None."""
        with self._plock:
            tab = self._tables.get((dev, item))
            if tab is not None:
                self._tables.move_to_end((dev, item))
                return tab
        tr = self.db.one("SELECT state FROM transfers WHERE device = ? AND item = ?", [dev, item])
        if not tr or tr["state"] != "receiving":
            return None
        try:  # the manifest written at 'manifest' after its signature was checked
            doc = json.loads(self.storage.get(self._partial(dev, item), mf.MANIFEST))
        except (OSError, ValueError):
            return None
        tab = block_table(doc)
        self._remember_table(dev, item, tab)
        return tab

    def _remember_table(self, dev: str, item: str, tab: BlockTable) -> None:
        with self._plock:
            self._tables[(dev, item)] = tab
            while len(self._tables) > MAX_TABLES:
                self._tables.popitem(last=False)

    def commit_ranges(self) -> None:
        """Record the ranges of blocks written since the last call, in one transaction. The
        receiver calls it before it answers 'ok' for them (a crash before that: they are resent)."""
        with self._plock:
            rows, self._pending_ranges = self._pending_ranges, []
        if rows:
            self.db.fast_many("INSERT INTO ranges(device, item, file, start, \"end\") VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING", rows)

    def held(self, dev: str, item: str) -> dict[str, list[list[int]]]:
        self.commit_ranges()
        out: dict[str, list] = {}
        for r in self.db.query("SELECT file, start, \"end\" FROM ranges WHERE device = ? AND item = ?", [dev, item]):
            out.setdefault(r["file"], []).append((r["start"], r["end"]))
        return {k: P.merge_ranges(v) for k, v in out.items()}

    def _is_held(self, dev: str, item: str, b: Block) -> bool:
        with self._plock:
            if any(r[:3] == (dev, item, b.file) and r[3] <= b.offset and b.end <= r[4] for r in self._pending_ranges):
                return True
        return self.db.one("SELECT 1 FROM ranges WHERE device = ? AND item = ? AND file = ? AND start <= ? "
                           "AND \"end\" >= ? LIMIT 1", [dev, item, b.file, b.offset, b.end]) is not None

    def on_chunk(self, device: dict, item: str, payload: bytes, props: dict[str, str],
                 hashed: str | None = None) -> P.Answer:
        c = P.parse_chunk(payload, props, hashed)
        try:
            ans = self._on_chunk(device, item, c)
        except ChunkRefused as exc:
            self.verified["refused"] += 1
            ans = P.Answer(item=item, kind="chunk", status=P.ERROR, reason=str(exc), file=exc.file, offset=exc.offset)
        ans.corr = c.corr
        return ans

    def _on_chunk(self, device: dict, item: str, c: P.ChunkMsg) -> P.Answer:
        dev = device["id"]
        tab = self._table(dev, item)
        if tab is None:
            q = self.on_query(dev, item)
            if q.status == P.STORED:
                return P.Answer(item=item, kind="chunk", status=P.OK, file=c.file, offset=c.offset)
            return P.Answer(item=item, kind="chunk", status=q.status if q.status != P.RECEIVING else P.UNKNOWN,
                            reason=q.reason or "no manifest received for this item: send the manifest first")
        if c.file not in tab.names():
            raise ChunkRefused(f"chunk for file {c.file!r} which the signed manifest does not list")
        n = len(c.data)
        end = c.offset + n
        b = tab.at(c.file, c.offset)
        if b is None or end > b.end or n == 0:
            raise ChunkRefused(f"chunk {c.file}@{c.offset}+{n} is not one block of the signed manifest "
                               + (f"(its block is [{b.offset}, {b.end}))" if b else "(no block there)"),
                               c.file, c.offset)
        if c.offset != b.offset or n != b.size:
            return self._on_piece(dev, item, tab, b, c)
        digest = c.sha256 if tab.alg == "sha256" else hashing.hexdigest(tab.alg, c.data)
        if digest != b.hash:
            raise ChunkRefused(f"chunk {c.file} bytes [{b.offset}, {b.end}) differ from the block's hash in the "
                               "signed manifest: send that range again", c.file, c.offset)
        self.verified["blocks"] += 1
        if self._is_held(dev, item, b):  # never written twice
            return P.Answer(item=item, kind="chunk", status=P.OK, file=c.file, offset=c.offset)
        if not self.storage.write_at(self._partial(dev, item), c.file, c.offset, c.data):
            self._forget_transfer(dev, item)
            return self._gone(dev, item, c)
        with self._plock:
            self._pending_ranges.append((dev, item, c.file, b.offset, b.end))
        if not self.batch_ranges:
            self.commit_ranges()
        return P.Answer(item=item, kind="chunk", status=P.OK, file=c.file, offset=c.offset)

    def _on_piece(self, dev: str, item: str, tab: BlockTable, b: Block, c: P.ChunkMsg) -> P.Answer:
        ok = P.Answer(item=item, kind="chunk", status=P.OK, file=c.file, offset=c.offset)
        with self._item_lock(dev, item):  # other receivers may hold other pieces of this block
            if self._is_held(dev, item, b):
                return ok
            key = self._partial(dev, item)
            if not self.storage.write_at(key, c.file, c.offset, c.data):
                self._forget_transfer(dev, item)
                return self._gone(dev, item, c)
            self.db.fast_many("INSERT INTO pieces(device, item, file, start, \"end\") VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                              [(dev, item, c.file, c.offset, c.offset + len(c.data))])
            have = self.db.query("SELECT start, \"end\" FROM pieces WHERE device = ? AND item = ? AND file = ? "
                                 "AND start >= ? AND \"end\" <= ?", [dev, item, c.file, b.offset, b.end])
            if P.missing_ranges(b.size, [[r["start"] - b.offset, r["end"] - b.offset] for r in have]):
                return ok
            data = self.storage.read_at(key, c.file, b.offset, b.size)
            if data is None:
                return self._gone(dev, item, c)
            good = len(data) == b.size and hashing.hexdigest(tab.alg, data) == b.hash
            with self.db.atomic() as db:
                db.execute("DELETE FROM pieces WHERE device = ? AND item = ? AND file = ? AND start >= ? AND \"end\" <= ?",
                           [dev, item, c.file, b.offset, b.end])
                if good:
                    db.execute("INSERT INTO ranges(device, item, file, start, \"end\") VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                               [dev, item, c.file, b.offset, b.end])
        if not good:
            raise ChunkRefused(f"block {c.file} bytes [{b.offset}, {b.end}) assembled from pieces differs from the "
                               "signed manifest: send that range again", c.file, b.offset)
        self.verified["assembled"] += 1
        return ok

    def _gone(self, dev: str, item: str, c: P.ChunkMsg) -> P.Answer:
        q = self.on_query(dev, item)
        status = P.OK if q.status == P.STORED else (q.status if q.status != P.RECEIVING else P.ERROR)
        return P.Answer(item=item, kind="chunk", status=status, file=c.file, offset=c.offset, reason=q.reason)

