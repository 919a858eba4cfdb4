"""Admission order under a forgery flood (agent/monitor/lanes.py; *unit*: the queues and the
worker's checks in this process, the worst case of a worker that verifies nothing while the flood
arrives). Forgeries in device A's name, far more than the queue holds, arrive between A's genuine
messages: every genuine message of A, already known to the monitor, is still verified and applied;
B's is too; every forgery is refused."""

from __future__ import annotations

import base64
import json
import os

from agent.monitor.enrolment import Enrolment
from agent.monitor.ingest import Ingest, IngestSettings
from agent.monitor.lanes import Lanes
from agent.monitor.state import MonitorDB
from tools.fleet_sim import SimDevice

UNIT = "33010600"


def _drain(ing: Ingest) -> dict[str, int]:
    results: dict[str, int] = {}
    while ing.pending():
        key, (topic, payload, retained, _t) = ing._next()
        r = ing.handle(topic, payload, retained)
        ing._done(key)  # as a worker does: the device's next message may be taken
        results[r] = results.get(r, 0) + 1
    return results


def test_a_forgery_flood_in_a_known_devices_name_does_not_push_out_its_genuine_messages(tmp_path):
    a, b = SimDevice("lane-a", UNIT, "单位", "dock"), SimDevice("lane-b", UNIT, "单位", "dock")
    ing = Ingest(MonitorDB(tmp_path / "m.db"), IngestSettings(queue_per_device=200, rate=1e9, burst=1e9),
                 Enrolment.of((d.id, d.unit_code, d.key.public_key()) for d in (a, b)))
    topic = {d.id: f"edge/dev/{d.id}/health" for d in (a, b)}

    def genuine(d: SimDevice, marker: int) -> bytes:
        h = d.health()
        h["uptime_s"] = marker
        return d.seal(topic[d.id], h)

    ing.submit(topic[a.id], genuine(a, 1))   # the monitor knew A and B before the attack
    ing.submit(topic[b.id], genuine(b, 1))
    assert _drain(ing) == {"accepted": 2}
    template = json.loads(genuine(a, 0))
    forged = 0
    for k in range(2, 12):                   # 10 genuine messages of A, each after 500 forgeries
        for _ in range(500):
            env = dict(template, epoch=2**53 - 1, seq=2**53 - 1 - forged, sig=base64.b64encode(os.urandom(64)).decode())
            ing.submit(topic[a.id], json.dumps(env).encode())
            forged += 1
        ing.submit(topic[a.id], genuine(a, k))
        ing.submit(topic[b.id], genuine(b, k))
    results = _drain(ing)
    assert results["accepted"] == 20, results                 # all ten of A's and all ten of B's
    assert set(results) == {"accepted", "bad_signature"}, results
    st = ing.stats()
    assert st["rejected.overload"] + results["bad_signature"] == forged  # every forgery dropped or refused
    assert ing.devices[a.id]["health"]["uptime_s"] == ing.devices[b.id]["health"]["uptime_s"] == 11  # the last ones


def test_a_full_queue_drops_the_oldest_unexpected_message_and_keeps_arrival_order():
    q = Lanes()
    for i in range(5):
        assert q.put(i, i in (0, 2), 5) is None
    assert q.put(5, False, 5) == "dropped"     # full: the oldest unexpected one (1) is dropped
    assert [q.take() for _ in range(5)] == [0, 2, 3, 4, 5]
    for i in range(50):
        q.put(i, i % 2 == 0, 100)
    assert [q.take() for _ in range(50)] == list(range(50))  # a genuine burst keeps its order
    for i in range(3):
        assert q.put(i, True, 3) is None
    assert q.put(3, False, 3) == q.put(4, True, 3) == "refused"  # only expected ones: a new one is refused
    assert [q.take() for _ in range(3)] == [0, 1, 2]


def test_a_device_is_handled_by_one_worker_at_a_time(tmp_path):
    """Two workers: while one handles A's message, A's next one is not handed to the other (its
    order check would see them out of order); B's is. A's turn comes back when the first is done."""
    a, b = SimDevice("one-a", UNIT, "单位", "dock"), SimDevice("one-b", UNIT, "单位", "dock")
    ing = Ingest(MonitorDB(tmp_path / "m.db"), IngestSettings(),
                 Enrolment.of((d.id, d.unit_code, d.key.public_key()) for d in (a, b)))
    ta, tb = f"edge/dev/{a.id}/health", f"edge/dev/{b.id}/health"
    for _ in range(3):
        ing.submit(ta, a.seal(ta, a.health()))
    ing.submit(tb, b.seal(tb, b.health()))
    first, second = ing._next(), ing._next()
    assert (first[0], second[0]) == (a.id, b.id)
    assert list(ing._ready) == [] and ing.pending() == 2  # A's two others wait for A's first
    ing.submit(ta, a.seal(ta, a.health()))
    assert list(ing._ready) == []                         # not even a new one
    ing._done(b.id)
    assert list(ing._ready) == []
    ing._done(a.id)
    assert list(ing._ready) == [a.id]
    assert [ing.handle(*ing._next()[1][:3]) for _ in range(1)] == ["accepted"]
