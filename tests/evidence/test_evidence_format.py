"""docs/evidence-format.md is enough to re-implement verification: an independent verifier
(tools/verify_reference.py) agrees with ours on good and tampered items."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.common.errors import VerifyError
from agent.evidence import keys, manifest as mf
from agent.evidence.verify import verify_item
from agent.store.ingest import ingest
from tests.support.spine import META, make_store

REF = Path(__file__).resolve().parents[2] / "tools" / "verify_reference.py"


def _ref(item, pub):
    return subprocess.run([sys.executable, str(REF), str(item), str(pub)], capture_output=True, text=True)


def test_reference_verifier_agrees(tmp_path):
    store = make_store(tmp_path, evidence__block_size=4096)
    src = tmp_path / "clip.mp4"
    src.write_bytes(bytes(range(256)) * 50)
    m = ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
    item = store.items_dir / m["item_id"]
    ok = _ref(item, store.pub_path)
    assert ok.stdout.startswith(f"OK {m['item_id']}")
    assert mf.manifest_hash("sha256", (item / mf.MANIFEST).read_bytes()) in ok.stdout
    f = item / "files" / "clip.mp4"
    data = bytearray(f.read_bytes())
    data[9000] ^= 4
    f.write_bytes(bytes(data))
    assert _ref(item, store.pub_path).stdout.strip() == "FAIL segment 2 hash"


def test_block_size_grows_for_large_files_and_both_verifiers_agree(tmp_path):
    """A file of more than evidence.max_blocks_per_file blocks is cut into bigger blocks (block_size
    times a power of two) so its manifest stays small; each segment states its size, so our
    verifier and the reference verifier accept it, and a changed byte is still found."""
    store = make_store(tmp_path, evidence__block_size=4096, evidence__max_blocks_per_file=16)
    small, large = tmp_path / "small.mp4", tmp_path / "large.mp4"
    small.write_bytes(os.urandom(16 * 4096))
    large.write_bytes(os.urandom(16 * 4096 + 1))
    m = ingest(store, [small, large], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
    item = store.items_dir / m["item_id"]
    man = json.loads((item / mf.MANIFEST).read_bytes())
    sizes = {f["name"]: [s["size"] for s in man["segments"] if s["file"] == i] for i, f in enumerate(man["files"])}
    assert sizes["small.mp4"] == [4096] * 16
    assert sizes["large.mp4"] == [8192] * 8 + [1]
    verify_item(item, store.keyring())
    assert _ref(item, store.pub_path).stdout.startswith(f"OK {m['item_id']}")
    f = item / "files" / "large.mp4"
    data = bytearray(f.read_bytes())
    data[5 * 8192 + 7] ^= 1
    f.write_bytes(bytes(data))
    assert _ref(item, store.pub_path).stdout.strip() == "FAIL segment 21 hash"
    with pytest.raises(VerifyError, match="segment 21"):
        verify_item(item, store.keyring())


def test_default_block_size_matches_the_chunk_size_and_stays_bounded(tmp_path):
    store = make_store(tmp_path)
    assert store.block_size == store.cfg.uplink.chunk_size == 256 * 1024
    assert store.block_size_for(None) == 256 * 1024
    assert store.block_size_for(256 << 20) == 256 * 1024  # 1,024 blocks
    assert store.block_size_for((256 << 20) + 1) == 512 * 1024
    assert store.block_size_for(4 << 30) == 4 << 20  # a 4 GiB recording: 1,024 blocks of 4 MiB


def test_reference_verifier_follows_the_strict_reading(tmp_path):
    """Every form the strict reading refuses, the reference verifier refuses too; an annotation
    signed by another device or an annotator of another unit likewise."""
    from tests.evidence.test_evidence_strict import _annotate_with, _write, variants

    store = make_store(tmp_path, evidence__block_size=4096)
    src = tmp_path / "clip.mp4"
    src.write_bytes(os.urandom(10_000))
    m = ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
    item = store.items_dir / m["item_id"]
    raw = (item / mf.MANIFEST).read_bytes()
    for name, data, reason in variants(raw):
        _write(item, data, store.private_key)
        with pytest.raises(VerifyError):
            verify_item(item, store.keyring())
        out = _ref(item, store.pub_path)
        assert out.returncode == 1 and out.stdout.startswith("FAIL"), (name, out.stdout, out.stderr)
    _write(item, raw, store.private_key)
    assert _ref(item, store.pub_path).returncode == 0
    kdir = tmp_path / "keys"
    (kdir / "annotators" / "330100000000").mkdir(parents=True)
    (kdir / "dock-01.pub").write_bytes(store.pub_path.read_bytes())
    other = keys.generate(tmp_path / "b.key", kdir / "dock-02.pub")
    clerk = keys.generate(tmp_path / "c.key", kdir / "annotators" / "330100000000" / "clerk.pub")
    _annotate_with(item, clerk, {"proof": "补正"})
    assert _ref(item, kdir).returncode == 0
    verify_item(item, keys.KeyRing.from_paths(keys_dir=kdir))
    _annotate_with(item, other, {"proof": "改写"}, seq=2,
                   prev=mf.manifest_hash("sha256", (item / "annotations" / "0001.json").read_bytes()))
    out = _ref(item, kdir)
    assert out.stdout.strip() == "FAIL annotation 2 signed by another device (dock-02)", out.stdout
    with pytest.raises(VerifyError, match="of device dock-02"):
        verify_item(item, keys.KeyRing.from_paths(keys_dir=kdir))


def test_reference_verifier_detects_removal_with_the_checkpoint(tmp_path):
    from agent.evidence.verify import verify_chain
    from agent.wire import checkpoint

    store = make_store(tmp_path, evidence__block_size=4096)
    ids = []
    for n in range(3):
        src = tmp_path / f"clip{n}.mp4"
        src.write_bytes(os.urandom(5000 + n))
        ids.append(ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"))["item_id"])
    store.annotate(ids[0], {"proof": "补正"}, "t")
    kdir, cdir = tmp_path / "keys", tmp_path / "cps"
    kdir.mkdir()
    cdir.mkdir()
    (kdir / "dock-01.pub").write_bytes(store.pub_path.read_bytes())
    (cdir / "dock-01.json").write_bytes(checkpoint.make(store))

    def ref():
        return subprocess.run([sys.executable, str(REF), "--chain", str(store.items_dir), str(kdir), str(cdir)],
                              capture_output=True, text=True).stdout.strip()
    assert ref() == "OK chain dock-01: 3 items, 1 annotations"
    shutil = __import__("shutil")
    shutil.rmtree(store.items_dir / ids[0] / "annotations")
    assert ref() == "FAIL device dock-01: checkpoint announces 1 annotations, 0 found"
    shutil.rmtree(store.items_dir / ids[2])
    assert ref() == "FAIL device dock-01: checkpoint announces 3 items, chain ends at 2"
    ring = keys.KeyRing.from_paths(keys_dir=kdir)
    cp = checkpoint.parse((cdir / "dock-01.json").read_bytes(), ring.by_id[next(iter(ring.by_id))])
    with pytest.raises(VerifyError, match="announces 3 items, the chain ends at seq 2"):
        verify_chain(store.items_dir, ring, checkpoints={"dock-01": {"count": cp.count, "head": cp.head,
                                                                     "annotations": cp.annotations, "time": cp.time}})
    store.close()


def test_replaced_device_key_still_maps_to_its_device(tmp_path):
    """After `archive enroll --force` the old key is kept as DEVICE.KEYID.pub.old: items signed with
    it still verify with --keys, in both verifiers, and still only as that device's."""
    store = make_store(tmp_path, evidence__block_size=4096)
    src = tmp_path / "clip.mp4"
    src.write_bytes(os.urandom(5000))
    m = ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
    item = store.items_dir / m["item_id"]
    kdir = tmp_path / "keys"
    kdir.mkdir()
    old_kid = keys.key_id(store.private_key.public_key())
    (kdir / f"dock-01.{old_kid}.pub.old").write_bytes(store.pub_path.read_bytes())
    keys.generate(tmp_path / "new.key", kdir / "dock-01.pub")
    ring = keys.KeyRing.from_paths(keys_dir=kdir)
    assert ring.device_of[old_kid] == "dock-01"
    assert verify_item(item, ring).device_id == "dock-01"
    assert _ref(item, kdir).stdout.startswith(f"OK {m['item_id']}")
    # a .pub.old whose name does not carry its key id maps to nothing
    (kdir / f"dock-01.{old_kid}.pub.old").rename(kdir / "dock-01.0000000000000000.pub.old")
    with pytest.raises(VerifyError, match="unknown key"):
        verify_item(item, keys.KeyRing.from_paths(keys_dir=kdir))
    assert _ref(item, kdir).stdout.startswith("FAIL manifest signed by unknown key")
    store.close()


def test_a_change_without_a_reason_is_refused_by_both_verifiers(tmp_path):
    """An annotation that changes a mandatory field already set needs a reason (docs/evidence-format.md,
    "Annotations"); completing a pending one does not. Both verifiers read the same rule."""
    from agent.common import canon
    from tests.evidence.test_evidence_strict import _item

    store = make_store(tmp_path, evidence__block_size=4096)
    item, raw = _item(store, tmp_path)
    m = json.loads(raw)

    def annotate(seq, changes, reason, prev=None):
        rec = mf.make_annotation(item_id=m["item_id"], manifest_hash_hex=mf.manifest_hash("sha256", raw), seq=seq,
                                 prev=prev, time="2026-11-27T10:00:00+08:00", actor="officer:33010001",
                                 changes=changes, reason=reason, hash_alg="sha256")
        data = canon.canonical(rec)
        (item / mf.ANNOTATIONS_DIR).mkdir(exist_ok=True)
        (item / mf.ANNOTATIONS_DIR / f"{seq:04d}.json").write_bytes(data)
        (item / mf.ANNOTATIONS_DIR / f"{seq:04d}.sig").write_bytes(mf.signature_record(store.private_key, data))
        return mf.manifest_hash("sha256", data)

    first = annotate(1, {"note": "补充说明"}, "")  # a note changes no mandatory field
    assert _ref(item, store.pub_path).returncode == 0
    verify_item(item, store.keyring())
    annotate(2, {"proof": "改写的证明对象"}, "  ", prev=first)
    out = _ref(item, store.pub_path)
    assert out.stdout.strip() == "FAIL annotation 2 changes proof without a reason", out.stdout
    with pytest.raises(VerifyError, match="changes proof without a reason"):
        verify_item(item, store.keyring())
    annotate(2, {"proof": "改写的证明对象"}, "原证明对象录错", prev=first)
    assert _ref(item, store.pub_path).returncode == 0
    verify_item(item, store.keyring())
