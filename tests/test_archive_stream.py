"""Verification while receiving: the archive hashes each file as its chunks arrive in order, so
``finish`` need not read it back; any gap, overlap or resume falls back to reading the file back.
Either way the item is held to the same checks as ``edge-agent verify`` (the stored copy is verified
again here from disk)."""

from __future__ import annotations

import json
import os
import random

import pytest

from agent.archive.storage import ArchiveStore
from agent.common.errors import VerifyError
from agent.evidence import keys, manifest as mf
from agent.evidence.verify import StreamDigest, verify_item
from agent.wire import protocol as P
from tests.support.spine import make_store
from tests.support.uplink import UNIT, add_items, agent_config, enroll, open_store

DEV = "dock-0001"


def _digest_of(item_dir, data_by_file, cuts):
    m = json.loads((item_dir / mf.MANIFEST).read_bytes())
    out = {}
    for fi, f in enumerate(m["files"]):
        sd = StreamDigest(m["hash_alg"], [s["size"] for s in m["segments"] if s["file"] == fi])
        data, pos = data_by_file[f["name"]], 0
        while pos < len(data):
            n = cuts()
            sd.feed(data[pos:pos + n])
            pos += n
        out[f["name"]] = sd
    return out


@pytest.mark.parametrize("alg", ["sha256", "sm3"])
def test_stream_digest_gives_the_same_verdicts_as_reading(tmp_path, alg):
    from agent.evidence import hashing
    if alg not in hashing.available_algorithms():
        pytest.skip("sm3 not offered by this OpenSSL")
    store = make_store(tmp_path, evidence__block_size=4096, evidence__hash_algorithm=alg)
    src = tmp_path / "clip.mp4"
    src.write_bytes(os.urandom(4096 * 5 + 123))
    from agent.store.ingest import ingest
    item = ingest(store, [src], {"case_number": "A-1", "collector": {"name": "张三", "id": "1"}, "place": "p",
                                 "proof": "x", "capture_start": "2026-11-27T09:00:00+08:00"})["item_id"]
    d = store.item_dir(item)
    ring = keys.KeyRing.from_paths(key=store.pub_path)
    name = json.loads((d / mf.MANIFEST).read_bytes())["files"][0]["name"]
    data = (d / mf.FILES_DIR / name).read_bytes()
    rnd = random.Random(7)
    # chunks of every size, across segment boundaries
    for cuts in (lambda: 4096, lambda: 1000, lambda: rnd.randint(1, 9000)):
        rep = verify_item(d, ring, digests=_digest_of(d, {name: data}, cuts))
        assert rep.bytes == len(data) and rep.item_hash == verify_item(d, ring).item_hash
    # a flipped byte in what was received: the same message as a read-back would give
    bad = bytearray(data)
    bad[4096 * 2 + 5] ^= 1
    with pytest.raises(VerifyError) as streamed:
        verify_item(d, ring, digests=_digest_of(d, {name: bytes(bad)}, lambda: 1000))
    assert "segment 2 (bytes 8192-12287): hash mismatch" in str(streamed.value)
    # a digest that did not see the whole file is refused, never taken as proof
    short = StreamDigest(alg, [s["size"] for s in json.loads((d / mf.MANIFEST).read_bytes())["segments"]])
    short.feed(data[:5000])
    with pytest.raises(VerifyError, match="content digest incomplete"):
        verify_item(d, ring, digests={name: short})
    with pytest.raises(ValueError):
        short.feed(data)  # more than the manifest lists


@pytest.fixture()
def archive(tmp_path):
    cfg = agent_config(tmp_path, 1, evidence__block_size=64 * 1024)
    store = open_store(cfg)
    root = tmp_path / "archive"
    enroll(root, store)
    ar = ArchiveStore(root)
    yield store, ar
    ar.close()


def _manifest(ar: ArchiveStore, store, item):
    """Send the item's manifest; returns (item dir, manifest bytes, sig bytes, files, answer)."""
    d = store.item_dir(item)
    mbytes, sig = (d / mf.MANIFEST).read_bytes(), (d / mf.SIGNATURE).read_bytes()
    ans = ar.handle(DEV, item, "manifest", mbytes, dict(P.manifest_props(sig)))
    return d, mbytes, sig, json.loads(mbytes)["files"], ans


def _send(ar: ArchiveStore, store, item, order=None, tamper=None):
    d, _, _, files, ans = _manifest(ar, store, item)
    assert ans.status == P.RECEIVING
    chunks = []
    for f in files:
        data = (d / mf.FILES_DIR / f["name"]).read_bytes()
        chunks += [(f["name"], off, data[off:off + 50_000]) for off in range(0, len(data), 50_000)]
    for k in (order(len(chunks)) if order else range(len(chunks))):
        name, off, data = chunks[k]
        a = ar.handle(DEV, item, "chunk", data, dict(P.chunk_props(name, off, data)))
        assert a.status == P.OK, a
        if tamper:
            tamper(ar, item, name, off, data)
    ar.commit_ranges()
    return ar.handle(DEV, item, "finish", P.finish_payload(files, []), {})


def _stored_verifies(ar: ArchiveStore, item):
    row = ar.find(item)
    rep = verify_item(ar.root / row["path"], ar.registry.ring(DEV), expected_device=DEV)  # from disk
    assert rep.item_id == item
    return rep


def test_in_order_chunks_are_verified_without_reading_back(archive, tmp_path):
    store, ar = archive
    ids = add_items(store, tmp_path, [300_000, 64 * 1024 * 3])  # segments of 64 KiB, chunks of 50 kB
    for item in ids:
        assert _send(ar, store, item).status == P.STORED
        _stored_verifies(ar, item)
    assert ar.verified_files == {"streamed": 2, "reread": 0}


def test_out_of_order_chunks_fall_back_to_reading_back(archive, tmp_path):
    store, ar = archive
    (item,) = add_items(store, tmp_path, [300_000])
    ans = _send(ar, store, item, order=lambda n: [1, 0] + list(range(2, n)))
    assert ans.status == P.STORED, ans
    _stored_verifies(ar, item)
    assert ar.verified_files == {"streamed": 0, "reread": 1}


def test_resent_chunk_with_other_bytes_cannot_replace_hashed_content(archive, tmp_path):
    """A retransmission of a range already written carries other bytes (self-consistent hash):
    it is answered as a duplicate and never written, so what was hashed is what is on disk."""
    store, ar = archive
    (item,) = add_items(store, tmp_path, [200_000])
    sent = []

    def resend_garbage(ar, item, name, off, data):
        if off == 0 and not sent:
            sent.append(1)
            junk = b"\x00" * len(data)
            assert ar.handle(DEV, item, "chunk", junk, dict(P.chunk_props(name, 0, junk))).status == P.OK

    assert _send(ar, store, item, tamper=resend_garbage).status == P.STORED
    _stored_verifies(ar, item)
    assert ar.verified_files["streamed"] == 1


def test_corrupt_content_with_matching_chunk_hash_is_caught_while_streaming(archive, tmp_path):
    store, ar = archive
    (item,) = add_items(store, tmp_path, [150_000])
    _, _, _, files, ans = _manifest(ar, store, item)
    assert ans.status == P.RECEIVING
    bad = b"\x01" * files[0]["size"]
    assert ar.handle(DEV, item, "chunk", bad, dict(P.chunk_props(files[0]["name"], 0, bad))).status == P.OK
    ar.commit_ranges()
    ans = ar.handle(DEV, item, "finish", P.finish_payload(files, []), {})
    assert ans.status == P.INCOMPLETE and "segment 0" in ans.reason and "hash mismatch" in ans.reason, ans
    assert ar.verified_files == {"streamed": 1, "reread": 0}


def test_shared_receivers_read_back(archive, tmp_path):
    store, ar = archive
    ar.stream_verify = False  # what the receiver sets with --share: it sees only part of the chunks
    (item,) = add_items(store, tmp_path, [120_000])
    assert _send(ar, store, item).status == P.STORED
    _stored_verifies(ar, item)
    assert ar.verified_files == {"streamed": 0, "reread": 1}


def test_resumed_file_is_read_back(archive, tmp_path):
    """A receiver restarted mid-item (its in-memory hashes gone) reads the file back at finish."""
    store, ar = archive
    (item,) = add_items(store, tmp_path, [200_000])
    d, mbytes, sig, files, _ = _manifest(ar, store, item)
    data = (d / mf.FILES_DIR / files[0]["name"]).read_bytes()
    first = data[:100_000]
    ar.handle(DEV, item, "chunk", first, dict(P.chunk_props(files[0]["name"], 0, first)))
    ar.commit_ranges()
    ar.close()
    ar2 = ArchiveStore(ar.root)
    try:
        ans = ar2.handle(DEV, item, "manifest", mbytes, dict(P.manifest_props(sig)))
        assert ans.held == {files[0]["name"]: [[0, 100_000]]}
        rest = data[100_000:]
        ar2.handle(DEV, item, "chunk", rest, dict(P.chunk_props(files[0]["name"], 100_000, rest)))
        ar2.commit_ranges()
        assert ar2.handle(DEV, item, "finish", P.finish_payload(files, []), {}).status == P.STORED
        _stored_verifies(ar2, item)
        assert ar2.verified_files == {"streamed": 0, "reread": 1}
    finally:
        ar2.close()
