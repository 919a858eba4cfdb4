"""A bay after an unplug (issue 16 item 5): it shows empty (idle, no recorder, no officer, no
battery), and the docking's result — done or error — stays in the bay's history, newest first.
A real station with the pty recorder simulator."""

from __future__ import annotations

import time

from agent.dock.display import bay_rows
from tests.dock.test_dock import env, make_cfg, media, media_master, start_sim, start_station  # noqa: F401 (fixtures)

SERIAL = "1234567"


def _empty(st, name="bay-1", timeout=15.0) -> dict:
    deadline = time.monotonic() + timeout
    b = st.bay(name)
    while not (b.get("docked") is False and b.get("state") == "idle" and b.get("serial") is None):
        assert time.monotonic() < deadline, f"bay {name} not empty after the unplug: {b}"
        time.sleep(0.05)
        b = st.bay(name)
    return b


def test_unplugged_bay_shows_empty_and_keeps_the_result(env, media):  # noqa: F811
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, erase_policy="never"))
    sim = start_sim(made, media, ports / "ttyREC1")
    done = st.wait("bay-1", ("done",))
    assert done["serial"] == SERIAL and done["sealed"] == 5 and done["history"] == []
    sim.stop()  # the technician takes the recorder out
    b = _empty(st)
    assert (b["officer_name"], b["officer_number"], b["battery"], b["items"], b["sealed"], b["reason"]) == \
        (None, None, None, [], 0, None)
    h = b["history"]
    assert len(h) == 1 and (h[0]["serial"], h[0]["state"], h[0]["sealed"], h[0]["items"]) == (SERIAL, "done", 5, 5)
    assert h[0]["officer_name"] == "张三" and h[0]["left_at"]
    row = next(r for r in bay_rows(st.dock.status()) if r["bay"] == "bay-1")
    assert (row["state"], row["recorder"], row["officer"], row["battery"]) == ("idle", "", "", "")
    assert row["message"].startswith(f"上次 / last: {SERIAL} 张三 · 完成 / Done · 新增 5 new")
    # the state file `dock status` reads says the same
    import json
    saved = next(x for x in json.loads((data / "dock" / "bays.json").read_text())["bays"] if x["name"] == "bay-1")
    assert saved["serial"] is None and saved["history"][0]["serial"] == SERIAL


def test_an_error_moves_to_the_history_when_the_recorder_leaves(env, media):  # noqa: F811
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, erase_policy="never"))
    sim = start_sim(made, media, ports / "ttyREC1", wrong_password=True)
    err = st.wait("bay-1", ("error",))
    assert err["serial"] == SERIAL and err["docked"] is True, "while it is docked the error is shown on the bay"
    sim.stop()
    b = _empty(st)
    assert b["reason"] is None and b["history"][0]["state"] == "error"
    assert "管理员密码错误" in b["history"][0]["reason"]
    row = next(r for r in bay_rows(st.dock.status()) if r["bay"] == "bay-1")
    assert row["state"] == "idle" and "故障 / Error · 管理员密码错误" in row["message"]
    # docked again with the right password, then taken out: two dockings remembered, newest first
    sim = start_sim(made, media, ports / "ttyREC1")
    again = st.wait("bay-1", ("done",))
    assert again["serial"] == SERIAL and [x["state"] for x in again["history"]] == ["error"]
    sim.stop()
    b = _empty(st)
    assert [x["state"] for x in b["history"]] == ["done", "error"]
