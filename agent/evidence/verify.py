"""Offline verification of an item directory and of a device's chain of items.

Used by ``edge-agent verify`` and, unchanged, by the archive before it accepts an item.
Every failure names the exact place: which file, which segment, which field, which key.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from agent.common.errors import EdgeError, VerifyError
from . import hashing, keys, manifest as mf, strict


@dataclasses.dataclass
class ItemReport:
    path: Path
    item_id: str
    device_id: str
    device_seq: int
    manifest_hash: str
    prev_manifest_hash: str | None
    item_hash: str
    bytes: int
    segments: int
    annotations: int
    manifest: dict
    #: an item the archive deleted by its retention rule: only its signed tombstone is left
    expired: bool = False

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d.pop("manifest")
        return d


def _fail(msg: str) -> None:
    raise VerifyError(msg)


def check_signature(data: bytes, sig_data: bytes, ring: keys.KeyRing, where: str) -> str:
    rec = mf.parse_signature(sig_data, where)
    public = ring.get(rec["key_id"])
    if public is None:
        other = ring.device_of.get(rec["key_id"])
        if other:
            _fail(f"{where}: signed by the key {rec['key_id']} of device {other}, not a key trusted for this item "
                  "(设备只能为自己签名 / a device signs only its own items)")
        _fail(f"{where}: signed by unknown key {rec['key_id']} (not among the trusted keys)")
    if not keys.verify_sig(public, data, rec["sig"]):
        _fail(f"{where}: bad signature: the manifest was modified after sealing or signed by another key")
    return rec["key_id"]


def safe_member(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and "\x00" not in name and name not in (".", "..")


def check_structure(m: dict, where: str) -> None:
    """Every field, type and chain rule of the format (:func:`agent.evidence.strict.check_manifest`)."""
    try:
        strict.check_manifest(m, where)
    except strict.FormatError as exc:
        _fail(f"malformed manifest: {exc}")


def verify_item(item_dir: str | os.PathLike, ring: keys.KeyRing, *, check_files: bool = True,
                expected_device: str | None = None, digests: dict[str, "StreamDigest"] | None = None,
                blocks_checked: bool = False) -> ItemReport:
    """Verify signature, metadata, every segment hash and link, sizes, and annotations.

    ``digests`` (file name -> :class:`StreamDigest`) supplies the content hashes of files the
    caller hashed while writing them (the archive receiver, as chunks arrive in order): those
    files are not read again; every other check is the same.

    ``blocks_checked``: the caller wrote every block only after checking it against this signed
    manifest's segment hash (the archive's chunk intake). The files are then read back and each
    checked against the signed whole-file hash only, one hash per byte: bytes on disk that hash
    to the signed file hash are the bytes the device sealed, and the blocks written were the ones
    whose hashes the manifest signs, so a file that passes matches both. Everything else is the
    same; `edge-agent verify` never sets it.
    """
    try:
        return _verify_item(item_dir, ring, check_files=check_files, expected_device=expected_device,
                            digests=digests, blocks_checked=blocks_checked)
    except VerifyError:
        raise
    except EdgeError as exc:
        raise VerifyError(str(exc)) from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # backstop: never a crash
        raise VerifyError(f"{item_dir}: malformed item: {exc!r}") from None


def _verify_item(item_dir, ring: keys.KeyRing, *, check_files: bool, expected_device: str | None,
                 digests: dict[str, "StreamDigest"] | None = None, blocks_checked: bool = False) -> ItemReport:
    d = Path(item_dir)
    mpath, spath = d / mf.MANIFEST, d / mf.SIGNATURE
    if not mpath.is_file():
        _fail(f"{d}: no {mf.MANIFEST}")
    if not spath.is_file():
        _fail(f"{d}: no {mf.SIGNATURE} (item is not sealed)")
    data = mpath.read_bytes()
    kid = check_signature(data, spath.read_bytes(), ring, str(mpath))
    try:
        m = mf.parse(data, str(mpath))
    except EdgeError as exc:
        raise VerifyError(str(exc)) from None
    owner = ring.device_of.get(kid)
    device_id = m["device"]["id"]
    if kid in ring.annotators:
        _fail(f"{mpath}: signed by annotator key {kid} (unit {ring.annotators[kid]}): an annotator signs "
              "annotations, never a manifest")
    if owner and device_id != owner:
        _fail(f"{mpath}: key {kid} belongs to device {owner}, manifest claims device {device_id}")
    if m["device"]["key_id"] != kid:
        _fail(f"{mpath}: manifest names device key {m['device']['key_id']}, signed by key {kid}")
    if expected_device and device_id != expected_device:
        _fail(f"{mpath}: item of device {device_id}, expected {expected_device}")
    alg = m.get("hash_alg")
    if alg not in hashing.available_algorithms():
        _fail(f"{mpath}: hash algorithm {alg!r} not available here")
    try:
        mf.validate_metadata(m.get("metadata"))
    except EdgeError as exc:
        _fail(f"{mpath}: metadata: {exc}")
    # the chain: header hash, then every segment's hash and link
    head = hashing.header_hash(alg, mf.header_of(m))
    files = m.get("files", [])
    segs = m.get("segments", [])
    prev = head
    for i, seg in enumerate(segs):
        link = hashing.link(alg, prev, bytes.fromhex(seg["hash"]), i)
        if link.hex() != seg["link"]:
            _fail(f"{mpath}: segment {i}: link does not chain to the previous one")
        prev = link
    if prev.hex() != m.get("item_hash"):
        _fail(f"{mpath}: item_hash does not match the last link")
    total = 0
    if check_files:
        listed = set()
        for fi, f in enumerate(files):
            name = f.get("name", "")
            if not safe_member(name):
                _fail(f"{mpath}: file {fi}: unsafe name {name!r}")
            listed.add(name)
            path = d / mf.FILES_DIR / name
            if not path.is_file():
                _fail(f"{d}: file {name} is missing")
            size = path.stat().st_size
            if size != f["size"]:
                _fail(f"{path}: size {size} bytes, sealed as {f['size']} (truncated or extended)")
            file_segs = [(i, s) for i, s in enumerate(segs) if s["file"] == fi]
            dg = (digests or {}).get(name)
            if dg is not None:  # hashed by the caller over the very bytes it wrote (see StreamDigest)
                _check_digest(dg, alg, path, mpath, f, file_segs)
                total += size
                continue
            whole = hashing.new(alg)
            if blocks_checked:  # each block was checked on the way in: the file hash only, in long reads
                expect_off = 0
                for i, s in file_segs:
                    if s["offset"] != expect_off:
                        _fail(f"{mpath}: segment {i}: offset {s['offset']}, expected {expect_off}")
                    expect_off += s["size"]
                if expect_off != f["size"]:
                    _fail(f"{mpath}: segments of {name} cover {expect_off} of {f['size']} bytes")
                if _hash_file(path, whole) != size:
                    _fail(f"{path}: changed size while being read")
                if whole.hexdigest() != f["hash"]:
                    _fail(f"{path}: file hash mismatch")
                total += size
                continue
            with open(path, "rb") as fh:
                expect_off = 0
                for i, s in file_segs:
                    if s["offset"] != expect_off:
                        _fail(f"{mpath}: segment {i}: offset {s['offset']}, expected {expect_off}")
                    block = fh.read(s["size"])
                    whole.update(block)
                    if len(block) != s["size"] or (not blocks_checked and hashing.digest(alg, block).hex() != s["hash"]):
                        _fail(f"{path}: segment {i} (bytes {s['offset']}-{s['offset'] + s['size'] - 1}): "
                              "hash mismatch, content altered")
                    expect_off += s["size"]
                if expect_off != f["size"]:
                    _fail(f"{mpath}: segments of {name} cover {expect_off} of {f['size']} bytes")
            if whole.hexdigest() != f["hash"]:
                _fail(f"{path}: file hash mismatch")
            total += size
        present = {p.name for p in (d / mf.FILES_DIR).iterdir()} if (d / mf.FILES_DIR).is_dir() else set()
        extra = sorted(present - listed)
        if extra:
            _fail(f"{d}: unexpected file(s) not in the manifest: {', '.join(extra)}")
    mhash = mf.manifest_hash(alg, data)
    anns = mf.read_annotations(d)
    prev_ann = None
    meta = m["metadata"]
    for n, ann in enumerate(anns, 1):
        where = f"{d / mf.ANNOTATIONS_DIR}/{n:04d}.json"
        if not isinstance(ann.record, dict):
            _fail(f"{where}: annotation is not a JSON object")
        sig = Path(where[:-5] + ".sig")
        if not sig.is_file():
            _fail(f"{where}: annotation without signature")
        akid = check_signature(ann.data, sig.read_bytes(), ring, where)
        try:
            rec = strict.parse_annotation(ann.data, where)
            strict.check_annotation_signer(akid, manifest_key_id=kid, device_id=device_id,
                                           unit_code=m["device"]["unit_code"], device_of=ring.device_of,
                                           annotators=ring.annotators, where=where)
        except strict.FormatError as exc:
            _fail(str(exc))
        if rec.get("seq") != n:
            _fail(f"{where}: annotation sequence {rec.get('seq')}, expected {n} (one removed or reordered)")
        if rec.get("manifest_hash") != mhash or rec.get("item_id") != m["item_id"]:
            _fail(f"{where}: annotation belongs to another item or manifest")
        if rec.get("prev") != prev_ann:
            _fail(f"{where}: annotation chain broken (previous annotation changed or removed)")
        changed = mf.changed_mandatory(meta, rec.get("set") or {}) if isinstance(rec.get("set"), dict) else []
        if changed and not (isinstance(rec.get("reason"), str) and rec["reason"].strip()):
            _fail(f"{where}: annotation changes {', '.join(changed)} without a reason")
        meta = mf.effective_metadata({"metadata": meta}, [ann])
        prev_ann = hashing.hexdigest(alg, ann.data)
    return ItemReport(path=d, item_id=m["item_id"], device_id=device_id, device_seq=m["device_seq"],
                      manifest_hash=mhash, prev_manifest_hash=m.get("prev_manifest_hash"),
                      item_hash=m["item_hash"], bytes=total, segments=len(segs), annotations=len(anns),
                      manifest=m)


#: the archive's read-back reads this much at a time: one hash update per read, so the thread
#: takes Python's lock (the GIL) back 16 times for a 32 MiB file instead of 128 (each time it may
#: wait for the receiving and writing threads)
READ_BACK = 4 << 20


def _hash_file(path: Path, h) -> int:
    """Feed the whole file to ``h`` in :data:`READ_BACK` pieces (one reused buffer); its size."""
    buf = bytearray(READ_BACK)
    view = memoryview(buf)
    n = 0
    with open(path, "rb", buffering=0) as fh:
        while True:
            got = fh.readinto(buf)
            if not got:
                return n
            h.update(view[:got])
            n += got


class StreamDigest:
    """The hashes ``verify`` computes for one file (per segment, and of the whole file), computed
    instead over the file's bytes as they are written, in order, so a receiver need not read the
    file back. ``feed`` must see every byte once, from offset 0 on; ``complete`` tells whether it
    did. A chunk that is exactly one segment passes its already computed digest (``seg_digest``)
    and is not hashed twice for it.
    """

    __slots__ = ("alg", "sizes", "pos", "size", "whole", "seg", "fill", "segments")

    def __init__(self, alg: str, seg_sizes: list[int]):
        self.alg = alg
        self.sizes = list(seg_sizes)
        self.size = sum(self.sizes)
        self.pos = 0
        self.whole = hashing.new(alg)
        self.seg = None
        self.fill = 0
        self.segments: list[str] = []

    def feed(self, data, seg_digest: str | None = None) -> None:
        mv = memoryview(data)
        if self.pos + len(mv) > self.size:
            raise ValueError("more bytes than the manifest lists for this file")
        self.whole.update(mv)
        self.pos += len(mv)
        k = len(self.segments)
        if self.fill == 0 and seg_digest is not None and k < len(self.sizes) and len(mv) == self.sizes[k]:
            self.segments.append(seg_digest)
            return
        while mv:
            k = len(self.segments)
            need = self.sizes[k] - self.fill
            part, mv = mv[:need], mv[need:]
            if self.seg is None:
                self.seg = hashing.new(self.alg)
            self.seg.update(part)
            self.fill += len(part)
            if self.fill == self.sizes[k]:
                self.segments.append(self.seg.hexdigest())
                self.seg, self.fill = None, 0

    @property
    def complete(self) -> bool:
        return self.pos == self.size and len(self.segments) == len(self.sizes)


def _check_digest(dg: StreamDigest, alg: str, path: Path, mpath: Path, f: dict, file_segs: list) -> None:
    if dg.alg != alg or not dg.complete or dg.size != f["size"] or len(dg.segments) != len(file_segs):
        _fail(f"{path}: content digest incomplete ({dg.pos} of {f['size']} bytes hashed)")
    expect_off = 0
    for k, (i, s) in enumerate(file_segs):
        if s["offset"] != expect_off:
            _fail(f"{mpath}: segment {i}: offset {s['offset']}, expected {expect_off}")
        if dg.sizes[k] != s["size"] or dg.segments[k] != s["hash"]:
            _fail(f"{path}: segment {i} (bytes {s['offset']}-{s['offset'] + s['size'] - 1}): "
                  "hash mismatch, content altered")
        expect_off += s["size"]
    if expect_off != f["size"]:
        _fail(f"{mpath}: segments of {f['name']} cover {expect_off} of {f['size']} bytes")
    if dg.whole.hexdigest() != f["hash"]:
        _fail(f"{path}: file hash mismatch")


def find_items(root: str | os.PathLike) -> list[Path]:
    return sorted(p.parent for p in Path(root).rglob(mf.MANIFEST) if p.parent.name != mf.ANNOTATIONS_DIR)


def find_tombstones(root: str | os.PathLike) -> list[Path]:
    from . import tombstone as tb

    return sorted(p.parent for p in Path(root).rglob(tb.TOMBSTONE))


def verify_tombstone(item_dir: str | os.PathLike, ring: keys.KeyRing) -> ItemReport:
    """An expired item's tombstone (signed by an archive key of ``ring``) as the link it keeps in
    its device's chain: seq, manifest hash, previous manifest hash, item hash, annotation count."""
    from . import tombstone as tb

    d = Path(item_dir)
    try:
        t = tb.read(d, ring)
    except VerifyError:
        raise
    except EdgeError as exc:
        raise VerifyError(str(exc)) from None
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise VerifyError(f"{d}: unreadable tombstone: {exc!r}") from None
    return ItemReport(path=d, item_id=t["item_id"], device_id=t["device_id"], device_seq=t["device_seq"],
                      manifest_hash=t["manifest_hash"], prev_manifest_hash=t["prev_manifest_hash"],
                      item_hash=t["item_hash"], bytes=0, segments=0, annotations=t["annotations"],
                      manifest={"session": t["session"], "tombstone": t}, expired=True)


@dataclasses.dataclass
class ChainReport:
    devices: dict[str, dict]
    items: list[ItemReport]

    def as_dict(self) -> dict:
        return {"devices": self.devices, "items": [r.as_dict() for r in self.items]}


def verify_chain(root: str | os.PathLike, ring: keys.KeyRing, *, check_files: bool = True,
                 allow_missing_start: bool = False, checkpoints: dict[str, dict] | None = None) -> ChainReport:
    """Verify every item under ``root`` and that each device's sequence has no hole, no fork,
    and that each interview session's segments follow one another.

    ``checkpoints`` (device -> ``{count, head, annotations, time}`` of its verified, signed chain
    checkpoint) adds what the hash chains cannot show: that the device's last items or an item's
    last annotations were removed (the checkpoint announces more than is found)."""
    items = [verify_item(p, ring, check_files=check_files) for p in find_items(root)]
    # an item deleted by its retention rule leaves a tombstone signed by the archive: an "expired" link
    items += [verify_tombstone(p, ring) for p in find_tombstones(root)]
    if not items:
        _fail(f"{root}: no items found")
    by_dev: dict[str, list[ItemReport]] = {}
    for r in items:
        by_dev.setdefault(r.device_id, []).append(r)
    devices = {}
    for dev, reps in by_dev.items():
        reps.sort(key=lambda r: r.device_seq)
        first = reps[0]
        if first.device_seq != 1 and not allow_missing_start:
            _fail(f"device {dev}: items before seq {first.device_seq} are missing (item {first.item_id})")
        for a, b in zip(reps, reps[1:]):
            if b.device_seq == a.device_seq:
                _fail(f"device {dev}: two items with seq {a.device_seq}: {a.item_id}, {b.item_id}")
            if b.device_seq != a.device_seq + 1:
                _fail(f"device {dev}: item seq {a.device_seq + 1} missing between {a.item_id} and {b.item_id}")
            if b.prev_manifest_hash != a.manifest_hash:
                _fail(f"device {dev}: item {b.item_id} does not chain to {a.item_id} (previous manifest hash differs)")
        _check_sessions(dev, reps)
        devices[dev] = {"items": len(reps), "first_seq": first.device_seq, "head_seq": reps[-1].device_seq,
                        "head_hash": reps[-1].manifest_hash, "annotations": sum(r.annotations for r in reps),
                        "expired": sum(r.expired for r in reps)}
        cp = (checkpoints or {}).get(dev)
        if cp is not None:
            check_against_checkpoint(dev, reps, cp)
            devices[dev]["checkpoint"] = cp.get("time")
    return ChainReport(devices=devices, items=items)


def check_against_checkpoint(dev: str, reps: list[ItemReport], cp: dict) -> None:
    """The items found of one device (sorted by seq) against its signed chain checkpoint."""
    last = reps[-1]
    when = f"the signed checkpoint of {cp.get('time')}"
    if last.device_seq < cp["count"]:
        _fail(f"device {dev}: {when} announces {cp['count']} items, the chain ends at seq {last.device_seq} "
              f"(item(s) {last.device_seq + 1}..{cp['count']} removed or not yet received) / 末尾证据缺失")
    if last.device_seq == cp["count"] and last.manifest_hash != cp["head"]:
        _fail(f"device {dev}: {when} names head {cp['head']}, item {last.item_id} at seq {last.device_seq} "
              f"has manifest hash {last.manifest_hash}")
    announced = cp.get("annotations")
    found = sum(r.annotations for r in reps)
    if announced is not None and found < announced:
        _fail(f"device {dev}: {when} announces {announced} annotations, {found} found "
              "(an annotation removed or not yet received) / 注释缺失")


def _check_sessions(dev: str, reps: list[ItemReport]) -> None:
    sessions: dict[str, list[ItemReport]] = {}
    for r in reps:
        s = r.manifest.get("session")
        if s:
            sessions.setdefault(s["id"], []).append(r)
    for sid, segs in sessions.items():
        segs.sort(key=lambda r: r.manifest["session"]["index"])
        for n, r in enumerate(segs):
            s = r.manifest["session"]
            if s["index"] != n:
                _fail(f"session {sid}: segment {n} missing (next present is {s['index']}, item {r.item_id})")
            want_prev = segs[n - 1].item_hash if n else None
            if s.get("prev_item_hash") != want_prev:
                _fail(f"session {sid}: segment {n} (item {r.item_id}) does not follow segment {n - 1}")
