"""The station's screen: ``edge-agent dock watch`` (rich), labels in Chinese and English.

Reads ``data_dir/dock/bays.json`` (written by the running station) so it works in any terminal on
the station without touching the agent process.
"""

from __future__ import annotations

import time

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .state import LABELS

COLORS = {"idle": "dim", "identifying": "cyan", "charging": "yellow", "downloading": "bold blue",
          "verifying": "magenta", "uploading": "blue", "done": "bold green", "error": "bold white on red"}


def human_bytes(n: int | None) -> str:
    if not n:
        return "0 B"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    f = float(n)
    for u in units:
        if f < 1024 or u == units[-1]:
            return f"{f:.0f} {u}" if u == "B" else f"{f:.1f} {u}"
        f /= 1024
    return f"{n} B"


def human_eta(s: int | None) -> str:
    if s is None:
        return "—"
    m, s = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_text(b: dict) -> str:
    state = b.get("state")
    if state in ("downloading", "verifying"):
        total = b.get("bytes_total") or 0
        pct = (100 * (b.get("bytes_done") or 0) // total) if total else 100
        return (f"文件 {b.get('file_index', 0)}/{b.get('file_count', 0)} file · {pct}% · "
                f"{human_bytes(b.get('bytes_done'))}/{human_bytes(total)}")
    if state == "uploading":
        return f"已归档 {b.get('archived', 0)}/{len(b.get('items') or [])} archived · 已删除 {b.get('erased', 0)} erased"
    if state in ("done", "error") and (b.get("sealed") or b.get("already") or b.get("erased")):
        return (f"新增 {b.get('sealed', 0)} new · 已有 {b.get('already', 0)} kept · 已删除 {b.get('erased', 0)} erased"
                + (f" · 重点 {b['kept_protected']} important" if b.get("kept_protected") else ""))
    return ""


def last_text(h: dict) -> str:
    """One line for an empty bay: the last docking, which has left (``history[0]``)."""
    what = h.get("reason") if h.get("state") == "error" else (
        f"新增 {h.get('sealed', 0)} new · 已有 {h.get('already', 0)} kept · 已删除 {h.get('erased', 0)} erased")
    who = " ".join(x for x in (h.get("serial") or "?", h.get("officer_name")) if x)
    return f"上次 / last: {who} · {LABELS.get(h.get('state'), h.get('state'))}" + (f" · {what}" if what else "")


def bay_rows(state: dict) -> list[dict]:
    """Flat rows (also used by ``dock status`` without --json)."""
    rows = []
    for b in state.get("bays", []):
        idle = b["state"] == "idle"
        officer = "" if idle else " ".join(x for x in (b.get("officer_name"), b.get("officer_number")) if x)
        a = b.get("assignment")
        if a and not a.get("agree") and not idle:  # never one of the two silently
            st = a.get("station") or {}
            officer += f" ≠ 分配 assigned {st.get('officer_name', '')} {st.get('officer_number', '')}"
        battery = f"{b['battery']}%{'⚡' if b.get('charging') else ''}" if b.get("battery") is not None and not idle else ""
        if battery and b.get("battery_low"):
            battery += " 低 low"
        recorder = "" if idle else (b.get("serial") or "")
        if recorder and b.get("resolution"):
            recorder += f" {b['resolution']}"
        rows.append({
            "bay": b["name"], "state": b["state"], "label": LABELS.get(b["state"], b["state"]),
            "recorder": recorder, "officer": officer, "progress": progress_text(b),
            "rate": f"{human_bytes(b.get('rate_bps'))}/s" if b.get("rate_bps") else "",
            "eta": human_eta(b.get("eta_s")) if b.get("state") == "downloading" else "",
            "battery": battery,
            "message": b.get("reason") if b["state"] == "error" else (
                last_text(b["history"][0]) if idle and b.get("history") else (b.get("message") or "")),
            "docked": b.get("docked", False), "battery_low": bool(b.get("battery_low")) and not idle,
        })
    return rows


#: narrower than this, the screen folds recorder, officer, progress and message into one column
WIDE = 140


def alarm_line(a: dict) -> str:
    """One alarm, its text said once: the title is left out when the message already says it."""
    title, message = a.get("title") or a.get("code") or "", (a.get("message") or "").strip()
    zh, said = title.split(" / ")[0], message.split(" / ")[0]
    if not message or message == title:
        text = title
    elif zh and (zh in message or (" / " in message and said and said in zh)):
        text = message  # the message says the title (记录仪管理员密码错误 ⊃ 管理员密码错误 / wrong admin password: …)
    else:
        text = f"{title} — {message}"
    return f"⚠ {a.get('bay', '')}: {text}"


def _wide_table(rows: list[dict]) -> Table:
    table = Table(box=box.HEAVY_HEAD, expand=True, show_lines=True, header_style="bold")
    for col, kw in (("仓位\nBay", {"no_wrap": True}), ("状态\nState", {"no_wrap": True}),
                    ("记录仪\nRecorder", {}), ("警员\nOfficer", {}), ("进度\nProgress", {"ratio": 3}),
                    ("速率\nRate", {"no_wrap": True}), ("剩余\nETA", {"no_wrap": True}),
                    ("电量\nBattery", {"no_wrap": True}), ("信息\nMessage", {"ratio": 4})):
        table.add_column(col, **kw)
    for r in rows:
        table.add_row(r["bay"], Text(r["label"], style=COLORS.get(r["state"], "")), r["recorder"], r["officer"],
                      r["progress"], r["rate"], r["eta"],
                      Text(r["battery"], style="bold red" if r["battery_low"] else ""), r["message"])
    if not rows:
        table.add_row("—", Text(LABELS["idle"], style="dim"), "", "", "", "", "", "",
                      "请插入执法记录仪 / dock a recorder")
    return table


def _narrow_table(rows: list[dict]) -> Table:
    """Bay and state, then one column that wraps: recorder · officer, progress · rate · ETA ·
    battery, and the message on a line of its own."""
    table = Table(box=box.HEAVY_HEAD, expand=True, show_lines=True, header_style="bold")
    table.add_column("仓位\nBay", no_wrap=True)
    table.add_column("状态\nState", no_wrap=True)
    table.add_column("记录仪 · 警员 · 进度 · 信息\nRecorder · Officer · Progress · Message", ratio=1,
                     overflow="fold")
    for r in rows:
        detail = Text()
        lines = [" · ".join(x for x in (r["recorder"], r["officer"]) if x),
                 " · ".join(x for x in (r["progress"], r["rate"], r["eta"] and f"剩余 ETA {r['eta']}",
                                        r["battery"] and f"电量 {r['battery']}") if x)]
        for line in lines:
            if line:
                detail.append(("\n" if detail else "") + line)
        if r["message"]:
            detail.append(("\n" if detail else "") + r["message"], style="red" if r["state"] == "error" else "")
        state = Text(r["label"], style=COLORS.get(r["state"], ""))
        table.add_row(r["bay"], state, detail)
    if not rows:
        table.add_row("—", Text(LABELS["idle"], style="dim"), "请插入执法记录仪 / dock a recorder")
    return table


def render(state: dict | None, now: float | None = None, width: int | None = None):
    """A rich renderable of the whole station; under ``WIDE`` columns (an 80-column terminal)
    the columns fold so that no line is cut."""
    if state is None:
        return Panel(Text("尚无采集站状态：采集站服务未运行？\nno station state yet: is `edge-agent run` running "
                          "with device.kind = dock?", style="yellow"), title="采集站 / Docking station")
    now = now or time.time()
    narrow = width is not None and width < WIDE
    rows = bay_rows(state)
    table = _narrow_table(rows) if narrow else _wide_table(rows)
    disk = state.get("disk", {})
    sep = "\n" if narrow else "   "
    head = Text()
    head.append(f"采集站 Docking station {state.get('device', '')}", style="bold")
    head.append(f"{sep}{state.get('location', '')}\n")
    head.append(f"磁盘可用 disk free {human_bytes(disk.get('free_bytes'))}{sep}")
    head.append(f"删除策略 erase policy {state.get('erase_policy', '')}{sep if narrow else '   '}")
    age = now - (state.get("updated_ts") or now)
    if not state.get("running", True):
        head.append("服务未运行 / station not running", style="bold red")
    elif age > 10:
        head.append(f"状态 {int(age)} 秒前 / state is {int(age)} s old", style="yellow")
    parts = [head, table]
    alarms = state.get("alarms") or []
    if alarms:
        t = Text("\n".join(alarm_line(a) for a in alarms), style="bold red")
        parts.append(Panel(t, title="告警 / Alarms", border_style="red"))
    return Panel(Group(*parts), title=time.strftime("%Y-%m-%d %H:%M:%S"), border_style="blue")


def watch(read_state, interval: float = 0.5, once: bool = False) -> None:
    """Live view until Ctrl-C; ``read_state()`` returns the current state dict (or None)."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if once:
        console.print(render(read_state(), width=console.width))
        return
    with Live(render(read_state(), width=console.width), console=console, screen=True, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(read_state(), width=console.width))
        except KeyboardInterrupt:
            pass
