"""`edge-agent archive broker-config`: the broker's identities and ACL from the archive's
enrolment (agent/wire/broker_auth.py); `archive enroll --broker-dir` refreshes them."""

from __future__ import annotations

from pathlib import Path

import click

from .archive import _cfg_or_none, _open, archive, root_option
from .base import Ctx, emit_json, json_option, pass_ctx


def write_broker_config(c: Ctx, store, out: Path, *, refresh: bool = False, prefix: str | None = None,
                        quiet: bool = False, **kw) -> dict:
    """Generate the files for every enrolled device (``refresh``: with the options of the last run
    in ``out``), audit it, print what changed (unless ``quiet``) and return it as a dict."""
    from agent.wire import broker_auth

    enrolled = store.registry.devices()
    devices = [d["id"] for d in enrolled]
    units = {d["id"]: d["unit"] for d in enrolled}  # each device reads its own unit's policy
    from ..archive import receivers as receivers_mod

    receivers = sorted(receivers_mod.enrolled(store.root))  # each its own identity; a revoked one has none
    if refresh:
        files = broker_auth.refresh(out, devices, units, receivers)
    else:
        cfg = _cfg_or_none(c)
        prefix = prefix or (cfg.mqtt.topic_prefix if cfg is not None else "edge")
        files = broker_auth.generate(out, devices, prefix=prefix, units=units, receivers=receivers, **kw)
    store.audit.append("broker-config", None, out=str(out.resolve()), prefix=files.prefix, created=files.created,
                       rotated=files.rotated, devices=len(devices))
    summary = {"out": str(out), "prefix": files.prefix, "conf": str(files.conf), "acl": str(files.acl),
               "passwd": str(files.passwd), "devices": devices, "receivers": receivers,
               "services": [i.name for i in files.identities if i.role != "device"],
               "monitor_logins": [i.name for i in files.identities if i.role == "monitor"] + files.instances,
               "policy_logins": list(files.publishers),
               "ops_logins": [i.name for i in files.identities if i.role == "ops"] + files.ops_instances,
               "created": list(files.created), "rotated": list(files.rotated), "kept": list(files.kept),
               "stale": list(files.stale), "credentials": str(out / broker_auth.CREDENTIALS)}
    if quiet:
        return summary
    click.echo(f"消息代理身份与访问控制已生成 / broker identities and ACL written: {out}")
    click.echo(f"  {files.conf.name}, {files.acl.name}, {files.passwd.name}: {len(devices)} device(s) + "
               + ", ".join(summary["services"]))
    if files.instances:
        click.echo(f"  监控的其他连接登录名（同一密码）/ the monitor's other connection logins (its password): "
                   f"{files.instances[0]} … {files.instances[-1]}")
    if files.ops_instances:
        click.echo(f"  操作员其他主机的登录名（同一密码）/ the operators' logins for other hosts (the ops password): "
                   f"{', '.join(files.ops_instances)} (username in that host's [mqtt])")
    if files.publishers:
        click.echo(f"  发布策略的登录名（同一密码，仅写策略）/ `archive policy publish` logins (same password, policies only): "
                   f"{', '.join(files.publishers)}")
    for label, names in (("新建 / new", files.created), ("更换 / rotated", files.rotated), ("保留 / kept", files.kept)):
        if names:
            click.echo(f"  {label}: {', '.join(names)}")
    click.echo(f"  凭据（仅 root 可读）/ credentials (root only): {out / broker_auth.CREDENTIALS}/NAME.toml "
               "-> 复制到各主机配置的 [mqtt] / copy into each host's [mqtt] section")
    if files.stale:
        click.echo(f"  警告 / warning: credentials of names no longer enrolled (not in passwd): {', '.join(files.stale)}",
                   err=True)
    return summary


@archive.command("broker-config")
@root_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for mosquitto.conf, acl, passwd and credentials/ (created; kept passwords are read from it).")
@click.option("--prefix", help="Topic prefix (default mqtt.topic_prefix from the config, 'edge').")
@click.option("--conf-dir", help="Where passwd and acl live on the broker host, as written into mosquitto.conf "
                                 "(default: OUT).")
@click.option("--port", type=click.IntRange(1, 65535), default=1883, show_default=True,
              help="Plain listener port (loopback only).")
@click.option("--tls-port", type=click.IntRange(1, 65535), help="TLS listener on every address (needs the next three).")
@click.option("--cafile", help="TLS: CA file on the broker host.")
@click.option("--certfile", help="TLS: the broker's certificate on the broker host.")
@click.option("--keyfile", help="TLS: the broker's private key on the broker host.")
@click.option("--tls-identity", type=click.Choice(["password", "certificate"]), default="password", show_default=True,
              help="How clients on the TLS listener prove who they are: their password, or their client "
                   "certificate (issued by --cafile; its CN is the user name and the ACL applies to it).")
@click.option("--crlfile", help="TLS with --tls-identity certificate: the CA's certificate revocation list (PEM) on "
                                "the broker host; a revoked certificate is refused (a stolen station's).")
@click.option("--archive-user", default="archive", show_default=True, help="User name of the archive receivers.")
@click.option("--monitor-user", default="monitor", show_default=True, help="User name of the monitor (read only).")
@click.option("--ops-user", default="ops", show_default=True, help="User name for `edge-agent command send`.")
@click.option("--monitor-connections", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Logins for the monitor's connections (MONITOR-USER, MONITOR-USER.1 ...): at least the "
                   "monitor's --connections. The broker binds each login to one session.")
@click.option("--ops-logins", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Logins for operator hosts that send commands at the same time (OPS-USER, OPS-USER.1 ...; one "
                   "password): one per host. Sends of one host with one login take turns.")
@click.option("--rotate", multiple=True, help="Give this identity a new password (repeatable).")
@click.option("--rotate-all", is_flag=True, help="New passwords for every identity.")
@json_option
@pass_ctx
def archive_broker_config(c: Ctx, root, out, prefix, conf_dir, port, tls_port, cafile, certfile, keyfile,
                          tls_identity, crlfile, archive_user, monitor_user, ops_user, monitor_connections, ops_logins,
                          rotate, rotate_all, as_json):
    """Write the Mosquitto 2.0 password file, ACL and config for every enrolled device (user
    name = device id) and the archive, monitor and ops identities. Anonymous access is off;
    each device may publish only in its own subtree and read only its own answers and
    commands; the client id is the user name (one login, one session: no login can disconnect
    another by taking its client id). Running it again keeps existing passwords. Audited.
    With --tls-identity certificate the TLS listener requires a client certificate and takes its
    CN as the user name (name each device's certificate after its device id).

    \b
    Example:
      edge-agent archive broker-config --root /srv/archive --out /root/broker \\
          --conf-dir /etc/mosquitto/edge-agent --tls-port 8883 --cafile /etc/mosquitto/certs/ca.crt \\
          --certfile /etc/mosquitto/certs/broker.crt --keyfile /etc/mosquitto/certs/broker.key
    """
    store = _open(c, root)
    try:
        summary = write_broker_config(c, store, out, prefix=prefix, conf_dir=conf_dir, port=port, tls_port=tls_port,
                                      cafile=cafile, certfile=certfile, keyfile=keyfile, tls_identity=tls_identity,
                                      crlfile=crlfile, rotate=rotate, rotate_all=rotate_all, quiet=as_json,
                                      monitor_connections=monitor_connections,
                                      ops_logins=ops_logins,
                                      services={"archive": archive_user, "monitor": monitor_user, "ops": ops_user})
    finally:
        store.close()
    if as_json:
        emit_json(summary)
