"""`edge-agent archive chain`: a device's chain history and its verdict (docs/custody.md "Chain
history"); `archive checkpoint`: the archive-wide signed checkpoint now."""

from __future__ import annotations

import click

from .archive import _open, archive, db_option, root_option
from .base import Ctx, emit_json, json_option, pass_ctx


@archive.command("chain")
@db_option
@click.argument("device_id")
@root_option
@json_option
@pass_ctx
def archive_chain(c: Ctx, device_id, root, as_json):
    """Every signed chain checkpoint DEVICE_ID published, what the archive holds, and the verdict:
    fork (two heads for one chain length), rollback (a checkpoint going back), gap (items announced
    and not received within archive.chain_gap_h), silent (no new checkpoint for
    archive.chain_silent_h). Exit status 1 when an alarm is raised. Audited.

    \b
    Example:
      edge-agent archive chain dock-01 --root /srv/archive
      edge-agent archive chain dock-01 --root /srv/archive --json
    """
    store = _open(c, root)
    rep = store.chain_report(device_id)
    if as_json:
        emit_json(rep)
    else:
        click.echo(f"device {rep['device']} unit {rep['unit']} key {rep['key_id']}: {len(rep['checkpoints'])} "
                   f"checkpoint(s); announced {rep['announced']} item(s), held {rep['held']}, missing "
                   f"{_seqs(rep['missing'])}")
        for h in rep["checkpoints"]:
            head = (h["head"] or "-")[:16]
            again = f" (+{h['repeats']} again)" if h["repeats"] else ""
            flag = f"  ! {h['finding']}" if h["finding"] else ""
            click.echo(f"  {h['received_at']}  signed {h['time']}  count {h['count']:>5}  head {head}  "
                       f"annotations {h['annotations'] if h['annotations'] is not None else '-'}{again}{flag}")
        if rep["verdict"] == "ok":
            click.echo("verdict: ok / 链完整")
        for a in rep["alarms"]:
            click.echo(f"ALARM {a['code']} {a['title']} since {a['since']}: {a['detail']}")
    if rep["verdict"] != "ok":
        raise SystemExit(1)


def _seqs(seqs: list[int]) -> str:
    if not seqs:
        return "none"
    return ", ".join(map(str, seqs[:20])) + (f" … ({len(seqs)} in all)" if len(seqs) > 20 else "")


@archive.command("checkpoint")
@db_option
@root_option
@json_option
@pass_ctx
def archive_checkpoint(c: Ctx, root, as_json):
    """Sign a checkpoint over the whole store now (the Merkle root of every item and tombstone the
    archive ever stored; `archive serve` makes one every archive.checkpoint_every_h), keep it under
    ROOT/_merkle, and print it. Keep a copy outside the archive for `archive audit OLD_CHECKPOINT`.

    \b
    Example:
      edge-agent archive checkpoint --root /srv/archive > /media/usb/archive-checkpoint.json
    """
    import json

    store = _open(c, root)
    cp = store.make_checkpoint()
    if as_json:
        emit_json(cp)
    else:
        click.echo(json.dumps(cp, ensure_ascii=False, sort_keys=True))
