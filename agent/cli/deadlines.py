"""`edge-agent report deadlines`: upload deadlines from what the archive holds
(agent/archive/deadlines.py, docs/custody.md "Upload deadline")."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import click

from agent.common.errors import EdgeError
from .archive import db_option
from .base import emit_json
from .report import report

ITEM_COLUMNS = ["unit_code", "officer_id", "officer_name", "recorder", "device", "item", "capture_end", "deadline",
                "received", "took_h", "late", "late_by_h"]


@report.command("deadlines")
@db_option
@click.option("--archive", "archive_root", envvar="EDGE_ARCHIVE_ROOT", required=True,
              type=click.Path(path_type=Path, file_okay=False),
              help="The archive root (read-only; env EDGE_ARCHIVE_ROOT).")
@click.option("--unit", help="One unit code (default: every unit).")
@click.option("--period", help="2026-11 (a month), 2026 (a year), 2026-11-05 (a day) or 2026-11-01..2026-11-30 "
                                "(default: this month).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: one row per item.")
@click.option("--late-only", is_flag=True, help="Only the items that arrived late.")
def report_deadlines(archive_root, unit, period, as_json, as_csv, late_only):
    """Upload deadlines per officer and recorder: for each item captured in the period, the end of
    capture (recorder clock corrected by its drift), the deadline (the unit policy's
    upload_deadline_h, 24 h by default), when the archive received it and by how much it was late;
    chain positions announced by a device and not received. A readable table by default.

    \b
    Example:
      edge-agent report deadlines --archive /srv/archive --unit 330100000000 --period 2026-11
      edge-agent report deadlines --archive /srv/archive --period 2026-11-01..2026-11-30 --csv > late.csv
    """
    if as_json and as_csv:
        raise click.UsageError("--json 与 --csv 只能选一个 / choose one of --json or --csv")
    from ..archive.deadlines import parse_period, read_deadlines
    from ..archive.storage import ArchiveStore

    if period is None:
        today = dt.date.today()
        period = f"{today.year}-{today.month:02d}"
    start, end = parse_period(period)
    if not (Path(archive_root) / "_archive").is_dir():
        raise EdgeError(f"{archive_root}: 不是存档根目录 / not an archive root (no _archive/ here)")
    ctx = click.get_current_context()
    import os

    store = ArchiveStore(archive_root, create=False, db=ctx.meta.get("archive_db") or os.environ.get("EDGE_ARCHIVE_DB"))
    try:
        rep = read_deadlines(store, start, end, unit)
    finally:
        store.close()
    rep = {"report": "deadlines", "source": f"archive {archive_root}", "unit": unit, "from": start.isoformat(),
           "to": end.isoformat(), "generated": dt.datetime.now().astimezone().replace(microsecond=0).isoformat(), **rep}
    if late_only:
        rep["items"] = rep["late"]
    if as_json:
        emit_json(rep)
        return
    if as_csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=ITEM_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rep["items"]:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
        click.echo(buf.getvalue(), nl=False)
        return
    _table(rep)
    for x in rep["skipped"]:
        click.echo(f"注意 / note: {x['device']} {x['item']} not counted: {x['why']}", err=True)


def _table(rep: dict) -> None:
    limits = ", ".join(f"{u}: {d['hours']} h ({d['from']})" for u, d in rep["deadline_h"].items()) or "-"
    click.echo(f"上传时限报告 / upload deadlines {rep['from']} .. {rep['to']}   时限 / deadline: {limits}")
    click.echo(f"资料 / items: {len(rep['items'])}   超时 / late: {len(rep['late'])}")
    if rep["late"]:
        click.echo("")
        click.echo("超时资料 / late items")
        click.echo(f"  {'警号 OFFICER':<22} {'记录仪 RECORDER':<16} {'采集结束 CAPTURE END':<26} {'接收 RECEIVED':<26} "
                   f"{'超时 LATE BY':>12}  资料 ITEM")
        for r in rep["late"]:
            who = f"{r['officer_id'] or '-'} {r['officer_name'] or ''}".strip()
            click.echo(f"  {who:<22} {r['recorder']:<16} {r['capture_end']:<26} {r['received']:<26} "
                       f"{r['late_by_h']:>10.2f} h  {r['item']}")
    click.echo("")
    click.echo("按警员 / per officer")
    for s in rep["officers"]:
        who = f"{s['officer_id'] or '-'} {s['officer_name'] or ''}".strip()
        click.echo(f"  {who:<22} 资料 items {s['items']:>4}   超时 late {s['late']:>4}   最长超时 worst "
                   f"{s['worst_late_by_h']:.2f} h")
    click.echo("按记录仪 / per recorder")
    for s in rep["recorders"]:
        click.echo(f"  {s['recorder']:<22} 资料 items {s['items']:>4}   超时 late {s['late']:>4}   最长超时 worst "
                   f"{s['worst_late_by_h']:.2f} h")
    for m in rep["not_received"]:
        click.echo(f"未收到 / not received: device {m['device']} announced {m['announced']} items; missing seq "
                   f"{', '.join(map(str, m['missing'][:20]))}{' …' if len(m['missing']) > 20 else ''}")
