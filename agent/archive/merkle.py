"""The archive-wide checkpoint: a Merkle tree over everything the archive ever stored, as
Certificate Transparency keeps its log (RFC 6962 / RFC 9162), signed by the archive's key.

Every item the archive stores, and every tombstone retention leaves, is appended once to an
append-only list of leaves (``merkle_leaves``: index from 1, the leaf's canonical JSON and its
hash) in the transaction that stores it. A checkpoint (``edge-archive-checkpoint/1``, format in
docs/evidence-format.md "The archive's checkpoint") signs the tree's size and root hash; the archive
makes one every ``archive.checkpoint_every_h`` in ``archive serve`` (and on ``archive checkpoint``),
keeps it in the index and under ``ROOT/_merkle/``, and publishes it retained on
``P/archive/checkpoint`` for whoever keeps copies outside the archive.

``archive audit OLD_CHECKPOINT`` proves that the current store extends an earlier checkpoint: the
checkpoint's signature, the first OLD.size leaves still giving OLD.root, a consistency proof from
OLD to the current tree (generated and verified with ``pymerkle``, whose trees are RFC 9162 trees
with RFC 6962's 0x00/0x01 leaf and node prefixes), and every leaf still accounted for in the store:
an item's row with the same manifest hash and its manifest on disk with that hash, or the tombstone
of its expiry. An insider who deletes an archived item (row, files, or leaf) is named.
"""

from __future__ import annotations

import hashlib
import json
import logging

from pymerkle import BaseMerkleTree, InvalidProof, verify_consistency

from agent.common import canon
from agent.common.errors import EdgeError, VerifyError
from agent.common.fs import atomic_write
from agent.common.timeutil import now_iso
from ..evidence import hashing, keys, manifest as mf
from ..wire.archive_checkpoint import FORMAT, PUBLISHED_FORMAT, parse_checkpoint, unwrap  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

MERKLE_DIR = "_merkle"
PUBLISHED = "published.json"  # under MERKLE_DIR: the last checkpoint published on the broker


def leaf_bytes(kind: str, row: dict) -> bytes:
    """The leaf of a stored item or of a tombstone: RFC 8785 JSON (docs/evidence-format.md)."""
    body = {"type": kind, "device": row["device"], "item": row["item"], "seq": row["seq"],
            "manifest_hash": row["manifest_hash"]}
    if kind == "tombstone":
        body["tombstone_hash"] = hashlib.sha256(row["record"].encode()).hexdigest()
    return canon.canonical(body)


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + data).digest()


class Snapshot(BaseMerkleTree):
    """The leaf hashes as read from the index, as a pymerkle tree (read-only)."""

    def __init__(self, hashes: list[bytes]):
        self.hashes = hashes
        super().__init__("sha256")

    def _encode_entry(self, data):
        return data

    def _store_leaf(self, data, digest):
        raise EdgeError("the archive's Merkle log is appended to in the index, not here")

    def _get_leaf(self, index):
        return self.hashes[index - 1]

    def _get_leaves(self, offset, width):
        return self.hashes[offset:offset + width]

    def _get_size(self):
        return len(self.hashes)


def root_of(hashes: list[bytes], size: int) -> bytes:
    return Snapshot(hashes).get_root(size)


class MerkleLog:
    """Mixed into :class:`agent.archive.storage.ArchiveStore`."""

    def add_leaf(self, db, kind: str, row: dict) -> int:
        """Inside the transaction that stores ``row``: append its leaf; returns its index."""
        self.db.serialize("merkle")
        have = db.execute("SELECT idx FROM merkle_leaves WHERE kind = ? AND device = ? AND item = ?",
                          [kind, row["device"], row["item"]]).fetchone()
        if have:  # stored again after a receiver died between the rename and its commit
            return have[0]
        data = leaf_bytes(kind, row)
        last = db.execute("SELECT max(idx) FROM merkle_leaves").fetchone()
        idx = (last[0] or 0) + 1
        db.execute("INSERT INTO merkle_leaves(idx, kind, device, item, leaf, hash, added_at) VALUES (?,?,?,?,?,?,?)",
                   [idx, kind, row["device"], row["item"], data.decode(), leaf_hash(data).hex(), now_iso()])
        return idx

    def merkle_catch_up(self) -> int:
        """Leaves for what is stored and has none yet (items stored before the log existed,
        tombstones of items expired since); returns how many were added."""
        n = 0
        with self.db.atomic() as db:
            self.db.serialize("merkle")
            for r in self.db.query("SELECT i.* FROM items i LEFT JOIN merkle_leaves l ON l.kind = 'item' "
                                   "AND l.device = i.device AND l.item = i.item WHERE l.idx IS NULL "
                                   "ORDER BY i.stored_at, i.device, i.seq"):
                self.add_leaf(db, "item", r)
                n += 1
            for r in self.db.query("SELECT t.* FROM tombstones t LEFT JOIN merkle_leaves l ON l.kind = 'tombstone' "
                                   "AND l.device = t.device AND l.item = t.item WHERE l.idx IS NULL "
                                   "ORDER BY t.expired_at, t.device, t.seq"):
                self.add_leaf(db, "tombstone", r)
                n += 1
        return n

    def leaves(self) -> list[dict]:
        return self.db.query("SELECT idx, kind, device, item, leaf, hash FROM merkle_leaves ORDER BY idx")

    def make_checkpoint(self, actor: str | None = None) -> dict:
        """Sign the current tree (after catching up) and keep the checkpoint; returns it."""
        self.merkle_catch_up()
        with self.db.atomic() as db:
            self.db.serialize("merkle")
            hashes = [bytes.fromhex(r["hash"]) for r in self.leaves()]
            kid = keys.key_id(self.signing_key.public_key())
            body = {"format": FORMAT, "archive": kid, "size": len(hashes), "root": root_of(hashes, len(hashes)).hex(),
                    "time": now_iso(), "key_id": kid}
            cp = {**body, "sig": keys.sign(self.signing_key, canon.canonical(body))}
            payload = json.dumps(cp, ensure_ascii=False, sort_keys=True)
            db.execute("INSERT INTO merkle_checkpoints(size, root, time, key_id, payload) VALUES (?,?,?,?,?)",
                       [cp["size"], cp["root"], cp["time"], kid, payload])
            self.audit.append("checkpoint", None, actor=actor or f"archive:{self.receiver}", size=cp["size"],
                              root=cp["root"])
        d = self.root / MERKLE_DIR
        d.mkdir(exist_ok=True)
        atomic_write(d / f"checkpoint-{cp['size']:012d}-{cp['time'][:19].replace(':', '')}.json", payload.encode())
        atomic_write(d / "latest.json", payload.encode())
        return cp

    def published_record(self, cp: dict) -> dict:
        """What ``archive serve`` publishes with checkpoint ``cp`` (``edge-archive-consistency/1``):
        ``cp``, the checkpoint published before it (``ROOT/_merkle/published.json``; null for the
        first) and the consistency proof from that one to ``cp`` (``pymerkle``, serialised as
        ``archive audit --json`` prints it; null when there is no earlier one, or when this store
        no longer extends it, which a witness then reports)."""
        prev = None
        f = self.root / MERKLE_DIR / PUBLISHED
        if f.is_file():
            try:
                prev = parse_checkpoint(f.read_bytes(), self.archive_keys())
            except (OSError, VerifyError) as exc:
                log.warning("%s unreadable, publishing without a proof: %s", f, exc)
        proof = None
        if prev is not None and 0 < prev["size"] <= cp["size"]:
            hashes = [bytes.fromhex(r["hash"]) for r in self.leaves()][:cp["size"]]
            if len(hashes) == cp["size"] and root_of(hashes, prev["size"]).hex() == prev["root"]:
                proof = Snapshot(hashes).prove_consistency(prev["size"], cp["size"]).serialize()
        return {"format": PUBLISHED_FORMAT, "checkpoint": cp, "previous": prev, "proof": proof}

    def note_published(self, cp: dict) -> None:
        """``cp`` reached the broker: the next one is published with a proof from it."""
        d = self.root / MERKLE_DIR
        d.mkdir(exist_ok=True)
        atomic_write(d / PUBLISHED, json.dumps(cp, ensure_ascii=False, sort_keys=True).encode())

    def latest_checkpoint(self) -> dict | None:
        row = self.db.one("SELECT payload FROM merkle_checkpoints ORDER BY size DESC, time DESC LIMIT 1")
        return json.loads(row["payload"]) if row else None

    # --- audit ---------------------------------------------------------------------------------
    def archive_keys(self) -> list:
        """The archive's public keys: the current one and those retired by a rotation."""
        d = self.root / "_archive"
        pubs = [self.signing_key.public_key()]
        pubs += [keys.load_public(p) for p in sorted((d / "retired").glob("*.pub"))] if (d / "retired").is_dir() else []
        return pubs

    def audit_against(self, old_payload: bytes, actor: str | None = None) -> dict:
        """``archive audit OLD_CHECKPOINT``: does the current store extend ``old``? Returns the
        report; ``ok`` is False with each problem named."""
        old = parse_checkpoint(unwrap(old_payload), self.archive_keys())
        self.merkle_catch_up()
        rows = self.leaves()
        problems: list[str] = []
        for n, r in enumerate(rows, 1):
            if r["idx"] != n:
                problems.append(f"leaf {n} is missing from the log (next present is {r['idx']}): the log was cut")
                break
            if leaf_hash(r["leaf"].encode()).hex() != r["hash"]:
                problems.append(f"leaf {n} ({r['kind']} {r['item']}): its hash is not the hash of its content")
        hashes = [bytes.fromhex(r["hash"]) for r in rows]
        size = len(hashes)
        cur_root = root_of(hashes, size) if hashes else hashlib.sha256(b"").digest()
        proof = None
        if size < old["size"]:
            problems.append(f"the log has {size} leaves, the checkpoint of {old['time']} signed {old['size']}")
        elif old["size"] == 0:
            pass
        elif root_of(hashes, old["size"]).hex() != old["root"]:
            problems.append(f"the first {old['size']} leaves no longer give the root signed {old['time']}: "
                            "leaves were altered, removed or reordered")
        else:
            p = Snapshot(hashes).prove_consistency(old["size"], size)
            try:
                verify_consistency(bytes.fromhex(old["root"]), cur_root, p, prior_size=old["size"], later_size=size,
                                   algorithm="sha256")
            except InvalidProof as exc:
                problems.append(f"consistency proof from {old['size']} to {size} leaves fails: {exc}")
            proof = p.serialize()
        problems += self._leaves_in_store(rows)
        self.audit.append("audit", None, actor=actor, against_size=old["size"], against_root=old["root"], size=size,
                          ok=not problems)
        return {"ok": not problems, "old": {k: old[k] for k in ("size", "root", "time", "key_id")},
                "current": {"size": size, "root": cur_root.hex()}, "consistency_proof": proof, "problems": problems}

    def _leaves_in_store(self, rows: list[dict]) -> list[str]:
        """Every leaf still accounted for: the item's row, its manifest with the same hash on
        disk, or the tombstone of its expiry."""
        problems = []
        items = {(r["device"], r["item"]): r for r in self.db.query("SELECT device, item, seq, manifest_hash, path FROM items")}
        tombs = {(r["device"], r["item"]): r for r in self.db.query("SELECT device, item, record FROM tombstones")}
        for r in rows:
            k = (r["device"], r["item"])
            leaf = json.loads(r["leaf"])
            where = f"{r['kind']} {r['item']} (device {r['device']}, seq {leaf.get('seq')}, leaf {r['idx']})"
            if r["kind"] == "tombstone":
                t = tombs.get(k)
                if t is None or hashlib.sha256(t["record"].encode()).hexdigest() != leaf.get("tombstone_hash"):
                    problems.append(f"{where}: the tombstone is gone from the index or altered")
                continue
            row = items.get(k)
            if row is None:
                if k not in tombs:
                    problems.append(f"{where}: archived, and its row is gone from the index (no tombstone: not "
                                    "expired by retention)")
                continue
            if row["manifest_hash"] != leaf["manifest_hash"]:
                problems.append(f"{where}: the index names another manifest ({row['manifest_hash'][:16]}…)")
                continue
            try:
                data = self.storage.get(row["path"], mf.MANIFEST)
            except (OSError, EdgeError):
                problems.append(f"{where}: its files are gone from the store ({row['path']})")
                continue
            try:
                alg = json.loads(data).get("hash_alg", "sha256")
                got = mf.manifest_hash(alg if alg in hashing.available_algorithms() else "sha256", data)
            except (ValueError, AttributeError):
                got = None
            if got != leaf["manifest_hash"]:
                problems.append(f"{where}: the manifest on disk at {row['path']} is not the one archived")
        return problems


def archive_public_keys(root) -> list:
    """The archive's public keys at ``root``, read-only: ``_archive/archive.pub`` and the keys a
    rotation retired (what a checkpoint may be signed with; the monitor's witness reads them)."""
    from pathlib import Path

    d = Path(root) / "_archive"
    paths = [d / "archive.pub", *sorted((d / "retired").glob("*.pub"))] if d.is_dir() else []
    return [keys.load_public(p) for p in paths if p.is_file()]
