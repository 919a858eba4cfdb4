"""Faults mid-transfer with real processes: broker restart, agent SIGKILL, archive SIGKILL, two
receivers on a shared subscription with one killed, broker queue overflow. After each, every item
is in the archive exactly once and verifies, and the agent still holds every item.

Slow (``-m slow``), because tests/faults/test_faults.py covers the same fault by default: the
broker restarted and the archive killed mid-transfer; the long run of repeated faults."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.support.uplink import (add_items, agent_config, all_archived, check_archive, enroll, live_status,
                                  open_store, start_agent, start_archive, states, wait_for)

SIZES = [3_000_000, 3_000_000, 2_000_000]
TOTAL = sum(SIZES)


def _setup(tmp_path, port, sizes=SIZES, **values):
    values.setdefault("uplink__bandwidth_limit", 4_000_000)
    values.setdefault("uplink__chunk_size", 128 * 1024)
    values.setdefault("uplink__ack_timeout_s", 3)
    cfg = agent_config(tmp_path, port, **values)
    store = open_store(cfg)
    ids = add_items(store, tmp_path, sizes)
    root = tmp_path / "archive"
    enroll(root, store)
    store.close()
    return cfg, ids, root


def _held(root) -> int:
    """Bytes the archive holds: ranges of partial transfers + stored items."""
    try:
        con = sqlite3.connect(str(root / "archive.db"), timeout=10)
        try:
            a = con.execute("SELECT coalesce(sum(end - start), 0) FROM ranges").fetchone()[0]
            b = con.execute("SELECT coalesce(sum(size), 0) FROM items").fetchone()[0]
        finally:
            con.close()
        return a + b
    except sqlite3.Error:
        return 0


def _mid_transfer(root, total=TOTAL):
    return lambda: 500_000 < _held(root) < total - 1_000_000


def _after(cfg, ids, root):
    check_archive(root, ids)
    st = states(cfg)
    assert all(st[i] == "archived" for i in ids), st
    # nothing lost at the edge: local copies intact (retention 7 days)
    store = open_store(cfg)
    try:
        from agent.evidence.verify import verify_item
        for i in ids:
            verify_item(store.item_dir(i), store.keyring())
    finally:
        store.close()


@pytest.mark.slow  # by default: tests/faults/test_faults.py::test_broker_killed_mid_transfer
def test_broker_restarted_mid_transfer(broker, tmp_path):
    cfg, ids, root = _setup(tmp_path, broker.port)
    ar = start_archive(root, broker.port, tmp_path)
    ag = start_agent(cfg, tmp_path)
    try:
        wait_for(_mid_transfer(root), 30, "transfer under way", [ar, ag], step=0.05)
        broker.restart(kill=True, downtime=0.5)
        wait_for(all_archived(cfg, ids), 60, "all archived after the broker restart", [ar, ag])
        assert ar.alive() and ag.alive()
        _after(cfg, ids, root)
        assert live_status(cfg).get("reconnects", 0) >= 1 or "reconnect" in ag.text()
    finally:
        ag.stop()
        ar.stop()


def test_agent_sigkilled_mid_transfer_resumes(broker, tmp_path):
    cfg, ids, root = _setup(tmp_path, broker.port)
    ar = start_archive(root, broker.port, tmp_path)
    ag = start_agent(cfg, tmp_path)
    try:
        wait_for(_mid_transfer(root), 30, "transfer under way", [ar, ag], step=0.05)
        ag.kill()
        held = _held(root)
        assert any(s == "uploading" for s in states(cfg).values())
        ag = start_agent(cfg, tmp_path, name="agent2")
        wait_for(all_archived(cfg, ids), 60, "all archived after the restart", [ar, ag])
        _after(cfg, ids, root)
        # resumed: the second run sent only what the archive did not hold (plus a few chunks)
        wait_for(lambda: live_status(cfg).get("items_archived"), 10, "live status", [ag])
        sent = live_status(cfg)["bytes_sent"]
        assert sent <= TOTAL - held + 20 * 128 * 1024, (sent, TOTAL, held)
        assert "query" in ag.text() or sent < TOTAL
    finally:
        ag.stop()
        ar.stop()


@pytest.mark.slow  # by default: tests/faults/test_faults.py::test_archive_killed_mid_transfer_two_agents
def test_archive_killed_mid_transfer(broker, tmp_path):
    cfg, ids, root = _setup(tmp_path, broker.port)
    ar = start_archive(root, broker.port, tmp_path)
    ag = start_agent(cfg, tmp_path)
    try:
        wait_for(_mid_transfer(root), 30, "transfer under way", [ar, ag], step=0.05)
        ar.kill()
        r0 = live_status(cfg).get("retransmits", 0)
        wait_for(lambda: live_status(cfg).get("retransmits", 0) > r0, 30,
                 "the agent retransmits into the archive's silence", [ag])
        assert not all_archived(cfg, ids)()
        ar = start_archive(root, broker.port, tmp_path, name="archive2")
        wait_for(all_archived(cfg, ids), 60, "all archived after the archive restart", [ar, ag])
        _after(cfg, ids, root)
    finally:
        ag.stop()
        ar.stop()


def test_two_receivers_shared_subscription_one_killed(broker, tmp_path):
    cfg, ids, root = _setup(tmp_path, broker.port, sizes=[2_000_000] * 4)
    total = 8_000_000
    a1 = start_archive(root, broker.port, tmp_path, name="rx1", extra=["--share", "archive"])
    a2 = start_archive(root, broker.port, tmp_path, name="rx2", extra=["--share", "archive"])
    ag = start_agent(cfg, tmp_path)
    try:
        wait_for(_mid_transfer(root, total), 30, "transfer under way", [a1, a2, ag], step=0.05)
        a1.kill()
        wait_for(all_archived(cfg, ids), 60, "all archived by the surviving receiver", [a2, ag])
        _after(cfg, ids, root)
        assert a2.alive()
        assert "stored" in a2.text()
    finally:
        ag.stop()
        a1.stop()
        a2.stop()


def test_broker_queue_overflow_detected_by_archive_ack_timeout(make_broker, tmp_path):
    """Mosquitto drops messages past max_queued_messages yet answers PUBACK 0x00: only the
    archive's answer (with timeout, query and retransmission) catches it."""
    mq = make_broker(extra_config=["max_queued_messages 2"])
    cfg, ids, root = _setup(tmp_path, mq.port, sizes=[1_000_000], uplink__bandwidth_limit=0,
                            uplink__chunk_size=64 * 1024, uplink__ack_timeout_s=1, uplink__max_inflight=16)
    ar = start_archive(root, mq.port, tmp_path, extra=["--receive-maximum", "1"])
    ag = start_agent(cfg, tmp_path)
    try:
        wait_for(all_archived(cfg, ids), 60, "archived despite the drops", [ar, ag])
        _after(cfg, ids, root)
        log = mq.log_path.read_text(errors="replace")
        assert "dropped" in log.lower(), "the broker did not drop anything: the test proves nothing"
        assert "querying" in ag.text()
    finally:
        ag.stop()
        ar.stop()


@pytest.mark.slow
def test_repeated_faults_many_items(make_broker, tmp_path):
    """Longer: 12 items, broker killed twice, agent killed once, archive killed once."""
    mq = make_broker()
    cfg, ids, root = _setup(tmp_path, mq.port, sizes=[1_500_000] * 12)
    ar = start_archive(root, mq.port, tmp_path)
    ag = start_agent(cfg, tmp_path)
    total = 18_000_000
    try:
        for n, fault in enumerate(["broker", "agent", "broker", "archive"]):
            lo = total * (n + 1) // 6
            wait_for(lambda: _held(root) > lo, 60, f"progress before fault {n}", [ar, ag], step=0.05)
            if fault == "broker":
                mq.restart(kill=True, downtime=0.3)
            elif fault == "agent":
                ag.kill()
                ag = start_agent(cfg, tmp_path, name=f"agent{n}")
            else:
                ar.kill()
                ar = start_archive(root, mq.port, tmp_path, name=f"archive{n}")
        wait_for(all_archived(cfg, ids), 120, "all archived", [ar, ag])
        _after(cfg, ids, root)
    finally:
        ag.stop()
        ar.stop()
