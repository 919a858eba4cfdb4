"""`edge-agent policy show|trust` (the station) and `edge-agent archive policy key|publish|show`
(the centre): the signed unit policy (agent/wire/policy.py, docs/custody.md)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import click

from agent.common.errors import EdgeError
from . import main
from .archive import _cfg_or_none, _open, _root, archive, root_option
from .base import Ctx, emit_json, json_option, pass_ctx, role


# --- the station ---------------------------------------------------------------------------------
@main.group("policy")
def policy_group():
    """The unit policy in force on this station (roster, recorder assignments, rules), signed by
    the centre's policy key."""


@policy_group.command("show")
@json_option
@role("operator", "auditor", "technician")
@pass_ctx
def policy_show(c: Ctx, as_json):
    """Print the version in force, the key that signed it, when and where it came from, its
    rules and roster counts, and the last policy refused.

    \b
    Example:
      edge-agent policy show
      edge-agent policy show --json
    """
    from ..policy.keeper import in_force, keys_dir, last_refused, pinned_ring

    store = c.store
    rec, refused = in_force(store), last_refused(store)
    pinned = sorted(pinned_ring(c.cfg.data_dir, c.cfg.policy.keys).by_id)
    now = time.time()
    if rec is not None:
        doc = rec.pop("document")
        rec.pop("payload")
        rec["expired"] = _ts(rec["expires"]) <= now
        rec["rules"] = doc["rules"]
        rec["counts"] = {"units": len(doc["units"]), "officers": len(doc["officers"]),
                         "assignments": len(doc["assignments"])}
        ak = doc.get("archive_keys") or {}
        rec["archive_keys_revoked"] = [k["key_id"] for k in ak.get("revoke", [])]
        rec["archive_keys_pinned"] = [k["key_id"] for k in ak.get("pin", [])]
    out = {"unit": c.cfg.device.unit_code, "in_force": rec, "last_refused": refused, "pinned_keys": pinned,
           "keys_dir": str(keys_dir(c.cfg.data_dir))}
    if as_json:
        emit_json(out)
        return
    click.echo(f"单位 / unit: {out['unit']}")
    if rec is None:
        click.echo("执行中的策略 / policy in force: 无 / none (no signed policy received yet)")
    else:
        state = "已过期 / EXPIRED" if rec["expired"] else "有效 / valid"
        click.echo(f"执行中的策略版本 / policy version in force: {rec['version']}  ({state})")
        click.echo(f"签发密钥 / issuer key id: {rec['key_id']}")
        click.echo(f"签发时间 / issued: {rec['issued']}   有效至 / expires: {rec['expires']}")
        click.echo(f"应用时间 / applied at: {rec['applied_at']}")
        click.echo(f"来源 / came from: {rec['source']}")
        click.echo(f"摘要 / sha256: {rec['sha256']}")
        r = rec["rules"]
        click.echo(f"删除策略 / erase policy: {r['erase_policy'] or '(本站设置 / station setting)'}   "
                   f"上传时限 / upload deadline: {r['upload_deadline_h']} h   "
                   f"保存 / retention: normal {r['retention']['normal_days']} d, important "
                   f"{r['retention']['important_days'] or 'permanent'}"
                   + (f", evidence when the proof object matches {r['retention']['evidence_proof_pattern']}"
                      if r["retention"].get("evidence_proof_pattern") else ""))
        click.echo(f"案件编号格式 / case-number pattern: {r['case_number_pattern'] or '(any)'}")
        n = rec["counts"]
        click.echo(f"名册 / roster: {n['units']} unit(s), {n['officers']} officer(s), "
                   f"{n['assignments']} recorder assignment(s)")
        _echo_key_lists(rec)
    click.echo(f"已固定的策略公钥 / pinned policy keys: {', '.join(pinned) or '无 / none'}")
    if refused:
        click.echo(f"最近拒绝 / last refused: {refused['at']} ({refused['reason']}) {refused['message']} "
                   f"from {refused['source']}")


def _ts(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


@policy_group.command("trust")
@click.argument("pubkey", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@role("technician")
@pass_ctx
def policy_trust(c: Ctx, pubkey, as_json):
    """Pin the centre's policy key (its ROOT/_policy/policy.pub): only a policy signed by a pinned
    policy key is applied. `archive enroll --pin-to` does the same for a station set up at the
    archive.

    \b
    Example:
      edge-agent policy trust /media/usb/policy.pub
    """
    from ..policy.keeper import pin_key

    kid, dest = pin_key(c.cfg.data_dir, pubkey)
    c.store.audit.append("policy-key-pinned", None, actor="cli", key_id=kid, path=str(dest))
    if as_json:
        emit_json({"key_id": kid, "path": str(dest)})
        return
    click.echo(f"已信任策略公钥 / policy key pinned: {kid} ({dest})")


# --- the centre ----------------------------------------------------------------------------------
@archive.group("policy")
def archive_policy():
    """The units' signed policies: the policy key, publishing, what was published."""


@archive_policy.command("key")
@click.option("--new", "new", is_flag=True, help="Create the policy key pair (ROOT/_policy/policy.key, policy.pub).")
@root_option
@json_option
@pass_ctx
def archive_policy_key(c: Ctx, new, root, as_json):
    """Show (or create with --new) the policy key: a key of its own, apart from the archive's
    receipt key. Pin ROOT/_policy/policy.pub on every station.

    \b
    Example:
      edge-agent archive policy key --new --root /srv/archive
    """
    from ..archive import policy as ap

    r = _root(c, root)
    info = ap.new_key(r) if new else ap.key_info(r)
    if as_json:
        emit_json(info)
        return
    click.echo(f"策略签名公钥 / policy key: {info['key_id']} ({info['public']})")
    click.echo(f"请在各采集站固定 / pin on every station: edge-agent policy trust {info['public']}")


@archive_policy.command("publish")
@click.option("--unit", required=True, help="Unit code (执法单位代码) the policy is for.")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path),
              help="policy.toml or policy.json: [rules], [[units]], [[officers]], [[assignments]] "
                   "(default: the content last published for the unit, signed again as the next version).")
@click.option("--version", "version", type=click.IntRange(1), help="Version number (default: the last one + 1).")
@click.option("--expires-days", type=click.IntRange(1, 3660), default=30, show_default=True,
              help="Stations refuse it after this many days; publish again before.")
@click.option("--broker", help="MQTT broker HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (default mqtt.host:mqtt.port).")
@click.option("--prefix", help="Topic prefix (default mqtt.topic_prefix or edge).")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False), help="TLS: CA that signed the broker's certificate.")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), help="TLS: client certificate.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS: client key.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the broker.")
@root_option
@json_option
@pass_ctx
def archive_policy_publish(c: Ctx, unit, path, version, expires_days, broker, prefix, cafile, certfile, keyfile,
                           timeout, root, as_json):
    """Sign the unit's policy with the policy key as the next version and publish it retained on
    P/unit/UNIT/policy (MQTT credentials from the config's [mqtt]: the archive identity). The
    document carries the root's archive trust list: every receiver key revoked with `archive
    receiver revoke` (each station revokes it within seconds) and every enrolled receiver key,
    endorsed by the archive key. Without --file, the content last published is signed again
    (after a receiver revocation). Publishes from one root, and on one host with one login, take
    turns (the second says it is waiting): each signs its own next version.

    \b
    Example:
      edge-agent --config archive.toml archive policy publish --unit 330100000000 \\
          --file policy.toml --root /srv/archive --broker 127.0.0.1:1883
      edge-agent --config archive.toml archive policy publish --unit 330100000000 --root /srv/archive
    """
    from ..archive import policy as ap
    from agent.wire.client import settings_from_config
    from agent.wire.topics import Topics

    cfg = _cfg_or_none(c)
    store = _open(c, root)
    if path is not None:
        content = ap.read_content(path)
    else:
        last = ap.last_published(store.root, unit)
        if last is None:
            raise EdgeError(f"单位 {unit} 尚未发布策略，请用 --file 指定 / no policy published for unit {unit} yet: "
                            "give --file")
        content = ap.content_of(last[0])
    try:
        topic = Topics(prefix or (cfg.mqtt.topic_prefix if cfg else "edge")).unit_policy(unit)
    except ValueError as exc:
        raise EdgeError(f"--unit/--prefix: {exc}") from None
    settings = settings_from_config(cfg.mqtt if cfg else None, f"policy-{uuid.uuid4().hex[:12]}", broker=broker,
                                    cafile=cafile, certfile=certfile, keyfile=keyfile)
    from agent.wire.policy import digest
    from agent.wire.session import file_lock, login_lock

    _refuse_a_receivers_certificate(settings, store.root)

    def waiting(what: str):
        return lambda: click.echo(f"等待另一个策略发布结束 / waiting: another `archive policy publish` {what}", err=True)

    # publishes take turns: from one root (else two sign the same next version, and the broker may keep
    # the older), and on this host with one login (one login, one session: the second would end the first)
    with file_lock(ap.publish_lock_path(store.root), timeout=timeout + 60,
                   waiting=waiting(f"is signing from {store.root}")) as held:
        if not held:
            raise EdgeError(f"策略发布锁不可用 / cannot lock {ap.publish_lock_path(store.root)}: another publish from "
                            "this root is still running (or the file is not ours); nothing was signed")
        pub = ap.publish_settings(settings)
        with login_lock(pub, timeout=timeout + 60,
                        waiting=waiting(f"on this host is logged in as {pub.username or '(no user name)'!r}")):
            doc, payload = ap.sign_next(store.root, unit, content, version=version, expires_days=expires_days)
            ap.publish(settings, topic, payload, timeout=timeout)
        store.audit.append("policy-publish", None, actor="cli", unit=unit, version=doc.version, key_id=doc.key_id,
                           sha256=digest(payload), topic=topic, expires=doc.expires, officers=len(doc.officers),
                           assignments=len(doc.assignments), **_key_lists(doc))
    out = {"unit": unit, "version": doc.version, "key_id": doc.key_id, "issued": doc.issued, "expires": doc.expires,
           "topic": topic, "sha256": digest(payload), "bytes": len(payload), **_key_lists(doc)}
    if as_json:
        emit_json(out)
        return
    click.echo(f"策略已发布 / policy published: unit {unit} version {doc.version} on {topic} (retained), "
               f"key {doc.key_id}, expires {doc.expires}")
    _echo_key_lists(out)


def _refuse_a_receivers_certificate(settings, root) -> None:
    """With a client certificate and no user name the broker knows a connection by the certificate's
    CN (certificate identities): the CN of a receiver (``archive`` or one enrolled at ``root``) would
    log in as that receiver and end its session (one login, one session). Refused before anything
    is signed; a certificate of its own (CN ``NAME.policy``) writes the units' policies only."""
    from ..archive import receivers as ar
    from agent.wire.broker_auth import DEFAULT_SERVICES, POLICY
    from agent.wire.claim import certificate_login
    from agent.wire.client import instance_user

    tls = settings.tls
    if settings.username or tls is None or not tls.certfile:
        return
    cn = certificate_login(tls.certfile)
    if cn and cn in {DEFAULT_SERVICES["archive"], *ar.enrolled(root)}:
        raise EdgeError(
            f"证书 {tls.certfile} 是接收端 {cn!r} 的登录，用它发布会挤掉该接收端的会话；请用专用证书（CN "
            f"{instance_user(cn, POLICY)!r}）/ the certificate {tls.certfile} (CN {cn!r}) is the login of archive "
            f"receiver {cn!r}: the broker keeps one session per login, so publishing with it would end that "
            f"receiver's session. Use a certificate of its own, CN {instance_user(cn, POLICY)!r} (allowed to write "
            "the units' policies only); nothing was signed")


def _key_lists(doc) -> dict:
    ak = doc.archive_keys
    return {"archive_keys_revoked": [k.key_id for k in ak.revoke] if ak else [],
            "archive_keys_pinned": [k.key_id for k in ak.pin] if ak else []}


def _echo_key_lists(d: dict) -> None:
    click.echo(f"归档公钥 / archive keys: 吊销 / revoke {', '.join(d['archive_keys_revoked']) or '-'}; "
               f"固定 / pin {', '.join(d['archive_keys_pinned']) or '-'}")


@archive_policy.command("show")
@click.option("--unit", required=True, help="Unit code.")
@root_option
@json_option
@pass_ctx
def archive_policy_show(c: Ctx, unit, root, as_json):
    """The last policy signed for a unit (ROOT/_policy/published/UNIT.json).

    \b
    Example:
      edge-agent archive policy show --unit 330100000000 --root /srv/archive
    """
    from ..archive import policy as ap

    last = ap.last_published(_root(c, root), unit)
    if last is None:
        raise EdgeError(f"单位 {unit} 尚未发布策略 / no policy published for unit {unit}")
    doc, payload = last
    if as_json:
        emit_json(json.loads(payload))
        return
    click.echo(f"单位 / unit {doc.unit}  策略版本 / policy version {doc.version}  签发密钥 / issuer key id {doc.key_id}")
    click.echo(f"签发时间 / issued: {doc.issued}   有效至 / expires: {doc.expires}")
    click.echo(f"名册 / roster: {len(doc.officers)} officer(s), {len(doc.assignments)} recorder assignment(s)   "
               f"删除策略 / erase policy: {doc.rules.erase_policy or '(本站设置 / station setting)'}")
    _echo_key_lists(_key_lists(doc))
