"""The centre never stops and stays bounded: every message handler survives every input; a worker
that dies makes `archive serve` exit non-zero; refusals and log lines are coalesced and capped,
lock files are a fixed set, abandoned partial transfers are removed, and new transfers are refused
before the disk fills. Attacks run against a real broker and a real receiver."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.archive.storage import ArchiveStore
from agent.archive.upkeep import MAX_NOTES, Coalescer
from agent.common.fs import free_bytes
from agent.evidence import hashing, manifest as mf
from agent.wire import protocol as P
from tests.support.broker import login
from tests.support.uplink import (InProc, add_items, agent_config, check_archive, enroll, open_store, start_archive,
                                  wait_for)

DEV = "dock-0001"


class Flooder:
    """A client publishing at QoS 1 (waits for the broker's PUBACK of the last): anonymous on the
    open broker; on the shipped one with the device's own login (a stolen device, no agent of it runs)."""

    def __init__(self, port: int):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        creds = login(port, DEV)
        if creds:
            self.c.username_pw_set(creds["username"], creds["password"])
        self.c.max_inflight_messages_set(200)
        connected = threading.Event()
        self.c.on_connect = lambda *a: connected.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert connected.wait(10)
        self.sent = 0

    def send(self, topic: str, payload: bytes, props: list[tuple[str, str]] | None = None,
             corr: bytes | None = None) -> None:
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = f"edge/ack/{DEV}"
        p.CorrelationData = corr or uuid.uuid4().bytes
        if props:
            p.UserProperty = props
        info = self.c.publish(topic, payload, qos=1, properties=p)
        self.sent += 1
        return info

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def listening(rx, f: Flooder) -> int:
    """Wait until the receiver's subscriptions are in place (a probe query is handled: a message
    published before the broker has the subscription is lost); returns messages handled so far."""
    def probe():
        before = rx.seen
        f.send(f"edge/xfer/{DEV}/{DEV}-probe/query", b"{}")
        try:
            wait_for(lambda: rx.seen > before, 2, "probe handled")
            return True
        except AssertionError:
            return False
    wait_for(probe, 60, "the receiver's subscriptions")
    time.sleep(0.5)  # late probes still in flight
    return rx.seen


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def test_lone_surrogate_file_names_do_not_stop_archiving(open_broker, tmp_path):
    """The attack that stopped the archive: a lone surrogate in a file name, unsigned (anyone) and
    signed by the device itself (a stolen device), in a manifest, a chunk header and a finish.
    Each is refused with a reason; the receiver goes on and archives a real item. An open broker on
    purpose: anyone publishes on the device's topics while its agent runs."""
    broker = open_broker
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [120_000])
    t.enroll()
    rx = t.start_archive()
    d = t.store.item_dir(ids[0])
    m = json.loads((d / mf.MANIFEST).read_bytes())
    evil = dict(m, item_id=f"{DEV}-20990101000000-abcdef")
    evil["files"] = [dict(m["files"][0], name="\ud800clip.mp4")]
    signed = json.dumps(evil).encode()  # JSON escapes the surrogate: "\ud800"
    sig = mf.signature_record(t.store.private_key, signed)
    f = Flooder(broker.port)
    try:
        base0 = listening(rx, f)
        item = evil["item_id"]
        base = f"edge/xfer/{DEV}/{item}"
        f.send(base + "/manifest", signed, P.manifest_props(sig))  # signed by the device
        f.send(base + "/manifest", signed, P.manifest_props(b"x"))  # anyone
        head = b'{"proto":"edge-xfer/1","file":"\\udc80","offset":0,"sha256":"' + \
            hashing.hexdigest("sha256", b"abc").encode() + b'","corr":"AA=="}\n'
        f.send(base + "/chunk", head + b"abc")
        f.send(f"edge/xfer/{DEV}/{ids[0]}/chunk", head + b"abc")
        f.send(base + "/finish", b'{"files":[{"name":"\\ud800","size":1}],"size":1,"annotations":[]}')
        f.send(base + "/query", b'{"\\udfff":"\\ud800"}')
        f.send(f"edge/dev/{DEV}/chain", b'{"count":"\\ud800"}')
        wait_for(lambda: rx.seen >= base0 + 7, 60, "the receiver took every message")
        t.start_agent()
        t.wait_archived(ids)
        check_archive(t.root, ids)
        assert rx.failure is None and rx._worker.is_alive() and rx._finisher.is_alive()
        assert rx.refused >= 2  # both manifests answered "rejected" with the reason
        q = t.archive.quarantined()
        assert any("\\ud800" in r["reason"] or "UTF-8" in r["reason"] or "unsafe" in r["reason"]
                   for r in q), q
    finally:
        f.close()
        t.close()


def test_a_dead_worker_makes_archive_serve_exit_non_zero(broker, tmp_path):
    cfg = agent_config(tmp_path, broker.port)
    store = open_store(cfg)
    root = tmp_path / "archive"
    enroll(root, store)
    p = start_archive(root, broker.port, tmp_path, env={"EDGE_AGENT_FAULT_AT": "archive:worker"})
    f = Flooder(broker.port)
    try:
        f.send(f"edge/xfer/{DEV}/{DEV}-x/query", b"{}")
        wait_for(lambda: not p.alive(), 20, "archive serve exits after its worker died", [])
        assert p.p.returncode != 0
        text = p.text()
        assert "archive-worker died" in text and "fault injected at archive:worker" in text, text
        assert "the archive receiver stopped on an internal fault" in text, text
    finally:
        f.close()
        p.stop()


def test_junk_floods_stay_bounded(open_broker, tmp_path, caplog):
    """3,000 junk messages of a few kinds: refusal records are coalesced (a handful of rows with
    their counts), log lines are capped per kind and summarised, lock files stay a fixed set; then
    a real item archives. An open broker on purpose: the junk comes from a stranger, in the device's
    and in unknown devices' names, while the agent runs."""
    broker = open_broker
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [80_000])
    t.enroll()
    rx = t.start_archive()
    f = Flooder(broker.port)
    caplog.set_level(logging.WARNING, logger="agent.archive")
    try:
        base0 = listening(rx, f)
        n = 3000
        for i in range(n):
            item = f"{DEV}-2026010100{i:04d}-{i:06x}"
            kind = ("manifest", "finish", "query", "chunk")[i % 4]
            payload = {"manifest": b"{not json", "finish": b"nope", "query": b"",
                       "chunk": b"no header"}[kind]
            f.send(f"edge/xfer/{DEV if i % 3 else 'ghost-' + str(i)}/{item}/{kind}", payload,
                   [("sig", "AA==")] if kind == "manifest" else None)
            if i % 200 == 199:  # paced below the broker's queue limit (it drops beyond it, see docs/mqtt.md)
                wait_for(lambda: rx.seen >= base0 + i + 1, 60, f"junk messages handled ({rx.seen}/{i + 1})")
        wait_for(lambda: rx.seen >= base0 + n, 60, f"{n} junk messages handled ({rx.seen})")
        rows = t.archive.quarantined()
        assert len(rows) < 50, len(rows)
        assert sum(1 + r["repeats"] for r in rows) >= n // 2  # every refused manifest/finish counted
        lines = [r for r in caplog.records if r.name.startswith("agent.archive")]
        assert len(lines) < 100, len(lines)
        locks = list((t.root / "_tmp" / "locks").iterdir())
        assert len(locks) <= 1024
        t.start_agent()
        t.wait_archived(ids)
        check_archive(t.root, ids)
        assert rx.failure is None
    finally:
        f.close()
        t.close()


def test_refusal_notes_are_capped(tmp_path):
    cfg = agent_config(tmp_path, 1)
    store = open_store(cfg)
    root = tmp_path / "archive"
    enroll(root, store)
    ar = ArchiveStore(root)
    try:
        for i in range(MAX_NOTES + 300):  # each unlike any other (letters, not digits): no coalescing
            ar.note_refusal(f"d{i % 7}", f"item-{i}", "reason " + "".join(chr(107 + int(c)) for c in str(i)))
        assert len(ar.quarantined()) == MAX_NOTES
        assert ar.notes_dropped() == 300
        ar.note_refusal(None, None, "\ud800" * 5000)  # never fails, stored cut and printable
        last = ar.quarantined()[-1]
        assert len(last["reason"]) <= 500 and "\\ud800" in last["reason"]
    finally:
        ar.close()


def test_coalescer_summarises():
    now = [0.0]
    c = Coalescer(burst=3, window=10, clock=lambda: now[0])
    got = []

    class L:
        def log(self, level, fmt, *a, **kw):
            got.append(fmt % a)

        def warning(self, fmt, *a, **kw):
            got.append(fmt % a)

    for _ in range(1000):
        c.log(L(), "junk", "junk message %d", 1)
    now[0] = 11
    c.flush(L())
    assert got[:3] == ["junk message 1"] * 3 and got[3:] == ["997 more like this (junk) in 10 s"]


def test_abandoned_transfers_and_orphans_are_removed(tmp_path):
    cfg = agent_config(tmp_path, 1, evidence__block_size=64 * 1024)
    store = open_store(cfg)
    root = tmp_path / "archive"
    enroll(root, store)
    ar = ArchiveStore(root, abandon_after_s=3600)
    try:
        (item,) = add_items(store, tmp_path, [200_000])
        d = store.item_dir(item)
        mbytes, sig = (d / mf.MANIFEST).read_bytes(), (d / mf.SIGNATURE).read_bytes()
        assert ar.handle(DEV, item, "manifest", mbytes, dict(P.manifest_props(sig))).status == P.RECEIVING
        data = (d / mf.FILES_DIR / json.loads(mbytes)["files"][0]["name"]).read_bytes()
        name = json.loads(mbytes)["files"][0]["name"]
        assert ar.handle(DEV, item, "chunk", data[:65536], dict(P.chunk_props(name, 0, data[:65536]))).status == P.OK
        orphan = root / "_tmp" / DEV / "dock-0001-orphan"
        (orphan / "files").mkdir(parents=True)
        old = time.time() - 7200
        os.utime(orphan, (old, old))
        os.utime(orphan / "files", (old, old))
        assert ar.sweep() == {"transfers": 0, "orphans": 1}  # the live transfer was touched just now
        assert not orphan.exists() and (root / "_tmp" / DEV / item).is_dir()
        assert ar.sweep(now=time.time() + 3 * 3600) == {"transfers": 1, "orphans": 0}
        assert not (root / "_tmp" / DEV / item).exists() and ar.held(DEV, item) == {}
        assert ar.on_query(DEV, item).status == P.UNKNOWN  # the agent sends the manifest again
        assert any(e["action"] == "abandon" for e in ar.audit.entries())
    finally:
        ar.close()


def test_disk_watermark_refuses_new_transfers_with_the_reason(broker, tmp_path):
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [100_000])
    t.enroll()
    rx = t.start_archive(min_free=free_bytes(tmp_path) + (1 << 30))  # "the disk is nearly full"
    try:
        up = t.start_agent()
        wait_for(lambda: "archive disk low" in (up.stats().get("last_error") or ""), 30,
                 "the agent told why", [])
        assert "存档磁盘空间不足" in up.stats()["last_error"]
        assert t.store.item(ids[0])["state"] in ("sealed", "uploading")  # kept, sent again later
        assert not any((t.root / "_tmp").glob(f"*/{ids[0]}"))
        rx.store.min_free = 1 << 20  # space again
        t.wait_archived(ids, timeout=90)
        check_archive(t.root, ids)
    finally:
        t.close()


def test_what_the_fuzzing_found_is_refused_with_a_reason(tmp_path):
    """Inputs the fuzz runs found escaping the parsers' own errors: each is now a refusal."""
    cfg = agent_config(tmp_path, 1)
    store = open_store(cfg)
    root = tmp_path / "archive"
    enroll(root, store)
    ar = ArchiveStore(root)
    try:
        item = f"{DEV}-20990101000000-aaaaaa"
        for kind, payload, why in (
                ("finish", b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
                ("manifest", b"[" * 50_000 + b"]" * 50_000, "manifest"),
                ("finish", b'{"files":[],"size":0,"annotations":7}', "annotations is not a list"),
                ("finish", '{"files":[],"size":0,"annotations":[{"json":"é","sig":"AA=="}]}'.encode(), "base64")):
            a = ar.handle(DEV, item, kind, payload, {"sig": "AA=="})
            assert a.status == P.REJECTED and why in a.reason, (kind, why, a)
        assert ar.on_checkpoint(DEV, b"[" * 50_000 + b"]" * 50_000) is None
    finally:
        ar.close()


def test_one_devices_quarantine_is_capped_in_items_and_bytes(broker, tmp_path):
    """A stolen device (holding its own key) sends signed items that fail the finish check, one
    after another. Up to the device's caps (here 3 items, 25,000 bytes) they are quarantined with
    their bytes; an item beyond either cap keeps only its refusal note and its bytes are removed,
    so one device cannot fill the archive's disk to the watermark for every device."""
    from tests.archive.test_archive import WireClient

    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [10_000, 10_000, 10_000, 1_000, 1_000])
    t.enroll()
    rx = t.start_archive()
    rx.store.quarantine_max_items, rx.store.quarantine_max_bytes = 3, 25_000
    w = WireClient(broker.port, DEV)
    try:
        for item in ids:
            d = t.store.item_dir(item)
            mbytes, sig = (d / mf.MANIFEST).read_bytes(), (d / mf.SIGNATURE).read_bytes()
            assert w.send(item, "manifest", mbytes, P.manifest_props(sig))["status"] == "receiving"
            files = json.loads(mbytes)["files"]
            for f in files:
                data = (d / mf.FILES_DIR / f["name"]).read_bytes()
                assert w.send(item, "chunk", data, P.chunk_props(f["name"], 0, data))["status"] == "ok"
            # an annotation whose signature is not over it (the manifest's): the item fails verification
            t.store.annotate(item, {"place": "别处"}, reason="改")
            ann = (d / mf.ANNOTATIONS_DIR / "0001.json").read_bytes()
            ans = w.send(item, "finish", P.finish_payload(files, [(ann, sig)]))
            assert ans["status"] == "rejected" and "verification failed" in ans["reason"], ans
        kept = sorted(p.name[:-15] for p in (t.root / "_quarantine" / DEV).iterdir())
        assert kept == sorted([ids[0], ids[1], ids[3]])  # the third crossed the bytes, the fifth the count
        assert not any((t.root / "_tmp" / DEV).glob(f"{ids[2]}*")) and not any((t.root / "_tmp" / DEV).glob(f"{ids[4]}*"))
        assert rx.store.quarantined_bytes(DEV) == (3, 21_000)
        notes = [r for r in rx.store.quarantined() if r["path"] is None and "bytes not kept" in r["reason"]]
        assert [(n["item"], n["repeats"]) for n in notes] == [(ids[2], 1)], notes  # the second coalesced with it
        assert notes[0]["reason"].startswith("该设备隔离区已满，未保留数据 / bytes not kept: device dock-0001's "
                                             "quarantine holds 2 item(s), 20000 bytes"), notes
        rejects = [json.loads(e["detail"]) for e in rx.store.audit.entries() if e["action"] == "reject"]
        assert [r.get("bytes_not_kept") for r in rejects] == [None, None, 10_000, None, 1_000]
        assert "holds 3 item(s), 21000 bytes (limits archive.quarantine_max_items = 3" in rejects[4]["why"]
    finally:
        w.close()
        t.close()


def test_archive_serve_removes_an_old_orphan_tmp_directory_at_start(broker, tmp_path):
    """`archive serve` sweeps `_tmp` as it starts, with no message arriving (it once waited for the
    first message or the first checkpoint, 30 s): a directory no transfer owns, untouched for two
    hours (a receiver killed before it wrote the row), is removed; one touched just now (a transfer
    being opened) is left."""
    root = tmp_path / "archive"
    old_orphan, fresh = root / "_tmp" / DEV / f"{DEV}-orphan", root / "_tmp" / DEV / f"{DEV}-opening"
    for d in (old_orphan, fresh):
        (d / mf.FILES_DIR).mkdir(parents=True)
        (d / mf.FILES_DIR / "clip.mp4").write_bytes(b"\0" * 4096)
    old = time.time() - 7200
    for p in (old_orphan / mf.FILES_DIR / "clip.mp4", old_orphan / mf.FILES_DIR, old_orphan):
        os.utime(p, (old, old))
    p = start_archive(root, broker.port, tmp_path)
    try:
        wait_for(lambda: not old_orphan.exists(), 10, "the old orphan removed at start (not at the first message)", [p])
        wait_for(lambda: "1 orphaned _tmp directories" in p.text(), 10, "the sweep logged", [p])
        assert fresh.is_dir() and (fresh / mf.FILES_DIR / "clip.mp4").is_file() and p.alive()
    finally:
        p.stop()
