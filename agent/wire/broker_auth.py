"""Broker identities and ACL for Mosquitto 2.0, generated from the archive's enrolment.

One identity per enrolled device (MQTT user name = device id, so the ACL's ``pattern`` lines
with ``%u`` confine each device to its own topics), plus three service identities:

- ``archive``: the receivers not enrolled with a key of their own (they share it; each keeps
  its own client id). A receiver enrolled with ``archive receiver add RID`` gets identity ``RID``
  with the same rights (``receivers=``), and loses it when revoked. Only it reads the
  transfer topics and the chain checkpoints, and only it writes answers (``P/ack/D``), the
  receiver status and the units' signed policies (``P/unit/U/policy``, `archive policy publish`).
- ``monitor``: reads device state (status, health, alarms, components, chain, ratio), the
  archive status and the units' policies (to show stations running an old one); writes nothing.
  It opens several connections at once (its shares), so it gets one login per connection:
  ``monitor``, ``monitor.1`` … ``monitor.N-1`` (``monitor_connections``), one password, the same rights.

Each archive login (``archive`` and every enrolled receiver) comes with ``NAME.policy``, its
password, allowed only to write the units' policies: `archive policy publish` logs in with it, so
it never takes the session of the receiver running under ``NAME``.

A device reads the policy of its own unit only: the unit comes from the enrolment, so each
enrolled device gets a ``user`` block of its own granting ``P/unit/ITS-UNIT/policy``.
- ``ops``: ``edge-agent command send``: writes ``P/dev/D/cmd``, reads ``P/dev/D/cmd/resp`` and
  device status. Several operator hosts sending at once get one login each: ``ops``, ``ops.1`` …
  ``ops.N-1`` (``ops_logins``, one password, the same rights); on one host the sends of one login
  take turns (agent/wire/session.py).

One login, one session: the broker replaces every client id by the login's user name
(``use_username_as_clientid true`` on every listener), so nobody can take over another login's
session (MQTT client-id takeover: a device's password used with another device's client id would
disconnect that device, and with a persistent session inherit its queued messages). A process
may therefore hold one connection per login; a second connection with the same login ends the
first. Every login may read and write its own ``P/session/LOGIN`` (``pattern`` with ``%u``): the
receivers, the monitor and ``command send`` claim their login there, so that the one whose session
another took stops instead of taking it back (agent/wire/claim.py).

Every topic in the ACL is built by :class:`agent.wire.topics.Topics`; nothing is spelled twice.
Passwords are random (192 bits) and stored at the broker as PBKDF2-SHA512 hashes in
``mosquitto_passwd``'s ``$7$`` format; the plain passwords go to one root-only file per identity
(``credentials/NAME.toml``) for the technician to copy into that host's ``[mqtt]`` section.
Running the generator again keeps every existing password (unless rotated) and adds new devices.

    files = generate(out_dir, ["dock-0001", "room-0001"], prefix="edge")
    files.conf, files.acl, files.passwd, files.credentials["dock-0001"]
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent import config as config_mod
from agent.common.errors import ConfigError, EdgeError
from agent.common.fs import atomic_write

from .client import instance_user
from .topics import XFER_KINDS, Topics, safe_segment

# mosquitto_passwd (Mosquitto 2.0): PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte hash, 101 iterations.
# The passwords are random tokens, not words: the iteration count does not protect them, and the
# broker pays it on every CONNECT (a fleet reconnecting after a broker restart).
HASH_ID = "7"
ITERATIONS = 101
SALT_LEN = 12
HASH_LEN = 64

ROLES = ("device", "archive", "monitor", "ops")
DEFAULT_SERVICES = {"archive": "archive", "monitor": "monitor", "ops": "ops"}
MONITOR_CONNECTIONS = 8   # the monitor's default --connections: one login each
OPS_LOGINS = 1            # operator hosts sending at once: one login each (ops, ops.1 …)

PASSWD = "passwd"
ACL = "acl"
CONF = "mosquitto.conf"
CREDENTIALS = "credentials"
SETTINGS = "broker-config.json"   # the options of the last run, for refresh()


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The ``$7$ITER$SALT$HASH`` string ``mosquitto_passwd -b`` writes for ``password``."""
    salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
    dk = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, HASH_LEN)
    return f"${HASH_ID}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """True if ``hashed`` (a ``$7$`` password-file hash) is the hash of ``password``."""
    try:
        _, hid, iterations, salt, dk = hashed.split("$")
        if hid != HASH_ID:
            return False
        want = base64.b64decode(dk, validate=True)
        got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), base64.b64decode(salt, validate=True),
                                  int(iterations), len(want))
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def new_password() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    password: str


@dataclass
class BrokerFiles:
    out: Path
    conf: Path
    acl: Path
    passwd: Path
    credentials: dict[str, Path]
    identities: list[Identity]
    prefix: str = "edge"
    created: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)   # credential files of names no longer enrolled
    #: the monitor's logins for its connections 1..N-1 (its password, its rights; no file of their own)
    instances: list[str] = field(default_factory=list)
    #: NAME.policy of each archive login (`archive policy publish`; its password, policies only)
    publishers: list[str] = field(default_factory=list)
    #: the operators' other logins ops.1 … (one per operator host; the ops password, its rights)
    ops_instances: list[str] = field(default_factory=list)


# -- the ACL ----------------------------------------------------------------------------------
def _device_write(t: Topics, d: str) -> list[str]:
    """Every topic a device publishes, for device id (or pattern) ``d``."""
    return [t.status(d), t.health(d), t.alarm(d, "+"), t.component(d, "+"), t.chain(d), t.ratio(d),
            t.cmd_resp(d)] + [t.xfer(d, "+", k) for k in XFER_KINDS]


def _subtrees(t: Topics, d: str) -> list[str]:
    """``P/dev/D/#`` and ``P/xfer/D/#``: the levels above ``D`` in the topics a device writes."""
    return sorted({topic.split(f"/{d}/")[0] + f"/{d}/#" for topic in _device_write(t, d)})


def _device_read(t: Topics, d: str) -> list[str]:
    return [t.ack(d), t.cmd(d), t.archive_status(), t.all_archive_receivers()]


def _state_topics(t: Topics, d: str) -> list[str]:
    """What the monitor shows: a device's retained state and health."""
    return [t.status(d), t.health(d), t.alarm(d, "+"), t.component(d, "+"), t.chain(d), t.ratio(d)]


POLICY = "policy"   # the instance of each archive login that `archive policy publish` uses


def monitor_logins(monitor: str, connections: int) -> list[str]:
    """Every login of the monitor: ``monitor`` for its first connection, ``monitor.K`` for the others."""
    return [instance_user(monitor, k) for k in range(connections)]


def acl_text(prefix: str = "edge", services: dict[str, str] | None = None,
             units: dict[str, str] | None = None, receivers: Iterable[str] = (),
             monitor_connections: int = MONITOR_CONNECTIONS, ops_logins: int = OPS_LOGINS) -> str:
    """The Mosquitto ACL file. Devices get ``pattern`` lines (``%u`` = their user name = device
    id); each service identity gets a ``user`` block. Mosquitto also applies the patterns to the
    service identities, so each block first denies the device subtrees under its own name.
    ``units`` (device id -> unit code, from the enrolment) adds one block per device: read the
    policy of its own unit."""
    s = _services(services)
    t = Topics(prefix)
    lines = [
        "# Mosquitto ACL for edge-agent, generated by `edge-agent archive broker-config`.",
        f"# Topic prefix {prefix!r}. Anything not allowed here is refused: a refused publish gets",
        "# PUBACK 0x87 and is not delivered; a refused read is never delivered.",
        "",
        "# Devices (MQTT user name = device id): publish only in their own subtree, read only",
        "# their own answers and commands, and the archive's status.",
    ]
    lines += [f"pattern write {topic}" for topic in _device_write(t, "%u")]
    lines += [f"pattern read {topic}" for topic in _device_read(t, "%u")]
    lines += ["", "# Every login: its own session claim (which process holds the login now; one login, one session:",
              "# a process whose session another took over reads it there and stops instead of taking it back)",
              f"pattern readwrite {t.session('%u')}"]

    def block(name: str, comment: str, rules: list[tuple[str, str]]) -> list[str]:
        out = ["", f"# {comment}", f"user {name}"]
        # the patterns would grant a device of this name its subtrees: refuse them
        out += [f"topic deny {topic}" for topic in _subtrees(t, name) + [t.ack(name)]]
        out += [f"topic {access} {topic}" for access, topic in rules]
        return out

    archive_rules = [("read", t.all_xfer()), ("read", t.all_chains()), ("write", t.ack("+")),
                     ("readwrite", t.archive_status()), ("readwrite", t.all_archive_receivers()),
                     ("write", t.all_unit_policies()), ("write", t.archive_checkpoint())]
    lines += block(s["archive"], "Archive receivers: the only readers of transfers and checkpoints, the only "
                   "writers of answers (receipts) and of the units' signed policies.", archive_rules)
    for rid in sorted(set(receivers)):  # enrolled receivers: each its own identity, the same rights
        lines += block(rid, f"Archive receiver {rid} (enrolled with a key of its own: `archive receiver add`).",
                       archive_rules)
    for name in [s["archive"], *sorted(set(receivers))]:  # `archive policy publish` beside the receiver
        lines += block(instance_user(name, POLICY), f"`archive policy publish` with the credentials of {name} (one "
                       "login, one session: never the receiver's own): the units' signed policies only.",
                       [("write", t.all_unit_policies())])
    monitor_rules = [("read", topic) for topic in _state_topics(t, "+")] \
        + [("read", t.archive_status()), ("read", t.all_archive_receivers()), ("read", t.all_unit_policies()),
           ("read", t.archive_checkpoint())]
    lines += block(s["monitor"], "Monitor: reads device state, the archive's status and the units' policies, writes "
                   "nothing.", monitor_rules)
    for login in monitor_logins(s["monitor"], monitor_connections)[1:]:
        lines += block(login, f"Monitor, its connection {login.rsplit('.', 1)[1]} (one login per connection: "
                       "use_username_as_clientid).", monitor_rules)
    ops_rules = [("write", t.cmd("+")), ("read", t.cmd_resp("+")), ("read", t.status("+"))]
    lines += block(s["ops"], "Operators (edge-agent command send): signed commands out, answers and status in.",
                   ops_rules)
    for login in monitor_logins(s["ops"], ops_logins)[1:]:
        lines += block(login, f"Operators, their host {login.rsplit('.', 1)[1]} (one login per operator host: "
                       "use_username_as_clientid).", ops_rules)
    if units:
        lines += ["", "# Each device reads the signed policy of its own unit (the unit it is enrolled for)."]
        for dev in sorted(units):
            lines += [f"user {dev}", f"topic read {t.unit_policy(units[dev])}"]
    return "\n".join(lines) + "\n"


# -- the broker configuration ------------------------------------------------------------------
def _check_conf_path(what: str, value) -> None:
    """A path written into mosquitto.conf: absolute, one line, no blanks (Mosquitto splits there)."""
    if value is None:
        return
    text = str(value)
    if not text.startswith("/") or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise EdgeError(f"路径不可用于代理配置 / {what} {text!r}: an absolute path without blanks or control "
                        "characters (it is written into mosquitto.conf)")


TLS_IDENTITIES = ("password", "certificate")   # how a client on the TLS listener proves who it is


def _check_tls_identity(tls_identity: str) -> None:
    if tls_identity not in TLS_IDENTITIES:
        raise EdgeError(f"TLS 身份方式不合法 / --tls-identity {tls_identity!r}: {' or '.join(TLS_IDENTITIES)}")


def plain_listener(port: int = 1883, address: str = "127.0.0.1") -> list[str]:
    """The plain listener of the generated mosquitto.conf (loopback only): its ``listener`` block."""
    return [
        f"listener {port} {address}",
        "# one login, one session: the client id is the user name, so no login can take over",
        "# (and disconnect) another's session; a second connection with the same login ends the first",
        "use_username_as_clientid true",
    ]


def tls_listener(port: int, cafile: str, certfile: str, keyfile: str, *, tls_identity: str = "password",
                 crlfile: str | None = None, address: str | None = None) -> list[str]:
    """The TLS listener of the generated mosquitto.conf (every address unless ``address``).
    ``tls_identity``: ``password`` (the password file, as on the loopback) or ``certificate``
    (mutual TLS: a client certificate from ``cafile`` is required and its CN is the user name,
    so the ACL applies to the CN and no password is asked; the CN is also the session).
    ``crlfile``: with certificates, the CA's revocation list (a revoked certificate is refused)."""
    _check_tls_identity(tls_identity)
    if crlfile and tls_identity != "certificate":
        raise EdgeError("吊销列表只用于证书身份 / --crlfile revokes client certificates: it needs "
                        "--tls-identity certificate")
    lines = [f"listener {port}" + (f" {address}" if address else ""), "use_username_as_clientid true",
             f"cafile {cafile}", f"certfile {certfile}", f"keyfile {keyfile}", "tls_version tlsv1.2"]
    if tls_identity == "certificate":
        lines += ["require_certificate true", "use_identity_as_username true"]
        if crlfile:
            lines.append(f"crlfile {crlfile}")
    return lines


def conf_text(conf_dir: Path | str, *, port: int = 1883, tls_port: int | None = None, cafile: str | None = None,
              certfile: str | None = None, keyfile: str | None = None, tls_identity: str = "password",
              crlfile: str | None = None) -> str:
    """A mosquitto.conf snippet (for /etc/mosquitto/conf.d/): identities and ACL on, anonymous
    off; the plain listener on the loopback only, TLS on any other address; on every listener the
    client id is the login's user name (a per-listener option in Mosquitto 2.0: after each
    ``listener`` line). ``tls_identity="certificate"``: on the TLS listener the client
    certificate's CN is the identity (the ACL applies to it unchanged), not a password;
    ``crlfile`` then refuses the certificates it revokes."""
    for what, value in (("--conf-dir", conf_dir), ("--cafile", cafile), ("--certfile", certfile),
                        ("--keyfile", keyfile), ("--crlfile", crlfile)):
        _check_conf_path(what, value)
    _check_tls_identity(tls_identity)
    if tls_identity != "password" and not tls_port:
        raise EdgeError("证书身份需要 TLS 监听 / --tls-identity certificate needs the TLS listener (--tls-port, "
                        "--cafile, --certfile, --keyfile)")
    conf_dir = Path(conf_dir)
    lines = [
        "# Mosquitto 2.0 settings for edge-agent, generated by `edge-agent archive broker-config`.",
        f"# Install (docs/security.md): passwd and acl in {conf_dir}/ (readable by the broker only),",
        "# this file as /etc/mosquitto/conf.d/edge-agent.conf, then restart mosquitto.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {conf_dir / PASSWD}",
        f"acl_file {conf_dir / ACL}",
        "set_tcp_nodelay true",
        "",
        "# plain MQTT only on the loopback (an agent or archive on the broker host)",
        *plain_listener(port),
    ]
    if tls_port:
        if not (cafile and certfile and keyfile):
            raise EdgeError("TLS 监听需要 CA、证书和私钥 / a TLS listener needs --cafile, --certfile and --keyfile")
        lines += [""] + (["# every other address: TLS (the broker's certificate; identities by password)"]
                         if tls_identity == "password" else
                         ["# every other address: mutual TLS; a client certificate issued by the CA is required and",
                          "# its CN is the user name (device id, archive, monitor, ops): the ACL applies to the CN,",
                          "# no password is asked; the CN is the session (one connection per certificate)"])
        lines += tls_listener(tls_port, cafile, certfile, keyfile, tls_identity=tls_identity, crlfile=crlfile)
    else:
        lines += ["", "# for stations on the network add a TLS listener (broker-config --tls-port 8883 --cafile ...):",
                  "# listener 8883", "# use_username_as_clientid true", "# cafile /etc/mosquitto/certs/ca.crt", "# certfile /etc/mosquitto/certs/broker.crt",
                  "# keyfile /etc/mosquitto/certs/broker.key"]
    return "\n".join(lines) + "\n"


# -- identities -------------------------------------------------------------------------------
def _services(services: dict[str, str] | None) -> dict[str, str]:
    s = dict(DEFAULT_SERVICES)
    s.update({k: v for k, v in (services or {}).items() if v})
    unknown = set(s) - set(DEFAULT_SERVICES)
    if unknown:
        raise EdgeError(f"未知的服务身份 / unknown service identity: {', '.join(sorted(unknown))}")
    for role, name in s.items():
        if not safe_segment(name):
            raise EdgeError(f"服务身份名称不合法 / {role} user name {name!r}: letters, digits, '_', '.', '-' only")
    if len(set(s.values())) != len(s):
        raise EdgeError(f"服务身份名称重复 / service user names must differ: {s}")
    return s


def _read_credential(path: Path) -> str | None:
    """The password in a credentials file (an ``[mqtt]`` fragment of a config, read and checked
    by the config schema like any config file)."""
    try:
        password = config_mod.load(path).mqtt.password
    except ConfigError as exc:
        problem = str(exc).removeprefix(f"{path}: ")
        raise EdgeError(f"凭据文件无法读取 / credentials file {path} unreadable: {problem}; "
                        "fix or remove it (removing it gives that identity a new password)") from None
    return password or None


def _credential_text(ident: Identity) -> str:
    where = {"device": "this device's agent config (/etc/edge-agent/agent.toml)",
             "archive": "the archive's config (archive.toml)", "monitor": "the monitor's config (monitor.toml)",
             "ops": "the operator's config (edge-agent --config ... command send)"}[ident.role]
    return (f"# MQTT 身份 / identity {ident.name} (role {ident.role}), generated by `edge-agent archive broker-config`.\n"
            f"# 复制到 / copy into the [mqtt] section of {where}; keep it secret (root only).\n"
            f"[mqtt]\nusername = \"{ident.name}\"\npassword = \"{ident.password}\"\n")


def _read_passwd(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            name, sep, hashed = line.partition(":")
            if sep and not line.startswith("#"):
                out[name] = hashed
    return out


def generate(out: Path | str, devices: Iterable[str], *, prefix: str = "edge", services: dict[str, str] | None = None,
             rotate: Iterable[str] = (), rotate_all: bool = False, conf_dir: Path | str | None = None,
             port: int = 1883, tls_port: int | None = None, cafile: str | None = None, certfile: str | None = None,
             keyfile: str | None = None, tls_identity: str = "password", crlfile: str | None = None,
             units: dict[str, str] | None = None,
             receivers: Iterable[str] = (), monitor_connections: int = MONITOR_CONNECTIONS,
             ops_logins: int = OPS_LOGINS) -> BrokerFiles:
    """Write ``OUT/mosquitto.conf``, ``OUT/acl``, ``OUT/passwd`` and ``OUT/credentials/NAME.toml``
    (0600, directory 0700). Existing passwords are kept unless the name is in ``rotate``.
    ``units`` (device id -> unit code) lets each device read its own unit's policy.
    ``monitor_connections``: the monitor's logins (``monitor``, ``monitor.1`` …), one per connection.
    ``ops_logins``: the operators' logins (``ops``, ``ops.1`` …), one per operator host.
    ``tls_identity``: ``password`` or ``certificate`` (the TLS listener takes the client
    certificate's CN as the user name; see :func:`tls_listener`), ``crlfile`` its revocation list."""
    out = Path(out)
    s = _services(services)
    if not isinstance(monitor_connections, int) or not 1 <= monitor_connections <= 64:
        raise EdgeError(f"监控连接数不合法 / --monitor-connections {monitor_connections!r}: 1 to 64 (the monitor's "
                        "--connections)")
    if not isinstance(ops_logins, int) or not 1 <= ops_logins <= 64:
        raise EdgeError(f"操作员登录名数量不合法 / --ops-logins {ops_logins!r}: 1 to 64 (one per operator host)")
    instances = monitor_logins(s["monitor"], monitor_connections)[1:]
    ops_instances = monitor_logins(s["ops"], ops_logins)[1:]
    receivers = sorted(set(receivers))
    publishers = {name: instance_user(name, POLICY) for name in [s["archive"], *receivers]}
    if not safe_segment(prefix):
        raise EdgeError(f"主题前缀不合法 / unsafe topic prefix {prefix!r}: letters, digits, '_', '.', '-' only")
    devices = sorted(set(devices))
    for d in devices:
        if not safe_segment(d):
            raise EdgeError(f"设备编号不能作为用户名 / device id {d!r} cannot be an MQTT user name")
    clash = sorted(set(devices) & (set(s.values()) | set(instances) | set(ops_instances) | set(publishers.values())))
    if clash:
        raise EdgeError(f"设备编号与服务身份重名 / device id(s) {', '.join(clash)} equal a service user name; "
                        "choose other names with --archive-user/--monitor-user/--ops-user")
    for r in receivers:
        if not safe_segment(r):
            raise EdgeError(f"接收端编号不能作为用户名 / receiver id {r!r} cannot be an MQTT user name")
    clash = sorted(set(receivers) & (set(devices) | set(s.values()) | set(instances) | set(ops_instances)
                                     | set(publishers.values())))
    if clash:
        raise EdgeError(f"接收端编号与设备或服务身份重名 / receiver id(s) {', '.join(clash)} equal a device id or "
                        "a service user name")
    names = [(d, "device") for d in devices] + [(s[r], r) for r in ("archive", "monitor", "ops")] \
        + [(r, "archive") for r in receivers]
    units = {d: u for d, u in (units or {}).items() if d in devices}
    for d, u in units.items():
        if not safe_segment(u):
            raise EdgeError(f"单位代码不能作为主题 / unit code {u!r} of device {d} cannot be a topic level")
    rotate = set(rotate)
    unknown = rotate - {n for n, _ in names}
    if unknown:
        raise EdgeError(f"没有该身份 / no such identity to rotate: {', '.join(sorted(unknown))}")
    # everything that can be refused is checked before the first file is written
    acl = acl_text(prefix, s, units, receivers, monitor_connections, ops_logins)
    conf = conf_text(Path(conf_dir) if conf_dir else out.resolve(), port=port, tls_port=tls_port, cafile=cafile,
                     certfile=certfile, keyfile=keyfile, tls_identity=tls_identity, crlfile=crlfile)
    cred_dir = out / CREDENTIALS
    olds = {name: _read_credential(cred_dir / f"{name}.toml") if (cred_dir / f"{name}.toml").exists() else None
            for name, _ in names}
    old_hashes = _read_passwd(out / PASSWD)
    cred_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cred_dir, 0o700)
    files = BrokerFiles(out=out, conf=out / CONF, acl=out / ACL, passwd=out / PASSWD, credentials={}, identities=[],
                        prefix=prefix)
    passwd_lines = []
    for name, role in names:
        path = cred_dir / f"{name}.toml"
        old = olds[name]
        if old is not None and not rotate_all and name not in rotate:
            ident = Identity(name, role, old)
            files.kept.append(name)
        else:
            ident = Identity(name, role, new_password())
            (files.rotated if old is not None else files.created).append(name)
            atomic_write(path, _credential_text(ident).encode("utf-8"), mode=0o600)
        files.credentials[name] = path
        files.identities.append(ident)
        logins = [name] + (instances if name == s["monitor"] else []) + (ops_instances if name == s["ops"] else []) \
            + ([publishers[name]] if name in publishers else [])
        for login in logins:  # the monitor's and the operators' other logins, NAME.policy: its password, own salts
            hashed = old_hashes.get(login)
            if hashed is None or not check_password(ident.password, hashed):
                hashed = hash_password(ident.password)
            passwd_lines.append(f"{login}:{hashed}")
    files.instances = instances
    files.ops_instances = ops_instances
    files.publishers = sorted(publishers.values())
    known = {n for n, _ in names}
    files.stale = sorted(p.stem for p in cred_dir.glob("*.toml") if p.stem not in known)
    atomic_write(files.passwd, ("\n".join(passwd_lines) + "\n").encode(), mode=0o600)
    atomic_write(files.acl, acl.encode(), mode=0o644)
    atomic_write(files.conf, conf.encode(), mode=0o644)
    settings = {"prefix": prefix, "services": s, "conf_dir": str(conf_dir) if conf_dir else None, "port": port,
                "tls_port": tls_port, "cafile": cafile, "certfile": certfile, "keyfile": keyfile,
                "tls_identity": tls_identity, "crlfile": crlfile, "monitor_connections": monitor_connections,
                "ops_logins": ops_logins}
    atomic_write(out / SETTINGS, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)
    return files


def refresh(out: Path | str, devices: Iterable[str], units: dict[str, str] | None = None,
            receivers: Iterable[str] = ()) -> BrokerFiles:
    """generate() again with the settings of the last run in ``out`` (after an enrolment)."""
    out = Path(out)
    try:
        settings = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
        if not isinstance(settings, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        raise EdgeError(f"{out} 中没有消息代理配置 / no broker configuration in {out}: "
                        "run `edge-agent archive broker-config --out DIR` first") from None
    except (OSError, ValueError) as exc:
        raise EdgeError(f"{out / SETTINGS} 无法读取 / unreadable: {exc}") from None
    known = {"prefix", "services", "conf_dir", "port", "tls_port", "cafile", "certfile", "keyfile",
             "tls_identity", "crlfile", "monitor_connections", "ops_logins"}
    return generate(out, devices, units=units, receivers=receivers,
                    **{k: v for k, v in settings.items() if k in known})
