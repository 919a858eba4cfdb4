"""End to end: recorder simulator -> `edge-agent run` (kind dock) -> Mosquitto -> `edge-agent archive
serve`; files are erased from the recorder only after the archive acknowledged each one."""

from __future__ import annotations


from tests.dock.test_dock import media, media_master, start_sim  # noqa: F401  (fixtures)
from tests.dock.test_dock_process import bay_state, proc_env  # noqa: F401
from tests.support.retained import retained as retained_raw
from tests.support.uplink import UNIT, agent_config, check_archive, enroll, open_store, run, start_agent, \
    start_archive, states, wait_for


def retained(port: int, topic: str) -> dict[str, dict]:
    """The retained messages (the body of each signed envelope)."""
    from tests.support.health import body_of

    return {t: body_of(p) for t, p in retained_raw(port, topic).items() if p}


def test_dock_to_archive_then_erase(proc_env, media, broker, tmp_path):
    tmp, ports, made = proc_env
    config = agent_config(tmp, broker.port, device="dock-0001", device__kind="dock",
                          device__location="西湖区文三路100号 采集站",
                          dock__bays=[str(ports / "ttyREC*")], dock__poll_ms=100, dock__serial_timeout_ms=300,
                          uplink__audit_every_s=1)
    store = open_store(config)
    root = tmp / "archive"
    enroll(root, store)
    store.close()
    arch = start_archive(root, broker.port, tmp)
    agent = start_agent(config, tmp)
    try:
        sim = start_sim(made, media, ports / "ttyREC1")
        data = tmp / "dock-0001"
        names = {p.name for p in media.iterdir()}
        wait_for(lambda: bay_state(data, "bay-1").get("state") == "done", 90, "bay-1 done", [agent, arch])
        b = bay_state(data, "bay-1")
        ids = b["items"]
        assert len(ids) == 5 and all(states(config)[i] in ("archived", "purged") for i in ids)
        check_archive(root, ids)
        important = {n for n in names if "_IMP" in n}
        assert set(sim.erased) == names - important and b["erased"] == 4 and b["kept_protected"] == 1
        # the bay's state and the equipment ratio are retained on MQTT for the monitor
        comp = retained(broker.port, "edge/dev/dock-0001/component/bay-1")
        assert comp["edge/dev/dock-0001/component/bay-1"]["state"] == "done"
        ratio = retained(broker.port, "edge/dev/dock-0001/ratio")["edge/dev/dock-0001/ratio"]
        assert ratio["units"][0]["recorders_registered"] == 1 and ratio["min_ratio_pct"] == 20
        assert UNIT  # the archive files items under the device's unit
        # the station's audit log reaches the archive as items: each erase with the receipt that allowed it
        wait_for(lambda: erased_at_archive(root) == 4, 60, "the station's erase entries at the archive", [agent, arch])
    finally:
        agent.stop()
        arch.stop()
    p = run(["archive", "audit-log", "dock-0001", "--root", str(root), "--erasures"])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "4 erase(s), 0 without a valid receipt" in p.stdout and p.stdout.count("signature ok") == 4, p.stdout


def erased_at_archive(root) -> int:
    import sqlite3

    con = sqlite3.connect(str(root / "archive.db"), timeout=30)
    try:
        return con.execute("SELECT count(*) FROM station_audit WHERE action = 'erase' AND detail LIKE '%\"erased\"%'"
                           ).fetchone()[0]
    finally:
        con.close()
