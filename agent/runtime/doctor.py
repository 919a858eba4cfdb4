"""`edge-agent doctor`: checks a technician runs after installing or when something is wrong.
Each check returns OK, WARN or FAIL with what to do."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import glob
import json
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

from agent import config as config_mod
from agent.common.errors import EdgeError


@dataclasses.dataclass
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    detail: str


def _ok(name, detail):
    return Check(name, "OK", detail)


def _warn(name, detail):
    return Check(name, "WARN", detail)


def _fail(name, detail):
    return Check(name, "FAIL", detail)


def check_config(path) -> tuple[Check, config_mod.Config | None]:
    try:
        cfg = config_mod.load(path)
    except EdgeError as exc:
        return _fail("config", f"{exc} — fix the file or run `edge-agent init`"), None
    return _ok("config", f"{cfg.path} is valid (device {cfg.device.id}, kind {cfg.device.kind})"), cfg


def check_keys(cfg) -> Check:
    key = Path(cfg.storage.data_dir) / "keys" / "device.key"
    if not key.exists():
        return _fail("device key", f"{key} missing — run `edge-agent init`")
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        return _fail("device key", f"{key} has mode {mode:o} — run `chmod 600 {key}`")
    return _ok("device key", f"{key} mode 600")


def check_disk(cfg) -> Check:
    d = Path(cfg.storage.data_dir)
    if not d.is_dir():
        return _fail("disk", f"{d} does not exist — run `edge-agent init`")
    if not os.access(d, os.W_OK):
        return _fail("disk", f"{d} is not writable by this user — check its owner (the edge-agent system user)")
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
    reserve = cfg.storage.reserve_mb << 20
    if free < reserve:
        return _fail("disk", f"{free >> 20} MiB free < reserve {reserve >> 20} MiB — archive and purge, or add disk")
    if free < 2 * reserve:
        return _warn("disk", f"{free >> 20} MiB free, under twice the reserve ({reserve >> 20} MiB)")
    return _ok("disk", f"{free >> 20} MiB free, reserve {reserve >> 20} MiB")


def check_clock() -> Check:
    if shutil.which("timedatectl"):
        p = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True)
        if p.returncode == 0 and p.stdout.strip() in ("yes", "no"):
            if p.stdout.strip() == "yes":
                return _ok("clock", "synchronised (NTP)")
            return _fail("clock", "not synchronised — enable NTP: `timedatectl set-ntp true` or configure chrony")
    try:
        import ctypes

        class Timex(ctypes.Structure):
            _fields_ = [("modes", ctypes.c_uint), ("_pad", ctypes.c_long * 40)]
        libc = ctypes.CDLL(None, use_errno=True)
        tx = Timex()
        state = libc.adjtimex(ctypes.byref(tx))
        if state == 5:  # TIME_ERROR: clock not synchronised
            return _warn("clock", "the kernel reports the clock unsynchronised (no NTP here?) — configure chrony/NTP")
        return _ok("clock", f"kernel clock state {state} (synchronised)")
    except Exception as exc:  # pragma: no cover
        return _warn("clock", f"cannot tell ({exc})")


def check_tls(cfg) -> list[Check]:
    out = []
    if not cfg.mqtt.tls:
        return [_warn("tls", "mqtt.tls is false: traffic to the broker is not encrypted")]
    from cryptography import x509

    for label, path in (("CA", cfg.mqtt.cafile), ("client certificate", cfg.mqtt.certfile)):
        if not path:
            out.append(_fail("tls", f"mqtt.{'cafile' if label == 'CA' else 'certfile'} is empty"))
            continue
        try:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            out.append(_fail("tls", f"{label} {path}: {exc}"))
            continue
        left = cert.not_valid_after_utc - _dt.datetime.now(_dt.timezone.utc)
        if left.total_seconds() < 0:
            out.append(_fail("tls", f"{label} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d} — renew it"))
        elif left.days < 30:
            out.append(_warn("tls", f"{label} {path} expires in {left.days} days — renew it"))
        else:
            out.append(_ok("tls", f"{label} {path} valid until {cert.not_valid_after_utc:%Y-%m-%d}"))
    return out


def check_broker(cfg, timeout: float = 5.0) -> list[Check]:
    try:
        socket.create_connection((cfg.mqtt.host, cfg.mqtt.port), timeout=timeout).close()
    except OSError as exc:
        return [_fail("broker", f"{cfg.mqtt.host}:{cfg.mqtt.port} unreachable ({exc.strerror or exc}) — "
                                "check the network, the broker and mqtt.host/mqtt.port")]
    from agent.uplink.trust import archive_trust
    from agent.wire.mqtt import exchange, settings_from_config
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
        return [_fail("broker", f"MQTT v5 session to {cfg.mqtt.host}:{cfg.mqtt.port} failed: {ex.error} — "
                                "check credentials / client certificate / TLS")]
    out = [_ok("broker", f"MQTT v5 session to {cfg.mqtt.host}:{cfg.mqtt.port}" + (" (TLS)" if settings.tls else ""))]
    judge(ex.messages)
    online = sorted(r for r, v in verdicts.items() if v == "online")
    if online:
        out.append(_ok("archive", f"archive receiver(s) {', '.join(online)} online (status signed by a pinned key)"))
    elif verdicts:
        out.append(_fail("archive", "no verified online archive receiver: " + "; ".join(
            f"{r}: {v}" for r, v in sorted(verdicts.items())) + " — pin the archive's key (`edge-agent uplink "
            "trust-archive archive.pub`, the archive's ROOT/_archive/archive.pub) and start `edge-agent archive serve`"))
    else:
        out.append(_fail("archive", f"no archive receiver status on {topics.all_archive_receivers()} — "
                                    "is `edge-agent archive serve` running?"))
    return out


def check_archive_keys(cfg) -> Check:
    """Archive keys pinned on this device (without one the uplink sends and frees nothing)."""
    from agent.uplink.trust import NO_KEY, archive_trust

    if not cfg.uplink.enabled:
        return _ok("archive key", "uplink disabled")
    try:
        trust = archive_trust(cfg)
    except EdgeError as exc:
        return _fail("archive key", str(exc))
    if not trust:
        return _fail("archive key", NO_KEY)
    return _ok("archive key", f"pinned: {', '.join(trust.key_ids)} ({', '.join(trust.sources)})")


def check_devices(cfg) -> list[Check]:
    out = []
    if cfg.device.kind == "dock":
        patterns = [b.pattern for b in cfg.dock.bays]
        found = sorted({p for pat in patterns if pat for p in glob.glob(pat)})
        if found:
            out.append(_ok("devices", f"recorder ports/mounts present: {', '.join(found[:8])}"))
        else:
            out.append(_warn("devices", f"no recorder docked on {', '.join(patterns) or '(no bays)'} (normal when all bays are empty)"))
    else:
        room = cfg.room
        for cam in room.cameras:
            if cam.startswith("/dev/"):
                out.append((_ok if os.path.exists(cam) else _fail)("camera", f"{cam} {'present' if os.path.exists(cam) else 'missing — check the USB camera'}"))
            else:
                out.append(_ok("camera", f"{cam} (network or file source; checked when recording)"))
        if room.sensor_port:
            p = room.sensor_port
            out.append((_ok if os.path.exists(p) else _fail)("sensor", f"{p} {'present' if os.path.exists(p) else 'missing — check the RS-485 adapter'}"))
        if room.microphone not in ("none", "tone"):
            snd = glob.glob("/dev/snd/pcmC*c")
            out.append((_ok if snd else _warn)("microphone", f"capture devices: {', '.join(snd) or 'none found in /dev/snd'}"))
    return out


def run_checks(config_path=None, network: bool = True) -> list[Check]:
    first, cfg = check_config(config_path)
    checks = [first]
    if cfg is None:
        return checks
    checks += [check_keys(cfg), check_archive_keys(cfg), check_disk(cfg), check_clock()]
    checks += check_tls(cfg)
    if network:
        checks += check_broker(cfg)
    checks += check_devices(cfg)
    return checks
