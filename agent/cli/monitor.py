"""Central monitoring: `edge-agent monitor` (live view, web page), `monitor roster import`,
`monitor fleet`, `monitor history`, `monitor checkpoints`, `monitor db upgrade`; the `report` group
is in report.py."""

from __future__ import annotations

import csv
import io
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import click

from .. import config as config_mod
from agent.common.errors import ConfigError, EdgeError, SessionTakenOver
from agent.common.fs import read_csv_text
from . import main
from .base import Ctx, db_upgrade, emit_json, emit_json_line, json_lines_option, json_option, pass_ctx

DEFAULT_DB = "/var/lib/edge-agent/monitor.db"
db_option = click.option("--db", "db", envvar="EDGE_MONITOR_DB", default=DEFAULT_DB, show_default=True,
                         help="Monitor database: a SQLite file or a postgresql://USER@HOST:PORT/NAME URL (env EDGE_MONITOR_DB).")


def _broker(value: str | None, cfg) -> tuple[str, int, bool | None]:
    """HOST, PORT and TLS (None: as configured) of --broker (wire.client.parse_broker's forms)."""
    if not value:
        return (cfg.mqtt.host, cfg.mqtt.port, None) if cfg else ("127.0.0.1", 1883, None)
    from agent.wire.client import parse_broker

    addr = parse_broker(value)
    return addr.host, addr.port, addr.tls


def _optional_cfg(c: Ctx):
    """The agent config when there is one (for MQTT TLS settings and the topic prefix)."""
    path = config_mod.config_path(c.config_path)
    if not path.exists():
        if c.config_path:
            raise ConfigError(f"{path}: 配置文件不存在 / config file not found")
        return None
    return c.cfg


@main.group(invoke_without_command=True)
@click.option("--web", "web_port", type=click.IntRange(0, 65535), help="Serve the web page and JSON API on this port (0: any free port).")
@click.option("--web-host", default="127.0.0.1", show_default=True, help="Address the web page listens on.")
@db_option
@click.option("--broker", "brokers", multiple=True,
              help="MQTT broker HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; repeat it for every broker "
                   "(independent brokers: the monitor subscribes to each) (default: mqtt.host/port and "
                   "mqtt.fallback of the config, else 127.0.0.1:1883).")
@click.option("--prefix", help="Topic prefix (default: mqtt.topic_prefix, else edge).")
@click.option("--lost-after", type=click.IntRange(5, 86400), default=120, show_default=True,
              help="Seconds of silence after which an online device is shown as lost.")
@click.option("--tui/--no-tui", default=None, help="Live terminal view (default: when stdout is a terminal).")
@click.option("--duration", type=click.FloatRange(0.1), help="Stop after this many seconds (tests, benchmarks).")
@click.option("--enrolment", "enrolment", envvar="EDGE_MONITOR_ENROLMENT", type=click.Path(file_okay=False),
              help="Archive root whose enrolment (ROOT/archive.db, read-only) names the devices, their units and "
                   "public keys, or the postgresql:// URL of the archive's index; re-read every 10 s (env "
                   "EDGE_MONITOR_ENROLMENT; default archive.db of the config when it is a postgresql:// URL, else "
                   "archive.root). Only what an enrolled device signed is shown.")
@click.option("--connections", type=click.IntRange(1, 64), default=8, show_default=True,
              help="MQTT connections: one for the archive's checkpoints (and P/dev/# with the catch-all) and the "
                   "rest sharing the enrolled devices, so a flood fills only its own share's queue at the broker. With "
                   "a client certificate and no user name (certificate identities: every connection would be the "
                   "certificate's one session) the default is 1 and more is refused.")
@click.option("--catch-all/--no-catch-all", "catch_all", default=None,
              help="Also subscribe P/dev/# on the first connection, to count messages of devices that are not "
                   "enrolled (default: only when connecting anonymously; through the shipped broker configuration "
                   "only enrolled devices can publish, each in its own subtree, which the shares already carry).")
@click.option("--archive-key", "archive_key_files", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A public key of the archive (PEM) its checkpoints may be signed with; repeat it for each. Default: "
                   "ROOT/_archive/archive.pub and its retired keys of the --enrolment root (needed when the enrolment "
                   "is a postgresql:// URL).")
@click.option("--flush-s", type=click.FloatRange(0.05, 10), default=1.0, show_default=True,
              help="Seconds between two writes of the state (one transaction each): what the page lags behind at "
                   "most, and what a crash loses.")
@json_lines_option
@pass_ctx
@click.pass_context
def monitor(ctx: click.Context, c: Ctx, web_port, web_host, db, brokers, prefix, lost_after, tui, duration, enrolment,
            connections, catch_all, archive_key_files, flush_s, as_json):
    """Watch the fleet: subscribe to every device topic, keep state and history in SQLite or
    PostgreSQL (--db postgresql://...), show a
    live terminal view and (with --web) a web page with units, devices, alarms and compliance.

    A device's state is only what that device signed with the key it is enrolled with at the
    archive (--enrolment ROOT); its unit is the enrolled one. Unsigned, badly signed, unknown,
    replayed and flooding messages are counted as rejected (page, `monitor fleet`), never
    applied. Stop with Ctrl-C or SIGTERM; exits 1 if its ingest worker dies.

    \b
    Example:
      edge-agent monitor --broker 127.0.0.1:1883 --db ./monitor.db --enrolment /srv/archive --web 8080
      edge-agent monitor --db postgresql://monitor@db1:5432/monitor --enrolment postgresql://archive@db1:5432/archive
      edge-agent monitor roster import officers.csv --db ./monitor.db
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..archive.registry import read_enrolment
    from ..monitor.enrolment import Enrolment
    from ..monitor.ingest import Ingest, IngestSettings
    from ..monitor.state import check_db_arg, open_monitor_db
    from agent.common.pg import is_url, redact

    cfg = _optional_cfg(c)
    root = enrolment or (cfg.archive.db if cfg is not None and is_url(cfg.archive.db) else None) \
        or (cfg.archive.root if cfg is not None and cfg.archive.root else None)
    if not root:
        raise EdgeError("需要设备登记 / no enrolment: give --enrolment ARCHIVE_ROOT (or EDGE_MONITOR_ENROLMENT, or "
                        "archive.root in the config); the monitor shows only what enrolled devices signed")
    where = root if is_url(root) else Path(root)  # an archive root, or its index on PostgreSQL
    rows = read_enrolment(where)  # refuses a root without an enrolment before anything starts
    enrolled = Enrolment(lambda: read_enrolment(where), source=redact(str(root)))
    if not rows:
        click.echo(f"monitor: the enrolment at {redact(str(root))} lists no device yet; every message is refused until one "
                   "is enrolled (`edge-agent archive enroll DEVICE_ID PUBKEY --unit UNIT_CODE --root ROOT`)", err=True)
    host, port, use_tls = _broker(brokers[0] if brokers else None, cfg)
    if brokers:
        more = [_broker(b, cfg)[:2] for b in brokers[1:]]
    else:
        from agent.wire.client import fallback_addresses

        more = list(fallback_addresses(cfg.mqtt.fallback, tls=bool(cfg.mqtt.tls))) if cfg else []
    path = check_db_arg(db)
    s = IngestSettings(host=host, port=port, prefix=prefix or (cfg.mqtt.topic_prefix if cfg else "edge"),
                       connections=connections, more_brokers=tuple(more), flush_s=flush_s, catch_all=catch_all)
    if cfg is not None:
        m = cfg.mqtt
        s.username, s.password, s.tls = m.username, m.password, m.tls
        s.cafile, s.certfile, s.keyfile, s.keepalive = m.cafile, m.certfile, m.keyfile, m.keepalive
    if use_tls is not None:
        s.tls = use_tls
    s.allow_plaintext = bool(cfg is not None and cfg.mqtt.allow_plaintext)
    from ..monitor.connections import certificate_login, one_connection_note

    cert_login = certificate_login(s)  # every connection would be the certificate's one session
    if cert_login is not None and connections > 1:
        if ctx.get_parameter_source("connections") not in (click.core.ParameterSource.DEFAULT,
                                                           click.core.ParameterSource.DEFAULT_MAP):
            raise ConfigError(
                f"--connections {connections}: 证书身份下监控只能用一个连接 / with a client certificate and no [mqtt] "
                f"username every connection logs in as the certificate's CN {cert_login!r}, and the broker keeps one "
                f"session per login: {connections} connections would end each other. Use --connections 1 (or leave it "
                "out), or give the monitor password logins (monitor, monitor.1 …: [mqtt] username and password, "
                "archive broker-config --monitor-connections N)")
        s.connections = 1
        click.echo(f"monitor: {one_connection_note(cert_login)}", err=True)
    from agent.wire.client import check_plaintext

    check_plaintext([(s.host, s.port), *s.more_brokers], s.tls, s.allow_plaintext)  # before anything starts
    try:
        from agent.wire.topics import Topics

        Topics(s.prefix)
    except ValueError as exc:
        raise EdgeError(f"--prefix: {exc}") from None
    if as_json:
        tui = False  # stdout carries the JSON lines
    elif tui is None:
        tui = sys.stdout.isatty()
    # under the live view only warnings reach the terminal (they would scroll it)
    logging.basicConfig(level=logging.WARNING if tui else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db_ = open_monitor_db(path)
    from ..archive.chain import read_chain_alarms

    from ..archive.merkle import archive_public_keys
    from agent.evidence import keys as keys_mod

    def archive_keys() -> list:
        pinned = [keys_mod.load_public(p) for p in archive_key_files]
        return pinned + (archive_public_keys(where) if not is_url(str(where)) else [])

    if not archive_keys():
        click.echo("monitor: no archive key known (--archive-key): every archive checkpoint will raise "
                   "archive_log_inconsistent", err=True)
    ing = Ingest(db_, s, enrolled, archive_alarms=lambda: read_chain_alarms(where), archive_keys=archive_keys)
    web = None
    if web_port is not None:
        from ..monitor.web import WebServer

        web = WebServer(path, web_port, lost_after, host=web_host)
    stop = threading.Event()

    def _sig(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, _sig)
    signal.signal(signal.SIGINT, _sig)
    # paho's network thread reads one packet per turn at the GIL: switch often so the worker's
    # verifying never keeps it from draining the socket (agent/monitor/ingest.py)
    sys.setswitchinterval(0.0005)
    ing.start()
    ing.flush()
    if web is not None:
        web.start()
    url = f" web http://{web_host}:{web.port}/" if web else ""
    if not ing.subscribed.wait(5):
        click.echo(f"monitor: broker {host}:{port} not reachable yet; retrying in the background", err=True)
    more_txt = "".join(f", {h}:{p}" for h, p in more)
    if as_json:
        emit_json_line("ready", db=redact(str(path)), broker=f"{host}:{port}", prefix=s.prefix, enrolled=len(enrolled),
                       brokers=[f"{h}:{p}" for h, p in [(host, port), *more]],
                       web=f"http://{web_host}:{web.port}/" if web else None, subscribed=ing.subscribed.is_set())
    else:
        click.echo(f"monitor: ready db {redact(str(path))} broker {host}:{port}{more_txt} prefix {s.prefix} enrolled {len(enrolled)}{url}",
                   err=True)
    deadline = time.monotonic() + duration if duration else None
    tui_thread = None
    if tui:
        from ..monitor import tui as tui_mod

        tui_thread = threading.Thread(target=tui_mod.run, args=(path, lost_after, stop), name="monitor-tui", daemon=True)
        tui_thread.start()
    try:
        while not stop.wait(0.2):
            if deadline and time.monotonic() >= deadline:
                break
            if not ing.alive():
                break
    finally:
        stop.set()
        if web is not None:
            web.stop()
        ing.stop()
        st = ing.stats()
        db_.close()
        if as_json:
            emit_json_line("stopped", ok=not ing.failed, stats=st)
        else:
            click.echo("monitor: stopped; " + " ".join(f"{k}={v}" for k, v in sorted(st.items())), err=True)
    if getattr(ing, "taken_over", None):  # exit status 6: systemd does not restart us into a fight
        raise SessionTakenOver(ing.taken_over)
    if ing.failed:
        raise EdgeError(f"监控接收线程已停止 / {ing.failed}; exiting so that the service manager restarts the monitor")


@monitor.command("fleet")
@db_option
@click.option("--lost-after", type=click.IntRange(5, 86400), default=120, show_default=True)
@json_option
def monitor_fleet(db, lost_after, as_json):
    """Print the fleet as the monitor last stored it: units with compliance, devices, alarms.

    \b
    Example:
      edge-agent monitor fleet --db ./monitor.db --json
    """
    from ..monitor.state import check_db_arg, connect, fleet

    conn = connect(check_db_arg(db), readonly=True)
    try:
        f = fleet(conn, lost_after)
    finally:
        conn.close()
    if as_json:
        emit_json(f)
        return
    from rich.console import Console

    from ..monitor.tui import render

    Console().print(render(f, max_devices=1000))


@monitor.command("history")
@db_option
@click.option("--device", help="One device id.")
@click.option("--unit", help="One unit code (every device of the unit).")
@click.option("--since", help="From this time: 2026-12-04, 2026-12-04T08:00[+08:00], or a span back from now "
                               "(30m, 2h, 7d). Default: the beginning.")
@click.option("--until", help="Up to this time (same forms). Default: now.")
@click.option("--limit", type=click.IntRange(1, 10000), default=1000, show_default=True,
              help="At most this many events (the newest are kept).")
@json_option
def monitor_history(db, device, unit, since, until, limit, as_json):
    """Status changes (online, offline, a new birth) and alarms raised and cleared, of a device or a
    unit (or, with neither, the whole fleet) in a time range, oldest first, as the monitor stored
    them. Lost is not an event: it is shown while an online device stays silent.

    \b
    Example:
      edge-agent monitor history --device dock-0001 --since 2h --db ./monitor.db
      edge-agent monitor history --unit 330106 --since 2026-12-01 --until 2026-12-04T18:00 --json
    """
    from ..monitor.history import history, line, parse_time
    from ..monitor.state import check_db_arg, connect

    t0, t1 = parse_time(since, "--since"), parse_time(until, "--until")
    conn = connect(check_db_arg(db), readonly=True)
    try:
        h = history(conn, device=device, unit=unit, since=t0, until=t1, limit=limit)
    finally:
        conn.close()
    if as_json:
        emit_json(h)
        return
    for e in h["events"]:
        click.echo(line(e))
    if h["truncated"]:
        click.echo(f"注意 / note: more than {limit} events; the newest {limit} shown (--limit, --since)", err=True)
    if not h["events"]:
        click.echo("没有记录 / no events in this range", err=True)


@monitor.group("db")
def monitor_db():
    """The monitor's database: versioned schema migrations (SQLite or PostgreSQL)."""


@monitor_db.command("upgrade")
@db_option
@json_option
def monitor_db_upgrade(db, as_json):
    """Apply the schema migrations the monitor's database lacks (`edge-agent monitor` does this at
    start too) and list the migrations applied. A SQLite file that does not exist yet is created.

    \b
    Example:
      edge-agent monitor db upgrade --db postgresql://monitor@db.centre:5432/monitor
      edge-agent monitor db upgrade --db /var/lib/edge-agent/monitor.db --json
    """
    from ..monitor.schema import MIGRATIONS, PG_MIGRATIONS
    from ..monitor.state import check_db_arg, open_monitor_db

    store = open_monitor_db(check_db_arg(db), migrate=False)
    db_upgrade(store, [n for n, _ in (PG_MIGRATIONS if store.dialect == "postgresql" else MIGRATIONS)], as_json)


@monitor.command("checkpoints")
@db_option
@click.option("--show", "show_id", type=int, help="Print checkpoint ID exactly as the archive signed it (for `archive audit`).")
@click.option("--limit", type=click.IntRange(1, 100000), default=1000, show_default=True, help="At most the newest this many.")
@click.option("--acknowledge", "ack_id", type=int,
              help="Acknowledge inconsistent checkpoint ID after looking into it (with --reason): the running monitor "
                   "clears archive_log_inconsistent when none is left, and checks the next checkpoints against this "
                   "one when the archive's key signed it.")
@click.option("--reason", help="With --acknowledge: what was found and done (kept with the checkpoint).")
@click.option("--as", "who", help="With --acknowledge: who acknowledges (default: the login name).")
@json_option
def monitor_checkpoints(db, show_id, limit, ack_id, reason, who, as_json):
    """The archive's checkpoints this monitor kept (every one the archive published on
    P/archive/checkpoint, oldest first) with its verdict: first, same, consistent (the proof from
    the one before verifies), gap (published while the monitor was away: unproven), inconsistent
    (raised archive_log_inconsistent). An auditor takes one kept here to `archive audit` to prove
    the archive's store still extends it.

    \b
    Example:
      edge-agent monitor checkpoints --db ./monitor.db
      edge-agent monitor checkpoints --db ./monitor.db --show 3 > kept.json
      edge-agent archive audit kept.json --root /srv/archive
      edge-agent monitor checkpoints --db ./monitor.db --acknowledge 4 --reason "key rotation test, ticket 812"
    """
    import json

    from ..monitor.state import check_db_arg, connect
    from ..monitor.witness import acknowledge, checkpoint, checkpoints

    if ack_id is not None:
        import getpass

        from ..monitor.state import open_monitor_db

        d = open_monitor_db(check_db_arg(db))
        try:
            out = acknowledge(d, ack_id, who or getpass.getuser(), reason or "")
        finally:
            d.close()
        if as_json:
            emit_json(out)
        else:
            click.echo(f"已确认 / acknowledged checkpoint {ack_id} by {out['by']}: {out['reason']} "
                       "(the running monitor clears the alarm within its reload interval when none is left)")
        return
    elif reason or who:
        raise click.UsageError("--reason 与 --as 只用于 --acknowledge / --reason and --as go with --acknowledge")
    conn = connect(check_db_arg(db), readonly=True)
    try:
        if show_id is not None:
            cp = checkpoint(conn, show_id)
            if cp is None:
                raise EdgeError(f"没有该检查点 / no archive checkpoint {show_id} kept here (see `monitor checkpoints`)")
            click.echo(json.dumps(cp, ensure_ascii=False, sort_keys=True))
            return
        rows = checkpoints(conn, limit)
    finally:
        conn.close()
    if as_json:
        emit_json({"checkpoints": rows})
        return
    if not rows:
        click.echo("没有存档检查点 / no archive checkpoint received yet", err=True)
        return
    click.echo(f"{'ID':>5}  {'RECEIVED':25}  {'LEAVES':>8}  {'ROOT':16}  {'KEY':16}  VERDICT")
    for r in rows:
        click.echo(f"{r['id']:>5}  {r['received']:25}  {r['size'] if r['size'] is not None else '-':>8}  "
                   f"{(r['root'] or '-')[:16]:16}  {r['key_id'] or '-':16}  {r['verdict']}"
                   + (f": {r['detail']}" if r["detail"] else "")
                   + (f" [已确认 / acknowledged by {r['acknowledged']['by']}: {r['acknowledged']['reason']}]"
                      if r["acknowledged"] else ""))


@monitor.group("roster")
def roster():
    """Officers per unit (the equipment ratio is recorders ÷ officers)."""


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    text = read_csv_text(path)
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    try:
        return header, [(i + 2, r) for i, r in enumerate(reader)]
    except csv.Error as exc:
        raise EdgeError(f"{path}: 不是有效的 CSV / not valid CSV: {exc}") from None


def parse_roster(path: Path) -> list[dict]:
    from agent.wire.health import safe_key

    header, rows = _read_csv(path)
    if "unit_code" not in header or not ({"officers", "officer_id"} & set(header)):
        raise EdgeError(f"{path}: 表头缺少列 / header must have unit_code and officers (a count per unit) or officer_id "
                        f"(one row per officer); found: {', '.join(header) or 'nothing'}")
    out = []
    for line, r in rows:
        if None in r:
            raise EdgeError(f"{path}:{line}: 列数多于表头 / more fields than the header")
        unit = (r.get("unit_code") or "").strip()
        if not safe_key(unit):
            raise EdgeError(f"{path}:{line}: 单位编号无效 / unit_code {unit!r}: letters, digits, '_', '.', '-' only")
        rec = {"unit_code": unit, "unit_name": (r.get("unit_name") or "").strip() or None}
        if (r.get("officers") or "").strip():
            v = r["officers"].strip()
            if not v.isdigit() or int(v) > 1_000_000:
                raise EdgeError(f"{path}:{line}: 人数无效 / officers {v!r}: expected a whole number 0..1000000")
            rec["officers"] = int(v)
        elif (r.get("officer_id") or "").strip():
            oid = r["officer_id"].strip()
            if len(oid) > 64 or any(ch in oid for ch in "\r\n\t"):
                raise EdgeError(f"{path}:{line}: 警号无效 / officer_id {oid[:20]!r}: at most 64 characters, one line")
            rec["officer_id"] = oid
            rec["name"] = (r.get("name") or "").strip()[:64]
        else:
            raise EdgeError(f"{path}:{line}: 缺少人数或警号 / neither officers nor officer_id given")
        out.append(rec)
    if not out:
        raise EdgeError(f"{path}: 表头下没有数据 / no rows under the header")
    return out


@roster.command("import")
@click.argument("csv_path", type=click.Path(path_type=Path, dir_okay=False))
@db_option
@json_option
def roster_import(csv_path: Path, db, as_json):
    """Import officers per unit from CSV (UTF-8 or GB18030, as Excel writes it). Either a count per
    unit (columns unit_code, unit_name, officers) or one row per officer (unit_code, unit_name,
    officer_id, name). The units named replace their previous officers; others are kept.

    \b
    Example:
      printf 'unit_code,unit_name,officers\\n330106,西湖区执法大队,42\\n' > officers.csv
      edge-agent monitor roster import officers.csv --db ./monitor.db
    """
    from ..monitor.state import check_db_arg, open_monitor_db

    if not csv_path.exists():
        raise EdgeError(f"{csv_path}: 文件不存在 / no such file")
    rows = parse_roster(csv_path)
    d = open_monitor_db(check_db_arg(db))
    try:
        counts = d.import_roster(rows, source=f"roster {csv_path.name}")
    finally:
        d.close()
    if as_json:
        emit_json({"units": counts})
        return
    for unit, n in sorted(counts.items()):
        click.echo(f"{unit}: {n} 名执法人员 / officers")
