"""`edge-agent archive chain`: a device's chain history and its verdict (docs/custody.md "Chain
history"); `archive checkpoint`: the archive-wide signed checkpoint now; `archive audit-log`: a
station's audit log at the centre, each erase with its receipt."""

from __future__ import annotations

import click

from .archive import _open, archive, db_option, root_option
from .base import Ctx, emit_json, json_option, pass_ctx


@archive.command("chain")
@db_option
@click.argument("device_id")
@root_option
@click.option("--acknowledge", "ack", type=click.Choice(["chain_fork", "chain_rollback", "station_audit"]),
              help="Clear this raised alarm after looking into it (needs --reason; audited; the history stays).")
@click.option("--reason", help="With --acknowledge: what was found and done.")
@json_option
@pass_ctx
def archive_chain(c: Ctx, device_id, root, ack, reason, as_json):
    """Every signed chain checkpoint DEVICE_ID published, what the archive holds, and the verdict:
    fork (two heads for one chain length), rollback (a checkpoint going back), gap (items announced
    and not received within archive.chain_gap_h), silent (no new checkpoint for
    archive.chain_silent_h). Exit status 1 when an alarm is raised. Audited.

    \b
    Example:
      edge-agent archive chain dock-01 --root /srv/archive
      edge-agent archive chain dock-01 --root /srv/archive --json
      edge-agent archive chain dock-01 --root /srv/archive --acknowledge chain_fork --reason "…"
    """
    store = _open(c, root)
    if ack:
        store.acknowledge_chain_alarm(device_id, ack, reason or "")
    rep = store.chain_report(device_id)
    if as_json:
        emit_json(rep)
    else:
        click.echo(f"设备 / device {rep['device']} unit {rep['unit']} key {rep['key_id']}: {len(rep['checkpoints'])} "
                   f"checkpoint(s); announced {rep['announced']} item(s), held {rep['held']}, missing "
                   f"{_seqs(rep['missing'])}")
        for h in rep["checkpoints"]:
            head = (h["head"] or "-")[:16]
            again = f" (+{h['repeats']} again)" if h["repeats"] else ""
            flag = f"  ! {h['finding']}" if h["finding"] else ""
            click.echo(f"  {h['received_at']}  signed {h['time']}  count {h['count']:>5}  head {head}  "
                       f"annotations {h['annotations'] if h['annotations'] is not None else '-'}{again}{flag}")
        for a in rep["cleared"]:
            click.echo(f"已清除 / cleared {a['code']} {a['title']} (raised {a['since']}, cleared {a['cleared_at']})")
        if rep["verdict"] == "ok":
            click.echo("链完整 / verdict: ok")
        for a in rep["alarms"]:
            click.echo(f"告警 / ALARM {a['code']} {a['title']} since {a['since']}: {a['detail']}")
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


@archive.command("audit-log")
@db_option
@click.argument("device_id")
@root_option
@click.option("--erasures", is_flag=True, help="Only the erases of recorder files, each with the receipt that allowed it.")
@json_option
@pass_ctx
def archive_audit_log(c: Ctx, device_id, root, erasures, as_json):
    """The station's own audit log as received by the archive (sealed and uploaded like evidence,
    its hash chain checked here), and every erase of a recorder file matched to the archive's
    signed receipt that allowed it. Exit status 1 when an erase has no valid receipt or the log is
    broken. Audited.

    \b
    Example:
      edge-agent archive audit-log dock-01 --root /srv/archive --erasures
    """
    store = _open(c, root)
    rep = store.station_audit_report(device_id)
    if as_json:
        emit_json(rep)
    else:
        click.echo(f"站点 / station {rep['device']} unit {rep['unit']}: {rep['received']} audit entries received, "
                   f"missing {_seqs(rep['missing'])}; {rep['erased']} erase(s), {rep['unmatched']} without a valid receipt")
        if rep["broken"]:
            click.echo(f"告警 / ALARM station_audit since {rep['broken']['since']}: {rep['broken']['detail']}")
        if not erasures:
            for e in rep["entries"]:
                click.echo(f"  {e['seq']:>6} {e['ts']} {e['actor']:<14} {e['action']:<9} {e['item_id'] or '-'}")
        for e in rep["erasures"]:
            rc = e["receipt"]
            click.echo(f"删除 / erase #{e['seq']} {e['ts']} {e['item']} file {e['file']} recorder {e['serial']}: {e['result']}")
            if rc:
                click.echo(f"    回执 / receipt: archive {rc['archive']} key {rc['key_id']} stored {rc['stored_at']} manifest "
                           f"{(rc['manifest_hash'] or '')[:16]}… (station entry #{rc['logged_at_seq']}) "
                           f"{'签名有效 / signature ok' if rc['verified'] else '签名无效 / SIGNATURE NOT VALID'}")
            for p in e["problems"]:
                click.echo(f"    无有效回执 / PROBLEM: {p}")
        click.echo("审计日志完整，每次删除均有回执 / verdict: ok" if rep["verdict"] == "ok" else "审计未通过 / verdict: ALARM")
    if rep["verdict"] != "ok":
        raise SystemExit(1)
