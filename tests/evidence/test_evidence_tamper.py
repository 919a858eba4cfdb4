"""Tamper suite: every alteration of a sealed item or of a device's chain is detected, precisely."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.common.errors import MetadataError, VerifyError
from agent.evidence import hashing, keys, manifest as mf
from agent.evidence.verify import verify_chain, verify_item
from agent.store.ingest import ingest
from tests.support.spine import EDGE, META, make_store, run_cli


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path, evidence__block_size=4096)
    yield s
    s.close()


def _item(store, tmp_path, name="clip.mp4", size=10_000, seed=1, case=META["case_number"]):
    src = tmp_path / name
    src.write_bytes(bytes((i * seed + i // 7) % 251 for i in range(size)))
    m = ingest(store, [src], dict(META, case_number=case, capture_start="2026-11-27T09:00:00+08:00"))
    return store.items_dir / m["item_id"], m


def _resign(item: Path, manifest: dict, key) -> None:
    data = mf.encode(manifest)
    (item / mf.MANIFEST).write_bytes(data)
    (item / mf.SIGNATURE).write_bytes(mf.signature_record(key, data))


def test_sealed_item_verifies_with_three_segments(store, tmp_path):
    item, m = _item(store, tmp_path)
    rep = verify_item(item, store.keyring())
    assert rep.segments == 3 and rep.bytes == 10_000
    assert m["metadata"]["case_number"] == META["case_number"]
    assert m["device_seq"] == 1 and m["prev_manifest_hash"] is None


def test_one_bit_flipped_names_the_segment(store, tmp_path):
    item, _ = _item(store, tmp_path)
    f = item / "files" / "clip.mp4"
    data = bytearray(f.read_bytes())
    data[5000] ^= 0x01  # second block (4096..8191)
    f.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match=r"segment 1 \(bytes 4096-8191\): hash mismatch"):
        verify_item(item, store.keyring())


def test_the_archives_read_back_hashing_each_byte_once_still_catches_a_flipped_bit(store, tmp_path):
    """blocks_checked (the archive's read-back after checking every block on the way in) reads
    each file once and checks the signed file hash: any byte on disk that differs is caught."""
    item, _ = _item(store, tmp_path)
    assert verify_item(item, store.keyring(), blocks_checked=True).bytes == 10_000
    f = item / "files" / "clip.mp4"
    data = bytearray(f.read_bytes())
    data[9_999] ^= 0x80  # the last byte of the last block
    f.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="file hash mismatch"):
        verify_item(item, store.keyring(), blocks_checked=True)


def test_truncation_is_reported_with_sizes(store, tmp_path):
    item, _ = _item(store, tmp_path)
    f = item / "files" / "clip.mp4"
    f.write_bytes(f.read_bytes()[:9000])
    with pytest.raises(VerifyError, match="size 9000 bytes, sealed as 10000"):
        verify_item(item, store.keyring())


def test_missing_and_extra_files(store, tmp_path):
    item, _ = _item(store, tmp_path)
    (item / "files" / "extra.bin").write_bytes(b"x")
    with pytest.raises(VerifyError, match="unexpected file.*extra.bin"):
        verify_item(item, store.keyring())
    (item / "files" / "extra.bin").unlink()
    (item / "files" / "clip.mp4").unlink()
    with pytest.raises(VerifyError, match="clip.mp4 is missing"):
        verify_item(item, store.keyring())


@pytest.mark.parametrize("edit", ["remove", "reorder", "duplicate"])
def test_segment_list_edits_break_the_chain_even_if_resigned(store, tmp_path, edit):
    """Even someone holding the device key cannot reorder/drop/duplicate segments unnoticed:
    the links chain each segment to the previous one and to the header."""
    item, m = _item(store, tmp_path)
    segs = m["segments"]
    if edit == "remove":
        m["segments"] = segs[:1] + segs[2:]
    elif edit == "reorder":
        m["segments"] = [segs[1], segs[0], segs[2]]
    else:
        m["segments"] = segs[:2] + [segs[1]] + segs[2:]
    _resign(item, m, store.private_key)
    # the strict reading refuses segments that do not tile the file ...
    with pytest.raises(VerifyError, match=r"segments(\[\d\])?(\.offset)?: .*(expected|cover)"):
        verify_item(item, store.keyring())
    # ... and with the offsets rewritten to tile it, the links no longer chain
    off = 0
    for s in m["segments"]:
        s["offset"] = off
        off += s["size"]
    if off == m["files"][0]["size"]:
        _resign(item, m, store.private_key)
        with pytest.raises(VerifyError, match=r"segment \d: link does not chain"):
            verify_item(item, store.keyring())


@pytest.mark.parametrize("field,value", [("case_number", "另一案件"), ("place", "elsewhere"), ("proof", "x"),
                                         ("capture_start", "2026-11-27T08:00:00+08:00")])
def test_metadata_edit_is_detected(store, tmp_path, field, value):
    item, _ = _item(store, tmp_path)
    raw = json.loads((item / mf.MANIFEST).read_bytes())
    raw["metadata"][field] = value
    (item / mf.MANIFEST).write_bytes(mf.encode(raw))
    with pytest.raises(VerifyError, match="bad signature: the manifest was modified"):
        verify_item(item, store.keyring())
    # and re-signing with the device key still fails: the header hash feeds the first link
    _resign(item, raw, store.private_key)
    with pytest.raises(VerifyError, match="link does not chain"):
        verify_item(item, store.keyring())


def test_signed_by_another_key(store, tmp_path):
    item, m = _item(store, tmp_path)
    other = Ed25519PrivateKey.generate()
    _resign(item, m, other)
    with pytest.raises(VerifyError, match="signed by unknown key"):
        verify_item(item, store.keyring())
    ring = store.keyring()
    ring.add(other.public_key(), "other-device")
    with pytest.raises(VerifyError, match="belongs to device other-device"):
        verify_item(item, ring)


def test_item_removed_from_device_chain(store, tmp_path):
    items = [_item(store, tmp_path, name=f"c{i}.mp4", seed=i + 2)[0] for i in range(3)]
    rep = verify_chain(store.items_dir, store.keyring())
    assert rep.devices["dock-01"]["items"] == 3
    shutil.rmtree(items[1])
    with pytest.raises(VerifyError, match="item seq 2 missing"):
        verify_chain(store.items_dir, store.keyring())
    shutil.rmtree(items[0])
    with pytest.raises(VerifyError, match="items before seq 3 are missing"):
        verify_chain(store.items_dir, store.keyring())


def test_manifest_without_signature_or_not_json(store, tmp_path):
    item, _ = _item(store, tmp_path)
    (item / mf.SIGNATURE).write_text("garbage")
    with pytest.raises(Exception, match="signature file is not JSON"):
        verify_item(item, store.keyring())
    (item / mf.SIGNATURE).unlink()
    with pytest.raises(VerifyError, match="not sealed"):
        verify_item(item, store.keyring())


def test_annotations_complete_pending_fields_and_are_tamper_evident(store, tmp_path):
    item, _ = _item(store, tmp_path)
    row = store.items()[0]
    store.annotate(row["id"], {"proof": "补充: 证明当事人拒绝检查"}, reason="补录")
    store.annotate(row["id"], {"note": "second"}, reason="note")
    rep = verify_item(item, store.keyring())
    assert rep.annotations == 2
    m = json.loads((item / mf.MANIFEST).read_bytes())
    assert m["metadata"]["proof"] == META["proof"]  # the sealed original is kept
    eff = mf.effective_metadata(m, mf.read_annotations(item))
    assert eff["proof"].startswith("补充")
    (item / "annotations" / "0001.json").unlink()
    (item / "annotations" / "0001.sig").unlink()
    with pytest.raises(VerifyError, match="annotation"):
        verify_item(item, store.keyring())


def test_pending_fields_are_marked_never_empty(store, tmp_path):
    src = tmp_path / "a.mp4"
    src.write_bytes(b"abc" * 100)
    meta = dict(META, case_number=None, proof=None, pending=["case_number", "proof"],
                capture_start="2026-11-27T09:00:00+08:00")
    m = ingest(store, [src], meta)
    assert m["metadata"]["pending"] == ["case_number", "proof"]
    assert m["metadata"]["case_number"] is None
    with pytest.raises(MetadataError, match="案件编号 case number: missing"):
        ingest(store, [src], dict(META, case_number="", capture_start="2026-11-27T09:00:00+08:00"))
    with pytest.raises(MetadataError, match="no UTC offset"):
        ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00"))


@pytest.mark.skipif("sm3" not in hashing.available_algorithms(), reason="OpenSSL without SM3")
def test_sm3_items_verify(tmp_path):
    store = make_store(tmp_path, evidence__hash_algorithm="sm3", evidence__block_size=4096)
    item, m = _item(store, tmp_path)
    assert m["hash_alg"] == "sm3"
    assert verify_item(item, store.keyring()).segments == 3
    f = item / "files" / "clip.mp4"
    data = f.read_bytes()
    f.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    with pytest.raises(VerifyError, match="segment 0"):
        verify_item(item, store.keyring())


def test_cli_verify_exit_codes(store, tmp_path):
    item, _ = _item(store, tmp_path)
    cfg = tmp_path / "agent.toml"
    ok = run_cli(cfg, "verify", str(item), "--key", str(store.pub_path))
    assert ok.returncode == 0 and "ok:" in ok.stdout
    f = item / "files" / "clip.mp4"
    f.write_bytes(f.read_bytes()[:-1])
    bad = run_cli(cfg, "verify", str(item), "--key", str(store.pub_path))
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and "truncated" in bad.stderr and "Traceback" not in bad.stderr
    chain = run_cli(cfg, "verify", "--chain", str(store.items_dir), "--json")
    assert chain.returncode == 1 and "size" in chain.stderr
    assert Path(EDGE).exists()


def test_canonical_json_refuses_floats():
    with pytest.raises(Exception, match="floats are not allowed"):
        hashing.canonical({"a": 1.5})
    assert hashing.canonical({"b": 1, "a": "中"}) == '{"a":"中","b":1}'.encode()
    assert keys  # module used by fixtures
