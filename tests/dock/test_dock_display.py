"""`edge-agent dock watch` on an 80-column terminal (issue 16 item 10): no line is cut or runs
over, the bilingual labels stay, long messages wrap, and an alarm says its text once."""

from __future__ import annotations

import time

import pytest
from rich.cells import cell_len
from rich.console import Console

from agent.dock.display import alarm_line, render

#: the station's own message for a refused admin password (agent/dock/bay.py), long enough to wrap
LONG = ("管理员密码错误 / wrong admin password: the recorder refused dock.admin_password; "
        "nothing copied or erased")


def _state() -> dict:
    now = time.time()
    bays = [
        {"name": "bay-1", "state": "downloading", "serial": "ZFY0000001", "officer_name": "张三",
         "officer_number": "000123", "battery": 64, "charging": True, "file_index": 3, "file_count": 12,
         "bytes_done": 1_300_000_000, "bytes_total": 4_100_000_000, "rate_bps": 38_000_000, "eta_s": 74,
         "docked": True},
        {"name": "bay-2", "state": "error", "serial": "ZFY0000002", "officer_name": "李四",
         "officer_number": "000124", "battery": 12, "reason": LONG, "docked": True},
        {"name": "bay-3", "state": "done", "serial": "ZFY0000003", "officer_name": "欧阳子轩",
         "officer_number": "000125", "battery": 100, "sealed": 7, "already": 2, "erased": 9,
         "kept_protected": 1, "docked": True,
         "assignment": {"agree": False, "station": {"officer_name": "王五", "officer_number": "000126"}}},
        {"name": "bay-4", "state": "uploading", "serial": "ZFY0000004", "officer_name": "赵六",
         "officer_number": "000127", "archived": 3, "items": [1, 2, 3, 4, 5], "erased": 0, "docked": True},
        {"name": "bay-5", "state": "verifying", "serial": "ZFY0000005", "officer_name": "孙七",
         "officer_number": "000128", "file_index": 1, "file_count": 1, "bytes_done": 5, "bytes_total": 10,
         "docked": True},
        {"name": "bay-6", "state": "idle"}, {"name": "bay-7", "state": "identifying", "docked": True},
        {"name": "bay-8", "state": "charging", "serial": "ZFY0000008", "battery": 33, "charging": True,
         "docked": True},
    ]
    alarms = [
        {"key": "recorder_auth_failed.bay-2", "code": "recorder_auth_failed", "bay": "bay-2", "message": LONG,
         "title": "记录仪管理员密码错误 / recorder admin password refused"},
        {"key": "recorder_clock.bay-1", "code": "recorder_clock", "bay": "bay-1",
         "message": "clock 600 s ahead", "title": "执法记录仪时钟严重偏差 / recorder clock far off"},
    ]
    return {"device": "dock-01", "location": "杭州市西湖区文三路18号采集室", "bays": bays, "alarms": alarms,
            "disk": {"free_bytes": 812 * 2**30}, "erase_policy": "after-archive", "updated_ts": now,
            "running": True}


def _screen(width: int, state=None) -> list[str]:
    console = Console(width=width, record=True, file=open("/dev/null", "w"), color_system=None)
    console.print(render(_state() if state is None else state, width=width))
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 100])
def test_eighty_columns_nothing_runs_over_labels_stay(width):
    lines = _screen(width)
    assert max(cell_len(line) for line in lines) <= width, "\n".join(lines)
    text = "\n".join(lines)
    for label in ("仓位", "Bay", "状态", "State", "记录仪", "Recorder", "警员", "Officer", "进度", "Progress",
                  "信息", "Message", "告警 / Alarms", "磁盘可用 disk free", "删除策略 erase policy"):
        assert label in text, label
    words = set(text.split())  # a cell wraps at spaces: each word stays whole, wherever the line breaks
    for word in ("ZFY0000001", "张三", "000123", "MiB/s", "剩余", "ETA", "1:14", "欧阳子轩", "≠", "分配", "assigned",
                 "王五", "下载中", "Downloading", "故障", "Error", "bay-8", "64%⚡"):
        assert word in words, word
    # the long message is wrapped, not cut: every English word of it is on the screen
    english = LONG.split(" / ", 1)[1]
    assert [w for w in english.split() if w not in words] == []


def test_wide_terminal_keeps_one_column_per_field():
    lines = _screen(180)
    assert max(cell_len(line) for line in lines) <= 180
    header = "\n".join(lines[:12])
    for label in ("速率", "Rate", "剩余", "ETA", "电量", "Battery"):
        assert label in header


def test_alarm_text_said_once():
    st = _state()
    lines = _screen(80)
    text = "\n".join(lines)
    assert text.split().count("nothing") == 2, "once in the bay, once in the alarms, not thrice"
    assert alarm_line(st["alarms"][0]) == f"⚠ bay-2: {LONG}"
    assert alarm_line(st["alarms"][1]) == "⚠ bay-1: 执法记录仪时钟严重偏差 / recorder clock far off — clock 600 s ahead"
    same = {"bay": "bay-3", "title": "采集站磁盘已满，拒绝接入 / station disk full, docking refused",
            "message": "采集站磁盘已满，拒绝接入 / station disk full, docking refused"}
    assert alarm_line(same) == f"⚠ bay-3: {same['title']}"


def test_empty_and_missing_state_at_eighty_columns():
    for state in ({"device": "dock-01", "bays": [], "disk": {}, "running": False}, None):
        console = Console(width=80, record=True, file=open("/dev/null", "w"), color_system=None)
        console.print(render(state, width=80))
        lines = console.export_text().splitlines()
        assert max(cell_len(line) for line in lines) <= 80
    assert "dock a recorder" in "\n".join(_screen(80, {"device": "d", "bays": [], "disk": {}, "running": True}))
