"""An item stored at an archive the way a receiver stores it (manifest, every file's bytes as
chunks, finish), without a broker: for tests of what the archive does with what it holds."""

from __future__ import annotations

import json
from pathlib import Path

from agent.archive.storage import ArchiveStore
from agent.evidence import manifest as mf
from agent.store.store import Store
from agent.wire import protocol as P


def store_in_archive(root: Path, store: Store, item_id: str, chunk: int = 1 << 20) -> dict:
    """Store the device's sealed ITEM_ID at the archive ROOT (its device enrolled there); returns
    the signed receipt."""
    st = ArchiveStore(root)
    try:
        d = store.item_dir(item_id)
        dev = st.registry.device(store.cfg.device.id)
        got = st.on_manifest(dev, item_id, (d / mf.MANIFEST).read_bytes(),
                             dict(P.manifest_props((d / mf.SIGNATURE).read_bytes())))
        assert got.status == "receiving", got
        files = json.loads((d / mf.MANIFEST).read_bytes())["files"]
        for f in files:
            data = (d / "files" / f["name"]).read_bytes()
            for off in range(0, max(len(data), 1), chunk):
                part = data[off:off + chunk]
                assert st.on_chunk(dev, item_id, part, dict(P.chunk_props(f["name"], off, part))).status == "ok"
        fin = st.on_finish(dev, item_id, P.finish_payload(files, []))
        assert fin.status == "stored", fin
        return fin.receipt
    finally:
        st.close()
