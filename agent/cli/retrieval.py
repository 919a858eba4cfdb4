"""`edge-agent archive user add|list`, `archive request`, `archive approve`, `archive requests`,
`archive export`:
approved retrieval at the archive (agent/archive/approval.py; docs/custody.md)."""

from __future__ import annotations

from pathlib import Path

import click

from .archive import _open, archive, db_option, root_option
from .base import Ctx, emit_json, json_option, pass_ctx


def _approvals(c: Ctx, root):
    from ..archive.approval import Approvals

    return Approvals(_open(c, root))


def _private(path: Path):
    from ..evidence import keys

    return keys.load_private(path)


@archive.group("user")
def archive_user():
    """Users who request and approve retrievals (each with an Ed25519 key of their own)."""


@archive_user.command("add")
@db_option
@root_option
@click.argument("name")
@click.argument("pubkey", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--role", "roles", multiple=True, required=True, type=click.Choice(["requester", "approver"]),
              help="requester: asks for exports and views; approver: approves another user's request (repeatable).")
@json_option
@pass_ctx
def user_add(c: Ctx, root, name, pubkey, roles, as_json):
    """Enrol NAME with the public key PUBKEY (`edge-agent command keygen NAME` makes a pair) and
    roles; audited.

    \b
    Example:
      edge-agent archive user add wang wang.pub --role requester --root /srv/archive
      edge-agent archive user add li li.pub --role approver --root /srv/archive
    """
    out = _approvals(c, root).add_user(name, pubkey.read_bytes(), list(roles))
    if as_json:
        emit_json(out)
        return
    click.echo(f"调阅用户 / user {out['user']}: key {out['key_id']}, roles {', '.join(out['roles'])}")


@archive_user.command("list")
@db_option
@root_option
@json_option
@pass_ctx
def user_list(c: Ctx, root, as_json):
    """The enrolled users, their key ids and roles.

    \b
    Example:
      edge-agent archive user list --root /srv/archive
    """
    rows = _approvals(c, root).users()
    if as_json:
        emit_json(rows)
        return
    for u in rows:
        click.echo(f"{u['name']}  key {u['key_id']}  {', '.join(u['roles'])}  since {u['enrolled_at']}")


@archive.command("request")
@db_option
@root_option
@click.option("--case", "case_number", help="The case whose items are to be exported.")
@click.option("--item", "item_id", help="Instead: one item.")
@click.option("--reason", required=True, help="Why (理由): kept in the signed request and the audit log.")
@click.option("--as", "actor", required=True, help="Your enrolled user name.")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Your private key (signs the request).")
@json_option
@pass_ctx
def archive_request(c: Ctx, root, case_number, item_id, reason, actor, key_path, as_json):
    """Ask to export a case or an item, with a reason; signed with your key, audited. A second
    user with the approver role approves it (`archive approve REQUEST`); then `archive export
    ... --request REQUEST` runs once. (Viewing an item needs only its reason: `archive show
    ITEM --reason`.)

    \b
    Example:
      edge-agent archive request --case "杭西执罚〔2026〕第0125号" --reason "法院调取证据" --as wang --key wang.key --root /srv/archive
    """
    out = _approvals(c, root).request(purpose="export", case=case_number, item=item_id, reason=reason, actor=actor,
                                      private=_private(key_path))
    if as_json:
        emit_json(out)
        return
    click.echo(f"申请 / request {out['request']}: export {case_number or item_id} ({len(out['items'])} item(s)), "
               + ("待审批 / waiting for a second user's approval: "
                  f"edge-agent archive approve {out['request']} --as NAME --key KEY" if out["approval_needed"]
                  else "单位策略不要求审批 / the unit policy needs no approval"))


@archive.command("approve")
@db_option
@root_option
@click.argument("request_id", type=int)
@click.option("--as", "actor", required=True, help="Your enrolled user name (approver role; not the requester).")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Your private key (signs the approval).")
@json_option
@pass_ctx
def archive_approve(c: Ctx, root, request_id, actor, key_path, as_json):
    """Approve another user's request (never your own); signed with your key, audited.

    \b
    Example:
      edge-agent archive approve 1 --as li --key li.key --root /srv/archive
    """
    out = _approvals(c, root).approve(request_id, actor=actor, private=_private(key_path))
    if as_json:
        emit_json(out)
        return
    click.echo(f"已批准 / approved: request {request_id} by {out['requester']}, approved by {actor}")


@archive.command("requests")
@db_option
@root_option
@click.option("--state", type=click.Choice(["pending", "approved", "used"]), help="Only requests in this state.")
@json_option
@pass_ctx
def archive_requests(c: Ctx, root, state, as_json):
    """Retrieval requests: who asked, why, who approved, when used.

    \b
    Example:
      edge-agent archive requests --state pending --root /srv/archive
    """
    rows = _approvals(c, root).requests(state)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['id']:>4} {r['state']:<8} {r['purpose']:<6} {r['case_number'] or r['item']}  by {r['requester']} "
                   f"({r['requested_at']})  approved by {r['approver'] or '-'}  reason: {r['reason']}")


@archive.command("export")
@db_option
@click.argument("item_id", required=False)
@click.argument("dest", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--case", "case_number", help="Export every item of this case as a court bundle (with --bundle).")
@click.option("--bundle", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the court bundle: a new or empty folder; DEST.zip is written beside it.")
@click.option("--request", "request_id", type=int,
              help="The approved request (`archive request`, `archive approve`) this export runs on.")
@root_option
@json_option
@pass_ctx
def archive_export(c: Ctx, item_id, dest, case_number, bundle, request_id, root, as_json):
    """Export on an approved request: the court bundle of a case (--case NO --bundle DEST: items,
    manifests, annotations, keys, enrolment, report.html, verify.py, signed index, DEST.zip), or
    one item verified and copied to DEST/ITEM_ID with the device's public key. Refused without a
    request approved by a second user (unless the unit's policy says export_approval = false);
    the audit chain records requester, approver, reason and what left.

    \b
    Example:
      edge-agent archive export --case "杭西执罚〔2026〕第0125号" --bundle /media/usb/case-0125 --request 1 --root /srv/archive
      edge-agent archive export dock-01-20261127090000-a1b2c3 /media/usb --request 2 --root /srv/archive
    """
    from ..archive.approval import approved_export

    if case_number is None and bundle is not None or case_number is not None and (item_id or dest):
        raise click.UsageError("--case goes with --bundle, ITEM_ID with DEST / --case 与 --bundle 同用")
    store = _open(c, root)
    out = approved_export(store, request_id, case=case_number, bundle=bundle, item=item_id, dest=dest)
    if as_json:
        emit_json(out)
        return
    if case_number is None:
        click.echo(out["path"])
        return
    click.echo(f"已导出案件 / case exported: {case_number}: {len(out['items'])} item(s), request {out['request']} by "
               f"{out['requester']}, approved by {out['approver'] or '-'}")
    click.echo(f"  {out['bundle']}  ({out['files']} files; report.html, verify.py)")
    click.echo(f"  {out['zip']}  sha256 {out['zip_sha256']}")
