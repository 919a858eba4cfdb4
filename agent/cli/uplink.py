"""`edge-agent run` (the long-running agent) and `edge-agent uplink status|retry|trust-archive`."""

from __future__ import annotations

from pathlib import Path

import click

from agent.common.errors import EdgeError
from . import main
from .base import Ctx, emit_json, emit_json_line, json_lines_option, json_option, pass_ctx


@main.command()
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="Override log.level from the config.")
@json_lines_option
@click.option("--status-every", type=click.FloatRange(0.5, 3600), default=10.0, show_default=True,
              help="With --json: seconds between status lines.")
@pass_ctx
def run(c: Ctx, log_level, as_json, status_every):
    """Run the agent: recover the store, start the uplink, health and the producer of the
    configured kind (dock or room), and drain sealed items to the archive until SIGTERM.

    \b
    Example:
      edge-agent --config /etc/edge-agent/agent.toml run
    """
    from agent.common.logsetup import setup_logging
    from agent.common.memory import keep_freed_memory
    from ..runtime import build_agent

    cfg = c.cfg
    fmt = {"text": "plain"}.get(cfg.log.format, cfg.log.format)
    setup_logging(log_level or cfg.log.level, fmt)
    keep_freed_memory()  # chunk-sized buffers reused, not faulted in again for every chunk
    store = c.store
    store.private_key  # fail now, with a clear message, when the device key is missing
    agent = build_agent(cfg)
    if as_json:  # JSON lines on stdout: started, status every --status-every s, stopped (logs stay on stderr)
        agent.run(events=lambda name, fields: emit_json_line(name, **fields), every=status_every)
    else:
        agent.run()


@main.group()
def uplink():
    """The uplink to the archive: live status and retry of refused items."""


def _yes_no(value, yes: str, no: str) -> str:
    """A flag for a person: the words, never Python's True/False/None."""
    return yes if value is True else no if value is False else "未知 unknown"


@uplink.command("status")
@json_option
@pass_ctx
def uplink_status(c: Ctx, as_json):
    """Items waiting, uploading, archived, refused; the running agent's connection figures.

    \b
    Example:
      edge-agent uplink status --json
    """
    from ..uplink.status import status_report

    out = status_report(c.store)
    counts, rejected, live = out["items_by_state"], out["rejected"], out["live"]
    if as_json:
        emit_json(out)
        return
    click.echo("资料 items: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "无 none"))
    if live and live.get("running") is False:
        click.echo(f"edge-agent 服务已停止 / the edge-agent service stopped at {live.get('time')}; "
                   f"上次运行归档 items archived in its last run: {live.get('items_archived')}")
    elif live:
        click.echo(f"代理 broker: {_yes_no(live.get('connected'), '已连接 connected', '未连接 disconnected')}  "
                   f"归档 archive: {_yes_no(live.get('archive_reachable'), '可达 reachable', '不可达 unreachable')}  "
                   f"重连 reconnects {live.get('reconnects')}  已发送 sent {live.get('bytes_sent')} bytes  "
                   f"{live.get('bytes_per_s')} B/s  (as of {live.get('time')})")
        if live.get("last_error"):
            click.echo(f"最近错误 / last error: {live['last_error']}")
    else:
        click.echo("edge-agent 服务未运行 / the edge-agent service is not running (no live status)")
    from ..uplink.trust import NO_KEY

    click.echo(f"已信任归档公钥 / archive keys pinned: {', '.join(out['archive_keys'])}" if out["archive_keys"] else NO_KEY)
    if live and live.get("answers_ignored"):
        click.echo(f"忽略的归档消息 / archive messages ignored (unsigned, foreign key, other item, replayed): "
                   f"{live['answers_ignored']}; 拒收的回执 / receipts refused: {live.get('receipts_refused', 0)}")
    for r in rejected:
        click.echo(f"被归档拒收 / refused by the archive: {r['id']}: {r['error']}")


@uplink.command("retry")
@click.argument("item_ids", nargs=-1)
@click.option("--all-rejected", is_flag=True, help="Every item the archive refused.")
@json_option
@pass_ctx
def uplink_retry(c: Ctx, item_ids, all_rejected, as_json):
    """Queue items the archive refused (e.g. before the device was enrolled) for upload again.

    \b
    Example:
      edge-agent uplink retry --all-rejected
    """
    store = c.store
    if all_rejected:
        item_ids = [r["id"] for r in store.items(state="rejected")]
    if not item_ids:
        raise EdgeError("请指定资料编号或 --all-rejected / name ITEM ids or give --all-rejected")
    for item_id in item_ids:
        store.requeue_rejected(item_id)
        if not as_json:
            click.echo(f"{item_id}: queued again / 已重新排队")
    if as_json:
        emit_json({"queued": list(item_ids)})


@uplink.command("trust-archive")
@click.argument("pubkey", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@pass_ctx
def uplink_trust_archive(c: Ctx, pubkey, as_json):
    """Pin an archive's public key (its ROOT/_archive/archive.pub): only receipts signed by a
    pinned key mark items archived, free spool copies or allow a recorder erase. Pin the keys of
    every archive this device sends to, and the next key before an archive rotates it.

    \b
    Example:
      edge-agent uplink trust-archive /media/usb/archive.pub
    """
    from ..uplink.trust import archive_trust, pin_archive_key

    kid, dest = pin_archive_key(c.cfg, pubkey)
    pinned = archive_trust(c.cfg).key_ids
    if as_json:
        emit_json({"key_id": kid, "path": str(dest), "pinned": pinned})
        return
    click.echo(f"已信任归档服务器公钥 / archive key pinned: {kid} ({dest}); pinned now: {', '.join(pinned)}")



@uplink.command("revoke-archive")
@click.argument("key_id")
@json_option
@pass_ctx
def uplink_revoke_archive(c: Ctx, key_id, as_json):
    """Stop trusting a pinned archive receiver key (KEY_ID as `archive receiver list` shows it,
    after `archive receiver revoke` at the centre): receipts, answers and status signed by it are
    ignored (a running `edge-agent run` takes it up within 10 s); the key cannot be pinned again.

    \b
    Example:
      edge-agent uplink revoke-archive 3f9a0c1d2e4b5a69
    """
    from ..uplink.trust import revoke_archive_key

    out = revoke_archive_key(c.cfg, key_id)
    if as_json:
        emit_json(out)
        return
    click.echo(f"已吊销归档公钥 / archive key revoked: {out['revoked']} ({out['path']}); "
               f"pinned now: {', '.join(out['pinned']) or 'none'}")
