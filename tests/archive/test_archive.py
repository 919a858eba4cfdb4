"""Archive: bad input from the wire (each refused with a reason, nothing outside the root, the
receiver keeps running), enrolment, idempotence, annotations after archiving, missing items from
the signed checkpoint, audited retrieval."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.archive.paths import UnsafePath
from agent.archive.storage import ArchiveStore, safe_case
from agent.evidence import hashing, keys, manifest as mf
from agent.wire import checkpoint, protocol as P
from tests.support.archived import approved_request
from tests.support.broker import login
from tests.support.uplink import (UNIT, InProc, add_items, agent_config, check_archive, enroll, open_store, run,
                                  start_archive)


class WireClient:
    """A device that speaks the transfer protocol by hand (to send what a real agent never would)."""

    def __init__(self, port: int, device: str):
        self.device = device
        self.answers: dict[bytes, dict] = {}
        self.cv = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"wire-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *_a: subscribed.set()
        creds = login(port, device)  # the shipped broker: the device's own login (no agent of it runs)
        if creds:
            self.c.username_pw_set(creds["username"], creds["password"])
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(f"edge/ack/{device}", qos=1)
        assert subscribed.wait(20), "no SUBACK for the answer topic"  # answers published from now on arrive

    def _on_message(self, c, u, msg):
        with self.cv:
            self.answers[bytes(msg.properties.CorrelationData or b"")] = json.loads(msg.payload)
            self.cv.notify_all()

    def send(self, item: str, kind: str, payload: bytes, props: list[tuple[str, str]] | None = None,
             timeout: float = 10, topic: str | None = None) -> dict | None:
        corr = uuid.uuid4().bytes
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = f"edge/ack/{self.device}"
        p.CorrelationData = corr
        if props:
            p.UserProperty = props
        self.c.publish(topic or f"edge/xfer/{self.device}/{item}/{kind}", payload, qos=1, properties=p)
        with self.cv:
            self.cv.wait_for(lambda: corr in self.answers, timeout)
            return self.answers.get(corr)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _resigned(store, item_dir: Path, change) -> tuple[bytes, bytes]:
    m = json.loads((item_dir / mf.MANIFEST).read_bytes())
    change(m)
    data = hashing.canonical(m)
    return data, mf.signature_record(store.private_key, data)


def test_bad_wire_input_refused_receiver_keeps_running(broker, tmp_path):
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [50_000])
    t.enroll()
    item = ids[0]
    d = t.store.item_dir(item)
    mbytes, sig = (d / mf.MANIFEST).read_bytes(), (d / mf.SIGNATURE).read_bytes()
    ar = start_archive(t.root, broker.port, tmp_path, extra=["--max-item-mb", "1", "--max-manifest-kb", "64"])
    w = WireClient(broker.port, "dock-0001")
    try:
        def refused(ans, status, reason):
            assert ans is not None, "no answer"
            assert ans["status"] == status and reason in ans.get("reason", ""), ans

        mp = P.manifest_props(sig)
        refused(w.send(item, "manifest", b"{not json", mp), "rejected", "not valid JSON")
        refused(w.send(item, "manifest", b"[" + b" " * 70_000 + b"]", mp), "rejected", "exceeds the limit")
        big, bsig = _resigned(t.store, d, lambda m: (m["files"][0].update(size=5 << 20),
                                                     m["segments"][-1].update(size=5 << 20)))
        refused(w.send(item, "manifest", big, P.manifest_props(bsig)), "rejected", "exceeds the archive's limit")
        for evil in ("../../evil", "/etc/evil", "a\x00b", "..", ".hidden"):
            data, s = _resigned(t.store, d, lambda m: m["metadata"].update(case_number=evil))
            refused(w.send(item, "manifest", data, P.manifest_props(s)), "rejected", "case number")
        data, s = _resigned(t.store, d, lambda m: m["device"].update(unit_code="../evil"))
        refused(w.send(item, "manifest", data, P.manifest_props(s)), "rejected", "unit code '../evil' refused")
        data, s = _resigned(t.store, d, lambda m: m["device"].update(unit_code="330199000000"))
        refused(w.send(item, "manifest", data, P.manifest_props(s)), "rejected", "differs from the unit")
        other = keys.generate(tmp_path / "other.key", tmp_path / "other.pub")
        refused(w.send(item, "manifest", mbytes, P.manifest_props(mf.signature_record(other, mbytes))),
                "rejected", "unknown key")
        refused(w.send(item, "manifest", mbytes, P.manifest_props(sig.replace(b'"sig": "', b'"sig": "AA'))),
                "rejected", "signature")
        ghost = WireClient(broker.port, "ghost-01")
        refused(ghost.send(item, "manifest", mbytes, mp), "rejected", "unknown device ghost-01")
        ghost.close()
        # a chunk before any manifest
        refused(w.send(item, "chunk", b"abc", P.chunk_props("x", 0, b"abc")), "unknown", "manifest")
        # now a good manifest, then bad chunks
        ok = w.send(item, "manifest", mbytes, mp)
        assert ok["status"] == "receiving" and ok["held"] == {}
        name = json.loads(mbytes)["files"][0]["name"]
        props = P.chunk_props(name, 0, b"good")
        refused(w.send(item, "chunk", b"evil", props), "error", "sha256 mismatch")
        refused(w.send(item, "chunk", b"abc", P.chunk_props(name, 49_999, b"abc")), "error",
                "not one block of the signed manifest")
        junk = b"j" * 50_000  # right place and length, self-consistent sha256, not the sealed bytes
        refused(w.send(item, "chunk", junk, P.chunk_props(name, 0, junk)), "error",
                "differ from the block's hash in the signed manifest")
        refused(w.send(item, "chunk", b"abc", P.chunk_props("other.mp4", 0, b"abc")), "error", "does not list")
        refused(w.send(item, "chunk", b"abc", [("file", "../x"), ("offset", "0"), ("sha256", "0" * 64)]),
                "error", "unsafe")
        refused(w.send(item, "finish", b"nope"), "rejected", "finish is not valid JSON")
        inc = w.send(item, "finish", P.finish_payload(json.loads(mbytes)["files"], []))
        assert inc["status"] == "incomplete"
        # a topic with a path in it: ignored (no answer can be addressed safely), nothing written
        assert w.send(item, "manifest", mbytes, mp, timeout=1, topic="edge/xfer/../evil/manifest") is None
        assert ar.alive()
        assert not list(tmp_path.rglob("*evil*")), list(tmp_path.rglob("*evil*"))
        assert not any(p.name == "evil" for p in Path("/etc").iterdir())
        # refusals are on record with their reasons
        q = json.loads(run(["archive", "list", "--quarantine", "--json", "--root", str(t.root)], check=True).stdout)
        assert any("unknown device" in r["reason"] for r in q)
        # and the same receiver still archives a good item from a real uplink
        t.start_agent()
        t.wait_archived(ids)
        check_archive(t.root, ids)
    finally:
        w.close()
        t.close()
        ar.stop()


def test_item_failing_verification_is_quarantined(broker, tmp_path):
    """Chunks that match their own hash but not the sealed manifest are refused one by one (the
    item goes on). Bytes that change on the archive's disk after they were checked (a disk fault)
    are caught when the item is read back before its rename: asked for again once, then
    quarantined with the reason; nothing stored, nothing receipted."""
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [10_000])
    t.enroll()
    d = t.store.item_dir(ids[0])
    mbytes, sig = (d / mf.MANIFEST).read_bytes(), (d / mf.SIGNATURE).read_bytes()
    t.start_archive()
    w = WireClient(broker.port, "dock-0001")
    try:
        files = json.loads(mbytes)["files"]
        name = files[0]["name"]
        good = (d / mf.FILES_DIR / name).read_bytes()
        assert w.send(ids[0], "manifest", mbytes, P.manifest_props(sig))["status"] == "receiving"
        bad = b"\0" * files[0]["size"]
        ans = w.send(ids[0], "chunk", bad, P.chunk_props(name, 0, bad))
        assert ans["status"] == "error" and "differ from the block's hash" in ans["reason"], ans
        on_disk = t.root / "_tmp" / "dock-0001" / ids[0] / "files" / name
        for attempt in range(2):
            assert w.send(ids[0], "chunk", good, P.chunk_props(name, 0, good))["status"] == "ok"
            on_disk.write_bytes(bad)  # the disk returns other bytes than were written
            ans = w.send(ids[0], "finish", P.finish_payload(files, []))
            if attempt == 0:  # the bytes may have been lost before an fsync: asked for again
                assert ans["status"] == "incomplete" and ans["held"] == {} and "again" in ans["reason"], ans
        assert ans["status"] == "rejected" and "verification failed" in ans["reason"], ans
        qdirs = list((t.root / "_quarantine" / "dock-0001").iterdir())
        assert len(qdirs) == 1 and "hash" in (qdirs[0] / "REASON.txt").read_text()
        assert not list((t.root / UNIT).rglob("manifest.json")) if (t.root / UNIT).exists() else True
        again = w.send(ids[0], "manifest", mbytes, P.manifest_props(sig))
        assert again["status"] == "rejected"
    finally:
        w.close()
        t.close()


def test_enroll_refuses_bad_input(tmp_path):
    store = open_store(agent_config(tmp_path, 1))
    root = tmp_path / "archive"
    for args, reason in (
        (["dock-0001", str(store.pub_path), "--unit", "../x"], "no path"),
        (["../dock", str(store.pub_path), "--unit", UNIT], "no path"),
        (["dock-0001", str(store.key_path), "--unit", UNIT], "public key"),
    ):
        p = run(["archive", "enroll", *args, "--root", str(root)])
        assert p.returncode != 0 and reason in p.stderr and "Traceback" not in p.stderr, p.stderr
    enroll(root, store)
    other = tmp_path / "o.pub"
    keys.generate(tmp_path / "o.key", other)
    p = run(["archive", "enroll", "dock-0001", str(other), "--unit", UNIT, "--root", str(root)])
    assert p.returncode != 0 and "设备已用另一密钥登记 / device dock-0001 is enrolled with key" in p.stderr
    assert "--force" in p.stderr
    p = run(["archive", "enroll", "dock-0001", str(other), "--unit", UNIT, "--root", str(root), "--force"])
    assert p.returncode == 0 and list((root / "keys").glob("dock-0001.*.pub.old"))
    # moving a device to another unit: refused in both languages without --force, then moved
    p = run(["archive", "enroll", "dock-0001", str(other), "--unit", "330108000000", "--root", str(root)])
    assert p.returncode == 1 and (f"设备已登记在另一单位 / device dock-0001 is enrolled for unit {UNIT}; "
                                  "use --force to move it to 330108000000") in p.stderr, p.stderr
    p = run(["archive", "enroll", "dock-0001", str(other), "--unit", "330108000000", "--root", str(root), "--force"])
    assert p.returncode == 0 and "设备已登记 / enrolled dock-0001 for unit 330108000000" in p.stdout
    p = run(["archive", "list", "--root", str(tmp_path / "nowhere")])
    assert p.returncode != 0 and "归档根目录不存在 / " in p.stderr and "archive root not found" in p.stderr


def test_safe_case_and_root_confinement(tmp_path):
    assert safe_case("杭司罚〔2026〕第0123号") == "杭司罚〔2026〕第0123号"
    for bad in ("../x", "a/b", "a\\b", "a\x00b", "..", ".x", "_pending", "x" * 65, "tab\there"):
        with pytest.raises(P.ProtocolError):
            safe_case(bad)
    st = ArchiveStore(tmp_path / "root")
    with pytest.raises(UnsafePath, match="escapes"):
        st.inside(st.root / ".." / "outside")
    (st.root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePath, match="escapes"):
        st.inside(st.root / "link" / "x")
    st.close()


def test_resent_item_stored_once_and_annotation_moves_pending_item(broker, tmp_path):
    """An item whose 'stored' answer was lost is sent again: stored once. A pending-case item is
    filed under _pending; the annotation that names the case follows it, is verified, and the
    item moves to its case directory."""
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [20_000, 30_000], case=None)
    t.enroll()
    t.start_archive()
    t.start_agent()
    try:
        t.wait_archived(ids)
        assert (t.root / UNIT / "_pending" / ids[0] / mf.MANIFEST).is_file()
        t.store.set_state(ids[1], "sealed")  # as if the 'stored' answer had been lost
        t.uplink.transfer.wake.set()
        t.wait_archived(ids)
        assert [e["item_id"] for e in t.archive.audit.entries(action="archive")].count(ids[1]) == 1
        t.store.annotate(ids[0], {"case_number": "杭司罚〔2026〕第0777号"}, reason="补录案件编号")
        assert t.store.item(ids[0])["state"] == "sealed"
        t.uplink.transfer.wake.set()
        t.wait_archived(ids)
        moved = t.root / UNIT / "杭司罚〔2026〕第0777号" / ids[0]
        assert (moved / "annotations" / "0001.json").is_file()
        assert not (t.root / UNIT / "_pending" / ids[0]).exists()
        check_archive(t.root, ids)
        row = t.archive.db.one("SELECT * FROM items WHERE item = ?", [ids[0]])
        assert row["annotations"] == 1 and row["case_number"] == "杭司罚〔2026〕第0777号"
    finally:
        t.close()


def test_missing_items_from_checkpoint_and_audited_retrieval(tmp_path):
    cfg = agent_config(tmp_path, 1)
    store = open_store(cfg)
    ids = add_items(store, tmp_path, [1000, 2000, 3000])
    root = tmp_path / "archive"
    enroll(root, store)
    st = ArchiveStore(root)
    # the device announces 3 items; the archive holds none yet
    assert st.on_checkpoint("dock-0001", checkpoint.make(store)).count == 3
    assert st.missing()[0]["missing"] == [1, 2, 3]
    # a forged checkpoint (another key) is ignored
    other = keys.generate(tmp_path / "o.key", tmp_path / "o.pub")
    body = json.loads(checkpoint.make(store))
    body["sig"] = keys.sign(other, b"x")
    assert st.on_checkpoint("dock-0001", json.dumps(body).encode()) is None
    # store item 1 by copying a sealed item the way the receiver would (manifest + finish)
    d = store.item_dir(ids[0])
    dev = st.registry.device("dock-0001")
    a = st.on_manifest(dev, ids[0], (d / mf.MANIFEST).read_bytes(), dict(P.manifest_props((d / mf.SIGNATURE).read_bytes())))
    assert a.status == "receiving"
    f = json.loads((d / mf.MANIFEST).read_bytes())["files"][0]
    data = (d / "files" / f["name"]).read_bytes()
    assert st.on_chunk(dev, ids[0], data, dict(P.chunk_props(f["name"], 0, data))).status == "ok"
    fin = st.on_finish(dev, ids[0], P.finish_payload([f], []))
    assert fin.status == "stored" and fin.receipt["manifest_hash"] and fin.receipt["files"][0]["hash"] == f["hash"]
    assert "path" not in fin.receipt  # signed by the receiver with the request's nonce (tests/wire/test_wire_attacks.py)
    st.close()
    out = json.loads(run(["archive", "show", "dock-0001", "--json", "--root", str(root)], check=True).stdout)
    assert out["checkpoint"]["missing"] == [2, 3]
    p = run(["archive", "list", "--missing", "--root", str(root)], check=True)
    assert "missing [2, 3]" in p.stdout and "MISSING" in p.stdout
    # retrieval: list, show, export — each in the archive's audit log
    listed = json.loads(run(["archive", "list", "--json", "--root", str(root)], check=True).stdout)
    assert [r["item"] for r in listed] == [ids[0]]
    shown = run(["archive", "show", ids[0], "--root", str(root), "--reason", "复核"], check=True).stdout
    assert "案件编号" in shown
    exp = Path(run(["archive", "export", ids[0], str(tmp_path / "out"), "--root", str(root), "--request",
                    approved_request(root, ids[0])], check=True).stdout.strip())
    assert run(["verify", str(exp), "--key", str(exp.parent / "dock-0001.pub")]).returncode == 0
    audit = json.loads(run(["archive", "audit", "--json", "--root", str(root)], check=True).stdout)
    actions = [e["action"] for e in audit]
    for a_ in ("enroll", "archive", "retrieve", "view", "export"):
        assert a_ in actions, actions
    v = run(["archive", "audit", "--verify", "--root", str(root)], check=True)
    assert "intact" in v.stdout
    p = run(["archive", "show", "nope", "--root", str(root)])
    assert p.returncode != 0 and "no such item" in p.stderr
