"""Core commands: init, config, ingest, items, status, verify, audit."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import config as config_mod
from agent.common.errors import ConfigError, EdgeError, NotFoundError, VerifyError
from ..evidence import keys, manifest as mf
from ..evidence.verify import verify_chain, verify_item
from . import main
from .base import Ctx, LazyChoice, emit_json, item_states, json_option, pass_ctx, role


# --- init -------------------------------------------------------------------------------------
@main.command()
@click.option("--data-dir", help="Data directory (default from the config, /var/lib/edge-agent).")
@click.option("--device-id", help="Device id, unique in the fleet.")
@click.option("--unit-code", help="Enforcement unit code.")
@click.option("--unit-name", help="Enforcement unit name.")
@click.option("--kind", type=click.Choice(["dock", "room"]), help="Docking station or interview room.")
@click.option("--location", help="Place of the box (采集地点).")
@click.option("--force", is_flag=True, help="Replace an existing device key (old items still verify with the old public key).")
@json_option
@pass_ctx
def init(c: Ctx, data_dir, device_id, unit_code, unit_name, kind, location, force, as_json):
    """Write a commented default config, the data directory and the device's Ed25519 key pair.

    Safe to run again: an existing config is kept (only the values given are set in it) and an
    existing device key is kept unless --force is given; the output says what was kept and what
    changed. Changing --device-id of a device that has a key needs --force.

    \b
    Example:
      edge-agent --config ./agent.toml init --data-dir ./data --device-id dock-01 --kind dock
    """
    from ..store.setup import init_device

    r = init_device(c.config_path, {"storage": {"data_dir": data_dir},
                                    "device": {"id": device_id, "unit_code": unit_code, "unit_name": unit_name,
                                               "kind": kind, "location": location}}, force=force)
    if as_json:
        emit_json({"config": str(r.config_path), "config_written": r.config_written,
                   "changed": [{"key": k, "old": o, "new": n} for k, o, n in r.changed], "data_dir": str(r.data_dir),
                   "key": str(r.key_path), "public_key": str(r.pub_path), "key_id": r.key_id, "key_kept": r.key_kept})
        return
    if r.config_written:
        click.echo(f"配置 config: {r.config_path} (已写入 written)")
    else:
        click.echo(f"配置 config: {r.config_path} (已保留 kept" + (f", 已修改 changed {len(r.changed)})" if r.changed else ")"))
        for key, old, new in r.changed:
            click.echo(f"  {key}: {config_mod.toml_text(old)} → {config_mod.toml_text(new)}")
    click.echo(f"数据 data: {r.data_dir}")
    if r.key_kept:
        click.echo(f"密钥 key: {r.key_path} (已保留 kept; --force 才会更换 / --force replaces it), key id {r.key_id}")
    else:
        click.echo(f"密钥 key: {r.key_path} (新建 new, mode 600), public key {r.pub_path}, key id {r.key_id}")


# --- config -----------------------------------------------------------------------------------
@main.group()
def config():
    """Check and change the configuration file (one schema, see docs/config.md)."""


@config.command("validate")
@pass_ctx
def config_validate(c: Ctx):
    """Check the config file; an error names the key, what is wrong and the line.

    \b
    Example:
      edge-agent --config ./agent.toml config validate
    """
    cfg = c.cfg
    click.echo(f"ok: {cfg.path} is valid")


@config.command("show")
@json_option
@pass_ctx
@role("technician", "auditor")
def config_show(c: Ctx, as_json):
    """Print the effective configuration (defaults filled in, secrets hidden).

    \b
    Example:
      edge-agent config show --json
    """
    data = c.cfg.as_dict()
    if as_json:
        emit_json(data)
        return
    for section, values in data.items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            click.echo(f"{key} = {config_mod.toml_text(value)}")
        click.echo("")


@config.command("get")
@click.argument("key")
@json_option
@pass_ctx
def config_get(c: Ctx, key, as_json):
    """Print one value, KEY as SECTION.KEY.

    \b
    Example:
      edge-agent config get device.id
    """
    config_mod.split_key(key)
    value = c.cfg.get(key)
    if as_json:
        click.echo(json.dumps(value, ensure_ascii=False))
    else:
        click.echo(value if isinstance(value, str) else config_mod.toml_text(value))


@config.command("set")
@click.argument("key")
@click.argument("value")
@pass_ctx
@role("technician")
def config_set(c: Ctx, key, value):
    """Validate, then atomically write one value (comments in the file are kept).

    Lists and tables are written in TOML syntax (quote them for the shell). The whole file is
    validated before it is written; a refused value leaves it unchanged.

    \b
    Example:
      edge-agent config set storage.reserve_mb 2048
      edge-agent config set room.cameras '["/dev/video0", "rtsp://10.0.0.2/main"]'
      edge-agent config set dock.bays '["/dev/ttyACM*", {name = "front", port = "/dev/ttyUSB0"}]'
    """
    old = None
    try:
        old = c.cfg.get(key)
    except (ConfigError, KeyError):
        pass
    new = config_mod.set_value(c.config_path, key, value)
    try:
        c._cfg = None
        c.store.audit.append("config", None, key=key, old=old if "password" not in key else "***",
                             new=new if "password" not in key else "***")
    except EdgeError:
        pass
    section, name = config_mod.split_key(key)
    shown = "********" if config_mod.SCHEMA[section][name].secret else config_mod.toml_text(new)
    click.echo(f"{key} = {shown}")


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


# --- status -----------------------------------------------------------------------------------
@main.command()
@json_option
@pass_ctx
@role("operator", "auditor", "technician")
def status(c: Ctx, as_json):
    """Device, items by state, bytes buffered, oldest unarchived age, free disk.

    \b
    Example:
      edge-agent status --json
    """
    st = c.store.status()
    if as_json:
        emit_json(st)
        return
    d = st["device"]
    click.echo(f"设备 device: {d['id']} ({d['kind']}) 单位 unit: {d['unit_name']} [{d['unit_code']}] @ {d['location']}")
    click.echo("items: " + (", ".join(f"{k} {v}" for k, v in sorted(st["items_by_state"].items())) or "none"))
    age = st["oldest_unarchived_age_s"]
    click.echo(f"unarchived: {st['unarchived_items']} items, {st['bytes_buffered']} bytes, "
               f"oldest {age if age is not None else '-'} s")
    click.echo(f"pending annotation 待补录: {st['pending_annotation']}")
    click.echo(f"chain: seq {st['chain']['seq']} head {st['chain']['head']}")
    disk = st["disk"]
    click.echo(f"disk: {disk['free_bytes'] // 2**20} MiB free, reserve {disk['reserve_bytes'] // 2**20} MiB"
               + ("  磁盘空间不足 / LOW" if disk["low"] else ""))


# --- verify -----------------------------------------------------------------------------------
def _checkpoints(d: Path, ring: keys.KeyRing) -> dict[str, dict]:
    """DEVICE.json signed chain checkpoints, each verified with that device's trusted key."""
    from agent.wire import checkpoint as cpmod

    out = {}
    for p in sorted(d.glob("*.json")):
        kid = next((k for k, dev in ring.device_of.items() if dev == p.stem and k in ring.by_id), None)
        if kid is None:
            raise VerifyError(f"{p}: no trusted key of device {p.stem} to check its checkpoint (give --keys DIR)")
        try:
            cp = cpmod.parse(p.read_bytes(), ring.by_id[kid], device=p.stem)
        except EdgeError as exc:
            raise VerifyError(f"{p}: {exc}") from None
        out[p.stem] = {"count": cp.count, "head": cp.head, "annotations": cp.annotations, "time": cp.time}
    return out


@main.command()
@click.argument("path", metavar="PATH|ITEM_ID", type=click.Path(path_type=Path))
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="Trusted public key (PEM).")
@click.option("--keys", "keys_dir", type=click.Path(exists=True, file_okay=False),
              help="Directory of trusted DEVICE_ID.pub keys (and annotators/UNIT/NAME.pub annotator keys).")
@click.option("--chain", is_flag=True, help="PATH holds many items: verify each device's sequence too.")
@click.option("--partial-chain", is_flag=True, help="With --chain: accept a sequence that does not start at 1.")
@click.option("--checkpoints", "checkpoints_dir", type=click.Path(exists=True, file_okay=False),
              help="With --chain: directory of signed chain checkpoints DEVICE.json (the archive's ROOT/_checkpoints): "
                   "detects a removed last item or last annotation.")
@json_option
@pass_ctx
def verify(c: Ctx, path, key, keys_dir, chain, partial_chain, checkpoints_dir, as_json):
    """Check an item directory or an item of this device by its id (or with --chain a device's
    items) offline.

    Exit 0 when whole; 1 with the precise reason otherwise. Without --key/--keys the
    device's own public key from the config is trusted.

    \b
    Example:
      edge-agent verify dock-01-20261127090526-158fda
      edge-agent verify /var/lib/edge-agent/spool/items/ITEM --key device.pub
      edge-agent verify --chain ./archive/330100000000 --keys ./archive/keys --checkpoints ./archive/_checkpoints
    """
    if not path.exists():
        if chain or len(path.parts) != 1:
            raise EdgeError(f"{path}: no such file or directory")
        try:
            path = c.store.item_dir(str(path))
        except ConfigError as exc:
            raise EdgeError(f"{path}: no such file or directory, and no device config to look up an item "
                            f"of that id ({exc})") from None
        except NotFoundError:
            raise EdgeError(f"{path}: 不是文件，也不是本设备的证据 / neither a path nor an item id of this device "
                            "(edge-agent items list)") from None
    if not key and not keys_dir:
        try:
            key = str(c.store.pub_path)
        except EdgeError:
            raise EdgeError("no trusted key: give --key PUBKEY or --keys DIR") from None
    ring = keys.KeyRing.from_paths(key, keys_dir)
    if chain:
        cps = _checkpoints(Path(checkpoints_dir), ring) if checkpoints_dir else None
        rep = verify_chain(path, ring, allow_missing_start=partial_chain, checkpoints=cps)
        if as_json:
            emit_json({"ok": True, **rep.as_dict()})
        else:
            for dev, info in rep.devices.items():
                click.echo(f"ok: device {dev}: {info['items']} items, seq {info['first_seq']}..{info['head_seq']}, "
                           f"head {info['head_hash']}")
        return
    rep = verify_item(path, ring)
    try:
        c.store.audit.append("verify", rep.item_id, result="ok")
    except Exception:
        pass
    if as_json:
        emit_json({"ok": True, **rep.as_dict()})
    else:
        click.echo(f"ok: {rep.item_id} seq {rep.device_seq}: {rep.segments} segments, {rep.bytes} bytes, "
                   f"{rep.annotations} annotations, signature by device {rep.device_id}")


# --- audit ------------------------------------------------------------------------------------
@main.group()
def audit():
    """The hash-chained audit log of every action on evidence."""


@audit.command("list")
@click.option("--item", "item_id", help="Only entries about this item.")
@click.option("--action", help="Only this action (ingest, seal, export, view, annotate, purge, ...).")
@click.option("--limit", type=int, help="The newest N entries.")
@json_option
@pass_ctx
@role("auditor")
def audit_list(c: Ctx, item_id, action, limit, as_json):
    """List audit entries.

    \b
    Example:
      edge-agent audit list --item ITEM --json
    """
    rows = c.store.audit.entries(item_id=item_id, action=action, limit=limit)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['seq']:>6} {r['ts']} {r['actor']:<24} {r['action']:<9} {r['item_id'] or '-'} {r['detail']}")


@audit.command("verify")
@json_option
@pass_ctx
@role("auditor", "technician")
def audit_verify(c: Ctx, as_json):
    """Check the audit chain and its signed head; detects an edited or deleted entry.

    \b
    Example:
      edge-agent audit verify
    """
    n = c.store.verify_audit()
    if as_json:
        emit_json({"ok": True, "entries": n})
    else:
        click.echo(f"ok: {n} audit entries, chain and signed head intact")


@audit.command("export")
@click.option("--csv", "as_csv", is_flag=True, required=True, help="CSV output (the only format).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
@pass_ctx
@role("auditor")
def audit_export(c: Ctx, as_csv, output):
    """Export the whole audit log as CSV.

    \b
    Example:
      edge-agent audit export --csv -o audit.csv
    """
    text = c.store.audit.export_csv()
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


@main.command()
@json_option
@pass_ctx
@role("technician")
def recover(c: Ctx, as_json):
    """Recover after an unclean stop (the agent also does this when it starts).

    Sealed items not yet recorded are recorded, interrupted one-shot work is discarded,
    partial recorder copies are kept for resume; every action is audited.

    \b
    Example:
      edge-agent recover
    """
    actions = c.store.recover()
    if as_json:
        emit_json({"actions": actions})
        return
    for a in actions:
        click.echo(a)
    click.echo(f"{len(actions)} recovery action(s)")
