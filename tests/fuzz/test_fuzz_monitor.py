"""Fuzzing the monitor through a real broker (issue 14, section 3): hostile messages on every
topic it subscribes to: each device-state kind, a device's chain checkpoint, and the archive's
published checkpoint (lone surrogates, invalid UTF-8, wrong types, huge numbers, NaN, deep
nesting, empty and oversized payloads, mutated envelopes, bodies genuinely signed by the device
but hostile, checkpoints genuinely signed by the archive's key but hostile), then a genuine
health message still shows. No message may reach the
per-message guard (``rejected.error`` stays 0) and the ingest worker stays alive.

The default run sends 150 messages per topic; ``pytest -m slow tests/fuzz/test_fuzz_monitor.py``
(part of ``make fuzz``) sends 10,000 per topic; the hostile-topic test follows the Hypothesis
profile (150, or 10,000 with HYPOTHESIS_PROFILE=fuzz as ``make fuzz`` sets)."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings, strategies as st

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.common import canon
from agent.evidence import keys
from agent.monitor.enrolment import Enrolment
from agent.monitor.ingest import Ingest, IngestSettings
from agent.monitor.state import MonitorDB
from agent.wire import archive_checkpoint as ac
from tests.support.broker import Mosquitto
from tools.fleet_sim import SimDevice

A = SimDevice("fz-a", "33010600", "单位", "dock")
B = SimDevice("fz-b", "33010600", "单位", "room")
P = "fuzzmon"  # a prefix of its own: the session broker holds other tests' retained messages
TOPICS = {
    "status": f"{P}/dev/fz-a/status",
    "health": f"{P}/dev/fz-a/health",
    "alarm": f"{P}/dev/fz-a/alarm/camera_offline",
    "component": f"{P}/dev/fz-a/component/bay-1",
    "ratio": f"{P}/dev/fz-a/ratio",
    "chain": f"{P}/dev/fz-a/chain",
    "checkpoint": f"{P}/archive/checkpoint",
}
ARCHIVE = Ed25519PrivateKey.generate()  # the archive's key: the monitor verifies checkpoints with it
BODIES = {
    "status": A.status("online"),
    "health": A.health(),
    "alarm": {"code": "camera_offline", "key": "camera_offline", "active": True, "severity": "critical",
              "since": "2026-12-01T09:00:00+08:00", "ts": "2026-12-01T09:00:00+08:00",
              "message": {"zh": "摄像头离线", "en": "camera offline"}, "source": "room"},
    "component": {"name": "bay-1", "state": "idle", "label": "空闲 / Idle", "docked": False},
    "ratio": A.ratio(40, 8),
}
AKID = keys.key_id(ARCHIVE.public_key())

_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=30)  # surrogates included
_leaf = (st.none() | st.booleans() | st.integers(min_value=-2**80, max_value=2**80)
         | st.floats(allow_nan=True, allow_infinity=True) | _text)
json_values = st.recursive(_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(_text, c, max_size=4),
                           max_leaves=20)


def _dumps(v) -> bytes:
    # ensure_ascii: lone surrogates become \udXXX escapes; NaN/Infinity as Python writes them
    return json.dumps(v).encode()


def _mutate(d: dict, key: str, value):
    out = dict(d)
    out[key] = value
    return out


def _signed_cp(body: dict) -> dict:
    """A checkpoint signed by the archive's key over whatever ``body`` holds (as a compromised or
    buggy archive could sign it)."""
    fields = {k: body.get(k) for k in ac.FIELDS}
    try:
        data = canon.canonical(fields)
    except Exception:  # noqa: BLE001 - what canonical JSON cannot hold (a lone surrogate): a bad signature
        data = b""
    return {**body, "sig": keys.sign(ARCHIVE, data)}


_cp_body = st.fixed_dictionaries({
    "format": st.sampled_from([ac.FORMAT, "x"]), "archive": st.just(AKID) | _text,
    "size": st.integers(0, 2**70) | st.sampled_from([-1, 0, 1, 2, 7]), "root": st.just("ab" * 32) | _text,
    "time": st.sampled_from(["2026-12-04T10:00:00+00:00", "2099-01-01T00:00:00+00:00", "", "not a time"]) | _text,
    "key_id": st.just(AKID)}, optional={"extra": json_values})
_proof = json_values | st.fixed_dictionaries({"metadata": json_values, "rule": json_values, "subset": json_values,
                                              "path": st.lists(_text | json_values, max_size=4)})


def checkpoint_payloads():
    """What P/archive/checkpoint may carry: junk, and edge-archive-consistency/1 records whose
    checkpoints are genuinely signed by the archive's key but hostile (sizes, roots, times, proofs)."""
    signed = _cp_body.map(_signed_cp)
    rec = st.fixed_dictionaries({"format": st.just(ac.PUBLISHED_FORMAT) | _text, "checkpoint": signed | json_values,
                                 "previous": st.none() | signed | json_values, "proof": st.none() | _proof})
    return st.one_of(
        _junk(),
        rec.map(_dumps),
        st.tuples(rec, st.sampled_from(["format", "checkpoint", "previous", "proof", "x"]), json_values).map(
            lambda t: _dumps(_mutate(*t))),
    )


def _junk():
    return st.one_of(
        st.binary(max_size=400),                                          # garbage, invalid UTF-8
        st.just(b""),                                                     # deletes a retained topic
        json_values.map(_dumps),                                          # wrong types, huge, NaN
        json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
        st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),          # deep nesting
        st.integers(60_000, 70_000).map(lambda n: b'{"a":"' + b"x" * n + b'"}'),  # around the 64 KiB limit
    )


def payloads(kind: str):
    if kind == "checkpoint":
        return checkpoint_payloads()
    if kind == "chain":  # the device's signed chain checkpoint is the archive's to check; the monitor ignores it
        return st.one_of(_junk(), json_values.map(lambda v: A.seal(TOPICS["health"], _dumps(v))))
    topic = TOPICS[kind]
    genuine_env = json.loads(A.seal(topic, BODIES[kind]))
    body = BODIES[kind]
    return st.one_of(
        _junk(),
        st.tuples(st.sampled_from(sorted(genuine_env)), json_values).map(   # a mutated envelope
            lambda kv: _dumps(_mutate(genuine_env, *kv))),
        st.tuples(st.sampled_from(sorted(body) or ["x"]), json_values).map(  # genuinely signed, hostile body
            lambda kv: A.seal(topic, _dumps(_mutate(body, *kv)))),
        json_values.map(lambda v: A.seal(topic, _dumps(v))),                # genuinely signed, any JSON
    )


@pytest.fixture(scope="module")
def open_broker_module(tmp_path_factory):
    """An open broker on purpose (anonymous, no ACL): the fuzzer publishes as a stranger on the
    topics of every device and of the archive, the worst case of a misconfigured broker."""
    mq = Mosquitto(tmp_path_factory.mktemp("mosquitto-fuzzmon")).start()
    yield mq
    mq.stop()


@pytest.fixture(scope="module")
def monitor(tmp_path_factory, open_broker_module):
    """The monitor's ingest with its real paho client against a real broker, and a publisher."""
    broker = open_broker_module
    tmp = tmp_path_factory.mktemp("fuzz-monitor")
    ing = Ingest(MonitorDB(tmp / "m.db"), IngestSettings(port=broker.port, prefix=P, rate=1e6, burst=1e6,
                                                        queue_per_device=100_000),
                 Enrolment.of([(d.id, d.unit_code, d.key.public_key()) for d in (A, B)]),
                 archive_keys=lambda: [ARCHIVE.public_key()])
    ing.start()
    assert ing.subscribed.wait(10)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzz-publisher", protocol=mqtt.MQTTv5)
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    sent = {"n": 0, "genuine": 0}
    yield ing, pub, sent
    pub.disconnect()
    pub.loop_stop()
    ing.stop()
    ing.db.close()


def _drain_then_genuine(ing: Ingest, pub, sent: dict, marker: int, exact: bool = True) -> None:
    """Every fuzzed message was taken (received or refused as overload; ``exact``: all of them
    reached the monitor), none reached the bug guard, the worker is alive, and b's genuine
    health (with ``marker``) is applied after them."""
    deadline = time.monotonic() + 120
    while exact:
        st_ = ing.stats()
        if st_["received"] + st_.get("rejected.overload", 0) >= sent["n"] + sent["genuine"] and st_["pending"] == 0:
            break
        assert time.monotonic() < deadline, (st_, sent)
        time.sleep(0.1)
    assert ing.alive(), ing.failed
    topic = f"{P}/dev/fz-b/health"
    pub.publish(topic, B.seal(topic, dict(B.health(), uptime_s=marker)), qos=1).wait_for_publish(10)
    sent["genuine"] += 1
    deadline = time.monotonic() + 60
    while (ing.devices.get("fz-b", {}).get("health") or {}).get("uptime_s") != marker or ing.pending():
        assert time.monotonic() < deadline, "genuine health not shown after the fuzzing"
        time.sleep(0.05)
    st_ = ing.stats()
    assert ing.alive(), ing.failed
    assert st_.get("rejected.error", 0) == 0, "a fuzzed message reached the per-message bug guard"


def _pace(ing: Ingest, sent: dict) -> None:
    """Keep at most ~500 messages between the publisher and the monitor's queues (the broker's
    queue for a subscriber is bounded too: nothing must be dropped before the monitor sees it)."""
    if sent["n"] % 100:
        return
    deadline = time.monotonic() + 60
    while sent["n"] + sent["genuine"] - ing.stats()["queued"] > 500:
        assert time.monotonic() < deadline, "the monitor stopped taking messages"
        time.sleep(0.01)


def _run(kind: str, examples: int, monitor) -> None:
    ing, pub, sent = monitor
    topic = TOPICS[kind]

    @settings(max_examples=examples)
    @given(payload=payloads(kind), retain=st.booleans())
    def one(payload, retain):
        pub.publish(topic, payload, qos=1, retain=retain)
        sent["n"] += 1
        _pace(ing, sent)

    one()
    pub.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)  # leave no hostile retained message behind
    sent["n"] += 1
    _drain_then_genuine(ing, pub, sent, 900_000 + sent["n"])
    if kind == "checkpoint":  # the fuzzing got past the signature: some accepted, most refused and alarmed
        st_ = ing.stats()
        print("checkpoint verdicts:", st_.get("archive_checkpoints"), st_.get("rejected.archive_checkpoint"))
        assert st_.get("archive_checkpoints", 0) >= 1 and st_.get("rejected.archive_checkpoint", 0) >= examples // 10


@pytest.mark.parametrize("kind", sorted(TOPICS))
def test_fuzz_monitor_topic(kind, monitor):
    _run(kind, 150, monitor)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(TOPICS))
def test_fuzz_monitor_topic_10000(kind, monitor):
    _run(kind, 10_000, monitor)


def test_fuzz_hostile_topics(monitor):
    """Hostile topic levels under the subscription (unknown kinds, unsafe ids, long, non-ASCII;
    control characters left out: the broker may refuse them, which is not the monitor's input)."""
    ing, pub, sent = monitor
    level = st.text(alphabet=st.characters(blacklist_characters="+#/", blacklist_categories=("Cs", "Cc")),
                    min_size=1, max_size=40)

    @given(levels=st.lists(level, min_size=1, max_size=4), payload=st.binary(max_size=100))
    def one(levels, payload):
        pub.publish(f"{P}/dev/" + "/".join(levels), payload, qos=1)
        sent["n"] += 1
        _pace(ing, sent)

    one()
    _drain_then_genuine(ing, pub, sent, 800_000 + sent["n"], exact=False)
    assert ing.stats()["rejected.bad_topic"] + ing.stats().get("rejected.unknown_device", 0) >= 50
