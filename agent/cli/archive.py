"""`edge-agent archive serve|enroll|list|show|export|audit`: the central archive.

Every retrieval (list, show, export) is written to the archive's own hash-chained audit log
(调阅监督); `archive audit` shows and checks it.
"""

from __future__ import annotations


from pathlib import Path

import click

from agent.common.errors import ConfigError, EdgeError, SessionTakenOver
from . import main
from .base import Ctx, db_upgrade, echo_audit, emit_json, emit_json_line, json_lines_option, json_option, pass_ctx


def _cfg_or_none(c: Ctx):
    try:
        return c.cfg
    except ConfigError:
        return None


def _root(c: Ctx, root: str | None) -> str:
    if root:
        return root
    cfg = _cfg_or_none(c)
    if cfg is None:
        raise EdgeError("no archive root: give --root DIR (or archive.root in the config)")
    return cfg.archive.root


def _db(c: Ctx) -> str | None:
    """--db (env EDGE_ARCHIVE_DB, also for the commands without --db that open the archive: broker,
    policy), else archive.db from the config, else None (ROOT/archive.db)."""
    from ..archive.registry import check_db

    import os

    db = click.get_current_context().meta.get("archive_db") or os.environ.get("EDGE_ARCHIVE_DB")
    if not db:
        cfg = _cfg_or_none(c)
        db = (cfg.archive.db or None) if cfg is not None else None
    return check_db(db)


def _open(c: Ctx, root: str | None, create: bool = False):
    from ..archive.storage import ArchiveStore

    return ArchiveStore(_root(c, root), create=create, db=_db(c))


root_option = click.option("--root", envvar="EDGE_ARCHIVE_ROOT", type=click.Path(file_okay=False),
                           help="Archive root (default archive.root from the config; env EDGE_ARCHIVE_ROOT).")


db_option = click.option(
    "--db", envvar="EDGE_ARCHIVE_DB", expose_value=False, is_eager=True,
    callback=lambda ctx, _p, v: ctx.meta.__setitem__("archive_db", v),
    help="The archive's index: postgresql://USER@HOST:PORT/NAME (receivers on several hosts) or a SQLite "
         "file (default archive.db from the config, else ROOT/archive.db; env EDGE_ARCHIVE_DB).")


@main.group()
def archive():
    """The central archive: receive items over MQTT, enrol devices, retrieve (audited)."""


@archive.command("serve")
@db_option
@root_option
@click.option("--broker", help="MQTT broker HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (default mqtt.host:mqtt.port from the config).")
@click.option("--prefix", help="Topic prefix (default mqtt.topic_prefix, 'edge').")
@click.option("--share", help="Shared-subscription group: several receivers split the work ($share/GROUP/...).")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False), help="TLS: CA that signed the broker's certificate.")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), help="TLS: this receiver's client certificate.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS: its private key.")
@click.option("--client-id", help="MQTT client id / receiver id (default archive-HOST-RANDOM).")
@click.option("--max-item-mb", type=click.IntRange(min=1), help="Largest item accepted (MiB).")
@click.option("--max-manifest-kb", type=click.IntRange(min=4), help="Largest manifest accepted (KiB).")
@click.option("--min-free-mb", type=click.IntRange(min=0),
              help="Disk watermark: refuse new transfers below this free space (MiB; default archive.min_free_mb, 2048; 0 = off).")
@click.option("--receive-maximum", type=click.IntRange(1, 65535),
              help="Messages the broker may have in flight to this receiver (MQTT v5 Receive Maximum).")
@click.option("--receiver-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Signing key of this enrolled receiver (`archive receiver add`; default "
                   "ROOT/_archive/receivers/CLIENT_ID.key; a receiver not enrolled signs with the root's key).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@json_lines_option
@pass_ctx
def archive_serve(c: Ctx, root, broker, prefix, share, cafile, certfile, keyfile, client_id, max_item_mb,
                  max_manifest_kb, min_free_mb, receive_maximum, receiver_key, log_level, as_json):
    """Receive items until SIGTERM: check every chunk, verify every item, store it under
    ROOT/UNIT/CASE/ITEM, and only then answer "stored".

    \b
    Example:
      edge-agent archive serve --root /srv/archive --broker 10.0.0.5:8883 --share archive \\
          --cafile ca.crt --certfile archive.crt --keyfile archive.key
    """
    import signal
    import threading

    from ..archive.receiver import Receiver, new_receiver_id
    from ..archive.storage import ArchiveStore
    from agent.common.logsetup import setup_logging
    from agent.common.memory import keep_freed_memory
    from agent.wire.client import settings_from_config

    cfg = _cfg_or_none(c)
    setup_logging(log_level, "plain")
    keep_freed_memory()  # chunk-sized buffers reused, not faulted in again for every chunk
    rid = client_id or new_receiver_id()
    settings = settings_from_config(cfg.mqtt if cfg is not None else None, rid, broker=broker, cafile=cafile,
                                    certfile=certfile, keyfile=keyfile, receive_maximum=receive_maximum)
    host, port, tls = settings.host, settings.port, settings.tls
    a = cfg.archive if cfg is not None else None
    max_item = (max_item_mb or (a.max_item_mb if a else 64 * 1024)) * 2**20
    max_manifest = (max_manifest_kb or (a.max_manifest_kb if a else 4096)) * 1024
    share = share if share is not None else (a.share_group if a and a.share_group else None)
    store = ArchiveStore(_root(c, root), max_item=max_item, max_manifest=max_manifest, receiver=rid,
                         min_free=(min_free_mb if min_free_mb is not None else (a.min_free_mb if a else 2048)) << 20,
                         abandon_after_s=(a.abandon_after_h if a else 72) * 3600, db=_db(c))
    if a:
        store.chain_gap_s, store.chain_silent_s = a.chain_gap_h * 3600, a.chain_silent_h * 3600
        store.quarantine_max_items, store.quarantine_max_bytes = a.quarantine_max_items, a.quarantine_max_mb << 20
    rx_prefix = prefix or (cfg.mqtt.topic_prefix if cfg else "edge")
    try:
        rx = Receiver(store, settings, prefix=rx_prefix, share=share, receiver_id=rid, receiver_key=receiver_key)
    except EdgeError:
        store.close()
        raise
    if a:
        rx.checkpoint_every_s = a.checkpoint_every_h * 3600
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    rx.start()
    if as_json:  # JSON lines on stdout: ready, then stopped (logs stay on stderr)
        from agent.common.pg import redact

        emit_json_line("ready", receiver=rid, key_id=rx.signer.key_id, root=str(store.root), index=redact(str(store.db.path)),
                       broker=f"{host}:{port}", share=share, tls=bool(tls), prefix=rx_prefix)
    else:
        click.echo(f"archive receiver {rid}: root {store.root}, index {store.db.path}, broker {host}:{port}, "
                   f"signing key {rx.signer.key_id}"
                   + (f", share group {share}" if share else "") + (", TLS" if tls else ""), err=True)
    while not stop.wait(1.0) and rx.failure is None:
        pass
    failure = rx.failure
    rx.stop()
    store.close()
    if as_json:
        emit_json_line("stopped", receiver=rid, ok=failure is None, failure=str(failure) if failure else None)
    if failure and rx.conn.taken_over:  # exit status 6: systemd does not restart us into a fight
        raise SessionTakenOver(failure)
    if failure:  # never stay up with nobody handling messages: exit non-zero, systemd restarts us
        raise EdgeError(f"接收进程内部故障，已停止 / the archive receiver stopped on an internal fault: {failure}")


@archive.command("enroll")
@db_option
@click.argument("device_id")
@click.argument("pubkey", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--unit", required=True, help="Enforcement unit code the device belongs to (执法单位代码).")
@click.option("--force", is_flag=True, help="Replace the enrolled key or unit (the old key is kept).")
@click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Then refresh the broker identities in this directory (made by `archive broker-config`).")
@click.option("--pin-to", "pin_to", type=click.Path(file_okay=False, path_type=Path),
              help="Also pin this archive's public key (and its policy key, if made) on the device whose data "
                   "directory this is (DATA_DIR/keys/archive/, DATA_DIR/keys/policy/; a device set up on this machine).")
@root_option
@json_option
@pass_ctx
def archive_enroll(c: Ctx, device_id, pubkey, unit, force, broker_dir, pin_to, root, as_json):
    """Trust DEVICE_ID's public key (the device's keys/device.pub) for items of unit CODE. The
    device in turn must pin this archive's key (ROOT/_archive/archive.pub): with --pin-to, or on
    the device with `edge-agent uplink trust-archive archive.pub`.

    \b
    Example:
      edge-agent archive enroll dock-01 /var/lib/edge-agent/keys/device.pub --unit 330100000000 --root /srv/archive
    """
    from agent.common.fs import atomic_write
    from ..evidence import keys

    store = _open(c, root, create=True)
    rec = store.registry.enroll(device_id, pubkey.read_bytes(), unit, force=force)
    out = {"device": rec["device"], "unit": rec["unit"], "key_id": rec["key_id"]}
    say = (lambda _text: None) if as_json else click.echo
    say(f"设备已登记 / enrolled {rec['device']} for unit {rec['unit']}, key id {rec['key_id']}")
    pub = store.signing_key.public_key()
    kid = out["archive_key_id"] = keys.key_id(pub)
    if pin_to is not None:
        dest = pin_to / "keys" / "archive" / f"archive-{kid}.pub"
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, keys.public_pem(pub), mode=0o644)
        out["pinned"] = {"archive": str(dest)}
        say(f"已在设备上信任归档公钥 / archive key {kid} pinned on the device at {dest}")
        from ..archive import receivers

        for rkid, rdest in receivers.pin_all(store.root, pin_to):  # each enrolled, unrevoked receiver's key
            out["pinned"].setdefault("receivers", []).append(str(rdest))
            say(f"已在设备上信任接收端公钥 / receiver key {rkid} pinned on the device at {rdest}")
        from ..archive.policy import key_paths
        from ..policy.keeper import pin_key

        if key_paths(store.root)[1].exists():  # the policy key, a role of its own (docs/custody.md)
            pkid, pdest = pin_key(pin_to, key_paths(store.root)[1])
            out["pinned"]["policy"] = str(pdest)
            say(f"已在设备上信任策略公钥 / policy key {pkid} pinned on the device at {pdest}")
    else:
        out["pin_on_device"] = f"edge-agent uplink trust-archive {store.root / '_archive' / 'archive.pub'}"
        say(f"请在设备上信任归档公钥 / on the device, pin this archive's key {kid}: {out['pin_on_device']}")
    if broker_dir:
        from .broker import write_broker_config

        out["broker"] = write_broker_config(c, store, broker_dir, refresh=True, quiet=as_json)
    if as_json:
        emit_json(out)


@archive.command("enroll-annotator")
@db_option
@click.argument("name")
@click.argument("pubkey", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--unit", required=True, help="Unit code whose items the annotator may annotate (执法单位代码).")
@click.option("--force", is_flag=True, help="Replace the annotator's enrolled key.")
@root_option
@json_option
@pass_ctx
def archive_enroll_annotator(c: Ctx, name, pubkey, unit, force, root, as_json):
    """Trust NAME's Ed25519 public key to sign annotations of the --unit's items (never a manifest,
    never another unit's items): written to ROOT/keys/annotators/UNIT/NAME.pub, audited.

    \b
    Example:
      edge-agent archive enroll-annotator clerk-07 clerk-07.pub --unit 330100000000 --root /srv/archive
    """
    store = _open(c, root, create=True)
    rec = store.registry.enroll_annotator(name, pubkey.read_bytes(), unit, force=force)
    if as_json:
        emit_json({"annotator": rec["annotator"], "unit": rec["unit"], "key_id": rec["key_id"]})
        return
    click.echo(f"注释人已登记 / annotator {rec['annotator']} enrolled for unit {rec['unit']}, key id {rec['key_id']}")


@archive.command("key")
@click.option("--new-next", is_flag=True, help="Create the next key pair (ROOT/_archive/next.pub) to pin on devices before --rotate.")
@click.option("--rotate", is_flag=True, help="Make the next key the archive's key (the old one is kept under _archive/retired/); restart the receivers.")
@root_option
@json_option
@pass_ctx
def archive_key(c: Ctx, new_next, rotate, root, as_json):
    """Show the key that signs receipts, answers and status; rotate it in two steps.

    Rotation: `archive key --new-next`, pin ROOT/_archive/next.pub on every device
    (`edge-agent uplink trust-archive next.pub`), then `archive key --rotate` and restart every
    receiver of this root. Devices keep the old key pinned: receipts they hold stay verifiable.

    \b
    Example:
      edge-agent archive key --root /srv/archive
    """
    from ..archive.storage import archive_key_info, new_next_key, rotate_key

    r = _root(c, root)
    if new_next and rotate:
        raise EdgeError("--new-next and --rotate are two steps: pin the next key on the devices in between")
    if new_next:
        new_next_key(r)
    elif rotate:
        rotate_key(r)
    info = archive_key_info(r)
    if as_json:
        emit_json(info)
        return
    click.echo(f"归档签名公钥 / archive key: {info['key_id']} ({info['public']})")
    if info.get("next_key_id"):
        click.echo(f"下一把公钥 / next key: {info['next_key_id']} ({info['next_public']}) — pin it on every device, "
                   "then `edge-agent archive key --rotate`")
    for old in info["retired"]:
        click.echo(f"已停用 / retired: {old}")


@archive.command("list")
@db_option
@root_option
@click.option("--device", help="Only this device.")
@click.option("--unit", help="Only this unit code.")
@click.option("--case", "case_number", help="Only this case number.")
@click.option("--missing", is_flag=True, help="Instead: chain positions a device announced that the archive lacks.")
@click.option("--quarantine", is_flag=True, help="Instead: refused items and why.")
@click.option("--devices", is_flag=True, help="Instead: enrolled devices.")
@json_option
@pass_ctx
def archive_list(c: Ctx, root, device, unit, case_number, missing, quarantine, devices, as_json):
    """List stored items (audited), or with --missing what the devices' signed checkpoints
    announce and the archive does not hold.

    \b
    Example:
      edge-agent archive list --root /srv/archive --case "杭司罚〔2026〕12号"
      edge-agent archive list --root /srv/archive --missing --json
    """
    store = _open(c, root)
    if missing:
        rows = store.missing(device)
        store.audit.append("retrieve", None, what="missing", device=device)
        if as_json:
            emit_json(rows)
            return
        for r in rows:
            flag = "OK" if not r["missing"] and r["head_matches"] is not False else "缺失 / MISSING"
            click.echo(f"{r['device']}: announced {r['announced']}, held {r['held']}, missing "
                       f"{r['missing'] or '-'}{'  head differs!' if r['head_matches'] is False else ''}  {flag}")
        return
    if quarantine:
        rows = store.quarantined()
        store.audit.append("retrieve", None, what="quarantine")
        if as_json:
            emit_json(rows)
            return
        for r in rows:
            click.echo(f"{r['at']} {r['device']}/{r['item']}: {r['reason']}")
        return
    if devices:
        rows = store.registry.devices()
        if as_json:
            emit_json(rows)
            return
        for r in rows:
            click.echo(f"{r['id']}  unit {r['unit']}  key {r['key_id']}  since {r['enrolled_at']}")
        return
    rows = store.list_items(device=device, unit=unit, case=case_number)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['item']}  {r['device']}#{r['seq']}  {r['case_number'] or '(待补 pending)'}  "
                   f"{r['size']} bytes  {r['path']}")
    click.echo(f"{len(rows)} item(s)")


@archive.command("show")
@db_option
@click.argument("what")
@root_option
@click.option("--reason", help="Why this item is viewed (调阅理由); required for an item, kept in the audit log.")
@json_option
@pass_ctx
def archive_show(c: Ctx, what, root, reason, as_json):
    """Show one stored item (viewing needs --reason), or a device (its items, chain checkpoint,
    missing items, refusals). Audited.

    \b
    Example:
      edge-agent archive show dock-01-20261127090000-a1b2c3 --root /srv/archive --reason "复核案件材料"
      edge-agent archive show dock-01 --root /srv/archive --json
    """
    store = _open(c, root)
    if store.registry.device(what, missing_ok=True):
        out = store.show_device(what)
        if as_json:
            emit_json(out)
            return
        d = out["device"]
        click.echo(f"device {d['id']} unit {d['unit']} key {d['key_id']} enrolled {d['enrolled_at']}")
        click.echo(f"items held: {len(out['items'])}")
        cp = out["checkpoint"]
        if cp:
            click.echo(f"checkpoint: {cp['announced']} items announced at {cp['checkpoint_time']}; "
                       f"missing: {cp['missing'] or 'none'}")
        for q in out["quarantine"]:
            click.echo(f"refused {q['item']}: {q['reason']}")
        return
    from ..evidence import manifest as mf

    store.find(what)  # an unknown item says so before anything else
    reason = mf.check_reason(reason) if reason else None
    if not reason:
        raise EdgeError(f"调阅须说明理由 / viewing an item needs a reason: `edge-agent archive show {what} --reason TEXT`")
    out = store.show_item(what, reason=reason)
    if as_json:
        emit_json(out)
        return
    a = out["archive"]
    click.echo(f"item {a['item']} device {a['device']} seq {a['seq']} {a['size']} bytes stored {a['stored_at']}")
    click.echo(f"  path {out['path']}")

    meta = out["effective_metadata"]
    for field in ("case_number", "capture_start", "capture_end", "place", "collector", "proof"):
        v = meta.get(field)
        if isinstance(v, dict):
            v = f"{v.get('name')} ({v.get('id')})"
        click.echo(f"  {mf.LABELS[field]}: {v if v is not None else '(待补 pending)'}")
    click.echo(f"  annotations: {len(out['annotations'])}")


@archive.command("audit")
@db_option
@click.argument("old_checkpoint", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@root_option
@click.option("--limit", type=int, help="The newest N entries.")
@click.option("--verify", "do_verify", is_flag=True, help="Check the chain and its signed head instead of listing.")
@json_option
@pass_ctx
def archive_audit(c: Ctx, old_checkpoint, root, limit, do_verify, as_json):
    """The archive's audit log: who retrieved or exported what, when (调阅监督). With
    OLD_CHECKPOINT (an archive checkpoint kept earlier, `archive checkpoint`): prove that the
    current store extends it (its signature, a Merkle consistency proof, every item still held or
    expired with its tombstone); exit status 1 naming what is missing.

    \b
    Example:
      edge-agent archive audit --root /srv/archive --verify
      edge-agent archive audit /media/usb/checkpoint-000000001234.json --root /srv/archive
    """
    from ..evidence import keys

    store = _open(c, root)
    if old_checkpoint is not None:
        rep = store.audit_against(old_checkpoint.read_bytes())
        if as_json:
            emit_json(rep)
        else:
            o, n = rep["old"], rep["current"]
            click.echo(f"checkpoint of {o['time']}: {o['size']} leaves, root {o['root'][:16]}… (key {o['key_id']}), "
                       "signature ok")
            click.echo(f"store now: {n['size']} leaves, root {n['root'][:16]}…")
            if rep["consistency_proof"] is not None:
                click.echo(f"consistency proof {o['size']} -> {n['size']}: {len(rep['consistency_proof']['path'])} "
                           "hashes, verified")
            for p in rep["problems"]:
                click.echo(f"缺失或被改 / PROBLEM: {p}")
            click.echo("存储完整 / verdict: ok, the store extends the checkpoint" if rep["ok"] else
                       f"审计未通过 / verdict: FAILED, {len(rep['problems'])} problem(s)")
        if not rep["ok"]:
            raise SystemExit(1)
        return
    if do_verify:
        pub = store._key.public_key()
        n = store.audit.verify(verifier=lambda data, sig: keys.verify_sig(pub, data, sig))
        if as_json:
            emit_json({"ok": True, "entries": n})
        else:
            click.echo(f"ok: {n} audit entries, chain and signed head intact")
        return
    rows = store.audit.entries(limit=limit)
    echo_audit(rows, as_json)





@archive.group("db")
def archive_db():
    """The archive's index: versioned schema migrations (SQLite or PostgreSQL)."""


@archive_db.command("upgrade")
@db_option
@root_option
@json_option
@pass_ctx
def archive_db_upgrade(c: Ctx, root, as_json):
    """Apply the schema migrations the index lacks (`archive serve` does this at start too) and
    list the migrations applied. With --db postgresql://... no root is needed.

    \b
    Example:
      edge-agent archive db upgrade --db postgresql://archive@db.centre:5432/archive
      edge-agent archive db upgrade --root /srv/archive
    """
    from agent.common.pg import is_url
    from ..archive.registry import PG_MIGRATIONS, MIGRATIONS, open_db

    db = _db(c)
    if is_url(db):
        base = Path(".")
    else:
        base = Path(_root(c, root))
        if not base.is_dir():
            raise EdgeError(f"归档根目录不存在 / {base}: archive root not found")
    store = open_db(db, base.resolve(), migrate=False)
    db_upgrade(store, [n for n, _ in (PG_MIGRATIONS if store.dialect == "postgresql" else MIGRATIONS)], as_json)
