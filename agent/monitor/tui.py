"""The monitor's live terminal view (rich): units with compliance, devices, active alarms."""

from __future__ import annotations

import threading
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .state import connect, fleet

_STATE = {"online": ("在线 online", "green"), "offline": ("离线 offline", "red"), "lost": ("失联 lost", "magenta"),
          "unknown": ("未知 unknown", "dim")}
_SEV = {"critical": "bold red", "warning": "yellow", "info": "dim"}


def _age(s) -> str:
    if s is None:
        return "—"
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s / 3600:.1f} h"


def render(f: dict, max_devices: int = 40) -> Group:
    t = f["totals"]
    head = Text(f"执法记录设备监控 / Recording equipment monitor   {f['generated']}   "
                f"units {t['units']} (compliant {t['compliant_units']})  online {t['online']}  "
                f"offline {t['offline']}  lost {t['lost']}  alarms {t['alarms']}", style="bold")
    units = Table(title="单位 / Units", expand=True)
    for col in ("单位 Unit", "人员 Officers", "记录仪 Recorders", "配备率 Ratio", "询问室 Rooms", "在线 Online",
                "告警 Alarms", "达标 Compliant"):
        units.add_column(col)
    for u in f["units"]:
        ratio = "—" if u["ratio"] is None else f"{u['ratio']:.2f} ({'≥' if u['ratio_ok'] else '<'} {u['min_ratio']:.2f})"
        units.add_row(f"{u['name']} ({u['code']})", "?" if u["officers"] is None else str(u["officers"]),
                      str(u["recorders"]), Text(ratio, style="green" if u["ratio_ok"] else "red"),
                      Text(str(u["rooms"]), style="green" if u["rooms_ok"] else "red"),
                      f"{u['online']}/{u['devices']}", str(u["alarms"]),
                      Text("达标 yes" if u["compliant"] else "不达标 no", style="bold green" if u["compliant"] else "bold red"))
    devs = Table(title="设备 / Devices", expand=True)
    for col in ("设备 Device", "类型 Kind", "单位 Unit", "状态 State", "静默 Silent", "待上传 Pending", "最久 Oldest"):
        devs.add_column(col)
    for d in f["devices"][:max_devices]:
        label, style = _STATE.get(d["display_state"], (d["display_state"], "dim"))
        h = d["health"] or {}
        devs.add_row(d["id"], d["kind"] or "—", d["unit_code"] or "—", Text(label, style=style), _age(d["silent_s"]),
                     str(h.get("buffer_items", "—")), _age(h.get("oldest_age_s")))
    if len(f["devices"]) > max_devices:
        devs.caption = f"… {len(f['devices']) - max_devices} more (web page: --web PORT)"
    alarms = Table(title="告警 / Alarms", expand=True)
    for col in ("级别 Severity", "设备 Device", "告警 Alarm", "说明 Message", "开始 Since"):
        alarms.add_column(col)
    for a in f["alarms"][:20]:
        alarms.add_row(Text(a["severity"], style=_SEV.get(a["severity"], "")), a["device"], a["key"],
                       f"{a['message_zh']} / {a['message_en']}", a["since"] or "—")
    return Group(head, units, alarms, devs)


def run(db_path: Path, lost_after: float, stop: threading.Event, console: Console | None = None,
        refresh_s: float = 1.0) -> None:
    """Refresh the view until ``stop`` is set (Ctrl-C in the CLI)."""
    console = console or Console()
    conn = connect(db_path, readonly=True)
    try:
        with Live(render(fleet(conn, lost_after)), console=console, refresh_per_second=2, screen=False) as live:
            while not stop.wait(refresh_s):
                live.update(render(fleet(conn, lost_after)))
    finally:
        conn.close()
