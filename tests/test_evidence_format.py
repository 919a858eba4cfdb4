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
from agent.evidence import manifest as mf
from agent.evidence.verify import verify_item
from agent.store.ingest import ingest
from tests.support.spine import META, make_store

REF = Path(__file__).parent.parent / "tools" / "verify_reference.py"


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
