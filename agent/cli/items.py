"""Evidence items: ingest (manual ingest of files) and items list|show|annotate|export."""

from __future__ import annotations

from pathlib import Path

import click

from ..evidence import manifest as mf
from . import main
from .base import Ctx, LazyChoice, emit_json, item_states, json_option, pass_ctx, role


# --- ingest -----------------------------------------------------------------------------------
def metadata_options(f):
    for opt in reversed([
        click.option("--case", "case_number", required=True, help="Case number (案件编号)."),
        click.option("--collector", required=True, help="Collector's name (采集人)."),
        click.option("--collector-id", required=True, help="Collector's officer certificate number (执法证编号)."),
        click.option("--place", help="Capture place (采集地点); default: the device location."),
        click.option("--proof", required=True, help="What the record proves (证明对象)."),
    ]):
        f = opt(f)
    return f


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@metadata_options
@click.option("--captured-at", help="Capture start, ISO 8601 with offset (default: the file's modification time "
              "less its media duration, read by FFmpeg).")
@click.option("--captured-until", help="Capture end, ISO 8601 with offset, not before the start (default: the start "
              "plus the media duration).")
@click.option("--kind", "content", type=click.Choice(["media", "other"]), default="media", show_default=True,
              help="media: audio/video, checked with PyAV (FFmpeg); an empty or unreadable file is refused. "
                   "other: any file (a document, a photo archive), sealed as it is.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
@pass_ctx
@role("operator", "technician")
def ingest(c: Ctx, files, case_number, collector, collector_id, place, proof, captured_at, captured_until, content,
           quiet, as_json):
    """Copy, hash and seal FILE... as one evidence item, in one pass; prints the item id.

    A file already sealed for the same case is refused before it is copied (size, then the hash
    of its first and last MiB, confirmed by the whole file's hash). The progress bar goes to
    stderr, and only on a terminal: stdout holds the item id alone.

    \b
    Example:
      edge-agent ingest clip.mp4 --case "杭司罚〔2026〕12号" --collector 张三 \\
          --collector-id 33010001 --place "西湖区文三路" --proof "现场检查过程" \\
          --captured-at 2026-11-27T09:00:00+08:00
    """
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn, TimeRemainingColumn

    from ..store.ingest import ingest as do_ingest

    store = c.store
    meta = {"case_number": case_number, "collector": {"name": collector, "id": collector_id},
            "place": place or c.cfg.device.location, "proof": proof}
    if captured_at:
        meta["capture_start"] = captured_at
    if captured_until:
        meta["capture_end"] = captured_until
    total = sum(p.stat().st_size for p in files if p.is_file())
    if quiet or not sys.stderr.isatty():
        m = do_ingest(store, list(files), meta, content=content)
    else:
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn(), transient=True,
                      console=Console(stderr=True)) as prog:
            task = prog.add_task("复制并计算哈希 / copy+hash", total=total)
            m = do_ingest(store, list(files), meta, content=content, progress=lambda n: prog.advance(task, n))
    if as_json:
        emit_json({"item_id": m["item_id"], "device_seq": m["device_seq"], "item_hash": m["item_hash"],
                   "files": [{k: f[k] for k in ("name", "size", "hash")} for f in m["files"]]})
    else:
        click.echo(m["item_id"])


# --- items ------------------------------------------------------------------------------------
@main.group()
def items():
    """List, show, annotate and export evidence items."""


ITEM_COLUMNS = ("id", "state", "case_number", "collector_name", "size", "device_seq", "created", "pending")


@items.command("list")
@click.option("--state", type=LazyChoice(item_states), help="Only items in this state.")
@click.option("--case", "case_number", help="Only items of this case number.")
@click.option("--limit", type=int, help="At most N items.")
@json_option
@pass_ctx
@role("operator", "auditor", "technician")
def items_list(c: Ctx, state, case_number, limit, as_json):
    """List items with their state.

    \b
    Example:
      edge-agent items list --state sealed --json
    """
    rows = c.store.items(state=state, case=case_number, limit=limit)
    if as_json:
        emit_json([{k: r[k] for k in ITEM_COLUMNS} for r in rows])
        return
    from rich.console import Console
    from rich.table import Table

    from rich.table import Column

    # an id is what the next command needs: never cut (the other columns wrap around it)
    width = max([len(r["id"]) for r in rows] + [2])
    t = Table(Column("ID", no_wrap=True, min_width=width),
              *(Column(h, overflow="fold") for h in ("状态 state", "案件编号 case", "采集人 collector", "bytes",
                                                     "seq", "created", "待补 pending")))
    for r in rows:
        t.add_row(r["id"], r["state"], r["case_number"] or "(待补 pending)", r["collector_name"] or "",
                  str(r["size"]), str(r["device_seq"] or ""), r["created"], r["pending"])
    Console().print(t)


@items.command("show")
@click.argument("item_id")
@json_option
@pass_ctx
@role("operator", "auditor")
def items_show(c: Ctx, item_id, as_json):
    """Show one item: ledger record, manifest metadata, annotations (logged as a view).

    \b
    Example:
      edge-agent items show dock-01-20261127090000-a1b2c3
    """
    out = c.store.show_item(item_id)
    row = out["ledger"]
    if as_json:
        emit_json(out)
        return
    click.echo(f"item {item_id}  state {row['state']}  seq {row['device_seq']}  {row['size']} bytes")
    meta = out.get("effective_metadata") or {}
    for field in ("case_number", "capture_start", "capture_end", "place", "collector", "proof"):
        v = meta.get(field)
        if isinstance(v, dict):
            v = f"{v.get('name')} ({v.get('id')})"
        click.echo(f"  {mf.LABELS[field]}: {v if v is not None else '(待补 pending)'}")
    for f in out.get("manifest", {}).get("files", []):
        click.echo(f"  file {f['name']}  {f['size']} bytes  {f['hash']}")
    click.echo(f"  annotations: {len(out.get('annotations', []))}")


@items.command("annotate")
@click.argument("item_id")
@click.option("--case", "case_number", help="Case number (案件编号).")
@click.option("--proof", help="What the record proves (证明对象).")
@click.option("--place", help="Capture place (采集地点).")
@click.option("--note", help="Free-text note.")
@click.option("--evidence/--no-evidence", "evidence_mark", default=None,
              help="Mark as evidence (kept permanently at the archive).")
@click.option("--reason", default="", help="Why (signed in the annotation and kept in the audit log); required to "
                                          "change a case number, place or proof object that already has a value.")
@json_option
@pass_ctx
@role("operator")
def items_annotate(c: Ctx, item_id, case_number, proof, place, note, evidence_mark, reason, as_json):
    """Add a signed annotation; the sealed manifest is never edited.

    Completing a pending field (待补录) needs no reason; changing a case number, place or proof
    object that already has a value is refused without --reason. Capture time and collector are
    sealed with the recording and cannot be changed.

    \b
    Example:
      edge-agent items annotate ITEM --case "杭司罚〔2026〕12号" --proof "执法过程" --reason "补录案件信息"
    """
    changes = {k: v for k, v in (("case_number", case_number), ("proof", proof), ("place", place),
                                  ("note", note), ("evidence_mark", evidence_mark)) if v is not None}
    rec = c.store.annotate(item_id, changes, reason)
    if as_json:
        emit_json(rec)
        return
    click.echo(f"已添加批注 {rec['seq']} / annotation {rec['seq']} added to {item_id}")


@items.command("export")
@click.argument("item_id")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@json_option
@pass_ctx
@role("operator", "auditor")
def items_export(c: Ctx, item_id, dest, as_json):
    """Copy a sealed item (manifest, signature, files, annotations) to DEST/ITEM_ID; logged.

    \b
    Example:
      edge-agent items export ITEM /media/usb/export
    """
    out = c.store.export(item_id, dest)
    if as_json:
        emit_json({"item_id": item_id, "path": str(out)})
        return
    click.echo(str(out))
