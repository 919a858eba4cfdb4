"""`edge-agent report ratio|usage|annual`: equipment and usage reports per unit from the monitor
database (agent/monitor/reports.py), or from what the archive holds (`report usage --archive`).
`report deadlines` is in deadlines.py."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from . import main
from .monitor import db_option

@main.group()
def report():
    """Equipment and usage reports per unit from the monitor database (CSV, or JSON with --json)."""


def _report_options(f):
    for opt in reversed([
        click.option("--unit", help="One unit code (default: every unit)."),
        click.option("--from", "frm", help="First day YYYY-MM-DD (default: 1 January this year)."),
        click.option("--to", "to", help="Last day YYYY-MM-DD, inclusive (default: today)."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON."),
        click.option("--csv", "as_csv", is_flag=True, help="Print CSV (the default)."),
        click.option("--format", "fmt", type=click.Choice(["csv", "json"]), hidden=True,
                     help="Deprecated spelling of --csv / --json."),
        db_option,
    ]):
        f = opt(f)
    return f


def _output_format(as_json: bool, as_csv: bool, fmt: str | None) -> str:
    """One spelling, --json or --csv; the old --format is still read (with a note on stderr)."""
    if fmt:
        click.echo(f"注意 / note: --format {fmt} is deprecated; use --{fmt}", err=True)
    chosen = {"json"} if as_json else set()
    chosen |= {"csv"} if as_csv else set()
    chosen |= {fmt} if fmt else set()
    if len(chosen) > 1:
        raise click.UsageError("--json 与 --csv 只能选一个 / choose one of --json or --csv")
    return chosen.pop() if chosen else "csv"


def _run_report(kind: str, unit, frm, to, fmt, db, year=None) -> None:
    from ..monitor import reports
    from ..monitor.state import check_db_arg, connect

    start, end = reports.period(frm, to, year)
    conn = connect(check_db_arg(db), readonly=True)
    try:
        rep = reports.build(conn, kind, unit, start, end)
    finally:
        conn.close()
    click.echo(reports.to_json(rep) if fmt == "json" else reports.to_csv(rep), nl=fmt == "json")


@report.command("ratio")
@_report_options
def report_ratio(unit, frm, to, as_json, as_csv, fmt, db):
    """Equipment per unit at the end of the period: officers, recorders that count, ratio and
    interview rooms against the minimums of the unit policy its docking stations have in force
    (rules.equipment; while none, their dock.min_ratio_pct, default 20 = one recorder per five
    officers, and dock.min_rooms, default 1), compliant or not; "thresholds" says which source.

    \b
    Example:
      edge-agent report ratio --db ./monitor.db --json
    """
    _run_report("ratio", unit, frm, to, _output_format(as_json, as_csv, fmt), db)


@report.command("usage")
@_report_options
@click.option("--archive", "archive_root", type=click.Path(path_type=Path, file_okay=False),
              help="Count from the archive at ROOT (read-only): items captured in the period, per unit, officer and "
                   "device, hours recorded and items archived late. Without it: the stations' health counters as the "
                   "monitor saw them.")
@click.option("--deadline-h", type=click.IntRange(1, 720), default=24, show_default=True,
              help="With --archive: an item stored more than this many hours after its capture end is late "
                   "(the unit policy's upload_deadline_h).")
def report_usage(unit, frm, to, as_json, as_csv, fmt, db, archive_root, deadline_h):
    """Use per unit in the period: hours recorded, items, archived share, items pending annotation,
    alarms raised by kind — or, with --archive ROOT, what the archive holds: per unit, per officer
    and per device, items captured in the period, hours recorded and items archived late.

    \b
    Example:
      edge-agent report usage --unit 330106 --from 2026-11-01 --to 2026-11-30 --csv --db ./monitor.db
      edge-agent report usage --archive /srv/archive --from 2026-11-01 --to 2026-11-30 --json
    """
    out = _output_format(as_json, as_csv, fmt)
    if archive_root is None:
        _run_report("usage", unit, frm, to, out, db)
        return
    import datetime as dt

    from ..archive.usage import read_usage
    from ..monitor import reports

    start, end = reports.period(frm, to)
    got = read_usage(archive_root, start, end, unit, deadline_h)
    rep = {"report": "usage", "source": f"archive {archive_root}", "from": start.isoformat(), "to": end.isoformat(),
           "generated": dt.datetime.now().astimezone().replace(microsecond=0).isoformat(), **got}
    if out == "json":
        click.echo(reports.to_json(rep))
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["level", "unit_code", "officer_id", "officer_name", "device", "items",
                                        "hours_recorded", "late"], lineterminator="\n", restval="")
    w.writeheader()
    for level, key in (("unit", "units"), ("officer", "officers"), ("device", "devices")):
        for r in rep[key]:
            w.writerow({"level": level, **{k: ("" if v is None else v) for k, v in r.items()}})
    click.echo(buf.getvalue(), nl=False)
    for x in rep["skipped"]:
        click.echo(f"注意 / note: {x['device']} {x['item']} not counted: {x['why']}", err=True)


@report.command("annual")
@_report_options
@click.option("--year", type=int, help="Calendar year (default: last year); excludes --from/--to.")
def report_annual(unit, frm, to, as_json, as_csv, fmt, db, year):
    """The annual statistics a unit files by 31 January: equipment and ratio, rooms, hours recorded,
    items, archived share, items pending annotation and alarms by kind, for one calendar year.

    \b
    Example:
      edge-agent report annual --year 2026 --csv --db ./monitor.db > 2026-年报.csv
    """
    import datetime as dt

    if year is None and not frm and not to:
        year = dt.date.today().year - 1
    _run_report("annual", unit, frm, to, _output_format(as_json, as_csv, fmt), db, year)
