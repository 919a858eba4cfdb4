"""Chain history (docs/custody.md "Chain history"): the archive keeps every signed checkpoint a
device publishes and alarms a fork, a rollback, a gap past the deadline and a silent device; the
monitor shows those alarms per device and unit. Through a real broker, with a real device (its
uplink) and checkpoints forged or replayed with the device's own key."""

from __future__ import annotations

import json
import secrets
import time

import pytest

from agent.archive.chain import read_chain_alarms
from agent.archive.storage import ArchiveStore
from agent.evidence import hashing, keys
from agent.wire import checkpoint
from agent.wire.client import ConnSettings
from agent.wire.mqtt import Connection
from tests.support.custody import pg_database
from tests.support.uplink import UNIT, InProc, add_items, agent_config, open_store, run, wait_for

DEV = "dock-0001"


class Publisher:
    """Publishes what the test likes on the device's chain topic (the broker here is plain)."""

    def __init__(self, port: int):
        self.conn = Connection(ConnSettings("127.0.0.1", port, f"forger-{secrets.token_hex(3)}"), name="forger")
        self.conn.start()
        assert self.conn.wait_connected(10), self.conn.last_error

    def send(self, payload: bytes) -> None:
        h = self.conn.publish(f"edge/dev/{DEV}/chain", payload, qos=1, retain=True)
        assert h.wait(10) and h.ok, h.error

    def close(self) -> None:
        self.conn.stop()


def signed(store, count: int, head: str | None, annotations: int = 0, time_: str = "2026-12-04T10:00:00+08:00") -> bytes:
    """A checkpoint signed with the device's own key (what a stolen key or a second chain makes)."""
    pub = store.private_key.public_key()
    body = {"format": checkpoint.FORMAT, "device": DEV, "count": count, "head": head, "annotations": annotations,
            "time": time_, "key_id": keys.key_id(pub)}
    return json.dumps({**body, "sig": keys.sign(store.private_key, hashing.canonical(body))}).encode()


def history(st: ArchiveStore) -> list[dict]:
    return st.db.query("SELECT * FROM chain_history WHERE device = ? ORDER BY id", [DEV])


def codes(st: ArchiveStore) -> set[str]:
    return {a["code"] for a in st.chain_verdict(DEV)["alarms"]}


def test_fork_and_rollback_from_the_device_key_are_alarmed(open_broker, tmp_path):
    broker = open_broker  # on purpose: the forger (the device's key) publishes while its agent runs
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [5_000, 6_000])
    t.enroll()
    rx = t.start_archive()
    st = rx.store
    forger = Publisher(broker.port)
    try:
        t.start_agent()
        t.wait_archived(ids)
        wait_for(lambda: any(h["count"] == 2 for h in history(st)), 20, "the device's checkpoint of 2 items")
        ids += add_items(t.store, tmp_path, [7_000], seed=1)  # the real device seals a third item
        t.wait_archived(ids)
        wait_for(lambda: any(h["count"] == 3 for h in history(st)), 20, "the checkpoint of 3 items")
        assert st.chain_verdict(DEV)["ok"], st.chain_verdict(DEV)
        n = len(history(st))

        # rollback: the genuine checkpoint of 2 items, published again after the one of 3
        old = next(h for h in history(st) if h["count"] == 2)
        forger.send(old["payload"].encode())
        wait_for(lambda: "chain_rollback" in codes(st), 20, "the rollback alarm")
        assert len(history(st)) == n  # the same checkpoint, counted again, not a new one
        # fork: another head for the chain length 3, signed with the device's key
        forger.send(signed(t.store, 3, "ab" * 32, time_="2026-12-04T11:00:00+08:00"))
        wait_for(lambda: "chain_fork" in codes(st), 20, "the fork alarm")
        forks = [h for h in history(st) if h["finding"] and "two heads" in h["finding"]]
        assert forks and forks[0]["count"] == 3
        # an unsigned or badly signed one is not history at all
        bad = json.loads(signed(t.store, 9, "cd" * 32))
        bad["count"] = 10
        forger.send(json.dumps(bad).encode())
        forger.send(signed(t.store, 3, t.store.head()[1], time_="2026-12-04T12:00:00+08:00"))
        wait_for(lambda: len(history(st)) == n + 2, 20, "the next genuine checkpoint (behind the forged one)")
        assert max(h["count"] for h in history(st)) == 3
    finally:
        forger.close()
        t.close()

    # the command a custodian runs: history and verdict, exit 1 on an alarm
    p = run(["archive", "chain", DEV, "--root", str(t.root)])
    assert p.returncode == 1, p.stderr
    assert "ALARM chain_rollback 链回退 / chain rollback" in p.stdout and "ALARM chain_fork 链分叉" in p.stdout, p.stdout
    assert "announced 3 item(s), held 3, missing none" in p.stdout, p.stdout
    rep = json.loads(run(["archive", "chain", DEV, "--root", str(t.root), "--json"]).stdout)
    assert rep["verdict"] == "alarm" and {a["code"] for a in rep["alarms"]} == {"chain_rollback", "chain_fork"}
    assert [h["count"] for h in rep["checkpoints"]][:2] == [2, 3] and rep["checkpoints"][0]["repeats"] >= 1

    # the monitor shows them for the device and its unit
    from agent.monitor.enrolment import Enrolment
    from agent.monitor.ingest import Ingest, IngestSettings
    from agent.monitor.state import MonitorDB, fleet

    rows = read_chain_alarms(t.root)
    assert {(r["device"], r["unit"], r["code"]) for r in rows} == {(DEV, UNIT, "chain_fork"), (DEV, UNIT, "chain_rollback")}
    db = MonitorDB(tmp_path / "monitor.db")
    ing = Ingest(db, IngestSettings(), Enrolment.of([(DEV, UNIT, t.store.private_key.public_key())]),
                 archive_alarms=lambda: read_chain_alarms(t.root))
    ing.flush()
    view = fleet(db.conn, 300)
    shown = {(a["device"], a["code"], a["severity"]) for a in view["alarms"]}
    assert {(DEV, "chain_fork", "critical"), (DEV, "chain_rollback", "critical")} <= shown
    assert any("链分叉" in a["message_zh"] and "two heads for chain length 3" in a["message_en"] for a in view["alarms"])
    assert next(u for u in view["units"] if u["code"] == UNIT)["alarms"] == 2

    # a custodian who looked into them clears them with a reason; the history stays
    p = run(["archive", "chain", DEV, "--root", str(t.root), "--acknowledge", "chain_fork"])
    assert p.returncode == 1 and "--reason is required" in p.stderr, p.stderr
    p = run(["archive", "chain", DEV, "--root", str(t.root), "--acknowledge", "chain_rollback", "--reason",
             "重放的旧检查点，已查明 / replayed by the test"])
    assert p.returncode == 1 and "ALARM chain_rollback" not in p.stdout and "ALARM chain_fork" in p.stdout, p.stdout
    st2 = ArchiveStore(t.root)
    try:
        st2.acknowledge_chain_alarm(DEV, "chain_fork", "second head signed by the test")
        assert st2.chain_report(DEV)["verdict"] == "ok" and len(st2.chain_report(DEV)["checkpoints"]) == 4
        acks = [json.loads(e["detail"]) for e in st2.audit.entries(action="chain_ack")]
        assert [a["code"] for a in acks] == ["chain_rollback", "chain_fork"] and acks[0]["reason"].startswith("重放")
    finally:
        st2.close()
    ing.reload_archive_alarms()
    ing.flush()
    assert not [a for a in fleet(db.conn, 300)["alarms"] if a["device"] == DEV]
    db.close()


def test_an_evaluation_that_waited_for_its_turn_does_not_undo_a_later_one(open_broker, tmp_path):
    """Gap and silence are evaluated every minute, after each checkpoint and by `archive chain`,
    on several threads. One that read the clock and the history, then waited while another raised
    the alarms for a later moment, must not clear them with what it saw before: each evaluation
    reads both again once it is its turn to write (a flake of the test below, under load)."""
    t = InProc(tmp_path, open_broker.port)
    t.enroll()
    st = t.archive
    t0 = time.time()
    st.clock = lambda: t0
    cp = signed(t.store, 2, secrets.token_hex(32), time_="2026-12-03T09:00:00+08:00")
    assert st.on_checkpoint(DEV, cp) is not None
    assert codes(st) == set()
    st.clock = lambda: t0 + 25 * 3600
    assert {a["code"] for a in st.evaluate_chain(DEV)["alarms"]} == {"chain_gap", "chain_silent"}
    # an evaluation that looked at the clock an hour after the checkpoint (nothing due yet), then
    # got its turn to write a minute after the alarms were raised
    moments = iter([t0 + 3600])
    st.clock = lambda: next(moments, t0 + 25 * 3600 + 60)
    v = st.evaluate_chain(DEV)
    assert {a["code"] for a in v["alarms"]} == {"chain_gap", "chain_silent"}, v
    assert {r["code"] for r in read_chain_alarms(t.root)} == {"chain_gap", "chain_silent"}


def test_gap_and_silence_by_the_archive_clock(open_broker, tmp_path):
    broker = open_broker  # on purpose: the forger (the device's key) publishes while its agent runs
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [4_000, 4_000])
    t.enroll()
    rx = t.start_archive()
    st = rx.store
    t0 = time.time()
    clock = [t0]
    st.clock = lambda: clock[0]
    forger = Publisher(broker.port)
    try:
        # yesterday the device announced two items it then held back (the uplink is not running)
        forger.send(signed(t.store, 2, t.store.head()[1], time_="2026-12-03T09:00:00+08:00"))
        wait_for(lambda: history(st), 20, "the checkpoint in the history")
        clock[0] = t0 + 3600
        assert st.evaluate_chain(DEV)["ok"]  # within the deadline and the interval
        clock[0] = t0 + 25 * 3600
        v = st.evaluate_chain(DEV)
        got = {a["code"]: a for a in v["alarms"]}
        assert set(got) == {"chain_gap", "chain_silent"}, v
        assert "chain position(s) 1, 2 announced since" in got["chain_gap"]["detail"]
        assert "not received within 24 h" in got["chain_gap"]["detail"]
        assert {r["code"] for r in read_chain_alarms(t.root)} == {"chain_gap", "chain_silent"}
        # the device comes back: its items arrive and its new checkpoint ends the silence
        t.start_agent()
        t.wait_archived(ids)
        wait_for(lambda: st.evaluate_chain(DEV)["ok"], 20, "gap and silence cleared")
        cleared = {a["code"] for a in st.chain_verdict(DEV)["cleared"]}
        assert cleared == {"chain_gap", "chain_silent"}
        assert read_chain_alarms(t.root) == []
        # the archive's audit log has each alarm raised
        raised = [json.loads(e["detail"])["code"] for e in st.audit.entries(action="chain_alarm")]
        assert sorted(raised) == ["chain_gap", "chain_silent"]
    finally:
        forger.close()
        t.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    if request.param == "sqlite":
        yield None
        return
    with pg_database() as url:
        yield url


def test_chain_history_on_both_backends(tmp_path, db_url):
    store = open_store(agent_config(tmp_path, 1))
    add_items(store, tmp_path, [1000, 1000])
    st = ArchiveStore(tmp_path / "archive", db=db_url)
    try:
        st.registry.enroll(DEV, store.pub_path.read_bytes(), UNIT)
        clock = [time.time()]
        st.clock = lambda: clock[0]
        genuine = checkpoint.make(store)
        assert st.on_checkpoint(DEV, genuine).count == 2
        assert st.on_checkpoint(DEV, genuine).count == 2  # a re-delivery
        assert len(history(st)) == 1 and history(st)[0]["repeats"] == 1 and st.chain_verdict(DEV)["ok"]
        st.on_checkpoint(DEV, signed(store, 1, store.head()[1]))
        assert codes(st) == {"chain_rollback"}
        st.on_checkpoint(DEV, signed(store, 2, "ee" * 32))
        assert codes(st) == {"chain_rollback", "chain_fork"}
        clock[0] += 25 * 3600
        assert {a["code"] for a in st.evaluate_chain(DEV)["alarms"]} == {"chain_rollback", "chain_fork", "chain_gap",
                                                                         "chain_silent"}
        if db_url:
            assert {r["code"] for r in read_chain_alarms(db_url)} == {"chain_rollback", "chain_fork", "chain_gap",
                                                                      "chain_silent"}
    finally:
        st.close()
        store.close()
