"""docs/evidence-format.md is enough to re-implement verification: an independent verifier
(tools/verify_reference.py) agrees with ours on good and tampered items."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.evidence import manifest as mf
from agent.store.ingest import ingest
from tests.spine_helpers import META, make_store

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
