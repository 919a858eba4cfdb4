"""`edge-agent doctor`: checks a technician runs after installing or when something is wrong.
Each check returns OK, WARN or FAIL, in Chinese and English; a finding names the config key at
fault (``key``) and the command that fixes it (``fix``)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import glob
import json
import os
import shlex
import socket
import stat
from pathlib import Path

from agent import config as config_mod
from agent.common.errors import EdgeError


@dataclasses.dataclass
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    detail: str
    key: str = ""   # the config key at fault, when one is
    fix: str = ""   # the command line that fixes it, when one does


def _ok(name, detail, key="", fix=""):
    return Check(name, "OK", detail, key, fix)


def _warn(name, detail, key="", fix=""):
    return Check(name, "WARN", detail, key, fix)


def _fail(name, detail, key="", fix=""):
    return Check(name, "FAIL", detail, key, fix)


#: values ``edge-agent init`` writes that no real station keeps: key -> (placeholder, example of a real value)
PLACEHOLDERS = {
    "device.id": ("dev-0001", "dock-01"),
    "device.unit_code": ("330100000000", "330106000000"),
    "device.unit_name": ("示例执法单位", "西湖区综合行政执法局"),
    "device.location": ("未设置地点 / location not set", "西湖区文三路18号采集室"),
    "dock.admin_password": ("000000", "PASSWD"),
}


def check_placeholders(cfg) -> list[Check]:
    """A value left as ``init`` wrote it: the station would seal evidence under a made-up unit,
    id or place, or talk to recorders with the factory password."""
    out = []
    for key, (placeholder, example) in PLACEHOLDERS.items():
        if key.startswith("dock.") and cfg.device.kind != "dock":
            continue
        if cfg.get(key) != placeholder:
            continue
        shown = "******" if "password" in key else placeholder
        out.append(_fail("placeholder", f"{key} 仍是初始化时的占位值 {shown} / {key} is still the placeholder "
                                        f"{shown} written by init", key=key,
                         fix=f'edge-agent config set {key} "{example}"'))
    if not out:
        out.append(_ok("placeholder", "设备编号、单位、地点已设置 / device id, unit and place are set"))
    return out


def check_config(path) -> tuple[Check, config_mod.Config | None]:
    try:
        cfg = config_mod.load(path)
    except EdgeError as exc:
        return _fail("config", f"{exc} — 修改配置文件或运行初始化 / fix the file or run init",
                     fix=f"edge-agent --config {config_mod.config_path(path)} init"), None
    return _ok("config", f"配置有效 / {cfg.path} is valid (device {cfg.device.id}, kind {cfg.device.kind})"), cfg


def check_keys(cfg) -> Check:
    key = Path(cfg.storage.data_dir) / "keys" / "device.key"
    if not key.exists():
        return _fail("device key", f"设备密钥不存在 / {key} missing", key="storage.data_dir",
                     fix=f"edge-agent --config {cfg.path} init")
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        return _fail("device key", f"设备私钥可被他人读取 / {key} has mode {mode:o}", key="storage.data_dir",
                     fix=f"chmod 600 {key}")
    return _ok("device key", f"设备私钥仅本用户可读 / {key} mode 600")


def check_disk(cfg) -> Check:
    d = Path(cfg.storage.data_dir)
    if not d.is_dir():
        return _fail("disk", f"数据目录不存在 / {d} does not exist", key="storage.data_dir",
                     fix=f"edge-agent --config {cfg.path} init")
    if not os.access(d, os.W_OK):
        return _fail("disk", f"数据目录不可写 / {d} is not writable by this user", key="storage.data_dir",
                     fix=f"chown -R edge-agent: {d}")
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
    reserve = cfg.storage.reserve_mb << 20
    if free < reserve:
        return _fail("disk", f"磁盘可用 {free >> 20} MiB，低于保留水位 {reserve >> 20} MiB，拒收新资料 / "
                             f"{free >> 20} MiB free, below the reserve of {reserve >> 20} MiB: new items are refused "
                             "— archive the backlog (archived copies are purged after storage.retention_days) or add disk",
                     key="storage.reserve_mb", fix="edge-agent uplink status")
    if free < 2 * reserve:
        return _warn("disk", f"磁盘可用 {free >> 20} MiB，不足保留水位两倍 / {free >> 20} MiB free, under twice the "
                             f"reserve ({reserve >> 20} MiB)", key="storage.reserve_mb", fix="edge-agent uplink status")
    return _ok("disk", f"磁盘可用 {free >> 20} MiB / {free >> 20} MiB free, reserve {reserve >> 20} MiB",
               key="storage.reserve_mb")


def check_clock(cfg, state: dict | None = None) -> Check:
    """The clock as the health report sees it (``agent.health.metrics.clock_state``: kernel NTP
    state and offset): unsynchronised, or off by more than ``health.clock_drift_alarm_ms``, fails
    (evidence times come from this clock)."""
    if state is None:
        from agent.health.metrics import clock_state

        state = clock_state()
    limit = cfg.health.clock_drift_alarm_ms
    off = state.get("offset_ms")
    fix = "timedatectl set-ntp true"
    if state.get("synchronized") is False:
        return _fail("clock", f"时钟未同步 / the clock is not synchronised ({state.get('source')}); evidence times "
                              "would be off — enable NTP or chrony", key="health.clock_drift_alarm_ms", fix=fix)
    if isinstance(off, int) and abs(off) > limit:
        return _fail("clock", f"时钟偏差 {off} 毫秒，超过允许的 {limit} 毫秒 / clock off by {off} ms, more than the "
                              f"{limit} ms allowed", key="health.clock_drift_alarm_ms", fix="chronyc makestep")
    if state.get("synchronized") is None:
        return _warn("clock", "无法判断时钟是否同步 / cannot tell whether the clock is synchronised",
                     key="health.clock_drift_alarm_ms", fix=fix)
    shown = f", offset {off} ms" if isinstance(off, int) else ""
    return _ok("clock", f"时钟已同步 / synchronised ({state.get('source')}{shown}, allowed {limit} ms)",
               key="health.clock_drift_alarm_ms")


def check_tls(cfg) -> list[Check]:
    out = []
    if not cfg.mqtt.tls:
        from agent.common.netaddr import is_loopback

        off = [h for h in [cfg.mqtt.host, *[f.split("://")[-1].rsplit(":", 1)[0].strip("[]/") for f in cfg.mqtt.fallback]]
               if not is_loopback(h)]
        if off and cfg.mqtt.allow_plaintext:  # the config refuses it otherwise; a lab said so
            return [_warn("tls", f"明文连接！/ PLAIN MQTT to {', '.join(off)} (not the loopback): the broker password and "
                                 "every message cross the network unencrypted; allowed only because "
                                 "mqtt.allow_plaintext = true — for a lab, never in service", key="mqtt.allow_plaintext",
                          fix="edge-agent config set mqtt.tls true")]
        return [_warn("tls", "未加密 / mqtt.tls is false: traffic to the broker is not encrypted", key="mqtt.tls",
                      fix="edge-agent config set mqtt.tls true")]
    from cryptography import x509

    for label, path in (("CA", cfg.mqtt.cafile), ("client certificate", cfg.mqtt.certfile)):
        if not path:
            k = f"mqtt.{'cafile' if label == 'CA' else 'certfile'}"
            out.append(_fail("tls", f"{k} 未设置 / {k} is empty", key=k, fix=f"edge-agent config set {k} /etc/edge-agent/tls/"
                                                                             f"{'ca.crt' if label == 'CA' else 'client.crt'}"))
            continue
        try:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            out.append(_fail("tls", f"证书无法读取 / {label} {path}: {exc}"))
            continue
        left = cert.not_valid_after_utc - _dt.datetime.now(_dt.timezone.utc)
        if left.total_seconds() < 0:
            out.append(_fail("tls", f"证书已过期 / {label} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d} — renew it"))
        elif left.days < 30:
            out.append(_warn("tls", f"证书即将过期 / {label} {path} expires in {left.days} days — renew it"))
        else:
            out.append(_ok("tls", f"证书有效 / {label} {path} valid until {cert.not_valid_after_utc:%Y-%m-%d}"))
    return out


#: the running agent's figures (DATA_DIR/uplink-status.json, written every 3 s) count as "running" this long
LIVE_FRESH_S = 30.0


def _held_by_running_agent(cfg) -> list[Check] | None:
    """The broker binds one session to each login (``use_username_as_clientid``), so a login of
    the doctor beside the running agent would end the agent's connection: while the agent's
    live figures say it is connected, report them instead of logging in. None: log in."""
    from agent.uplink.status import live_status

    live = live_status(cfg.storage.data_dir) or {}
    try:
        age = (_dt.datetime.now(_dt.timezone.utc) - _dt.datetime.fromisoformat(live["time"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None
    if not (live.get("running") and live.get("connected") and -LIVE_FRESH_S < age < LIVE_FRESH_S):
        return None
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    out = [_ok("broker", f"运行中的 edge-agent 已登录代理 / the running edge-agent is logged in to the broker at {where} "
                         f"(as of {live['time']}); doctor does not log in beside it: the broker keeps one session per "
                         "login, a second one would end the agent's")]
    if live.get("archive_reachable"):
        out.append(_ok("archive", "归档服务器在线 / an archive receiver is online (its signed status, verified by the "
                                  "running agent)"))
    else:
        out.append(_fail("archive", "运行中的 edge-agent 看不到在线的归档服务器 / the running edge-agent sees no verified "
                                    "online archive receiver — is `edge-agent archive serve` running, and its key pinned "
                                    "(`edge-agent uplink trust-archive archive.pub`)?"))
    return out


def check_broker(cfg, timeout: float = 5.0) -> list[Check]:
    try:
        socket.create_connection((cfg.mqtt.host, cfg.mqtt.port), timeout=timeout).close()
    except OSError as exc:
        return [_fail("broker", f"无法连接代理 / the broker at {cfg.mqtt.host}:{cfg.mqtt.port} is unreachable "
                                f"({exc.strerror or exc}) — check the network, that the broker runs, and mqtt.host / "
                                "mqtt.port", key="mqtt.host", fix="edge-agent config set mqtt.host BROKER_HOST")]
    held = _held_by_running_agent(cfg)
    if held is not None:
        return held
    from agent.uplink.trust import archive_trust
    from agent.wire.client import settings_from_config
    from agent.wire.session import exchange
    from agent.wire.receipts import ReceiptError
    from agent.wire.topics import Topics

    topics = Topics(cfg.mqtt.topic_prefix)
    try:
        trust = archive_trust(cfg)
    except EdgeError:
        trust = None
    verdicts: dict[str, str] = {}

    def judge(msgs) -> bool:
        """Receiver id -> 'online' / 'offline' (verified) or why not; True once one is verified online."""
        for topic, payload, _p in msgs:
            rid = topics.is_archive_receiver(topic)
            if rid is None or not payload:
                continue
            try:
                verdicts[rid] = trust.check_status(json.loads(payload), receiver=rid) if trust else "unverifiable"
            except (ValueError, ReceiptError) as exc:
                verdicts[rid] = f"refused: {exc}"
        return any(v == "online" for v in verdicts.values())

    try:
        settings = settings_from_config(cfg.mqtt, f"{cfg.device.id}-doctor", keepalive=10,
                                        connect_timeout=timeout)
        ex = exchange(settings, subscribe=(topics.all_archive_receivers(),), until=judge, timeout=timeout)
    except EdgeError as exc:
        return [_fail("broker", str(exc))]
    if not ex.connected:
        return [_fail("broker", f"无法登录代理 / MQTT v5 session to the broker at {cfg.mqtt.host}:{cfg.mqtt.port} failed: {ex.error} — "
                                "check credentials / client certificate / TLS")]
    out = [_ok("broker", f"已登录代理 / MQTT v5 session to the broker at {cfg.mqtt.host}:{cfg.mqtt.port}" + (" (TLS)" if settings.tls else ""))]
    judge(ex.messages)
    online = sorted(r for r, v in verdicts.items() if v == "online")
    if online:
        out.append(_ok("archive", f"归档服务器在线 / archive receiver(s) {', '.join(online)} online (status signed by a pinned key)"))
    elif verdicts:
        out.append(_fail("archive", "没有通过验证的在线归档服务器 / no verified online archive receiver: " + "; ".join(
            f"{r}: {v}" for r, v in sorted(verdicts.items())) + " — pin the archive's key (`edge-agent uplink "
            "trust-archive archive.pub`, the archive's ROOT/_archive/archive.pub) and start `edge-agent archive serve`"))
    else:
        out.append(_fail("archive", f"没有归档服务器状态 / no archive receiver status on {topics.all_archive_receivers()} — "
                                    "is `edge-agent archive serve` running?"))
    return out


def check_archive_keys(cfg) -> Check:
    """Archive keys pinned on this device (without one the uplink sends and frees nothing)."""
    from agent.uplink.trust import NO_KEY, archive_trust

    if not cfg.uplink.enabled:
        return _ok("archive key", "未启用上传 / uplink disabled")
    try:
        trust = archive_trust(cfg)
    except EdgeError as exc:
        return _fail("archive key", str(exc), key="uplink.archive_keys")
    if not trust:
        return _fail("archive key", NO_KEY, key="uplink.archive_keys",
                     fix="edge-agent uplink trust-archive archive.pub")
    return _ok("archive key", f"已固定归档公钥 / pinned: {', '.join(trust.key_ids)} ({', '.join(trust.sources)})")


def camera_problem(source: str) -> str | None:
    """Why a configured camera source cannot be opened, when that can be told without opening
    it: a missing device or file. Network sources are checked when recording."""
    from drivers.camera import NETWORK_SCHEMES

    if source.startswith(NETWORK_SCHEMES):
        return None
    path = source[5:] if source.startswith("file:") else source
    if source.isdigit():
        path = f"/dev/video{source}"
    if not os.path.exists(path):
        return "设备不存在 / no such device" if path.startswith("/dev/") else "文件不存在 / no such file"
    if not path.startswith("/dev/") and not os.path.isfile(path):
        return "不是文件 / not a file"
    if not os.access(path, os.R_OK):
        return "无读取权限 / not readable by this user"
    return None


def check_devices(cfg) -> list[Check]:
    out = []
    if cfg.device.kind == "dock":
        patterns = [b.pattern for b in cfg.dock.bays]
        found = sorted({p for pat in patterns if pat for p in glob.glob(pat)})
        if found:
            out.append(_ok("devices", f"记录仪端口 / recorder ports/mounts present: {', '.join(found[:8])}",
                           key="dock.bays"))
        else:
            out.append(_warn("devices", f"未接入记录仪 / no recorder docked on {', '.join(patterns) or '(no bays)'} "
                                        "(normal when all bays are empty)", key="dock.bays"))
        from drivers.recorder.udev import detection_mode

        mode, why = detection_mode()
        if mode == "udev":
            out.append(_ok("docking", f"接入检测 / docking detected by udev: {why}; volumes paired with their "
                                      "recorder by USB serial", key="dock.bays"))
        else:
            out.append(_warn("docking", f"接入检测 / docking detected by polling every {cfg.dock.poll_ms} ms: {why}; "
                                        "volumes are found only where the recorder answers its mount path",
                             key="dock.poll_ms"))
    else:
        room = cfg.room
        for i, cam in enumerate(room.cameras):
            why = camera_problem(cam)
            if why:
                present = sorted(glob.glob("/dev/video*"))[:2]
                example = "[" + ", ".join(f'"{v}"' for v in (present or ["rtsp://10.0.0.2/main"])) + "]"
                out.append(_fail("camera", f"摄像头 {cam}: {why} / camera {i + 1} of room.cameras cannot be opened",
                                 key="room.cameras", fix=f"edge-agent config set room.cameras '{example}'"))
            else:
                out.append(_ok("camera", f"摄像头 / camera {cam}" + (" (network source; checked when recording)"
                                                                    if "://" in cam else " present"),
                               key="room.cameras"))
        if room.sensor_port:
            p = room.sensor_port
            if os.path.exists(p):
                out.append(_ok("sensor", f"温湿度传感器 / sensor {p} present", key="room.sensor_port"))
            else:
                out.append(_fail("sensor", f"温湿度传感器端口不存在 / sensor port {p} missing — check the RS-485 "
                                           "adapter", key="room.sensor_port",
                                 fix="edge-agent config set room.sensor_port /dev/ttyUSB0"))
        if room.microphone not in ("none", "tone"):
            snd = glob.glob("/dev/snd/pcmC*c")
            out.append((_ok if snd else _warn)("microphone", f"录音设备 / capture devices: "
                                                             f"{', '.join(snd) or 'none found in /dev/snd'}",
                                               key="room.microphone",
                                               fix="" if snd else "edge-agent config set room.microphone none"))
    return out


def run_checks(config_path=None, network: bool = True) -> list[Check]:
    first, cfg = check_config(config_path)
    checks = [first]
    if cfg is None:
        return checks
    checks += check_placeholders(cfg)
    checks += [check_keys(cfg), check_archive_keys(cfg), check_disk(cfg), check_clock(cfg)]
    checks += check_tls(cfg)
    if network:
        checks += check_broker(cfg)
    checks += check_devices(cfg)
    return [_with_config(ch, cfg) for ch in checks]


def _with_config(ch: Check, cfg) -> Check:
    """A fix names the config file doctor read unless it is the default one: it runs as shown."""
    if ch.fix.startswith("edge-agent ") and "--config" not in ch.fix and \
            Path(cfg.path).resolve() != Path(config_mod.DEFAULT_PATH):
        ch.fix = ch.fix.replace("edge-agent ", f"edge-agent --config {shlex.quote(str(cfg.path))} ", 1)
    return ch
