"""The strict reading at a real archive receiver over a real broker: every manifest and annotation
that ``verify`` refuses (tests/evidence/test_evidence_strict.py) is refused by the archive with its reason,
nothing of it is stored, and the receiver goes on archiving."""

from __future__ import annotations

import json

from agent.evidence import hashing, keys, manifest as mf
from agent.wire import protocol as P
from tests.support.uplink import UNIT, InProc, add_items, check_archive
from tests.archive.test_archive import WireClient
from tests.evidence.test_evidence_strict import variants


def _send_item(w: WireClient, item_dir, item: str, annotations=()) -> dict:
    mbytes, sig = (item_dir / mf.MANIFEST).read_bytes(), (item_dir / mf.SIGNATURE).read_bytes()
    m = json.loads(mbytes)
    ans = w.send(item, "manifest", mbytes, P.manifest_props(sig))
    assert ans and ans["status"] == "receiving", ans
    for s in m["segments"]:
        f = m["files"][s["file"]]["name"]
        with open(item_dir / mf.FILES_DIR / f, "rb") as fh:
            fh.seek(s["offset"])
            block = fh.read(s["size"])
        ans = w.send(item, "chunk", block, P.chunk_props(f, s["offset"], block))
        assert ans and ans["status"] == "ok", ans
    return w.send(item, "finish", P.finish_payload(m["files"], list(annotations)))


def test_archive_refuses_every_non_strict_manifest_and_annotation(broker, tmp_path):
    t = InProc(tmp_path, broker.port, evidence__block_size=4096)
    ids = add_items(t.store, tmp_path, [10_000, 9_000])
    t.enroll()
    other = keys.generate(tmp_path / "b.key", tmp_path / "b.pub")
    t.archive.registry.enroll("dock-0002", (tmp_path / "b.pub").read_bytes(), UNIT)
    t.start_archive()
    w = WireClient(broker.port, "dock-0001")
    try:
        item = ids[0]
        d = t.store.item_dir(item)
        raw = (d / mf.MANIFEST).read_bytes()
        for name, data, reason in variants(raw):
            ans = w.send(item, "manifest", data, P.manifest_props(mf.signature_record(t.store.private_key, data)))
            assert ans and ans["status"] == "rejected" and reason in ans["reason"], (name, ans)
        assert not (t.root / "_tmp").exists() or not list((t.root / "_tmp").rglob("manifest.json"))
        # the good item is stored ...
        ans = _send_item(w, d, item)
        assert ans["status"] == "stored", ans
        # ... an annotation signed by another device's key is refused, with the device named
        m = json.loads(raw)

        def annotation(key, data=None, seq=1, prev=None):
            rec = mf.make_annotation(item_id=item, manifest_hash_hex=hashing.hexdigest("sha256", raw), seq=seq,
                                     prev=prev, time="2026-11-27T10:00:00+08:00", actor="x",
                                     changes={"proof": "改写"}, reason="t", hash_alg=m["hash_alg"])
            data = data or hashing.canonical(rec)
            return data, mf.signature_record(key, data)

        forged = annotation(other)
        ans = w.send(item, "finish", P.finish_payload(m["files"], [forged]))
        assert ans["status"] == "rejected" and "annotation refused" in ans["reason"] \
            and f"key {keys.key_id(other.public_key())} of device dock-0002" in ans["reason"], ans
        # a non-canonical or duplicate-key annotation, even signed by the right key
        good = annotation(t.store.private_key)[0]
        for data, reason in ((json.dumps(json.loads(good), sort_keys=True).encode(), "not in canonical form"),
                             (good.replace(b'{"actor"', b'{"actor":"y","actor"', 1), "duplicate key 'actor'")):
            ans = w.send(item, "finish", P.finish_payload(m["files"], [annotation(t.store.private_key, data)]))
            assert ans["status"] == "rejected" and reason in ans["reason"], ans
        # nothing of it was kept: the stored item has no annotation and verifies
        row = t.archive.find(item)
        assert row["annotations"] == 0
        assert not list((t.root / row["path"]).glob("annotations/*.json"))
        # the right key and form: accepted
        first = annotation(t.store.private_key)
        ans = w.send(item, "finish", P.finish_payload(m["files"], [first]))
        assert ans["status"] == "stored" and ans["annotations"] == 1, ans
        # an annotator key enrolled for the unit (ROOT/keys/annotators/UNIT/NAME.pub) may annotate;
        # one enrolled for another unit may not
        (t.root / "keys" / "annotators" / "330999000000").mkdir(parents=True)
        stranger = keys.generate(tmp_path / "s.key", t.root / "keys" / "annotators" / "330999000000" / "c9.pub")
        prev = hashing.hexdigest("sha256", first[0])
        ans = w.send(item, "finish", P.finish_payload(m["files"], [first, annotation(stranger, seq=2, prev=prev)]))
        assert ans["status"] == "rejected" and "unknown key" in ans["reason"], ans
        (t.root / "keys" / "annotators" / UNIT).mkdir(parents=True)
        clerk = keys.generate(tmp_path / "c.key", t.root / "keys" / "annotators" / UNIT / "clerk-7.pub")
        ans = w.send(item, "finish", P.finish_payload(m["files"], [first, annotation(clerk, seq=2, prev=prev)]))
        assert ans["status"] == "stored" and ans["annotations"] == 2, ans
        # an item whose first finish carries a forged annotation is quarantined with the reason
        d2 = t.store.item_dir(ids[1])
        raw2 = (d2 / mf.MANIFEST).read_bytes()
        rec2 = mf.make_annotation(item_id=ids[1], manifest_hash_hex=hashing.hexdigest("sha256", raw2), seq=1,
                                  prev=None, time="2026-11-27T10:00:00+08:00", actor="x", changes={"proof": "p"},
                                  reason="t", hash_alg="sha256")
        data2 = hashing.canonical(rec2)
        ans = _send_item(w, d2, ids[1], [(data2, mf.signature_record(other, data2))])
        assert ans["status"] == "rejected" and "of device dock-0002" in ans["reason"], ans
        assert t.archive.quarantined()
    finally:
        w.close()
        t.close()
    check_archive(t.root, ids[:1])


def test_enroll_annotator(tmp_path):
    """`archive enroll-annotator` enrols a key for one unit's annotations (audited); a device key,
    a path as name or a reserved unit are refused; the archive's ring and `verify --keys` use it."""
    from agent.archive.storage import ArchiveStore
    from tests.support.uplink import agent_config, enroll, open_store, run

    store = open_store(agent_config(tmp_path, 1))
    root = tmp_path / "archive"
    enroll(root, store)
    clerk = keys.generate(tmp_path / "clerk.key", tmp_path / "clerk.pub")
    kid = keys.key_id(clerk.public_key())
    ok = run(["archive", "enroll-annotator", "clerk-07", str(tmp_path / "clerk.pub"), "--unit", UNIT,
              "--root", str(root)])
    assert ok.returncode == 0 and f"key id {kid}" in ok.stdout, ok.stderr
    assert (root / "keys" / "annotators" / UNIT / "clerk-07.pub").is_file()
    for args, reason in (
        (["dock-0001-key", str(store.pub_path), "--unit", UNIT], "is the enrolled key of device dock-0001"),
        (["../x", str(tmp_path / "clerk.pub"), "--unit", UNIT], "annotator name '../x' refused"),
        (["clerk-08", str(tmp_path / "clerk.pub"), "--unit", "keys"], "unit code 'keys' refused: a reserved name"),
        (["clerk-07", str(store.pub_path.with_name("nothing.pub"))], "does not exist"),
    ):
        p = run(["archive", "enroll-annotator", *args, "--root", str(root)])
        assert p.returncode != 0 and reason in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    keys.generate(tmp_path / "c2.key", tmp_path / "c2.pub")
    p = run(["archive", "enroll-annotator", "clerk-07", str(tmp_path / "c2.pub"), "--unit", UNIT, "--root", str(root)])
    assert p.returncode != 0 and "--force" in p.stderr
    st = ArchiveStore(root)
    try:
        ring = st.registry.ring("dock-0001")
        assert ring.annotators == {kid: UNIT}
        assert [e["action"] for e in st.audit.entries(action="enroll_annotator")] == ["enroll_annotator"]
    finally:
        st.close()
    # an item of the unit annotated by the clerk verifies against ROOT/keys
    item = store.item_dir(add_items(store, tmp_path, [100])[0])
    raw = (item / mf.MANIFEST).read_bytes()
    rec = mf.make_annotation(item_id=item.name, manifest_hash_hex=hashing.hexdigest("sha256", raw), seq=1, prev=None,
                             time="2026-11-27T10:00:00+08:00", actor="clerk-07", changes={"note": "已核对"},
                             reason="t", hash_alg="sha256")
    data = hashing.canonical(rec)
    (item / mf.ANNOTATIONS_DIR).mkdir()
    (item / mf.ANNOTATIONS_DIR / "0001.json").write_bytes(data)
    (item / mf.ANNOTATIONS_DIR / "0001.sig").write_bytes(mf.signature_record(clerk, data))
    p = run(["verify", str(item), "--keys", str(root / "keys")])
    assert p.returncode == 0 and "1 annotations" in p.stdout, p.stderr
    store.close()


def test_archive_ring_keeps_a_replaced_device_key(tmp_path):
    """Items a device sealed before its key was replaced (`archive enroll --force`) still verify at
    the archive: the replaced key stays that device's, and only that device's."""
    from agent.archive.storage import ArchiveStore
    from agent.evidence.verify import verify_item
    from tests.support.uplink import agent_config, enroll, open_store, run

    store = open_store(agent_config(tmp_path, 1))
    item = store.item_dir(add_items(store, tmp_path, [100])[0])
    root = tmp_path / "archive"
    enroll(root, store)
    old_kid = keys.key_id(store.private_key.public_key())
    keys.generate(tmp_path / "new.key", tmp_path / "new.pub")
    run(["archive", "enroll", "dock-0001", str(tmp_path / "new.pub"), "--unit", UNIT, "--root", str(root),
         "--force"], check=True)
    keys.generate(tmp_path / "o.key", tmp_path / "o.pub")
    run(["archive", "enroll", "dock-0002", str(tmp_path / "o.pub"), "--unit", UNIT, "--root", str(root)], check=True)
    st = ArchiveStore(root)
    try:
        ring = st.registry.ring("dock-0001")
        assert ring.device_of[old_kid] == "dock-0001" and old_kid in ring.by_id
        assert verify_item(item, ring, expected_device="dock-0001").device_id == "dock-0001"
        assert old_kid not in st.registry.ring("dock-0002").by_id
    finally:
        st.close()
        store.close()
