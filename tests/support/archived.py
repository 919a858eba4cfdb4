"""An item stored at an archive the way a receiver stores it (manifest, every file's bytes as
chunks, finish), without a broker: for tests of what the archive does with what it holds."""

from __future__ import annotations

import json
from pathlib import Path

from agent.archive.storage import ArchiveStore
from agent.evidence import manifest as mf
from agent.store.store import Store
from agent.wire import protocol as P


def store_in_archive(root: Path, store: Store, item_id: str, db: str | None = None) -> dict:
    """Store the device's sealed ITEM_ID, with its annotations, at the archive ROOT (its device
    enrolled there); returns the signed receipt."""
    st = ArchiveStore(root, db=db)
    try:
        d = store.item_dir(item_id)
        dev = st.registry.device(store.cfg.device.id)
        got = st.on_manifest(dev, item_id, (d / mf.MANIFEST).read_bytes(),
                             dict(P.manifest_props((d / mf.SIGNATURE).read_bytes())))
        assert got.status == "receiving", got
        m = json.loads((d / mf.MANIFEST).read_bytes())
        files = m["files"]
        for seg in m["segments"]:  # one chunk per sealed block, as the uplink sends them
            f = files[seg["file"]]
            with open(d / "files" / f["name"], "rb") as fh:
                fh.seek(seg["offset"])
                part = fh.read(seg["size"])
            assert st.on_chunk(dev, item_id, part, dict(P.chunk_props(f["name"], seg["offset"], part))).status == "ok"
        ann = d / "annotations"
        anns = [(p.read_bytes(), p.with_suffix(".sig").read_bytes()) for p in sorted(ann.glob("*.json"))] \
            if ann.is_dir() else []
        fin = st.on_finish(dev, item_id, P.finish_payload(files, anns))
        assert fin.status == "stored", fin
        return fin.receipt
    finally:
        st.close()


_USERS: dict[str, tuple] = {}


def approved_request(root: Path, item: str | None = None, case: str | None = None) -> str:
    """An export request for ITEM (or CASE) at ROOT, approved by a second user (two test users
    enrolled on first use): the id to give `archive export --request`."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.archive.approval import Approvals
    from agent.evidence import keys

    st = ArchiveStore(root)
    try:
        ap = Approvals(st)
        if str(root) not in _USERS:
            pair = (Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate())
            ap.add_user("test-requester", keys.public_pem(pair[0].public_key()), ["requester"])
            ap.add_user("test-approver", keys.public_pem(pair[1].public_key()), ["approver"])
            _USERS[str(root)] = pair
        req, appr = _USERS[str(root)]
        rid = ap.request(purpose="export", case=case, item=item, reason="test export", actor="test-requester",
                         private=req)["request"]
        ap.approve(rid, actor="test-approver", private=appr)
        return str(rid)
    finally:
        st.close()
