"""Checking evidence: verify (an item, a directory, a device's chain) and audit list|verify|export."""

from __future__ import annotations

import json
from pathlib import Path

import click

from agent.common.errors import ConfigError, EdgeError, NotFoundError, VerifyError
from ..evidence import keys
from ..evidence.verify import verify_chain, verify_item
from . import main
from .base import Ctx, echo_audit, emit_json, json_option, pass_ctx, role


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
                gone = (f" ({info['expired']} expired: tombstone signed by the archive / 已按保存期限删除)"
                        if info.get("expired") else "")
                click.echo(f"ok: device {dev}: {info['items']} items{gone}, seq {info['first_seq']}..{info['head_seq']}, "
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
    echo_audit(rows, as_json)


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
@click.option("--csv", "as_csv", is_flag=True, help="CSV output.")
@json_option
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
@pass_ctx
@role("auditor")
def audit_export(c: Ctx, as_csv, as_json, output):
    """Export the whole audit log as CSV (--csv) or JSON (--json); one of the two.

    \b
    Example:
      edge-agent audit export --csv -o audit.csv
      edge-agent audit export --json -o audit.json
    """
    if as_csv == as_json:
        raise click.UsageError("give one of --csv and --json / 请指定 --csv 或 --json 之一")
    if as_json:
        text = json.dumps(c.store.audit.entries(), ensure_ascii=False, indent=2, sort_keys=True, default=str) + "\n"
    else:
        text = c.store.audit.export_csv()
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)
