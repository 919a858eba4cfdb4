"""Operations commands: signed central commands (operator side) and `doctor`."""

from __future__ import annotations

import json
import threading
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
def command_keygen(name, out_dir):
    """Create an operator key pair; copy NAME.pub into each device's keys/operators/.

    \b
    Example:
      edge-agent command keygen ops-center --out ./operator
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    key = keys.generate(out_dir / f"{name}.key", out_dir / f"{name}.pub")
    click.echo(f"{out_dir / (name + '.key')} (key id {keys.key_id(key.public_key())}); trust it on a device with "
               f"`cp {out_dir / (name + '.pub')} DATA_DIR/keys/operators/`")


@command.command("sign")
@click.argument("cmd")
@click.option("--device", required=True, help="Target device id.")
@click.option("--args", "args_json", default="{}", help="Arguments as a JSON object.")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Operator private key.")
def command_sign(cmd, device, args_json, key_path):
    """Print a signed command (JSON) for DEVICE.

    \b
    Example:
      edge-agent command sign rebirth --device room-01 --key operator/ops-center.key
    """
    from agent.wire.commands import sign_command

    click.echo(sign_command(keys.load_private(Path(key_path)), cmd, _args(args_json), device).decode())


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
@click.option("--broker", default="127.0.0.1:1883", show_default=True, help="HOST:PORT of the MQTT broker.")
@click.option("--prefix", default="edge", show_default=True, help="Topic prefix.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the device's answer.")
@json_option
def command_send(cmd, device, args_json, key_path, broker, prefix, timeout, as_json):
    """Sign CMD, publish it to the device over MQTT v5 and print the device's answer.

    \b
    Example:
      edge-agent command send room.stop --device room-01 --key operator/ops-center.key --broker 10.0.0.5:1883
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from agent.wire.commands import sign_command
    from agent.wire.topics import Topics

    payload = sign_command(keys.load_private(Path(key_path)), cmd, _args(args_json), device)
    host, _, port = broker.rpartition(":")
    t = Topics(prefix)
    resp_topic = f"{prefix}/operator/{uuid.uuid4().hex}"
    corr = uuid.uuid4().bytes
    got: dict = {}
    done = threading.Event()

    def on_connect(client, _u, _f, rc, _p=None):
        if rc.is_failure:
            got["error"] = f"broker refused the connection: {rc}"
            done.set()
            return
        client.subscribe(resp_topic, qos=1)

    def on_subscribe(client, *_a):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = resp_topic
        props.CorrelationData = corr
        client.publish(t.cmd(device), payload, qos=1, properties=props)

    def on_message(_c, _u, msg):
        if getattr(msg.properties, "CorrelationData", None) == corr:
            try:
                got.update(json.loads(msg.payload))
            except ValueError:
                got["error"] = "device answered with non-JSON"
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(host or "127.0.0.1", int(port or 1883))
    except (OSError, ValueError) as exc:
        raise EdgeError(f"cannot reach the broker at {broker}: {exc}") from None
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise EdgeError(f"no answer from device {device} within {timeout:g} s")
    finally:
        client.loop_stop()
        client.disconnect()
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
def crypt_keygen(out_dir, force):
    """Create the archive's X25519 key pair (archive-enc.key 0600, archive-enc.pub).

    Put archive-enc.pub on the devices and set encryption.enabled / encryption.archive_public_key.

    \b
    Example:
      edge-agent crypt keygen /var/lib/edge-archive/keys
    """
    from ..evidence import crypt as crypt_mod

    key = crypt_mod.generate_archive_key(out_dir / "archive-enc.key", out_dir / "archive-enc.pub", force=force)
    click.echo(f"{out_dir / 'archive-enc.pub'} (recipient id {crypt_mod.recipient_id(key.public_key())})")


@crypt.command("decrypt")
@click.argument("item_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The archive's X25519 private key.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the decrypted files.")
@click.option("--device-key", type=click.Path(exists=True, dir_okay=False), help="Verify against this device public key first.")
def crypt_decrypt(item_dir, key_path, out_dir, device_key):
    """Decrypt an encrypted item's files (after verifying it when --device-key is given).

    \b
    Example:
      edge-agent crypt decrypt ./archive/330100000000/CASE/ITEM --key keys/archive-enc.key --out ./plain
    """
    from ..evidence import crypt as crypt_mod
    from ..evidence.verify import verify_item

    if device_key:
        verify_item(item_dir, keys.KeyRing.from_paths(device_key))
    for p in crypt_mod.decrypt_item(item_dir, crypt_mod.load_private(key_path), out_dir):
        click.echo(str(p))


@main.command()
@click.option("--offline", is_flag=True, help="Skip the broker and archive checks.")
@json_option
@pass_ctx
def doctor(c: Ctx, offline, as_json):
    """Check config, key permissions, disk reserve, clock, TLS certificates, broker, archive and devices.

    Each check prints OK or what to do; exit 1 when any check fails.

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
            click.echo(click.style(f"{ch.status:<4}", fg=colour[ch.status]) + f" {ch.name:<12} {ch.detail}")
    if failed:
        raise SystemExit(1)
