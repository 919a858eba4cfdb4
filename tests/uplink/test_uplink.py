"""Uplink: protocol, connection traps (PUBACK reason codes, Maximum Packet Size, Receive Maximum),
TLS, priorities, bandwidth cap, checkpoint, and the whole chain with real subprocesses."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest

from agent.evidence import keys
from agent.wire import checkpoint, protocol as P
from agent.wire.client import ConnSettings, TlsConfig
from agent.wire.mqtt import Connection
from agent.wire.publish import PublishError
from tests.support.broker import denied, login
from tests.support.retained import retained as broker_retained
from tests.support.uplink import (UNIT, InProc, add_items, agent_config, all_archived, check_archive, credentials,
                                  enroll, live_status, open_store, run, start_agent, start_archive, states, wait_for)


# --- protocol -----------------------------------------------------------------------------------
def test_ranges_merge_and_missing():
    assert P.merge_ranges([[5, 10], [0, 5], [20, 30], [25, 40]]) == [[0, 10], [20, 40]]
    assert P.missing_ranges(50, [[0, 10], [20, 40]]) == [(10, 20), (40, 50)]
    assert P.missing_ranges(0, None) == []
    assert P.missing_ranges(10, [[0, 10]]) == []


def test_chunk_parse_refuses_bad_input():
    data = b"x" * 100
    props = dict(P.chunk_props("a.mp4", 0, data))
    assert P.parse_chunk(data, props).offset == 0
    with pytest.raises(P.ProtocolError, match="sha256 mismatch"):
        P.parse_chunk(b"y" * 100, props)
    with pytest.raises(P.ProtocolError, match="unsafe"):
        P.parse_chunk(data, dict(props, file="../x"))
    with pytest.raises(P.ProtocolError, match="offset"):
        P.parse_chunk(data, dict(props, offset="-1"))
    with pytest.raises(P.ProtocolError, match="64 hex"):
        P.parse_chunk(data, dict(props, sha256="zz"))


def test_a_chunk_hashed_where_it_arrives_is_checked_the_same():
    """The archive hashes a chunk's bytes on the thread it arrives on (chunk_digest) and its
    worker checks that hash against the header's, as if it had hashed them itself: bytes that
    differ from the header's hash are refused either way; the other form hashes its own bytes."""
    data = bytes(range(256)) * 1024
    payload = bytearray(P.chunk_payload("a.mp4", 0, data, b"c-1"))
    hashed = P.chunk_digest(payload)
    assert hashed == hashlib.sha256(data).hexdigest()
    assert bytes(P.parse_chunk(payload, {}, hashed).data) == data
    tampered = bytearray(payload)
    tampered[-1] ^= 1  # one bit of the bytes changed after the header was written
    with pytest.raises(P.ProtocolError, match="sha256 mismatch"):
        P.parse_chunk(tampered, {}, P.chunk_digest(tampered))
    assert P.chunk_digest(b"no header line") is None and P.chunk_digest(memoryview(payload)) is None
    props = dict(P.chunk_props("a.mp4", 0, data))  # the user-property form: its own bytes, hashed there
    with pytest.raises(P.ProtocolError, match="sha256 mismatch"):
        P.parse_chunk(b"y" * len(data), props, hashed)


def test_chunk_header_form_and_its_bad_input():
    """Chunks as sent by the agent: a JSON header line (offset, SHA-256, correlation) then the bytes,
    no MQTT properties. Each malformed header is refused with a reason; the correlation data is
    recovered whenever the header is readable, so even a refusal reaches the right request."""
    data = bytes(range(256)) * 40
    corr = b"\x00\x01corr"
    payload = P.chunk_payload("a.mp4", 4096, data, corr)
    head, _, rest = payload.partition(b"\n")
    assert rest == data and json.loads(head) == {"proto": P.PROTO, "file": "a.mp4", "offset": 4096,
                                                 "sha256": hashlib.sha256(data).hexdigest(),
                                                 "corr": base64.b64encode(corr).decode()}
    c = P.parse_chunk(payload, {})
    assert (c.file, c.offset, bytes(c.data), c.corr) == ("a.mp4", 4096, data, corr)

    def refused(pl, match):
        with pytest.raises(P.ProtocolError, match=match):
            P.parse_chunk(pl, {})

    def with_head(**change):
        h = json.loads(head)
        h.update(change)
        return json.dumps(h).encode() + b"\n" + data

    refused(b"\xff" * 5000, "no header line")              # raw bytes without user properties
    refused(data, "not valid JSON")                         # ... whose first line is not a header
    refused(b"x" * 3000 + b"\n" + data, "no header line")  # header longer than allowed
    refused(b"{not json\n" + data, "not valid JSON")
    refused(b"[1, 2]\n" + data, "not a JSON object")
    refused(with_head(file="../etc/passwd"), "unsafe")
    refused(with_head(file="a\x00b"), "unsafe")
    refused(with_head(offset=-1), "offset")
    refused(with_head(offset="12"), "offset")
    refused(with_head(offset=True), "offset")
    refused(with_head(sha256="zz"), "64 hex")
    refused(with_head(sha256="0" * 64), "sha256 mismatch")
    refused(with_head(corr="%%%"), "corr")
    refused(with_head(proto="edge-xfer/9"), "not understood")
    assert P.chunk_corr(with_head(sha256="0" * 64)) == corr
    assert P.chunk_corr(b"garbage") is None


def test_manifest_parse_refuses_bad_input(tmp_path):
    from agent.evidence import hashing, manifest as mf

    store = open_store(agent_config(tmp_path, 1883))
    item = add_items(store, tmp_path, [10])[0]
    raw = (store.item_dir(item) / mf.MANIFEST).read_bytes()
    good, dev = json.loads(raw), "dock-0001"
    props = dict(P.manifest_props(b'{"sig": 1}\n'))
    m = P.parse_manifest(raw, props, item=item, device=dev)
    assert m.sig == b'{"sig": 1}\n' and m.total_size == 10

    def edited(change) -> bytes:
        doc = json.loads(raw)
        change(doc)
        return hashing.canonical(doc)

    def sized(n):
        return lambda d: (d["files"][0].update(size=n), d["segments"][0].update(size=n))
    cases = [
        (b"not json", props, "not valid JSON"),
        (raw, {}, "sig"),
        (edited(lambda d: d.update(item_id="dock-0001-x")), props, "does not match"),
        (edited(lambda d: d["files"][0].update(name="../x")), props, "not a plain file name"),
        (edited(sized(-1)), props, "must be an integer from 0"),
        (edited(sized(10**12)), props, "exceeds the archive's limit"),
        (json.dumps(good).encode(), props, "not in canonical form"),
        (b"{" + b" " * 5000 + b"}", props, "exceeds the limit"),
    ]
    for payload, pr, reason in cases:
        with pytest.raises(P.ProtocolError, match=reason):
            P.parse_manifest(payload, pr, item=item, device=dev, max_manifest=4096, max_item=10**9)


def test_checkpoint_signed_and_checked(tmp_path):
    store = open_store(agent_config(tmp_path, 1883))
    add_items(store, tmp_path, [1000, 2000])
    payload = checkpoint.make(store)
    cp = checkpoint.parse(payload, store.private_key.public_key(), device="dock-0001")
    assert cp.count == 2 and cp.head == store.head()[1]
    forged = json.loads(payload)
    forged["count"] = 1
    with pytest.raises(checkpoint.CheckpointError, match="bad signature"):
        checkpoint.parse(json.dumps(forged).encode(), store.private_key.public_key())
    other = keys.generate(tmp_path / "o.key", tmp_path / "o.pub").public_key()
    with pytest.raises(checkpoint.CheckpointError, match="bad signature"):
        checkpoint.parse(payload, other)
    with pytest.raises(checkpoint.CheckpointError, match="not JSON"):
        checkpoint.parse(b"\xff")


# --- connection traps ----------------------------------------------------------------------------
def test_connack_limits_read_and_enforced(make_broker):
    mq = make_broker(extra_config=["max_packet_size 100000", "max_inflight_messages 5"])
    c = Connection(ConnSettings("127.0.0.1", mq.port, "limits", **login(mq.port, "limits")))
    c.start()
    try:
        assert c.wait_connected(10), c.last_error
        assert c.receive_maximum == 5 and c.maximum_packet_size == 100000
        with pytest.raises(PublishError, match="maximum packet size"):
            c.publish("edge/dev/limits/health", b"x" * 200_000)
        # never more than Receive Maximum unacknowledged, however many are published at once
        hs = [c.publish("edge/dev/limits/health", b"y" * 1000, timeout=10) for _ in range(50)]
        assert all(h.wait(10) and h.ok for h in hs)
    finally:
        c.stop()


def test_puback_refusal_is_an_error_not_a_success(broker, tmp_path):
    """A station logged in with another device's identity (its credentials copied wrongly): the
    shipped ACL refuses its transfer topics with PUBACK 0x87; the item is not archived, the error
    is reported."""
    mq = broker
    other = login(mq.port, "dock-0002")
    t = InProc(tmp_path, mq.port, uplink__ack_timeout_s=2, mqtt__username=other["username"],
               mqtt__password=other["password"])
    ids = add_items(t.store, tmp_path, [10_000])
    t.enroll()
    t.start_archive()
    up = t.start_agent()
    try:
        wait_for(lambda: "0x87" in (up.stats()["last_error"] or ""), 20, "PUBACK 0x87 reported")
        n = up.stats()["errors"]
        wait_for(lambda: up.stats()["errors"] > n, 20, "a second attempt refused as well")
        assert states(t.config)[ids[0]] in ("uploading", "sealed")
        assert not list(t.root.glob(f"{UNIT}/*/{ids[0]}"))
        assert up.stats()["errors"] >= 1
    finally:
        t.close()


def test_chunks_fit_the_brokers_maximum_packet_size(make_broker, tmp_path):
    mq = make_broker(extra_config=["max_packet_size 70000"])
    t = InProc(tmp_path, mq.port, uplink__chunk_size=256 * 1024)
    ids = add_items(t.store, tmp_path, [600_000])
    t.enroll()
    t.start_archive()
    t.start_agent()
    try:
        t.wait_archived(ids)
        check_archive(t.root, ids)
        assert "exceeds" not in (t.uplink.stats()["last_error"] or "")
    finally:
        t.close()


def test_receive_maximum_bounds_the_window(make_broker, tmp_path):
    mq = make_broker(extra_config=["max_inflight_messages 4"])
    t = InProc(tmp_path, mq.port, uplink__chunk_size=16 * 1024, uplink__max_inflight=64)
    ids = add_items(t.store, tmp_path, [400_000])
    t.enroll()
    t.start_archive()
    up = t.start_agent()
    peak = 0
    try:
        deadline = time.monotonic() + 30
        while not all_archived(t.config, ids)() and time.monotonic() < deadline:
            peak = max(peak, up.conn.in_flight())
            time.sleep(0.001)
        t.wait_archived(ids, 1)
        assert up.conn.receive_maximum == 4 and up.transfer.window == 2
        assert peak <= 4
        check_archive(t.root, ids)
    finally:
        t.close()


# --- priorities, bandwidth ------------------------------------------------------------------------
def test_room_segments_go_before_docking_backlog(broker, tmp_path):
    t = InProc(tmp_path, broker.port)
    backlog = add_items(t.store, tmp_path, [200_000] * 3)
    live = add_items(t.store, tmp_path, [50_000], seed=1)
    t.store.ledger.db["items"].update(live[0], {"priority": 1})
    t.enroll()
    t.start_archive()
    t.start_agent()
    try:
        t.wait_archived(backlog + live)
        order = [r["item_id"] for r in t.archive.audit.entries(action="archive")]
        assert order[0] == live[0], order
    finally:
        t.close()


def test_unreadable_local_copy_keeps_its_item_and_loses_no_window_slot(broker, tmp_path):
    """The local file of one item cannot be read (lost from the spool): that item stays in the
    outbox with the error reported, the others are archived, and the lanes' shared window gets
    back every slot taken for a chunk that was never sent."""
    t = InProc(tmp_path, broker.port, uplink__chunk_size=64 * 1024)
    ids = add_items(t.store, tmp_path, [300_000, 300_000, 300_000])
    lost = t.store.item_dir(ids[0]) / "files"
    (lost / next(p.name for p in lost.iterdir())).unlink()
    t.enroll()
    t.start_archive()
    up = t.start_agent()
    try:
        t.wait_archived(ids[1:])
        wait_for(lambda: up.stats()["errors"] >= 1, 10, "the failed transfer reported")
        assert t.store.item(ids[0])["state"] in ("sealed", "uploading")
        assert "No such file" in (up.stats()["last_error"] or ""), up.stats()
        wait_for(lambda: up.transfer._inflight_total == 0, 10, "every window slot given back")
    finally:
        t.close()


def test_bandwidth_cap(broker, tmp_path):
    t = InProc(tmp_path, broker.port, uplink__bandwidth_limit=1_000_000, uplink__chunk_size=64 * 1024)
    ids = add_items(t.store, tmp_path, [2_500_000])
    t.enroll()
    t.start_archive()
    t0 = time.monotonic()
    t.start_agent()
    try:
        t.wait_archived(ids)
        took = time.monotonic() - t0
        assert took >= 1.3, f"2.5 MB at 1 MB/s took only {took:.2f} s"
    finally:
        t.close()


# --- TLS -----------------------------------------------------------------------------------------
def test_tls_valid_client_certificate_archives(tls_broker, pki, tmp_path):
    """Certificate identities under the shipped ACL (CN = user name): the agent (CN dock-0001) and
    the receiver (CN archive) do their work without a single refusal."""
    dev = pki.client("dock-0001")
    arch = pki.client("archive")
    t = InProc(tmp_path, tls_broker.tls_port, agent_tls=(pki.ca.cert, dev.cert, dev.key),
               archive_tls=(pki.ca.cert, arch.cert, arch.key))
    ids = add_items(t.store, tmp_path, [300_000])
    t.enroll()
    t.start_archive()
    t.start_agent()
    try:
        t.wait_archived(ids)
        check_archive(t.root, ids)
    finally:
        t.close()
    log = tls_broker.log_path.read_text(errors="replace")
    assert " as dock-0001 " in log and " as archive " in log  # the CNs are the sessions
    assert not denied(log), "the agent or the archive was refused something"


@pytest.mark.parametrize("which", ["rogue", "missing"])
def test_tls_invalid_or_missing_client_certificate_refused(tls_broker, pki, which):
    cert = pki.rogue if which == "rogue" else None
    tls = TlsConfig(str(pki.ca.cert), str(cert.cert) if cert else None, str(cert.key) if cert else None)
    c = Connection(ConnSettings("127.0.0.1", tls_broker.tls_port, "dock-0001", tls=tls, min_backoff=0.2,
                                max_backoff=0.5, connect_timeout=3))
    c.start()
    try:
        assert not c.wait_connected(3)
        wait_for(lambda: c.errors >= 1, 10, "the refusal reported")
        assert not c.connected
        assert "CONNACK" in (c.last_error or "") or "certificate" in (c.last_error or "").lower() \
            or "cannot connect" in (c.last_error or ""), c.last_error
        with pytest.raises(PublishError, match="not connected"):
            c.publish("edge/x", b"1")
    finally:
        c.stop()


def test_tls_wrong_server_ca_refused(tls_broker, pki):
    dev = pki.client("dock-0001")
    c = Connection(ConnSettings("127.0.0.1", tls_broker.tls_port, "dock-0001",
                                tls=TlsConfig(str(pki.rogue_ca.cert), str(dev.cert), str(dev.key)),
                                min_backoff=0.2, max_backoff=0.5, connect_timeout=3))
    c.start()
    try:
        wait_for(lambda: c.errors >= 1, 10, "server verification failure reported")
        assert not c.connected and "certificate verify failed" in (c.last_error or ""), c.last_error
    finally:
        c.stop()


# --- the whole chain, real processes --------------------------------------------------------------
def test_run_and_serve_end_to_end(broker, tmp_path):
    """edge-agent run + edge-agent archive serve: items archived, verified, status and checkpoint
    retained, local copies purged per retention, missing list empty, clean stop publishes offline."""
    cfg = agent_config(tmp_path, broker.port, storage__retention_days=0)
    store = open_store(cfg)
    ids = add_items(store, tmp_path, [700_000, 0, 3_000])
    store.close()
    root = tmp_path / "archive"
    enroll(root, open_store(cfg))
    ar = start_archive(root, broker.port, tmp_path)
    ag = start_agent(cfg, tmp_path)
    try:
        wait_for(lambda: all(s == "purged" for s in states(cfg).values()) and len(states(cfg)) == 3, 40,
                 "all archived and purged (retention 0)", [ar, ag])
        check_archive(root, ids)
        wait_for(lambda: live_status(cfg).get("items_archived") == 3, 10, "live status", [ag])
        miss = json.loads(run(["archive", "list", "--missing", "--json", "--root", str(root)], check=True).stdout)
        assert miss and miss[0]["announced"] == 3 and miss[0]["missing"] == [] and miss[0]["head_matches"] is True
        retained = _retained(broker.port, "edge/dev/dock-0001/status")
        assert retained["state"] == "online" and retained["bdseq"] >= 1
        st = run(["uplink", "status", "--json"], config=cfg, check=True)
        assert json.loads(st.stdout)["items_by_state"] == {"purged": 3}
    finally:
        assert ag.stop() == 0, ag.text()[-2000:]
        ar.stop()
    retained = _retained(broker.port, "edge/dev/dock-0001/status")
    assert retained["state"] == "offline" and retained.get("reason") == "clean stop"


def test_status_will_on_crash_carries_bdseq(broker, tmp_path):
    cfg = agent_config(tmp_path, broker.port)
    open_store(cfg).close()
    ag = start_agent(cfg, tmp_path)
    try:
        wait_for(lambda: (_retained(broker.port, "edge/dev/dock-0001/status") or {}).get("state") == "online", 20,
                 "online", [ag])
        online = _retained(broker.port, "edge/dev/dock-0001/status")
    finally:
        ag.kill()
    wait_for(lambda: (_retained(broker.port, "edge/dev/dock-0001/status") or {}).get("state") == "offline", 30,
             "the will (offline) after SIGKILL")
    dead = _retained(broker.port, "edge/dev/dock-0001/status")
    assert dead["bdseq"] == online["bdseq"]


def test_signed_command_over_mqtt_reaches_the_agent_and_answers(broker, tmp_path):
    """P/dev/D/cmd -> agent.dispatch_command (off the network thread) -> answer on the response
    topic with the correlation data (uplink.publish(..., correlation_data=...))."""
    import shutil

    cfg = agent_config(tmp_path, broker.port)
    store = open_store(cfg)
    run(["command", "keygen", "ops", "--out", str(tmp_path / "op")], check=True)
    (store.data_dir / "keys" / "operators").mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "op" / "ops.pub", store.data_dir / "keys" / "operators" / "ops.pub")
    store.close()
    ag = start_agent(cfg, tmp_path)
    try:
        wait_for(lambda: "uplink: connected" in ag.text(), 20, "agent connected", [ag])
        ops = credentials(tmp_path, broker.port, "ops", "ops")
        p = run([*ops, "command", "send", "status", "--device", "dock-0001", "--key", str(tmp_path / "op" / "ops.key"),
                 "--broker", f"127.0.0.1:{broker.port}", "--json", "--timeout", "60"])
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["ok"] is True
    finally:
        ag.stop()


def test_run_without_device_key_is_a_clear_error(tmp_path):
    cfg = agent_config(tmp_path, 1)
    p = run(["run"], config=cfg)
    assert p.returncode != 0 and "device key not found" in p.stderr and "Traceback" not in p.stderr


def _retained(port: int, topic: str) -> dict | None:
    """The retained status: the body of its signed envelope (docs/mqtt.md "Signed device state")."""
    from tests.support.health import body_of

    payload = broker_retained(port, topic).get(topic)
    return body_of(payload) if payload else None


def test_uplink_retry_command(tmp_path):
    cfg = agent_config(tmp_path, 1)
    store = open_store(cfg)
    ids = add_items(store, tmp_path, [100])
    store.set_state(ids[0], "rejected", error="archive: unknown device")
    p = run(["uplink", "retry", "--all-rejected"], config=cfg)
    assert p.returncode == 0 and "queued again" in p.stdout
    assert states(cfg)[ids[0]] == "sealed"
    p = run(["uplink", "retry", ids[0]], config=cfg)
    assert p.returncode != 0 and "only refused" in p.stderr
    p = run(["uplink", "retry"], config=cfg)
    assert p.returncode != 0 and "--all-rejected" in p.stderr



def _publish_body(topic: bytes, qos: int, mid: int, props, payload: bytes, v5: bool = True) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        body += props.pack() if props is not None else b"\x00"
    return body + payload


def test_lean_publish_decoder_matches_paho_and_refuses_what_paho_refuses():
    """The archive decodes PUBLISH packets with one payload copy instead of paho's four; for every
    packet, whole or cut short anywhere, it gives what paho gives or refuses it as paho does."""
    import random

    from paho.mqtt import _packet
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from agent.wire.lean import _lean_decode_publish, install_lean_decoder

    assert install_lean_decoder() and getattr(_packet.decode_publish, "_edge_lean", False)
    paho_decode = _packet.decode_publish._edge_original
    lean = _packet.convert_exception(_lean_decode_publish)
    rnd = random.Random(7)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "edge/dev/dock-0001/ack"
    props.CorrelationData = b"s-42"
    props.UserProperty = [("proto", "1"), ("file", "clip.mp4")]
    cases = []
    for qos in (0, 1, 2):
        for p in (None, props):
            for payload in (b"", b"x", rnd.randbytes(300_000)):
                cases.append((0x30 | (qos << 1) | 1, _publish_body(b"edge/x/chunk", qos, 4711, p, payload), 5))
    cases.append((0x32, _publish_body(b"t/3", 1, 9, None, b"abc", v5=False), 4))
    cases.append((0x32, _publish_body(b"", 1, 9, None, b"abc", v5=False), 4))  # empty topic: MQTT 3 refuses
    def same(header, body, proto):
        try:
            want = paho_decode(header, body, proto)
        except _packet.MalformedPacket:
            with pytest.raises(_packet.MalformedPacket):
                lean(header, body, proto)
            return
        try:
            got = lean(header, body, proto)
        except _packet.MalformedPacket as exc:
            # paho lets properties run past the end of the packet (it slices what is there);
            # MQTT 5 (2.2.2.1) makes that a malformed packet, and so does the lean decoder
            assert "properties run past the packet" in str(exc), exc
            return
        assert (got.dup, got.qos, got.retain, got.topic, got.mid, bytes(got.payload)) == \
            (want.dup, want.qos, want.retain, want.topic, want.mid, bytes(want.payload)), (header, len(body))
        assert (got.properties.json() if got.properties else None) == \
            (want.properties.json() if want.properties else None)

    for header, body, proto in cases:
        if proto == 5 or body[:2] != b"\x00\x00":  # every whole packet but the empty MQTT 3 topic decodes
            assert lean(header, bytearray(body), proto).payload == paho_decode(header, bytearray(body), proto).payload
        for cut in sorted({len(body), *rnd.sample(range(len(body) + 1), min(len(body) + 1, 12)), 0, 1, 2, 3}):
            same(header, bytearray(body[:cut]), proto)
    for _ in range(300):  # garbage
        same(0x32, bytearray(rnd.randbytes(rnd.randrange(0, 40))), 5)


def test_block_sized_chunks_carry_the_sealed_hash_and_a_changed_local_copy_is_caught(broker, tmp_path):
    """Chunk size = block size (the defaults): each chunk carries its block's SHA-256 from the
    sealed manifest, not hashed again. A local copy changed after sealing is still caught: the
    archive refuses that chunk (it writes only blocks that hash as the signed manifest says), the
    agent finds its own copy differs from what it sealed and marks the item rejected with the
    reason; the archive holds nothing of it; the other item is archived."""
    from agent.uplink.chunks import block_hashes, chunk_message

    t = InProc(tmp_path, broker.port, evidence__block_size=64 * 1024, uplink__chunk_size=64 * 1024)
    ids = add_items(t.store, tmp_path, [300_000, 300_000])
    d = t.store.item_dir(ids[0])
    man = json.loads((d / "manifest.json").read_bytes())
    known = block_hashes(man)
    name = man["files"][0]["name"]
    assert len(known) == 5 and known[(name, 65536, 65536)] == man["segments"][1]["hash"]
    with open(d / "files" / name, "rb") as fh:
        payload, got = chunk_message(fh, name, 65536, 65536, b"c-1", known[(name, 65536, 65536)])
        head = P.parse_chunk(bytes(payload), {})
        assert got == 65536 and head.sha256 == hashlib.sha256(head.data).hexdigest() == man["segments"][1]["hash"]
    f = d / "files" / name
    data = bytearray(f.read_bytes())
    data[100_000] ^= 0xFF  # inside block 1
    f.write_bytes(bytes(data))
    t.enroll()
    t.start_archive()
    t.start_agent()
    try:
        t.wait_archived(ids[1:])
        wait_for(lambda: t.store.item(ids[0])["state"] == "rejected", 60, "the altered item refused")
        assert "local copy altered after sealing" in t.store.item(ids[0])["error"]
        assert "[65536, 131072)" in t.store.item(ids[0])["error"]
        assert t.archive.quarantined() == []
        assert [r["item"] for r in t.archive.list_items()] == [ids[1]]
        held = t.archive.held("dock-0001", ids[0])[name]
        assert [65536, 131072] not in held and all(not (s < 131072 and e > 65536) for s, e in held)
    finally:
        t.close()
