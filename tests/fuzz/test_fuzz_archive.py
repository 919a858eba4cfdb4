"""Fuzzing the archive through a real broker: hypothesis-generated hostile messages on every topic
the archive subscribes to (a transfer's manifest, chunk, finish and query, a device's chain
checkpoint): lone surrogates, invalid UTF-8, wrong types, huge numbers, NaN, deep nesting, empty
and oversized payloads, hostile user properties, manifests signed by the device itself (a stolen
device). Afterwards the receiver is still running and a real item archives and verifies.

300 messages per topic in the default suite; 10,000 per topic under ``-m slow`` (``make fuzz``).

An open broker on purpose (``open_broker``): the fuzzer publishes as a stranger on every device's
topics, the worst case of a misconfigured broker; the shipped ACL would stop most of it there."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.evidence import manifest as mf
from agent.wire import protocol as P
from tests.support.uplink import InProc, add_items, check_archive, wait_for

DEV = "dock-0001"
KINDS = ("manifest", "chunk", "finish", "query", "annotation", "chain")

# --- hostile values ---------------------------------------------------------------------------
lone = st.sampled_from(["\ud800", "\udfff", "\udc80x", "a\ud83d", "\ud83d\ude00"])
odd_text = st.one_of(st.text(max_size=40), lone, st.sampled_from(["", "..", "../../etc/passwd", "/abs", "a\x00b",
                                                                   "_tmp", ".hidden", "x" * 300, "案件\u202e"]))
huge = st.sampled_from([2**63, -2**63 - 1, 10**100, 2**64 + 1, -1, 0])
floats = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 0.5])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), huge, floats, odd_text)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(odd_text, c, max_size=4),
                      max_leaves=20)


def dumps(v) -> bytes:
    return json.dumps(v, allow_nan=True).encode()  # lone surrogates as \\udxxx, NaN as NaN


deep = st.integers(50, 20_000).map(lambda n: b"[" * n + b"]" * n)
raw = st.one_of(st.binary(max_size=300), st.just(b""), st.sampled_from([b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\xaf",
                                                                        b'{"a":"\xed\xa0\x80"}', b"\x00" * 64]),
                deep, values.map(dumps))
prop_names = st.sampled_from(["sig", "file", "offset", "sha256", "proto", "nonce", "x", "", "\u202e"])
prop_values = st.one_of(st.text(max_size=60), st.sampled_from(["AA==", "!!", "-1", "99999999999999999999999",
                                                               "../x", "0" * 64, "x" * 5000]))
user_props = st.lists(st.tuples(prop_names, prop_values), max_size=6)
items = st.one_of(st.just(f"{DEV}-20990101000000-aaaaaa"), st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,40}\Z"))
devices = st.one_of(st.just(DEV), st.just(DEV), st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z"))


def manifests(real: dict, sign):
    """Hostile manifests: the real one with fields replaced, files and segments broken; some
    signed by the device's own key (what a stolen device can send)."""
    keys_ = sorted(real)

    @st.composite
    def build(draw):
        m = json.loads(json.dumps(real))
        for k in draw(st.lists(st.sampled_from(keys_ + ["extra"]), max_size=3)):
            m[k] = draw(values)
        if draw(st.booleans()):
            m["files"] = draw(st.lists(st.fixed_dictionaries({"name": odd_text, "size": st.one_of(huge, scalars),
                                                              "hash": odd_text}), max_size=3))
        if draw(st.booleans()):
            m["segments"] = draw(st.lists(st.fixed_dictionaries(
                {"file": st.one_of(huge, scalars), "offset": st.one_of(huge, scalars),
                 "size": st.one_of(huge, scalars), "hash": odd_text, "link": odd_text}), max_size=4))
        if draw(st.booleans()):
            meta = m.get("metadata") if isinstance(m.get("metadata"), dict) else {}
            m["metadata"] = dict(meta, case_number=draw(odd_text))
        body = dumps(m)
        sig = sign(body) if draw(st.booleans()) else draw(st.binary(max_size=80))
        return body, [("proto", P.PROTO), ("sig", base64.b64encode(sig).decode())] + draw(user_props)
    return build()


@st.composite
def chunk_msgs(draw, names):
    head = {"proto": draw(st.one_of(st.just(P.PROTO), odd_text)), "file": draw(st.one_of(st.sampled_from(names),
                                                                                        odd_text, scalars)),
            "offset": draw(st.one_of(st.integers(0, 1 << 20), huge, scalars)),
            "corr": draw(st.one_of(st.just("AA=="), odd_text, scalars))}
    data = draw(st.binary(max_size=2000))
    head["sha256"] = hashlib.sha256(data).hexdigest() if draw(st.booleans()) else draw(st.one_of(odd_text, scalars))
    if draw(st.booleans()):
        head[draw(odd_text)] = draw(values)
    line = dumps(head) if draw(st.integers(0, 9)) else draw(raw)
    return line + b"\n" + data, draw(user_props) if draw(st.integers(0, 4)) == 0 else []


def finish_msgs():
    ann = st.fixed_dictionaries({"json": st.one_of(odd_text, scalars, st.binary(max_size=40).map(
        lambda b: base64.b64encode(b).decode())), "sig": st.one_of(odd_text, scalars)})
    return st.one_of(raw, st.fixed_dictionaries({
        "proto": st.one_of(st.just(P.PROTO), odd_text), "files": st.one_of(st.lists(values, max_size=3), scalars),
        "size": st.one_of(huge, scalars), "annotations": st.one_of(st.lists(ann, max_size=3), scalars)}).map(dumps))


class Publisher:
    def __init__(self, port: int):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fuzz-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        self.c.max_inflight_messages_set(100)
        ok = threading.Event()
        self.c.on_connect = lambda *a: ok.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ok.wait(10)
        self.sent = 0

    def send(self, topic: str, payload: bytes, props: list | None = None) -> None:
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = f"edge/ack/{DEV}"
        p.CorrelationData = uuid.uuid4().bytes
        clean = [(k, v) for k, v in (props or []) if _utf8(k) and _utf8(v)]  # MQTT carries UTF-8 only
        if clean:
            p.UserProperty = clean
        info = self.c.publish(topic, payload, qos=1, properties=p)
        info.wait_for_publish(10)
        assert info.is_published(), f"the broker did not take a message on {topic}"
        self.sent += 1

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _utf8(s: str) -> bool:
    """What a broker forwards in a UTF-8 string (Mosquitto disconnects a client that sends control
    characters or non-characters there; such a message never reaches the archive)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xFDD0 <= ord(c) <= 0xFDEF
                   or (ord(c) & 0xFFFE) == 0xFFFE for c in s)


def fuzz_archive(broker, tmp_path, per_topic: int) -> dict:
    t = InProc(tmp_path, broker.port, evidence__block_size=64 * 1024)
    ids = add_items(t.store, tmp_path, [150_000])
    t.enroll()
    rx = t.start_archive(max_manifest=64 * 1024)
    pub = Publisher(broker.port)
    d = t.store.item_dir(ids[0])
    real = json.loads((d / mf.MANIFEST).read_bytes())
    names = [f["name"] for f in real["files"]]
    sign = lambda body: mf.signature_record(t.store.private_key, body)  # noqa: E731
    counts = {k: 0 for k in KINDS}

    def probe():  # a message published before the broker has the receiver's subscription is lost
        before = rx.seen
        pub.send(f"edge/xfer/{DEV}/{DEV}-probe/query", b"{}")
        try:
            return wait_for(lambda: rx.seen > before, 2, "probe handled")
        except AssertionError:
            return False
    wait_for(probe, 60, "the receiver's subscriptions")
    time.sleep(0.5)
    offset = pub.sent - rx.seen  # late probes
    started = time.monotonic()

    def pace():
        if pub.sent % 100 == 0:  # below the broker's queue limit (beyond it the broker drops)
            wait_for(lambda: rx.seen + offset >= pub.sent, 120, f"archive handled {pub.sent} messages ({rx.seen})")

    strategies = {
        "manifest": st.tuples(devices, items, manifests(real, sign)),
        "chunk": st.tuples(devices, items, chunk_msgs(names)),
        "finish": st.tuples(devices, items, st.tuples(finish_msgs(), user_props)),
        "query": st.tuples(devices, items, st.tuples(raw, user_props)),
        "annotation": st.tuples(devices, items, st.tuples(st.one_of(raw, finish_msgs()), user_props)),
        "chain": st.tuples(devices, st.just(""), st.tuples(raw, st.just([]))),
    }
    try:
        for kind in KINDS:
            @settings(max_examples=per_topic, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck))
            @given(strategies[kind])
            def one(msg):
                dev, item, (payload, props) = msg
                topic = f"edge/dev/{dev}/chain" if kind == "chain" else f"edge/xfer/{dev}/{item}/{kind}"
                pub.send(topic, payload, props)
                counts[kind] += 1
                pace()

            one()
        # oversized, once per topic: beyond the manifest limit (64 KiB here) and the finish limit
        for kind, n in (("manifest", 70 * 1024), ("finish", P.MAX_FINISH + 1), ("chunk", 3 << 20),
                        ("query", 1 << 20), ("annotation", 1 << 20)):
            pub.send(f"edge/xfer/{DEV}/{DEV}-big/{kind}", b"{" + b" " * n)
        pub.send(f"edge/dev/{DEV}/chain", b" " * (1 << 20))
        wait_for(lambda: rx.seen + offset >= pub.sent, 300, f"archive handled all {pub.sent} messages ({rx.seen})")
        fuzz_s = time.monotonic() - started
        assert rx.failure is None and rx._worker.is_alive() and rx._finisher.is_alive(), rx.failure
        t0 = time.monotonic()
        t.start_agent()
        t.wait_archived(ids, timeout=60)
        check_archive(t.root, ids)
        st_ = rx.status()
        return {"counts": counts, "sent": pub.sent, "fuzz_s": round(fuzz_s, 1),
                "archive_after_s": round(time.monotonic() - t0, 1), "faults": st_["faults"],
                "refused": st_["refused"], "quarantine_rows": len(rx.store.quarantined()),
                "fault_kinds": sorted({r["reason"][:160] for r in rx.store.quarantined() if " failed: " in r["reason"]})}
    finally:
        pub.close()
        t.close()


def test_fuzz_archive_through_the_broker(open_broker, tmp_path):
    broker = open_broker
    out = fuzz_archive(broker, tmp_path, 300)
    print("fuzz archive:", json.dumps(out))
    assert all(n >= 300 for n in out["counts"].values()), out
    assert out["faults"] == 0, out["fault_kinds"]  # every input refused by the parsers' own errors


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_fuzz_archive_through_the_broker_long(open_broker, tmp_path):
    broker = open_broker
    out = fuzz_archive(broker, tmp_path, 10_000)
    print("fuzz archive:", json.dumps(out))
    assert all(n >= 10_000 for n in out["counts"].values()), out
    assert out["faults"] == 0, out["fault_kinds"]
