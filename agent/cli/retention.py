"""`edge-agent archive retention ...` and `archive hold ...`: retention by rule at the archive
(agent/archive/retention.py, docs/custody.md "Retention by rule")."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from agent.common.errors import EdgeError
from .archive import _open, archive, db_option, root_option
from .base import Ctx, emit_json, json_option, pass_ctx

CLASS_CHOICE = click.Choice(["normal", "important", "evidence"])


def _retention(c: Ctx, root):
    from ..archive.retention import Retention

    return Retention(_open(c, root))


def _actor(name: str | None) -> str:
    from ..archive.retention import actor_default

    return name or actor_default()


def _private(path: Path):
    from ..evidence import keys

    return keys.load_private(path)


def _until(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise EdgeError(f"日期无效 / --until {value!r}: a date (2027-06-30) or an ISO 8601 time") from None
    if t.tzinfo is None:
        t = t.astimezone()
    if len(value) == 10:  # a date: to the end of that day
        t += dt.timedelta(days=1) - dt.timedelta(seconds=1)
    return t


@archive.group("retention")
def retention():
    """Retention by rule: each item's class (normal ≥ 6 months, important, evidence = permanent),
    legal holds, what expires when, and the run that deletes only expired, unheld items."""


@retention.command("plan")
@db_option
@root_option
@click.option("--unit", help="Only this unit code.")
@click.option("--until", help="Only items whose retention ends by then (a date or ISO 8601 time).")
@json_option
@pass_ctx
def retention_plan(c: Ctx, root, unit, until, as_json):
    """List what would expire and when: every archived item that is not permanent, with its class,
    the end of its retention and its state (kept, due, held). Changes nothing.

    \b
    Example:
      edge-agent archive retention plan --root /srv/archive --until 2027-06-30
      edge-agent archive retention plan --root /srv/archive --unit 330100000000 --json
    """
    plan = _retention(c, root).plan(unit=unit, until=_until(until))
    if as_json:
        emit_json(plan)
        return
    click.echo(f"现在 / now: {plan['now']}" + (f"   截至 / until: {plan['until']}" if plan["until"] else ""))
    click.echo(f"{'到期 KEEP UNTIL':<26} {'状态 STATE':<10} {'类别 CLASS':<10} {'设备 DEVICE':<14} 资料 ITEM  案件 CASE")
    for d in plan["items"]:
        held = f" (保全 hold {','.join(map(str, d['holds']))})" if d["holds"] else ""
        click.echo(f"{d['keep_until']:<26} {d['state']:<10} {d['class']:<10} {d['device']:<14} {d['item']}  "
                   f"{d['case_number'] or '-'}{held}")
    click.echo(f"到期可删 / due: {plan['due']}   保全 / held: {plan['held']}   永久保存 / permanent: "
               f"{plan['permanent']}" + (f"   无法读取 / unreadable: {len(plan['unreadable'])}" if plan["unreadable"] else ""))


@retention.command("run")
@db_option
@root_option
@click.option("--unit", help="Only this unit code.")
@click.option("--as", "actor", help="Who runs it (named in each tombstone; default the login name).")
@json_option
@pass_ctx
def retention_run(c: Ctx, root, unit, actor, as_json):
    """Delete the archived items whose retention has ended and that no hold keeps. Each is checked
    again as it is deleted, recorded in the audit chain, and leaves a tombstone signed by the
    archive so the device chain still verifies.

    \b
    Example:
      edge-agent archive retention run --root /srv/archive --as records-office
    """
    out = _retention(c, root).run(actor=_actor(actor), unit=unit)
    if as_json:
        emit_json(out)
        return
    for d in out["deleted"]:
        click.echo(f"已删除 / deleted {d['device']}/{d['item']} ({d['class']}, kept until {d['keep_until']}): "
                   f"tombstone at {d['path']}")
    for d in out["kept"]:
        click.echo(f"保留 / kept {d['device']}/{d['item']}: {d['why']}")
    click.echo(f"删除 / deleted: {len(out['deleted'])}   保留 / kept: {len(out['kept'])}")


@retention.command("expired")
@db_option
@root_option
@json_option
@pass_ctx
def retention_expired(c: Ctx, root, as_json):
    """The items deleted by their retention rule: each tombstone's item, class, retention end, when
    and by whom (the tombstones themselves are in the item's folder, signed by the archive).

    \b
    Example:
      edge-agent archive retention expired --root /srv/archive
    """
    rows = _retention(c, root).tombstones()
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['expired_at']}  {r['device']}#{r['seq']}  {r['item']}  {r['class']}  kept until "
                   f"{r['keep_until']}  by {r['expired_by']}  case {r['case_number'] or '-'}")
    click.echo(f"已到期删除 / expired: {len(rows)}")


@retention.command("show")
@db_option
@root_option
@click.argument("item_id")
@json_option
@pass_ctx
def retention_show(c: Ctx, root, item_id, as_json):
    """One item's class, where it comes from, the end of its retention, its holds and every change.

    \b
    Example:
      edge-agent archive retention show dock-01-20261127090526-158fda --root /srv/archive
    """
    d = _retention(c, root).show(item_id)
    if as_json:
        emit_json(d)
        return
    click.echo(f"{d['item']} ({d['device']}, unit {d['unit']}, case {d['case_number'] or '-'})")
    click.echo(f"类别 / class: {d['class']} ({d['class_source']})   保存至 / keep until: "
               f"{d['keep_until'] or '永久 / permanent'}   状态 / state: {d['state']}")
    if d["holds"]:
        click.echo(f"保全 / holds: {', '.join(map(str, d['holds']))}")
    for ch in d["changes"]:
        click.echo(f"  change {ch['id']}: {ch['action']} {ch['from_class']} → {ch['class']} by {ch['actor']} "
                   f"at {ch['time']} ({ch['state']}{', approved by ' + ch['approver'] if ch['approver'] else ''}): "
                   f"{ch['reason']}")


@retention.command("custodian")
@db_option
@root_option
@click.argument("name")
@click.argument("pubkey", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@pass_ctx
def retention_custodian(c: Ctx, root, name, pubkey, as_json):
    """Enrol a custodian's public key (ROOT/keys/custodians/NAME.pub): custodians sign raising a
    class, asking to lower one, and approving another custodian's request.

    \b
    Example:
      edge-agent archive retention custodian zhao zhao.pub --root /srv/archive
    """
    r = _retention(c, root).enroll_custodian(name, pubkey.read_bytes())
    if as_json:
        emit_json(r)
        return
    click.echo(f"保管人 / custodian {r['custodian']}: key {r['key_id']} ({r['path']})")


def _change_options(f):
    f = click.option("--reason", required=True, help="Why (理由), kept in the signed record.")(f)
    f = click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="The custodian's private key (signs the record).")(f)
    f = click.option("--as", "actor", required=True, help="The custodian's enrolled name.")(f)
    f = click.option("--class", "to", required=True, type=CLASS_CHOICE, help="The new class.")(f)
    return f


@retention.command("raise")
@db_option
@root_option
@click.argument("item_id")
@_change_options
@json_option
@pass_ctx
def retention_raise(c: Ctx, root, item_id, to, actor, key_path, reason, as_json):
    """Raise an item's class (applied at once; signed by the custodian, audited).

    \b
    Example:
      edge-agent archive retention raise ITEM_ID --class evidence --as zhao --key zhao.key --reason "复议证据"
    """
    out = _retention(c, root).raise_class(item_id, to, actor=actor, private=_private(key_path), reason=reason)
    emit_json(out) if as_json else click.echo(f"变更 / change {out['change']}: {item_id} {out['from_class']} → {out['class']}")


@retention.command("lower")
@db_option
@root_option
@click.argument("item_id")
@_change_options
@json_option
@pass_ctx
def retention_lower(c: Ctx, root, item_id, to, actor, key_path, reason, as_json):
    """Ask to lower an item's class: nothing changes until a second custodian approves
    (`archive retention approve CHANGE`).

    \b
    Example:
      edge-agent archive retention lower ITEM_ID --class normal --as zhao --key zhao.key --reason "误标重点"
    """
    out = _retention(c, root).request_lower(item_id, to, actor=actor, private=_private(key_path), reason=reason)
    if as_json:
        emit_json(out)
        return
    click.echo(f"变更 / change {out['change']}: {item_id} {out['from_class']} → {out['class']} 待批准 / pending: "
               f"another custodian runs `edge-agent archive retention approve {out['change']} --as NAME --key KEY`")


@retention.command("approve")
@db_option
@root_option
@click.argument("change", type=int)
@click.option("--as", "actor", required=True, help="The approving custodian's enrolled name (not the requester).")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The approving custodian's private key.")
@json_option
@pass_ctx
def retention_approve(c: Ctx, root, change, actor, key_path, as_json):
    """Approve another custodian's request to lower a class; it is applied.

    \b
    Example:
      edge-agent archive retention approve 3 --as qian --key qian.key
    """
    out = _retention(c, root).approve(change, actor=actor, private=_private(key_path))
    if as_json:
        emit_json(out)
        return
    click.echo(f"变更已生效 / change {change}: {out['item']} {out['from_class']} → {out['class']} applied "
               f"(requested by {out['requester']}, approved by {out['approver']})")


@archive.group("hold")
def hold():
    """Legal holds (保全): an item or a whole case kept whatever its retention class."""


@hold.command("place")
@db_option
@root_option
@click.option("--item", "item_id", help="Hold this item.")
@click.option("--case", "case_number", help="Hold every item of this case number (案件编号).")
@click.option("--unit", help="With --case: only this unit's items.")
@click.option("--reason", required=True, help="Why (理由).")
@click.option("--as", "actor", help="Who places it (default the login name).")
@json_option
@pass_ctx
def hold_place(c: Ctx, root, item_id, case_number, unit, reason, actor, as_json):
    """Place a legal hold: nothing it covers is deleted until it is released.

    \b
    Example:
      edge-agent archive hold place --case "杭司罚〔2026〕12号" --reason "行政诉讼" --root /srv/archive
    """
    out = _retention(c, root).place_hold(item=item_id, case=case_number, unit=unit, reason=reason,
                                         actor=_actor(actor))
    emit_json(out) if as_json else click.echo(
        f"保全 / hold {out['hold']}: {out['item'] or 'case ' + out['case_number']} — {out['reason']}")


@hold.command("release")
@db_option
@root_option
@click.argument("hold_id", type=int)
@click.option("--reason", required=True, help="Why (理由).")
@click.option("--as", "actor", help="Who releases it (default the login name).")
@json_option
@pass_ctx
def hold_release(c: Ctx, root, hold_id, reason, actor, as_json):
    """Release a legal hold (the items then follow their retention class again).

    \b
    Example:
      edge-agent archive hold release 1 --reason "判决生效" --root /srv/archive
    """
    out = _retention(c, root).release_hold(hold_id, reason=reason, actor=_actor(actor))
    if as_json:
        emit_json(out)
        return
    click.echo(f"保全 / hold {out['hold']} released by {out['released_by']}: {out['reason']}")


@hold.command("list")
@db_option
@root_option
@click.option("--all", "all_", is_flag=True, help="Released holds too.")
@json_option
@pass_ctx
def hold_list(c: Ctx, root, all_, as_json):
    """The legal holds in force (with --all, released ones too).

    \b
    Example:
      edge-agent archive hold list --root /srv/archive
    """
    rows = _retention(c, root).holds(all_)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        what = r["item"] or f"case {r['case_number']}" + (f" (unit {r['unit']})" if r["unit"] else "")
        rel = f"  released {r['released_at']} by {r['released_by']}" if r["released_at"] else ""
        click.echo(f"{r['id']:>4}  {what}  placed {r['placed_at']} by {r['placed_by']}: {r['reason']}{rel}")
