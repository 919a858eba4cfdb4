"""Core commands: init, config, status, recover (items.py: ingest, items; audit.py: verify, audit)."""

from __future__ import annotations

import json

import click

from .. import config as config_mod
from agent.common.errors import ConfigError, EdgeError
from . import main
from .base import Ctx, emit_json, json_option, pass_ctx, role


# --- init -------------------------------------------------------------------------------------
@main.command()
@click.option("--data-dir", help="Data directory (default from the config, /var/lib/edge-agent).")
@click.option("--device-id", help="Device id, unique in the fleet.")
@click.option("--unit-code", help="Enforcement unit code.")
@click.option("--unit-name", help="Enforcement unit name.")
@click.option("--kind", type=click.Choice(["dock", "room"]), help="Docking station or interview room.")
@click.option("--location", help="Place of the box (采集地点).")
@click.option("--force", is_flag=True, help="Replace an existing device key (old items still verify with the old public key).")
@json_option
@pass_ctx
def init(c: Ctx, data_dir, device_id, unit_code, unit_name, kind, location, force, as_json):
    """Write a commented default config, the data directory and the device's Ed25519 key pair.

    Safe to run again: an existing config is kept (only the values given are set in it) and an
    existing device key is kept unless --force is given; the output says what was kept and what
    changed. Changing --device-id of a device that has a key needs --force.

    \b
    Example:
      edge-agent --config ./agent.toml init --data-dir ./data --device-id dock-01 --kind dock
    """
    from ..store.setup import init_device

    r = init_device(c.config_path, {"storage": {"data_dir": data_dir},
                                    "device": {"id": device_id, "unit_code": unit_code, "unit_name": unit_name,
                                               "kind": kind, "location": location}}, force=force)
    if as_json:
        emit_json({"config": str(r.config_path), "config_written": r.config_written,
                   "changed": [{"key": k, "old": o, "new": n} for k, o, n in r.changed], "data_dir": str(r.data_dir),
                   "key": str(r.key_path), "public_key": str(r.pub_path), "key_id": r.key_id, "key_kept": r.key_kept})
        return
    if r.config_written:
        click.echo(f"配置 config: {r.config_path} (已写入 written)")
    else:
        click.echo(f"配置 config: {r.config_path} (已保留 kept" + (f", 已修改 changed {len(r.changed)})" if r.changed else ")"))
        for key, old, new in r.changed:
            click.echo(f"  {key}: {config_mod.toml_text(old)} → {config_mod.toml_text(new)}")
    click.echo(f"数据 data: {r.data_dir}")
    if r.key_kept:
        click.echo(f"密钥 key: {r.key_path} (已保留 kept; --force 才会更换 / --force replaces it), key id {r.key_id}")
    else:
        click.echo(f"密钥 key: {r.key_path} (新建 new, mode 600), public key {r.pub_path}, key id {r.key_id}")


# --- config -----------------------------------------------------------------------------------
@main.group()
def config():
    """Check and change the configuration file (one schema, see docs/config.md)."""


@config.command("validate")
@json_option
@pass_ctx
def config_validate(c: Ctx, as_json):
    """Check the config file; an error names the key, what is wrong and the line.

    \b
    Example:
      edge-agent --config ./agent.toml config validate
    """
    cfg = c.cfg
    if as_json:
        emit_json({"ok": True, "config": str(cfg.path)})
        return
    click.echo(f"ok: {cfg.path} is valid")


@config.command("show")
@json_option
@pass_ctx
@role("technician", "auditor")
def config_show(c: Ctx, as_json):
    """Print the effective configuration (defaults filled in, secrets hidden).

    \b
    Example:
      edge-agent config show --json
    """
    data = c.cfg.as_dict()
    if as_json:
        emit_json(data)
        return
    for section, values in data.items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            click.echo(f"{key} = {config_mod.toml_text(value)}")
        click.echo("")


@config.command("get")
@click.argument("key")
@json_option
@pass_ctx
def config_get(c: Ctx, key, as_json):
    """Print one value, KEY as SECTION.KEY.

    \b
    Example:
      edge-agent config get device.id
    """
    config_mod.split_key(key)
    value = c.cfg.get(key)
    if as_json:
        click.echo(json.dumps(value, ensure_ascii=False))
    else:
        click.echo(value if isinstance(value, str) else config_mod.toml_text(value))


@config.command("set")
@click.argument("key")
@click.argument("value")
@json_option
@pass_ctx
@role("technician")
def config_set(c: Ctx, key, value, as_json):
    """Validate, then atomically write one value (comments in the file are kept).

    Lists and tables are written in TOML syntax (quote them for the shell). The whole file is
    validated before it is written; a refused value leaves it unchanged.

    \b
    Example:
      edge-agent config set storage.reserve_mb 2048
      edge-agent config set room.cameras '["/dev/video0", "rtsp://10.0.0.2/main"]'
      edge-agent config set dock.bays '["/dev/ttyACM*", {name = "front", port = "/dev/ttyUSB0"}]'
    """
    old = None
    try:
        old = c.cfg.get(key)
    except (ConfigError, KeyError):
        pass
    new = config_mod.set_value(c.config_path, key, value)
    try:
        c._cfg = None
        c.store.audit.append("config", None, key=key, old=old if "password" not in key else "***",
                             new=new if "password" not in key else "***")
    except EdgeError:
        pass
    section, name = config_mod.split_key(key)
    secret = config_mod.SCHEMA[section][name].secret
    if as_json:
        emit_json({"key": key, "value": "********" if secret else new, "config": str(config_mod.config_path(c.config_path))})
        return
    click.echo(f"{key} = {'********' if secret else config_mod.toml_text(new)}")


# --- status -----------------------------------------------------------------------------------
@main.command()
@json_option
@pass_ctx
@role("operator", "auditor", "technician")
def status(c: Ctx, as_json):
    """Device, items by state, bytes buffered, oldest unarchived age, free disk.

    \b
    Example:
      edge-agent status --json
    """
    st = c.store.status()
    if as_json:
        emit_json(st)
        return
    d = st["device"]
    click.echo(f"设备 device: {d['id']} ({d['kind']}) 单位 unit: {d['unit_name']} [{d['unit_code']}] @ {d['location']}")
    click.echo("资料 items: " + (", ".join(f"{k} {v}" for k, v in sorted(st["items_by_state"].items())) or "无 none"))
    age = st["oldest_unarchived_age_s"]
    click.echo(f"未归档 unarchived: {st['unarchived_items']} items, {st['bytes_buffered']} bytes, "
               f"oldest {age if age is not None else '-'} s")
    click.echo(f"待补录 pending annotation: {st['pending_annotation']}")
    click.echo(f"证据链 chain: seq {st['chain']['seq']} head {st['chain']['head']}")
    disk = st["disk"]
    click.echo(f"磁盘 disk: {disk['free_bytes'] // 2**20} MiB free, reserve {disk['reserve_bytes'] // 2**20} MiB"
               + ("  磁盘空间不足 / LOW" if disk["low"] else ""))


@main.command()
@json_option
@pass_ctx
@role("technician")
def recover(c: Ctx, as_json):
    """Recover after an unclean stop (the agent also does this when it starts).

    Sealed items not yet recorded are recorded, interrupted one-shot work is discarded,
    partial recorder copies are kept for resume; every action is audited.

    \b
    Example:
      edge-agent recover
    """
    actions = c.store.recover()
    if as_json:
        emit_json({"actions": actions})
        return
    for a in actions:
        click.echo(a)
    click.echo(f"恢复操作 {len(actions)} 项 / {len(actions)} recovery action(s)")
