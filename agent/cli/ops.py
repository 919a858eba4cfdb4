"""Operations commands: signed central commands (operator side) and `doctor`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import click

from agent.common.errors import EdgeError
from ..evidence import keys
from . import main
from .base import Ctx, emit_json, json_option, pass_ctx


@main.group()
def command():
    """Sign and send central commands (operator side); devices refuse unsigned ones."""


@command.command("keygen")
@click.argument("name")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=".",
              help="Where to write NAME.key (0600) and NAME.pub.")
@json_option
def command_keygen(name, out_dir, as_json):
    """Create an operator key pair; copy NAME.pub into each device's keys/operators/.

    \b
    Example:
      edge-agent command keygen ops-center --out ./operator
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    key = keys.generate(out_dir / f"{name}.key", out_dir / f"{name}.pub")
    if as_json:
        emit_json({"name": name, "key": str(out_dir / f"{name}.key"), "public_key": str(out_dir / f"{name}.pub"),
                   "key_id": keys.key_id(key.public_key())})
        return
    click.echo(f"{out_dir / (name + '.key')} (key id {keys.key_id(key.public_key())}); trust it on a device with "
               f"`cp {out_dir / (name + '.pub')} DATA_DIR/keys/operators/`")


@command.command("sign")
@click.argument("cmd")
@click.option("--device", required=True, help="Target device id.")
@click.option("--args", "args_json", default="{}", help="Arguments as a JSON object.")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Operator private key.")
@json_option
def command_sign(cmd, device, args_json, key_path, as_json):
    """Print a signed command (JSON) for DEVICE: one line as it is sent; with --json indented like
    every other command's JSON (the signature covers the RFC 8785 form, so both verify).

    \b
    Example:
      edge-agent command sign rebirth --device room-01 --key operator/ops-center.key
    """
    from agent.wire.commands import sign_command

    signed = sign_command(keys.load_private(Path(key_path)), cmd, _args(args_json), device)
    if as_json:
        emit_json(json.loads(signed))
        return
    click.echo(signed.decode())


def _args(text: str) -> dict:
    try:
        args = json.loads(text)
    except ValueError:
        raise EdgeError(f"--args: not JSON: {text!r}") from None
    if not isinstance(args, dict):
        raise EdgeError("--args must be a JSON object")
    return args


@command.command("send")
@click.argument("cmd")
@click.option("--device", required=True, help="Target device id.")
@click.option("--args", "args_json", default="{}", help="Arguments as a JSON object.")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Operator private key.")
@click.option("--broker", help="Broker address: HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] "
                               "(default mqtt.host:mqtt.port of the config, else 127.0.0.1:1883).")
@click.option("--prefix", help="Topic prefix (default mqtt.topic_prefix of the config, else edge).")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False), help="TLS: CA that signed the broker's certificate (default mqtt.cafile).")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), help="TLS: client certificate (default mqtt.certfile).")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS: its private key (default mqtt.keyfile).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the device's answer.")
@json_option
@pass_ctx
def command_send(c: Ctx, cmd, device, args_json, key_path, broker, prefix, cafile, certfile, keyfile, timeout, as_json):
    """Sign CMD, publish it to the device over MQTT v5 and print the device's answer (which
    comes back on P/dev/DEVICE/cmd/resp).

    TLS, user name and password come from the config's [mqtt] section when there is one;
    mqtts:// or --cafile turn TLS on.

    The broker keeps one session per login: sends of one host with the same login take turns
    (the second says it is waiting). A send whose session another host takes with the same login
    exits with status 6 and says whether the command went out (give each operator host its own
    login: docs/security.md).

    \b
    Example:
      edge-agent command send room.stop --device room-01 --key operator/ops-center.key --broker mqtts://10.0.0.5:8883
    """
    from agent.wire.commands import sign_command
    from agent.wire.client import settings_from_config
    from agent.common.errors import SessionTakenOver
    from agent.wire.claim import session_login
    from agent.wire.session import exchange, login_lock
    from agent.wire.topics import Topics, safe_segment

    from .monitor import _optional_cfg

    cfg = _optional_cfg(c)
    payload = sign_command(keys.load_private(Path(key_path)), cmd, _args(args_json), device)
    try:
        t = Topics(prefix or (cfg.mqtt.topic_prefix if cfg else "edge"))
    except ValueError as exc:
        raise EdgeError(f"--prefix: {exc}") from None
    settings = settings_from_config(cfg.mqtt if cfg else None, f"operator-{uuid.uuid4().hex[:12]}", broker=broker,
                                    cafile=cafile, certfile=certfile, keyfile=keyfile)
    # the device answers in its own subtree: the broker's ACL (archive broker-config) lets it write nowhere else
    resp_topic = t.cmd_resp(device)
    corr = uuid.uuid4().bytes
    login = session_login(settings)  # with a client certificate and no user name: its CN (certificate identities)
    claim = t.session(login) if login and safe_segment(login) else None

    def send():
        return exchange(settings, subscribe=(resp_topic,), publish=(t.cmd(device), payload), response_topic=resp_topic,
                        correlation=corr, timeout=timeout, claim=claim,
                        until=lambda msgs: any(getattr(p, "CorrelationData", None) == corr for _t, _b, p in msgs))

    # one login, one session: sends of this host with the same login take turns (the second waits)
    with login_lock(settings, timeout=timeout + 60, waiting=lambda: click.echo(
            f"等待本机另一个会话结束 / waiting: another edge-agent on this host is logged in as {login!r} "
            "(one login, one session)", err=True)):
        ex = send()
        if ex.taken_over and not ex.sent:  # nothing went out: once more (the same signed command)
            click.echo(f"会话被接管，重试一次 / session taken over before the command went out: {ex.taken_over}; "
                       "trying once more", err=True)
            ex = send()
    where = f"{settings.host}:{settings.port}" + (" (TLS)" if settings.tls else "")
    answers = [b for _t, b, p in ex.messages if getattr(p, "CorrelationData", None) == corr]
    if ex.taken_over and not answers:
        raise SessionTakenOver(
            f"会话被接管 / another process (another host) logged in as {login!r} and took this session: "
            + ("the command went out and may have reached the device, but its answer is lost; check the device "
               "before sending it again" if ex.sent else "the command was not sent")
            + "; give each operator host its own login (docs/security.md)")
    if not ex.connected and not answers:
        raise EdgeError(f"无法连接代理 / cannot reach the broker at {where}: {ex.error}")
    if ex.error and not answers:
        raise EdgeError(f"代理拒绝了命令 / the broker refused the command: {ex.error}")
    if not answers:
        raise EdgeError(f"设备无应答 / no answer from device {device} within {timeout:g} s")
    try:
        got = json.loads(answers[0])
        if not isinstance(got, dict):
            raise ValueError
    except ValueError:
        got = {"error": "device answered with non-JSON"}
    if as_json:
        emit_json(got)
    else:
        click.echo(json.dumps(got, ensure_ascii=False))
    if not got.get("ok"):
        raise EdgeError(f"device {device} refused: {got.get('error')}")


@main.group()
def crypt():
    """Encryption at rest: the archive's key pair, and decryption of an archived item."""


@crypt.command("keygen")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing key (items sealed to the old key need the old key).")
@json_option
def crypt_keygen(out_dir, force, as_json):
    """Create the archive's X25519 key pair (archive-enc.key 0600, archive-enc.pub).

    Put archive-enc.pub on the devices and set encryption.enabled / encryption.archive_public_key.

    \b
    Example:
      edge-agent crypt keygen /var/lib/edge-archive/keys
    """
    from ..evidence import crypt as crypt_mod

    key = crypt_mod.generate_archive_key(out_dir / "archive-enc.key", out_dir / "archive-enc.pub", force=force)
    if as_json:
        emit_json({"key": str(out_dir / "archive-enc.key"), "public_key": str(out_dir / "archive-enc.pub"),
                   "recipient_id": crypt_mod.recipient_id(key.public_key())})
        return
    click.echo(f"{out_dir / 'archive-enc.pub'} (recipient id {crypt_mod.recipient_id(key.public_key())})")


@crypt.command("decrypt")
@click.argument("item_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The archive's X25519 private key.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the decrypted files.")
@click.option("--device-key", type=click.Path(exists=True, dir_okay=False), help="Verify against this device public key first.")
@json_option
def crypt_decrypt(item_dir, key_path, out_dir, device_key, as_json):
    """Decrypt an encrypted item's files (after verifying it when --device-key is given).

    \b
    Example:
      edge-agent crypt decrypt ./archive/330100000000/CASE/ITEM --key keys/archive-enc.key --out ./plain
    """
    from ..evidence import crypt as crypt_mod
    from ..evidence.verify import verify_item

    if device_key:
        verify_item(item_dir, keys.KeyRing.from_paths(device_key))
    files = [str(p) for p in crypt_mod.decrypt_item(item_dir, crypt_mod.load_private(key_path), out_dir)]
    if as_json:
        emit_json({"item": str(item_dir), "out": str(out_dir), "verified": bool(device_key), "files": files})
        return
    for p in files:
        click.echo(p)


@main.command()
@click.option("--offline", is_flag=True, help="Skip the broker and archive checks.")
@json_option
@pass_ctx
def doctor(c: Ctx, offline, as_json):
    """Check config, placeholders left by init, key permissions, pinned archive keys, disk
    reserve, clock, TLS certificates, broker, archive (its status signed by a pinned key) and
    devices (cameras, sensor, recorder ports).

    Each check prints OK or, in Chinese and English, what is wrong, the config key at fault and
    the command that fixes it; exit 1 when any check fails.

    \b
    Example:
      edge-agent doctor
    """
    from agent.runtime.doctor import run_checks

    checks = run_checks(c.config_path, network=not offline)
    failed = [ch for ch in checks if ch.status == "FAIL"]
    if as_json:
        emit_json({"ok": not failed, "checks": [ch.__dict__ for ch in checks]})
    else:
        colour = {"OK": "green", "WARN": "yellow", "FAIL": "red"}
        for ch in checks:
            click.echo(click.style(f"{ch.status:<4}", fg=colour[ch.status]) + f" {ch.name:<12} {ch.detail}"
                       + (f" [{ch.key}]" if ch.key and ch.status != "OK" else ""))
            if ch.fix and ch.status != "OK":
                click.echo(f"{'':<17} 修复 / fix: {ch.fix}")
    if failed:
        raise SystemExit(1)
