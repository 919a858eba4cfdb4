"""The evidence storage interface (agent/archive/backend.py) and its POSIX backend.

A partial transfer lives in storage under its key (``_tmp/DEVICE/ITEM``) with the ranges held in
the index, so a receiver that never saw the beginning continues and finishes it; on both index
backends (SQLite and the real PostgreSQL). The POSIX backend's calls each do what the interface
promises; an object-store URL is refused with the reason.
"""

from __future__ import annotations

import json

import pytest

from agent.archive.backend import EvidenceStorage, PosixStorage, open_storage, partial_key
from agent.archive.storage import ArchiveStore
from agent.common.errors import EdgeError
from agent.evidence import keys, manifest as mf
from agent.evidence.verify import verify_item
from agent.wire import protocol as P
from tests.archive.test_archive_db_contract import _chunks, _edge, _finish, _manifest, backend, pg_url  # noqa: F401
from tests.support.uplink import UNIT, add_items


def test_a_partial_transfer_is_continued_by_another_receiver(backend, tmp_path):  # noqa: F811
    store = _edge(tmp_path)
    (item,) = add_items(store, tmp_path, [20_000])  # 5 blocks of 4 KiB
    root = tmp_path / "archive"
    a = ArchiveStore(root, db=backend, receiver="rx-a")
    a.registry.enroll("dock-0001", store.pub_path.read_bytes(), UNIT)
    assert _manifest(a, store, item).status == "receiving"
    _chunks(a, store, item, only=0)
    _chunks(a, store, item, only=3)
    key = partial_key("dock-0001", item)
    assert list(a.storage.partials()) == [("dock-0001", item)] and a.storage.has(key, mf.MANIFEST)
    a.close()  # receiver A is gone: nothing of the transfer was its own

    b = ArchiveStore(root, db=backend, receiver="rx-b")
    try:
        q = b.on_query("dock-0001", item)
        assert q.status == "receiving" and list(q.held.values()) == [[[0, 4096], [12288, 16384]]], q.held
        fin = _finish(b, store, item)
        assert fin.status == "incomplete"  # what is missing, said by B from what A wrote
        _chunks(b, store, item)  # the device resends what the query did not list; B writes the rest
        fin = _finish(b, store, item)
        assert fin.status == "stored" and fin.receipt["item"] == item, fin
        row = b.db.one("SELECT path, receiver FROM items WHERE item = ?", [item])
        assert row["receiver"] == "rx-b" and b.storage.exists(row["path"]) and not b.storage.has(key)
        assert list(b.storage.partials()) == []
        with b.storage.local(row["path"]) as d:
            rep = verify_item(d, keys.KeyRing.from_paths(keys_dir=root / "keys"))
        src = store.item_dir(item) / mf.FILES_DIR
        for f in json.loads((store.item_dir(item) / mf.MANIFEST).read_bytes())["files"]:
            assert (root / row["path"] / mf.FILES_DIR / f["name"]).read_bytes() == (src / f["name"]).read_bytes()
        assert rep.item_id == item
    finally:
        b.close()


def test_posix_storage_calls(tmp_path):
    st = open_storage(tmp_path / "root")
    assert isinstance(st, PosixStorage) and isinstance(st, EvidenceStorage)
    (tmp_path / "root").mkdir()
    key = partial_key("dock-0001", "item-1")
    st.create(key)
    st.put(key, mf.MANIFEST, b"{}")
    assert st.has(key) and st.get(key, mf.MANIFEST) == b"{}"
    assert st.write_at(key, "a.mp4", 4, b"5678") and st.write_at(key, "a.mp4", 0, b"1234")
    assert st.read_at(key, "a.mp4", 2, 4) == b"3456"
    st.complete(key, {"a.mp4": 10, "b.wav": 3})  # sizes as declared: extended with zeros, created if absent
    with st.local(key) as d:
        assert (d / mf.FILES_DIR / "a.mp4").read_bytes() == b"12345678\0\0"
        assert (d / mf.FILES_DIR / "b.wav").stat().st_size == 3
    st.put(key, f"{mf.ANNOTATIONS_DIR}/0001.json", b"{}")
    st.put(key, f"{mf.ANNOTATIONS_DIR}/0002.json", b"{}")
    assert st.names(key, mf.ANNOTATIONS_DIR) == [f"{mf.ANNOTATIONS_DIR}/0001.json", f"{mf.ANNOTATIONS_DIR}/0002.json"]
    assert st.names(key, "none") == []
    st.delete(key, [f"{mf.ANNOTATIONS_DIR}/0001.json"])
    assert not st.has(key, f"{mf.ANNOTATIONS_DIR}/0001.json")
    assert st.touched(key) > 0 and st.touched("_tmp/none/none") == 0
    assert not st.exists(f"{UNIT}/_pending/item-1")
    st.move(key, f"{UNIT}/_pending/item-1")
    assert st.exists(f"{UNIT}/_pending/item-1") and st.find(UNIT, "item-1") == f"{UNIT}/_pending/item-1"
    # what a retention deletion leaves: only the named files, every other file and folder gone
    st.keep_only(f"{UNIT}/_pending/item-1", [mf.MANIFEST])
    with st.local(f"{UNIT}/_pending/item-1") as d:
        assert sorted(p.name for p in d.iterdir()) == [mf.MANIFEST]
    # a key that is gone (finished or refused by another receiver meanwhile): writes say so
    assert st.write_at(key, "a.mp4", 0, b"x") is False and st.read_at(key, "a.mp4", 0, 1) is None
    other = partial_key("dock-0001", "item-2")
    st.create(other)
    q = st.quarantine(other, "dock-0001", "item-2-20261204", "refused: test")
    assert (tmp_path / "root" / q / "REASON.txt").read_text() == "refused: test\n" and not st.has(other)
    assert st.free_bytes() > 0


def test_object_store_url_is_refused_with_the_reason(tmp_path):
    with pytest.raises(EdgeError, match="no backend exists yet"):
        open_storage("s3://evidence-bucket/archive")
    assert open_storage(f"file://{tmp_path}").root == tmp_path
    with pytest.raises(EdgeError, match="only a POSIX directory"):
        ArchiveStore("s3://evidence-bucket/archive")  # `archive serve --root s3://...` says the same
    assert not (tmp_path / "s3:").exists()


def test_chunk_after_the_partial_is_gone_is_not_written(tmp_path):
    store = _edge(tmp_path)
    (item,) = add_items(store, tmp_path, [8_000])
    st = ArchiveStore(tmp_path / "archive", receiver="rx-a")
    try:
        st.registry.enroll("dock-0001", store.pub_path.read_bytes(), UNIT)
        assert _manifest(st, store, item).status == "receiving"
        st.storage.remove(partial_key("dock-0001", item))  # another receiver quarantined it meanwhile
        d = store.item_dir(item)
        name = json.loads((d / mf.MANIFEST).read_bytes())["files"][0]["name"]
        block = (d / mf.FILES_DIR / name).read_bytes()[:4096]
        ans = st.on_chunk(st.registry.device("dock-0001"), item, block, dict(P.chunk_props(name, 0, block)))
        assert ans.status == "error" and not (tmp_path / "archive" / "_tmp" / "dock-0001" / item).exists()
    finally:
        st.close()
