"""The store's repository API (named queries of the ledger) and the library calls behind the thin
CLI commands (init, items show, items export, uplink retry): real store, real files, real SQLite."""

from __future__ import annotations

import io
import os
import stat
import time

import pytest

from agent import config as config_mod
from agent.common.errors import EdgeError, NotFoundError
from agent.evidence import keys
from agent.evidence.verify import verify_item
from agent.store.setup import init_device
from agent.store.store import Store
from tests.support.spine import META, make_store

START = "2026-11-27T09:00:00+08:00"


def _seal(store: Store, name: str, data: bytes, *, pending: bool = False, collector=("张三", "33010001"),
          session: dict | None = None, source_key: str | None = None, priority: int = 5) -> dict:
    meta = dict(META, capture_start=START, collector={"name": collector[0], "id": collector[1]})
    if pending:
        meta.pop("case_number")
        meta.pop("proof")
        meta["pending"] = ["case_number", "proof"]
    w = store.new_item(meta, {"type": "test"}, session=session, source_key=source_key, priority=priority)
    w.add_stream(name, io.BytesIO(data))
    return w.seal()


def test_summaries_and_per_officer_backlog(tmp_path):
    store = make_store(tmp_path)
    a = _seal(store, "a.mp4", b"a" * 1000)
    b = _seal(store, "b.mp4", b"b" * 10, pending=True)
    c = _seal(store, "c.mp4", b"c" * 20, pending=True, collector=("李四", "33010002"))
    _seal(store, "d.mp4", b"d" * 30, pending=True)
    receiving = store.new_item(dict(META, capture_start=START), {"type": "test"})
    store.set_state(c["item_id"], "rejected", error="archive: device dock-01 not enrolled")
    store.set_state(a["item_id"], "archived", archived_at="2026-11-27T10:00:00+08:00")

    assert store.counts_by_state() == {"archived": 1, "sealed": 2, "rejected": 1, "receiving": 1}
    bl = store.backlog()
    assert (bl.items, bl.bytes) == (4, 10 + 20 + 30) and bl.oldest_ts <= time.time()
    assert store.pending_annotation_count() == 3
    assert store.oldest_pending_annotation_ts() == store.item(b["item_id"])["created_ts"]
    by = store.pending_by_collector()
    assert [(r["collector_id"], r["collector_name"], r["n"]) for r in by] == [("33010001", "张三", 2),
                                                                               ("33010002", "李四", 1)]
    assert store.refusals() == [{"id": c["item_id"], "error": "archive: device dock-01 not enrolled"}]
    assert store.refused_as_unknown_device() == 1
    tot = store.totals()
    assert (tot.sealed, tot.archived) == (4, 1)
    assert [r["device_seq"] for r in store.sealed_after(1)] == [2, 3, 4]
    assert [r["device_seq"] for r in store.sealed_after(1, limit=1)] == [2]
    assert store.item_ids() >= {a["item_id"], receiving.id}
    with pytest.raises(NotFoundError, match="no such item"):
        store.item("dock-01-nope")


def test_outbox_order_and_session_segments(tmp_path):
    store = make_store(tmp_path)
    def sess(sid, index, prev=None):  # a session as the room seals it (docs/evidence-format.md)
        return {"id": sid, "index": index, "prev_item_hash": prev, "final": False}
    low = _seal(store, "seg0.ts", b"0", session=sess("S1", 0), source_key="room:S1:0")
    urgent = _seal(store, "seg1.ts", b"1", session=sess("S1", 1, low["item_hash"]), source_key="room:S1:1",
                   priority=1)
    _seal(store, "other.ts", b"2", session=sess("S2", 0), source_key="room:S2:0")
    assert store.next_to_send()["id"] == urgent["item_id"]
    assert store.next_to_send(exclude=[urgent["item_id"]])["id"] == low["item_id"]
    assert store.next_to_send(below=1) is None
    segs = store.session_segments("S1", "room:S1:")
    assert sorted((s["source_key"], s["item_hash"]) for s in segs) == [
        ("room:S1:0", low["item_hash"]), ("room:S1:1", urgent["item_hash"])]


def test_meta_and_command_nonces(tmp_path):
    store = make_store(tmp_path)
    assert store.get_meta("uplink_bdseq", "0") == "0"
    store.set_meta("uplink_bdseq", "7")
    assert store.get_meta("uplink_bdseq") == "7"
    now = time.time()
    assert store.use_nonce("n" * 16, now, forget_before=now - 600)
    assert not store.use_nonce("n" * 16, now, forget_before=now - 600), "a replay is refused"
    # once older than the window the nonce is forgotten (the command itself is then expired)
    assert store.use_nonce("n" * 16, now + 700, forget_before=now + 1)


def test_requeue_only_refused_items(tmp_path):
    store = make_store(tmp_path)
    m = _seal(store, "a.mp4", b"a")
    with pytest.raises(EdgeError, match="only refused"):
        store.requeue_rejected(m["item_id"])
    store.set_state(m["item_id"], "rejected", error="archive: unknown device")
    assert store.requeue_rejected(m["item_id"], actor="test")["error"] == "archive: unknown device"
    row = store.item(m["item_id"])
    assert row["state"] == "sealed" and row["error"] is None
    last = store.audit.entries(item_id=m["item_id"])[-1]
    assert last["action"] == "upload" and '"retry": true' in last["detail"]


def test_show_item_is_audited_and_export_refuses_without_losing_anything(tmp_path):
    store = make_store(tmp_path)
    m = _seal(store, "a.mp4", b"a" * 100)
    store.annotate(m["item_id"], {"note": "补充说明"}, reason="test", actor="test")
    out = store.show_item(m["item_id"], actor="test")
    assert out["ledger"]["id"] == m["item_id"] and out["segments"] == 1 and "segments" not in out["manifest"]
    assert out["effective_metadata"]["note"] == "补充说明" and len(out["annotations"]) == 1
    assert store.audit.entries(item_id=m["item_id"])[-1]["action"] == "view"

    target = store.export(m["item_id"], tmp_path / "usb")
    assert target == tmp_path / "usb" / m["item_id"]
    verify_item(target, store.keyring())
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    with pytest.raises(EdgeError, match="already exists"):
        store.export(m["item_id"], tmp_path / "usb")
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    verify_item(target, store.keyring())

    w = store.new_item(dict(META, capture_start=START), {"type": "test"})
    with pytest.raises(EdgeError, match="not sealed or no longer held locally"):
        store.export(w.id, tmp_path / "usb")
    assert not (tmp_path / "usb" / w.id).exists()
    assert [e["action"] for e in store.audit.entries(action="export")] == ["export"]


def test_init_device_is_safe_to_run_again_and_keeps_the_key(tmp_path):
    path = tmp_path / "etc" / "agent.toml"
    r = init_device(path, {"storage": {"data_dir": str(tmp_path / "data")}, "device": {"id": "room-07", "kind": "room",
                                                                                      "location": None}})
    assert r.config_written and r.values_given == 3 and r.data_dir == tmp_path / "data"
    assert stat.S_IMODE(r.key_path.stat().st_mode) == 0o600 and stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(r.data_dir / "keys").st_mode) == 0o700
    assert r.key_id == keys.key_id(keys.load_private(r.key_path).public_key())
    text, key = path.read_text(), r.key_path.read_bytes()

    with pytest.raises(EdgeError, match="changing device.id to room-08 needs --force"):
        init_device(path, {"device": {"id": "room-08"}})
    assert path.read_text() == text and r.key_path.read_bytes() == key, "a refused init changes nothing"

    kept = init_device(path, {"device": {"id": "room-07", "location": "二楼"}})
    assert kept.key_kept and kept.key_id == r.key_id and r.key_path.read_bytes() == key
    assert [(k, n) for k, _o, n in kept.changed] == [("device.location", "二楼")]
    r.pub_path.unlink()
    assert init_device(path, {}).key_kept and r.pub_path.exists(), "a lost public key is written again"

    again = init_device(path, {"device": {"id": "room-08"}}, force=True)
    assert not again.config_written and again.values_given == 1 and again.key_id != r.key_id
    assert not again.key_kept and config_mod.load(path).device.id == "room-08"
    st = Store(config_mod.load(path))
    assert [e["action"] for e in st.audit.entries(action="init")] == ["init"] * 4


def test_verify_audit_counts_entries_and_names_an_edited_one(tmp_path):
    import sqlite3

    from agent.common.errors import VerifyError

    store = make_store(tmp_path)
    _seal(store, "a.mp4", b"a")
    n = store.verify_audit()
    assert n == len(store.audit.entries()) >= 1
    con = sqlite3.connect(store.data_dir / "ledger.db")
    con.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 1")
    con.commit()
    con.close()
    with pytest.raises(VerifyError, match="entry 1 was edited"):
        store.verify_audit()
