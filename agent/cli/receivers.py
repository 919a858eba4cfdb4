"""`edge-agent archive receiver add|list|revoke`: receivers enrolled at the centre, each with its
own signing key and broker identity (agent/archive/receivers.py; docs/security.md)."""

from __future__ import annotations

from pathlib import Path

import click

from .archive import _open, archive, root_option
from .base import Ctx, emit_json, json_option, pass_ctx


@archive.group("receiver")
def receiver():
    """Archive receivers with keys of their own: enrol, list, revoke."""


def _refresh_broker(c: Ctx, root, broker_dir: Path | None, as_json: bool) -> None:
    if broker_dir is None:
        return
    from .broker import write_broker_config

    store = _open(c, root)
    try:
        write_broker_config(c, store, broker_dir, refresh=True, quiet=as_json)
    finally:
        store.close()


broker_dir_option = click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                                 help="Then refresh the broker identities in this directory (made by "
                                      "`archive broker-config`); reload the broker afterwards.")


@receiver.command("add")
@click.argument("receiver_id")
@click.option("--pub", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Register this public key (made on the receiver's host) instead of making a pair here.")
@broker_dir_option
@root_option
@json_option
@pass_ctx
def receiver_add(c: Ctx, receiver_id, pub, broker_dir, root, as_json):
    """Enrol RECEIVER_ID (its MQTT user name and client id) with a signing key of its own:
    ROOT/_archive/receivers/RECEIVER_ID.key and .pub. Move the .key to that receiver's host
    (`archive serve --client-id RECEIVER_ID --receiver-key PATH`). Devices enrolled from now on
    pin it (`archive enroll --pin-to`); devices enrolled before pin it with `edge-agent uplink
    trust-archive RECEIVER_ID.pub`. Audited.

    \b
    Example:
      edge-agent archive receiver add archive-2 --root /srv/archive --broker-dir /root/broker
    """
    from ..archive import receivers

    store = _open(c, root, create=True)
    try:
        out = receivers.add(store.root, receiver_id, pub)
        store.audit.append("receiver-add", None, receiver=receiver_id, key_id=out["key_id"])
    finally:
        store.close()
    _refresh_broker(c, root, broker_dir, as_json)
    if as_json:
        emit_json(out)
        return
    click.echo(f"接收端已登记 / receiver enrolled: {receiver_id}, key id {out['key_id']} ({out['public']})")
    if out["private"]:
        click.echo(f"  私钥 / private key: {out['private']} -> 移到该接收端主机 / move it to that receiver's host")


@receiver.command("list")
@root_option
@json_option
@pass_ctx
def receiver_list(c: Ctx, root, as_json):
    """Every enrolled receiver and every revoked receiver key.

    \b
    Example:
      edge-agent archive receiver list --root /srv/archive
    """
    from ..archive import receivers

    store = _open(c, root)
    try:
        rows = receivers.listing(store.root)
    finally:
        store.close()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("没有登记的接收端 / no receivers enrolled (the root key signs)")
    for r in rows:
        state = "已登记 / enrolled" if r["state"] == "enrolled" else "已吊销 / revoked"
        here = ", private key here" if r["private_key_here"] else ""
        click.echo(f"{r['receiver']:<24} {r['key_id']}  {state}{here}")


@receiver.command("revoke")
@click.argument("receiver_id")
@broker_dir_option
@root_option
@json_option
@pass_ctx
def receiver_revoke(c: Ctx, receiver_id, broker_dir, root, as_json):
    """Revoke RECEIVER_ID: its key signs nothing any more (a receiver started with it refuses
    to run), no later enrolment pins it, and with --broker-dir its broker identity is dropped.
    The next `archive policy publish` of each unit carries the revocation to every station of the
    unit (applied within seconds, no visit); the command prints it for each unit published so
    far. A station without the unit policy: `edge-agent uplink revoke-archive KEY_ID`. Audited.

    \b
    Example:
      edge-agent archive receiver revoke archive-2 --root /srv/archive --broker-dir /root/broker
    """
    from ..archive import policy as ap, receivers

    store = _open(c, root)
    try:
        out = receivers.revoke(store.root, receiver_id)
        store.audit.append("receiver-revoke", None, receiver=receiver_id, key_id=out["key_id"])
        units = ap.published_units(store.root)
    finally:
        store.close()
    _refresh_broker(c, root, broker_dir, as_json)
    out["publish"] = [f"edge-agent archive policy publish --unit {u} --root {store.root}" for u in units]
    out["on_each_device"] = f"edge-agent uplink revoke-archive {out['key_id']}"
    if as_json:
        emit_json(out)
        return
    click.echo(f"接收端已吊销 / receiver revoked: {receiver_id}, key id {out['key_id']}")
    for cmd in out["publish"]:
        click.echo(f"  发布策略，各站数秒内吊销 / publish the policy, its stations revoke within seconds: {cmd}")
    click.echo(f"  未接收单位策略的设备 / a device without the unit policy: {out['on_each_device']}")
