"""Brokers that fail over, without a broker cluster: two independent Mosquittos, each with its own
receiver on a local shared subscription, both writing to one PostgreSQL index and one storage;
the monitor subscribes to both. The device's config lists its primary and its fallback
(``mqtt.fallback``). Its primary is killed (SIGKILL) mid-transfer: the device fails over, the
transfer goes on from the byte ranges the centre holds (what was held is not sent again), the item
is archived once by the other broker's receiver and verifies, and the monitor shows the device
online throughout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.faults.harness import wait_for
from tests.support.centre import Centre

SIZE = 6_000_000


@contextmanager
def watching(mon, device: str) -> Iterator[list[str]]:
    """What the monitor shows for the device, 4 times a second, while the block runs."""
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.25):
            try:
                seen.append(mon.states().get(device, "absent"))
            except OSError as exc:
                seen.append(f"monitor unreachable: {exc}")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        stop.set()
        watcher.join(5)


def test_device_fails_over_to_its_fallback_broker_mid_transfer(tmp_path):
    with Centre(tmp_path, devices=["dock-0001"], brokers=2, receivers=2) as c:
        c.start()
        node = c.add_node("dock-0001", primary=0, health__interval_s=1, uplink__bandwidth_limit=1_000_000)
        mon = c.start_monitor(lost_after=10)
        primary, fallback = (f"127.0.0.1:{mq.port}" for mq in c.brokers)
        node.start()
        wait_for(lambda: mon.states().get("dock-0001") == "online", 60, "the monitor shows the device", c.logs())
        (item,) = node.ingest(1, SIZE)
        with watching(mon, "dock-0001") as seen:
            wait_for(lambda: node.live_status().get("broker") == primary, 30, "the device on its primary")
            wait_for(lambda: c.partial_bytes() >= 2_000_000, 60, "2 MB of the item held through the primary", c.logs(),
                     step=0.05)
            held = c.partial_bytes()
            bdseq = mon.devices()["dock-0001"]["bdseq"]  # the birth the monitor heard through the primary
            c.brokers[0].kill()  # the device's broker dies mid-transfer
            c.wait_archived(120)
        out = c.check().assert_ok()  # once, verifies (chain too), the edge keeps its copy
        assert out.archived == 1
        (row,) = c.archive_rows()
        assert row["item"] == item and row["receiver"] in ("rx-2-1", "rx-2-2"), row  # finished through the fallback
        st = wait_for(lambda: (lambda s: s if s.get("items_archived") else None)(node.live_status()), 30,
                      "the device's status after the item")
        assert st["broker"] == fallback and st["failovers"] >= 1, st
        # resumed from what the centre held: the held ranges were not sent again (what was in
        # flight when the broker died is, at most the device's window)
        assert st["bytes_sent"] < SIZE + held, (st["bytes_sent"], held)
        assert f"trying {fallback}" in node.run_proc.text()
        assert seen and set(seen) == {"online"}, seen
        # heard through the fallback: the device's birth on its new connection (next bdseq)
        wait_for(lambda: mon.devices()["dock-0001"]["bdseq"] > bdseq, 30, "the monitor hears the fallback's birth")
        assert mon.states()["dock-0001"] == "online"


def test_device_returns_to_its_primary_and_the_item_crosses_both_moves(tmp_path):
    """Fail-back (``mqtt.failback_s``): the primary dies mid-transfer, the device goes on through
    its fallback, the primary comes back; the device probes it (an archive receiver online there,
    signed) and returns while the same item is still being sent: the item is archived once,
    through the primary's receiver, and verifies; what the centre held was not sent again. The
    monitor shows the device online throughout (it left the fallback with DISCONNECT: no will)."""
    size = 6_000_000
    with Centre(tmp_path, devices=["dock-0001"], brokers=2, receivers=1) as c:
        c.start()
        node = c.add_node("dock-0001", primary=0, mqtt__failback_s=1, uplink__bandwidth_limit=600_000)
        mon = c.start_monitor(lost_after=10)
        primary, fallback = (f"127.0.0.1:{mq.port}" for mq in c.brokers)
        node.start()
        wait_for(lambda: mon.states().get("dock-0001") == "online", 60, "the monitor shows the device", c.logs())
        (item,) = node.ingest(1, size)
        with watching(mon, "dock-0001") as seen:
            wait_for(lambda: c.partial_bytes() >= 1_000_000, 60, "1 MB of the item held through the primary",
                     c.logs(), step=0.05)
            held = c.partial_bytes()
            c.brokers[0].kill()  # the device's broker dies mid-transfer
            wait_for(lambda: f"connected to {fallback}" in node.run_proc.text(), 30, "the device on its fallback",
                     c.logs())
            bdseq = mon.devices()["dock-0001"]["bdseq"]
            c.brokers[0].restart()  # back on its port; its receiver reconnects by itself
            wait_for(lambda: "back to the primary" in node.run_proc.text(), 30, "the device back on its primary",
                     c.logs(), step=0.05)
            # the same item crossed both moves: not finished yet, and more of it held than at the
            # kill (sent through the fallback's receiver meanwhile)
            assert c.archive_rows() == [], "the item was finished before the device moved back"
            assert c.partial_bytes() > held
            c.wait_archived(120)
        out = c.check().assert_ok()  # once, verifies (chain too), the edge keeps its copy
        assert out.archived == 1
        (row,) = c.archive_rows()
        assert row["item"] == item and row["receiver"] == "rx-1-1", row  # finished through the primary
        st = wait_for(lambda: (lambda s: s if s.get("items_archived") else None)(node.live_status()), 30,
                      "the device's status after the item")
        assert st["broker"] == primary == st["primary"] and st["failovers"] >= 1 and st["failbacks"] == 1, st
        assert st["failback_probe"] == "ok" and st["bytes_sent"] < size + held, (st, held)
        assert seen and set(seen) == {"online"}, seen
        # heard through the primary again: the device's birth on its new connection (a later bdseq)
        assert st["bdseq"] > bdseq, (st, bdseq)
        wait_for(lambda: mon.devices()["dock-0001"]["bdseq"] == st["bdseq"], 30, "the monitor hears the primary's birth")
        assert mon.states()["dock-0001"] == "online"
