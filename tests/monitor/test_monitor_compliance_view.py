"""The compliance view (issue 16 item 3): computed from retained state and history with the
devices' signed times, so a monitor started after the facts shows what one that watched them
shows; an offline or silent room loses its badge and says since when. The monitor's real ingest
(signed envelopes, enrolment) and database; the same signed messages given live to one monitor
and as retained re-deliveries to another started 15 minutes later."""

from __future__ import annotations

import json
import time

from agent.monitor.enrolment import Enrolment
from agent.monitor.ingest import Ingest, IngestSettings
from agent.monitor.state import MonitorDB, connect, fleet
from tools.fleet_sim import SimDevice

UNIT = "33010009"
VIEW = ("recorders", "officers", "ratio_ok", "rooms", "min_rooms", "rooms_ok", "compliant", "online", "offline", "lost")


def _monitor(path, devs):
    db = MonitorDB(path)
    return db, Ingest(db, IngestSettings(), Enrolment.of((d.id, d.unit_code, d.key.public_key()) for d in devs))


def _view(path, now):
    conn = connect(path, readonly=True)
    try:
        f = fleet(conn, 120, now=now)
    finally:
        conn.close()
    unit = next(u for u in f["units"] if u["code"] == UNIT)
    return unit, {d["id"]: d["display_state"] for d in f["devices"]}


def test_same_view_whenever_the_monitor_starts_and_an_offline_room_loses_its_badge(tmp_path):
    room1, room2 = SimDevice("room-1", UNIT, "九所", "room"), SimDevice("room-2", UNIT, "九所", "room")
    dock = SimDevice("dock-1", UNIT, "九所", "dock")
    devs = [room1, room2, dock]
    t0 = time.time()
    msgs = []  # (topic, signed payload, retained on the broker afterwards)

    def say(dev, kind, body, retained):
        topic = f"edge/dev/{dev.id}/{kind}"
        msgs.append((topic, dev.seal(topic, json.dumps(body).encode()), retained))

    for d in devs:
        say(d, "status", d.status("online"), True)
        say(d, "health", d.health(), False)
    ratio = dock.ratio(5, 1)
    ratio["min_rooms"] = 1
    say(dock, "ratio", ratio, True)

    # monitor A watches it happen
    a_path = tmp_path / "a.db"
    db, ing = _monitor(a_path, devs)
    for topic, payload, _ in msgs:
        assert ing.handle(topic, payload, retained=False, now=t0) == "accepted", topic
    ing.flush()
    unit, states = _view(a_path, t0 + 5)
    assert (unit["rooms"], unit["rooms_ok"], unit["compliant"], unit["rooms_out"]) == (2, True, True, [])
    # room-1 dies (its last will, retained on the broker); room-2 falls silent (no will delivered)
    lwt = ("edge/dev/room-1/status", room1.seal("edge/dev/room-1/status", json.dumps(room1.status("offline")).encode()))
    assert ing.handle(*lwt, retained=False, now=t0 + 10) == "accepted"
    ing.flush()
    unit, states = _view(a_path, t0 + 20)
    assert states["room-1"] == "offline" and unit["rooms"] == 1 and unit["rooms_ok"] is True
    assert [(r["id"], r["state"]) for r in unit["rooms_out"]] == [("room-1", "offline")]
    assert unit["rooms_out"][0]["since"]
    db.close()

    # monitor B starts 15 minutes later and gets what the broker kept: the retained messages
    b_path = tmp_path / "b.db"
    db, ing = _monitor(b_path, devs)
    kept = {topic: payload for topic, payload, retained in msgs if retained}
    kept[lwt[0]] = lwt[1]
    for topic, payload in kept.items():
        assert ing.handle(topic, payload, retained=True, now=t0 + 900) == "accepted", topic
    ing.flush()
    db.close()

    # the same moment seen by both: the same badges
    at = t0 + 1000
    ua, sa = _view(a_path, at)
    ub, sb = _view(b_path, at)
    assert sa == sb == {"room-1": "offline", "room-2": "lost", "dock-1": "lost"}
    assert {k: ua[k] for k in VIEW} == {k: ub[k] for k in VIEW}
    assert (ua["rooms"], ua["rooms_ok"], ua["compliant"]) == (0, False, False), "no room online: no room badge"
    assert [(r["id"], r["state"]) for r in ua["rooms_out"]] == [(r["id"], r["state"]) for r in ub["rooms_out"]] == [
        ("room-1", "offline"), ("room-2", "lost")]
    assert all(r["since"] for r in ua["rooms_out"] + ub["rooms_out"])
    # the retained-only monitor dates room-2's silence from its signed messages, not from its own start
    conn = connect(b_path, readonly=True)
    last = conn.execute("SELECT last_seen FROM devices WHERE id = 'room-2'").fetchone()[0]
    conn.close()
    assert last < t0 + 60
