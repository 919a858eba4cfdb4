"""Chunks are sealed blocks: the archive writes a chunk only when it is one block of the signed
manifest with that block's hash (or a piece of a block larger than a message, checked when the
block is complete); anything else is refused with the range to send again, never the item, and a
held block is never written again. Before the rename the item is read back from disk and verified.
The attacks run against a real broker, a real receiver and a real uplink."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest

from agent.archive.storage import ArchiveStore
from agent.evidence import blocks, hashing, manifest as mf
from agent.evidence.verify import verify_item
from agent.wire import protocol as P
from tests.support.uplink import InProc, add_items, agent_config, check_archive, enroll, open_store, wait_for

DEV = "dock-0001"
BLOCK = 64 * 1024


@pytest.fixture(params=["sha256", "sm3"])
def archive(request, tmp_path):
    if request.param not in hashing.available_algorithms():
        pytest.skip("sm3 not offered by this OpenSSL")
    cfg = agent_config(tmp_path, 1, evidence__block_size=BLOCK, evidence__hash_algorithm=request.param)
    store = open_store(cfg)
    root = tmp_path / "archive"
    enroll(root, store)
    ar = ArchiveStore(root)
    yield store, ar
    ar.close()


def _open(ar, store, item):
    d = store.item_dir(item)
    mbytes, sig = (d / mf.MANIFEST).read_bytes(), (d / mf.SIGNATURE).read_bytes()
    ans = ar.handle(DEV, item, "manifest", mbytes, dict(P.manifest_props(sig)))
    assert ans.status == P.RECEIVING, ans
    m = json.loads(mbytes)
    data = {f["name"]: (d / mf.FILES_DIR / f["name"]).read_bytes() for f in m["files"]}
    return m, data


def _chunk(ar, item, name, off, data):
    return ar.handle(DEV, item, "chunk", data, dict(P.chunk_props(name, off, data)))


def _finish(ar, item, m):
    ar.commit_ranges()
    return ar.handle(DEV, item, "finish", P.finish_payload(m["files"], []), {})


def _stored_identical(ar, item, data):
    row = ar.find(item)
    d = ar.root / row["path"]
    verify_item(d, ar.registry.ring(DEV), expected_device=DEV)  # from disk
    for name, b in data.items():
        assert (d / mf.FILES_DIR / name).read_bytes() == b


def test_one_block_per_chunk(archive, tmp_path):
    store, ar = archive
    (item,) = add_items(store, tmp_path, [300_000])
    m, data = _open(ar, store, item)
    plan = blocks.plan(blocks.BlockTable.from_manifest(m), {}, 1 << 20)
    assert [n for _, _, n in plan] == [BLOCK] * 4 + [300_000 - 4 * BLOCK]
    for name, off, n in plan:
        assert _chunk(ar, item, name, off, data[name][off:off + n]).status == P.OK
    assert _finish(ar, item, m).status == P.STORED
    _stored_identical(ar, item, data)
    assert ar.verified["blocks"] == 5 and ar.verified["files"] == 1


def test_chunks_that_are_not_blocks_are_refused_and_the_item_goes_on(archive, tmp_path):
    store, ar = archive
    (item,) = add_items(store, tmp_path, [200_000])
    m, data = _open(ar, store, item)
    (name,) = data
    for off, n in ((BLOCK - 10, 20), (0, BLOCK + 1), (3 * BLOCK, 200_000 - 3 * BLOCK + 1), (200_000, 1)):
        a = _chunk(ar, item, name, off, (data[name][off:off + n] + b"x")[:n])  # crosses a block's end
        assert a.status == P.ERROR and "not one block of the signed manifest" in a.reason, (off, n, a)
    a = _chunk(ar, item, "other.mp4", 0, data[name][:BLOCK])
    assert a.status == P.ERROR and "does not list" in a.reason
    junk = b"\x00" * BLOCK  # a block's place and size, its own sha256, not the sealed bytes
    a = _chunk(ar, item, name, BLOCK, junk)
    assert a.status == P.ERROR and f"[{BLOCK}, {2 * BLOCK})" in a.reason and a.file == name and a.offset == BLOCK
    assert ar.held(DEV, item) == {}
    for name, off, n in blocks.plan(blocks.BlockTable.from_manifest(m), {}, BLOCK):
        assert _chunk(ar, item, name, off, data[name][off:off + n]).status == P.OK
    assert _finish(ar, item, m).status == P.STORED
    _stored_identical(ar, item, data)


def test_a_held_block_is_never_written_again(archive, tmp_path):
    store, ar = archive
    (item,) = add_items(store, tmp_path, [BLOCK * 2])
    m, data = _open(ar, store, item)
    (name,) = data
    first = data[name][:BLOCK]
    assert _chunk(ar, item, name, 0, first).status == P.OK
    ar.commit_ranges()
    part = ar.root / "_tmp" / DEV / item / mf.FILES_DIR / name
    before = part.stat().st_mtime_ns
    assert _chunk(ar, item, name, 0, first).status == P.OK  # the agent's duplicate: not written
    assert _chunk(ar, item, name, 0, b"\x01" * BLOCK).status == P.ERROR
    assert _chunk(ar, item, name, 0, b"\x01" * 1000).status == P.OK  # a piece of a held block: ignored
    assert part.stat().st_mtime_ns == before and part.read_bytes()[:BLOCK] == first


def test_pieces_of_a_block_larger_than_a_chunk(archive, tmp_path):
    """A block larger than a message travels as pieces; it is held only once it hashes right. A
    wrong piece makes the block be forgotten and asked for again, never stored."""
    store, ar = archive
    (item,) = add_items(store, tmp_path, [BLOCK * 2 + 5000])
    m, data = _open(ar, store, item)
    (name,) = data
    plan = blocks.plan(blocks.BlockTable.from_manifest(m), {}, 20_000)
    assert len(plan) == 4 + 4 + 1
    bad_at = plan[1][1]
    for name, off, n in plan:
        piece = data[name][off:off + n]
        if off == bad_at:
            piece = b"\x02" * n  # a stranger's piece, self-consistent hash
        a = _chunk(ar, item, name, off, piece)
        if off == plan[3][1]:  # the piece that completes block 0: the block does not hash right
            assert a.status == P.ERROR and f"[0, {BLOCK})" in a.reason and "pieces" in a.reason, a
        else:
            assert a.status == P.OK, a
    ar.commit_ranges()
    assert ar.held(DEV, item) == {name: [[BLOCK, 2 * BLOCK + 5000]]}
    ans = _finish(ar, item, m)
    assert ans.status == P.INCOMPLETE and ans.held == {name: [[BLOCK, 2 * BLOCK + 5000]]}
    for name, off, n in blocks.plan(blocks.BlockTable.from_manifest(m), ans.held, 20_000):
        assert _chunk(ar, item, name, off, data[name][off:off + n]).status == P.OK
    assert _finish(ar, item, m).status == P.STORED
    _stored_identical(ar, item, data)
    assert ar.verified["assembled"] == 2 and ar.verified["blocks"] == 1  # the last block: one chunk


# --- attacks through a real broker ------------------------------------------------------------
class Stranger:
    """An anonymous client: watches the transfer topics, injects a chunk of junk (self-consistent
    sha256) at the offset of every chunk it sees, and at every block of every manifest it sees;
    records the archive's answers to its own requests."""

    def __init__(self, port: int):
        self.sent: set[bytes] = set()
        self.answers: dict[bytes, dict] = {}
        self.cv = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"stranger-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.subscribe([("edge/xfer/+/+/+", 1), (f"edge/ack/{DEV}", 1)])
        assert subscribed.wait(10)

    def inject(self, topic: str, name: str, off: int, n: int) -> None:
        junk = bytes([0x5A]) * n
        corr = uuid.uuid4().bytes
        with self.cv:
            self.sent.add(corr)
        self.c.publish(topic, P.chunk_payload(name, off, junk, corr), qos=1)

    def _on_message(self, c, u, msg):
        if msg.topic.startswith("edge/ack/"):
            corr = bytes(msg.properties.CorrelationData or b"") if hasattr(msg.properties, "CorrelationData") else b""
            with self.cv:
                if corr in self.sent:
                    self.answers[corr] = json.loads(msg.payload)
                    self.cv.notify_all()
            return
        kind = msg.topic.rsplit("/", 1)[1]
        ctopic = msg.topic.rsplit("/", 1)[0] + "/chunk"
        if kind == "manifest":
            m = json.loads(msg.payload)
            for name, off, n in blocks.plan(blocks.BlockTable.from_manifest(m), {}, 1 << 30):
                self.inject(ctopic, name, off, n)
        elif kind == "chunk" and msg.payload[:1] == b"{":
            head = json.loads(bytes(msg.payload[:msg.payload.index(b"\n")]))
            if base64_corr(head) not in self.sent:
                self.inject(ctopic, head["file"], head["offset"], len(msg.payload) - msg.payload.index(b"\n") - 1)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def base64_corr(head: dict) -> bytes:
    import base64
    return base64.b64decode(head.get("corr", ""))


def test_stranger_injecting_chunks_cannot_change_or_stop_an_item(open_broker, tmp_path):
    """Every block of the manifest and every chunk the device sends is shadowed by a junk chunk
    at the same offset: each junk chunk is refused, the item archives byte-identical."""
    broker = open_broker  # on purpose: an anonymous stranger on the device's transfer topics
    t = InProc(tmp_path, broker.port, evidence__block_size=256 * 1024)  # one block per chunk
    ids = add_items(t.store, tmp_path, [900_000, 300_000])
    t.enroll()
    rx = t.start_archive()
    s = Stranger(broker.port)
    try:
        t.start_agent()
        t.wait_archived(ids, timeout=60)
        check_archive(t.root, ids)
        for item in ids:
            d = t.root / rx.store.find(item)["path"]
            for f in (t.store.item_dir(item) / mf.FILES_DIR).iterdir():
                assert (d / mf.FILES_DIR / f.name).read_bytes() == f.read_bytes()
        wait_for(lambda: len(s.answers) == len(s.sent), 20, "an answer to every injected chunk")
        assert len(s.sent) >= 2 * (4 + 2)  # each block twice: at its manifest and beside the device's chunk
        assert all(a["status"] in ("error", "ok") for a in s.answers.values())
        refused = [a for a in s.answers.values() if a["status"] == "error"]
        assert all("differ from the block's hash" in a["reason"] for a in refused), refused[:3]
        # "ok" only for a junk chunk that came after its block was held: answered, never written
        assert len(refused) >= len(s.sent) // 2
        assert rx.store.verified["refused"] == len(refused)
    finally:
        s.close()
        t.close()


def test_a_corrupted_chunk_costs_one_retransmission(broker, tmp_path):
    """A relay that changes one chunk's bytes on the way (and fixes up its transport hash): the
    archive refuses that chunk naming its range, the agent sends it again, the item archives."""
    t = InProc(tmp_path, broker.port, evidence__block_size=256 * 1024)
    ids = add_items(t.store, tmp_path, [700_000])
    t.enroll()
    rx = t.start_archive()
    up = t.start_agent()
    tr = up.transfer if hasattr(up, "transfer") else up.uplink.transfer
    real = tr._publish
    corrupted = []

    def relay(topic, payload, props=None, corr=None):
        if corr is None and not corrupted and b'"offset":262144' in bytes(payload[:300]):
            nl = payload.index(b"\n")
            head = json.loads(bytes(payload[:nl]))
            body = bytearray(payload[nl + 1:])
            body[100] ^= 0xFF
            payload = P.chunk_payload(head["file"], head["offset"], bytes(body), base64_corr(head),
                                      hashlib.sha256(body).hexdigest())
            corrupted.append(head["offset"])
        return real(topic, payload, props, corr)

    tr._publish = relay
    try:
        t.wait_archived(ids, timeout=60)
        check_archive(t.root, ids)
        assert corrupted == [262144]
        assert rx.store.verified["refused"] == 1 and tr.retransmits >= 1
        assert rx.refused == 1
    finally:
        t.close()
