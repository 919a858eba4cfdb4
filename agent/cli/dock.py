"""Docking-station commands: ``dock status|watch|assign|recorders|report``, ``roster import|list``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from agent.common.errors import EdgeError
from . import main
from .base import Ctx, emit_json, emit_json_line, json_option, pass_ctx, role


def _registry(c: Ctx):
    from ..dock.registry import Registry

    return Registry(c.cfg.data_dir)


def _echo_table(rows: list[dict], cols: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    import sys

    t = Table(show_lines=False)
    for _, title in cols:
        t.add_column(title)
    for r in rows:
        t.add_row(*["" if r.get(k) is None else str(r.get(k)) for k, _ in cols])
    Console(width=None if sys.stdout.isatty() else 200).print(t)


@main.group()
def dock():
    """Docking station (采集站): bays, recorders, equipment ratio (docs/dock.md)."""


@dock.command("status")
@json_option
@pass_ctx
@role("operator", "auditor", "technician")
def dock_status(c: Ctx, as_json):
    """Show every bay: state, recorder, officer, progress, errors (from the running station).

    \b
    Example:
      edge-agent dock status
      edge-agent dock status --json
    """
    from ..dock.display import bay_rows
    from ..dock.station import read_state

    state = read_state(c.cfg.data_dir)
    if state is None:
        raise EdgeError(f"尚无采集站状态 / no station state in {c.cfg.data_dir}/dock: is `edge-agent run` running "
                        "with device.kind = dock?")
    if as_json:
        emit_json(state)
        return
    if not state["running"]:
        click.echo(f"注意 / note: the station is not running; state as of {state.get('updated')}")
    rows = bay_rows(state)
    if not rows:
        click.echo(f"无记录仪接入 / no recorder docked yet (bays: {', '.join(state.get('patterns', []))})")
    else:
        _echo_table(rows, [("bay", "仓位 Bay"), ("label", "状态 State"), ("recorder", "记录仪 Recorder"),
                           ("officer", "警员 Officer"), ("progress", "进度 Progress"), ("rate", "速率 Rate"),
                           ("eta", "剩余 ETA"), ("message", "信息 Message")])
    for a in state.get("alarms", []):
        click.echo(f"告警 / alarm {a['key']}: {a['message']}")


@dock.command("watch")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=0.5, show_default=True,
              help="Seconds between screen refreshes.")
@click.option("--once", is_flag=True, help="Draw the screen once and exit (e.g. for a screenshot).")
@click.option("--json", "as_json", is_flag=True,
              help="Instead of the screen: the station's state as JSON lines, one per refresh "
                   "({\"event\": \"state\", ...}); with --once one JSON object, as `dock status --json`.")
@pass_ctx
@role("operator", "auditor", "technician")
def dock_watch(c: Ctx, interval, once, as_json):
    """Live full-screen view of all bays for the station's screen (Chinese / English); Ctrl-C quits.

    \b
    Example:
      edge-agent dock watch
      edge-agent dock watch --once
      edge-agent dock watch --json --interval 5
    """
    from ..dock.display import watch
    from ..dock.station import read_state

    data_dir = c.cfg.data_dir
    if as_json:
        import time

        if once:
            emit_json(read_state(data_dir))  # null while no station has written its state
            return
        try:
            while True:
                emit_json_line("state", state=read_state(data_dir))
                time.sleep(interval)
        except KeyboardInterrupt:
            return
    watch(lambda: read_state(data_dir), interval=interval, once=once)


@dock.command("assign")
@click.argument("serial")
@click.argument("officer")
@json_option
@pass_ctx
@role("technician")
def dock_assign(c: Ctx, serial, officer, as_json):
    """Write OFFICER (officer number; name and unit from the roster) into the docked recorder SERIAL
    (WriteZFYInfo), read it back and record the assignment in the audit log. Needs the running
    station (`edge-agent run`, control socket); nothing is written if the recorder is not docked or
    the officer is not in the roster.

    \b
    Example:
      edge-agent dock assign 1234567 004711
    """
    from agent.common.control import call

    r = call(c.cfg.data_dir, "dock.assign", {"serial": serial, "officer": officer})
    if as_json:
        emit_json(r)
        return
    b, a = r["before"], r["after"]
    click.echo(f"已写入并读回 / written and read back: recorder {r['serial']} in {r['bay']}")
    click.echo(f"  原 / before: {b['officer_number']} {b['officer_name']} · {b['unit_number']} {b['unit_name']}")
    click.echo(f"  现 / after:  {a['officer_number']} {a['officer_name']} · {a['unit_number']} {a['unit_name']}")


@dock.command("recorders")
@json_option
@pass_ctx
@role("operator", "auditor", "technician")
def dock_recorders(c: Ctx, as_json):
    """List the recorder registry learned from docking: serial, officer, unit, first/last seen, conflicts.

    \b
    Example:
      edge-agent dock recorders --json
    """
    rows = _registry(c).recorders()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("尚无记录仪 / no recorder has docked yet")
        return
    _echo_table(rows, [("serial", "序列号 Serial"), ("officer_number", "警号 Officer"), ("officer_name", "姓名 Name"),
                       ("unit_number", "单位 Unit"), ("first_seen", "首次 First seen"), ("last_seen", "最近 Last seen"),
                       ("docks", "次数 Docks"), ("conflict", "冲突 Conflict")])


@dock.group("report")
def dock_report():
    """Reports of this station: equipment ratio (配备率) and items pending annotation (待补录)."""


def _emit_rows(rows: list[dict], as_json: bool, as_csv: bool, cols: list[tuple[str, str]]) -> None:
    if as_json:
        emit_json(rows)
    elif as_csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[k for k, _ in cols] if not rows else list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        click.echo(buf.getvalue(), nl=False)
    elif not rows:
        click.echo("无数据 / nothing to report")
    else:
        _echo_table(rows, cols)


@dock_report.command("ratio")
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@pass_ctx
@role("operator", "auditor", "technician")
def report_ratio(c: Ctx, as_json, as_csv):
    """Equipment ratio per unit: recorders that count ÷ officers against the unit policy's
    thresholds (rules.equipment; dock.min_ratio_pct while no policy is in force), and usage (recorders docked within dock.usage_days ÷ registered). A recorder counts when it
    is in service, assigned to an officer on the roster, passed its admin password check at its
    last docking and has no serial conflict; each one left out is listed with the reason.

    \b
    Example:
      edge-agent dock report ratio
      edge-agent dock report ratio --csv > ratio.csv
    """
    if as_json and as_csv:
        raise EdgeError("--json 与 --csv 只能选一个 / choose one of --json or --csv")
    from ..dock.registry import ratio_csv
    from ..policy import station_thresholds

    d = c.cfg.dock
    t = station_thresholds(c.store, c.cfg)
    found = _registry(c).ratio(usage_days=d.usage_days, thresholds=t)
    if as_csv:
        click.echo(ratio_csv(found), nl=False)
        return
    rows = [r.as_dict() for r in found]
    if not as_json:
        for r in rows:
            r["meets"] = "达标 / yes" if r["meets_minimum"] else "未达标 / NO"
            r["ratio"] = "—" if r["ratio_pct"] is None else f"{r['ratio_pct']}% (≥{r['min_ratio_pct']}%)"
            r["usage"] = "—" if r["usage_pct"] is None else f"{r['usage_pct']}% ({r['usage_days']} d)"
            r["out"] = len(r["excluded"])
    _emit_rows(rows, as_json, False, [("unit_code", "单位 Unit"), ("unit_name", "名称 Name"), ("officers", "警员 Officers"),
                                      ("recorders_in_service", "计入记录仪 Counted"), ("out", "未计入 Left out"),
                                      ("ratio", "配备率 Ratio"), ("meets", "达标 Meets"), ("usage", "使用率 Usage"),
                                      ("conflicts", "冲突 Conflicts")])
    if not as_json:
        for r in rows:
            for x in r["excluded"]:
                click.echo(f"未计入 / left out: {r['unit_code']} {x['serial']}: {x['text']}")
        click.echo(f"标准 / thresholds: ≥{t.min_ratio_pct}% (每百名警员 per 100 officers), ≥{t.min_rooms} 询问室 room(s); "
                   f"来源 / from: {t.label()}")


@dock_report.command("pending")
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@pass_ctx
@role("operator", "auditor", "technician")
def report_pending(c: Ctx, as_json, as_csv):
    """Items still waiting for case number / proof object (待补录), per officer and unit.

    \b
    Example:
      edge-agent dock report pending --csv
    """
    if as_json and as_csv:
        raise EdgeError("--json 与 --csv 只能选一个 / choose one of --json or --csv")
    from ..dock.station import pending_by_officer

    rows = pending_by_officer(c.store, _registry(c))
    _emit_rows(rows, as_json, as_csv, [("unit_code", "单位 Unit"), ("officer_number", "警号 Officer"),
                                       ("officer_name", "姓名 Name"), ("pending_items", "待补录 Pending"),
                                       ("oldest", "最早 Oldest")])


@main.group()
def roster():
    """Officer roster of the docking station (警员名册): officer number, name, unit."""


@roster.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--merge", is_flag=True, help="Add/update officers and keep the others (default: replace the roster).")
@json_option
@pass_ctx
@role("technician")
def roster_import(c: Ctx, file, merge, as_json):
    """Import officers.csv: a header naming officer_number, name, unit (and optionally unit_name);
    UTF-8 or GBK. Chinese headers (警号, 姓名, 单位编号, 单位名称) are accepted too.

    \b
    Example:
      edge-agent roster import officers.csv
    """
    n = _registry(c).import_roster(file, replace=not merge)
    c.store.audit.append("dock", None, roster_import=str(file), officers=n, merge=merge)
    if as_json:
        emit_json({"officers": n, "file": str(file), "merge": merge})
        return
    click.echo(f"已导入 {n} 名警员 / imported {n} officer(s) from {file}")


@roster.command("list")
@json_option
@click.option("--unit", help="Only this unit code.")
@pass_ctx
@role("operator", "auditor", "technician")
def roster_list(c: Ctx, as_json, unit):
    """List the roster.

    \b
    Example:
      edge-agent roster list --unit 330100000001
    """
    rows = _registry(c).officers(unit)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("名册为空 / the roster is empty (edge-agent roster import officers.csv)")
        return
    _echo_table(rows, [("number", "警号 Number"), ("name", "姓名 Name"), ("unit_code", "单位 Unit"),
                       ("unit_name", "单位名称 Unit name")])
