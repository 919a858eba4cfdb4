"""systemd integration: unit files (verify + security exposure), tools/install.sh, agent.common.sdnotify."""
from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.common import sdnotify
from tests.support.spine import EDGE

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "systemd").glob("*.service"))
TIMERS = sorted((ROOT / "systemd").glob("*.timer"))
UNIT_NAMES = {"edge-agent.service", "edge-archive.service", "edge-monitor.service", "edge-archive-retention.service"}
TIMER_NAMES = {"edge-archive-retention.timer"}
#: services that run to completion (started by a timer): Type=oneshot, so no READY=1 and no watchdog
ONESHOT = {"edge-archive-retention.service"}
MAX_EXPOSURE = 2.5  # systemd-analyze scale 0 (safe) .. 10 (unsafe); these units score 1.2-1.6

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing (make deps)")


def directives(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_units_present():
    assert {u.name for u in UNITS} == UNIT_NAMES
    assert {t.name for t in TIMERS} == TIMER_NAMES


@pytest.fixture(scope="module")
def verifiable_units(tmp_path_factory) -> dict[str, Path]:
    """Copies of the units whose ExecStart points at an executable stub (same arguments), so
    that `verify` checks everything else rather than stopping at the missing venv."""
    d = tmp_path_factory.mktemp("units")
    stub = d / "edge-agent"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    out = {}
    for unit in [*UNITS, *TIMERS]:
        text = unit.read_text().replace("/opt/edge-agent/venv/bin/edge-agent", str(stub))
        (d / unit.name).write_text(text)
        out[unit.name] = d / unit.name
    return out


@needs_analyze
@pytest.mark.parametrize("name", sorted(UNIT_NAMES | TIMER_NAMES))
def test_systemd_analyze_verify(verifiable_units, name):
    path = verifiable_units[name]
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                       cwd=path.parent, timeout=60)
    output = (r.stdout + r.stderr).strip()
    # Unknown or unparsable directives are only warnings (exit 0): fail on any line about our unit.
    ours = [line for line in output.splitlines() if name in line or "Unknown" in line
            or "Failed to parse" in line or "ignoring" in line]
    assert r.returncode == 0, output
    assert not ours, output


@needs_analyze
@pytest.mark.parametrize("name", sorted(UNIT_NAMES))
def test_systemd_analyze_security(name):
    unit = ROOT / "systemd" / name
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    exposure = float(m.group(1))
    print(f"{name}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, r.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_policy(unit):
    d = directives(unit)
    one = {k: v[-1] for k, v in d.items()}
    if unit.name in ONESHOT:
        # a run that exits when done: no READY=1 to wait for, no watchdog, no restart (the next run
        # is the timer's); a failed run leaves the unit "failed", which systemctl shows
        assert one["Type"] == "oneshot"
        assert "WatchdogSec" not in d and "Restart" not in d and "[Install]" not in unit.read_text()
    else:
        assert one["Type"] == "notify"
        assert one["NotifyAccess"] == "main"
        assert one["WatchdogSec"]
        assert one["Restart"] == "on-failure"
    assert one["User"] == "edge-agent"
    assert one["ProtectSystem"] == "strict"
    assert one["CapabilityBoundingSet"] == ""
    assert one["UMask"] == "0027"
    assert one["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert "@system-service" in d["SystemCallFilter"]
    assert "EDGE_AGENT_CONFIG=/etc/edge-agent/agent.toml" in d["Environment"]
    assert one["ExecStart"].startswith("/opt/edge-agent/venv/bin/edge-agent ")
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                "RestrictNamespaces", "LockPersonality"):
        assert one[key] == "yes", key
    assert one["DevicePolicy"] == "closed"
    if unit.name == "edge-agent.service":
        assert one["ExecStart"].endswith(" run")
        assert set(one["SupplementaryGroups"].split()) == {"dialout", "video", "audio"}
        assert {a.split()[0] for a in d["DeviceAllow"]} == {
            "char-ttyACM", "char-ttyUSB", "char-video4linux", "char-alsa"}
        assert "/var/lib/edge-agent" in d["ReadWritePaths"]
    else:
        assert "DeviceAllow" not in d and "SupplementaryGroups" not in d
        assert one["PrivateDevices"] == "yes"
    if unit.name == "edge-archive.service":
        assert one["ExecStart"].endswith(" archive serve --root /var/lib/edge-archive")
        assert "/var/lib/edge-archive" in d["ReadWritePaths"]
    if unit.name == "edge-monitor.service":
        assert one["ExecStart"].endswith(" monitor --web 8080")
    if unit.name == "edge-archive-retention.service":
        assert one["ExecStart"].endswith(" archive retention run --root /var/lib/edge-archive --as edge-archive-retention")
        assert "/var/lib/edge-archive" in d["ReadWritePaths"]


def test_retention_timer():
    """Daily, made up after downtime (Persistent), spread (RandomizedDelaySec), enabled by timers.target."""
    d = directives(ROOT / "systemd" / "edge-archive-retention.timer")
    one = {k: v[-1] for k, v in d.items()}
    assert one["Unit"] == "edge-archive-retention.service"
    assert one["Persistent"] == "true"
    assert one["RandomizedDelaySec"] == "1h"
    assert one["WantedBy"] == "timers.target"


@needs_analyze
def test_retention_timer_is_daily():
    r = subprocess.run(["systemd-analyze", "calendar", "--iterations=2",
                        directives(ROOT / "systemd" / "edge-archive-retention.timer")["OnCalendar"][-1]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    nxt = re.findall(r"Next elapse: \w+ (\S+ \S+)", r.stdout) + re.findall(r"Iter\. #2: \w+ (\S+ \S+)", r.stdout)
    assert len(nxt) == 2, r.stdout
    a, b = (time.mktime(time.strptime(t, "%Y-%m-%d %H:%M:%S")) for t in nxt)
    assert abs((b - a) - 86400) <= 3600, r.stdout  # one day apart (a DST change shifts it by an hour)


def test_retention_service_command_runs(tmp_path):
    """The unit's ExecStart, run with this venv's edge-agent on an archive root holding one item past
    its retention and one that is not: the expired one goes (its tombstone named after the unit), the
    other stays, exit 0 — what the timer does daily."""
    import datetime as dt
    import shlex

    from tests.support.custody import Centre

    c = Centre(tmp_path)
    now = dt.datetime.now().astimezone().replace(microsecond=0)
    old, young = c.item(now - dt.timedelta(days=200)), c.item(now - dt.timedelta(days=10))
    path = c.st.db.one("SELECT path FROM items WHERE item = ?", [old])["path"]
    c.close()
    argv = shlex.split(directives(ROOT / "systemd" / "edge-archive-retention.service")["ExecStart"][-1])
    argv = [EDGE, *[str(c.root) if a == "/var/lib/edge-archive" else a for a in argv[1:]]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_ARCHIVE_")}
    env["EDGE_AGENT_CONFIG"] = str(tmp_path / "none.toml")  # no config: the unit's --root is all it needs
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"deleted dock-0001/{old}" in r.stdout and young not in r.stdout, r.stdout
    t = (c.root / path / "tombstone.json").read_text()
    assert '"by":"edge-archive-retention"' in t


# --- tools/install.sh ---------------------------------------------------------------------

INSTALL = ROOT / "tools" / "install.sh"


def _fake_venv(root: Path) -> Path:
    """A stand-in venv whose `edge-agent` logs its arguments and writes the config (like init)."""
    bin_dir = root / "opt/edge-agent/venv/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    tool = bin_dir / "edge-agent"
    tool.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{root}/init-calls.log"\n'
        'while [ $# -gt 0 ]; do [ "$1" = --config ] && printf \'[agent]\\n\' > "$2"; shift; done\n'
    )
    tool.chmod(0o755)
    return tool


def _install(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "EDGE_ROOT": str(root), "EDGE_SKIP_USER": "1", "EDGE_SKIP_VENV": "1", **env}
    return subprocess.run(["bash", str(INSTALL), *args], env=e, capture_output=True, text=True, timeout=120)


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
        snap[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), data)
    return snap


def test_install_twice_into_fake_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    _fake_venv(root)
    r1 = _install(root, EDGE_INIT_ARGS="--kind dock --device-id dock-0001")
    assert r1.returncode == 0, r1.stdout + r1.stderr
    for name in UNIT_NAMES | TIMER_NAMES:
        assert (root / "etc/systemd/system" / name).read_text() == (ROOT / "systemd" / name).read_text()
    for d in ("etc/edge-agent", "var/lib/edge-agent", "var/lib/edge-archive", "var/lib/edge-monitor"):
        assert stat.S_IMODE((root / d).stat().st_mode) == 0o750, d
    config = root / "etc/edge-agent/agent.toml"
    assert config.exists() and stat.S_IMODE(config.stat().st_mode) == 0o640
    calls = (root / "init-calls.log").read_text().splitlines()
    assert calls == [f"--config {config} init --data-dir {root}/var/lib/edge-agent --kind dock --device-id dock-0001"]
    assert "+ systemctl" not in r1.stdout and "no daemon-reload" in r1.stdout

    before = _snapshot(root)
    r2 = _install(root)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "keeping existing" in r2.stdout
    assert _snapshot(root) == before  # idempotent: nothing changed, init not run again

    dry = _install(root, "--dry-run")
    assert dry.returncode == 0 and _snapshot(root) == before


def test_install_dry_run_changes_nothing(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    r = _install(root, "--dry-run", EDGE_SKIP_VENV="0", EDGE_PREFIX="/srv/edge")
    assert r.returncode == 0, r.stderr
    assert list(root.iterdir()) == []
    assert "+ python3 -m venv" in r.stdout and "/srv/edge/venv" in r.stdout
    assert "init --data-dir" in r.stdout


def test_install_runs_real_init(tmp_path):
    """With the project's own CLI standing in for the venv: a real first-install config."""
    cli = Path(EDGE)        # the edge-agent of the venv running the tests: a broken CLI fails here
    help_ = subprocess.run([str(cli), "init", "--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0, help_.stderr
    root = tmp_path / "root"
    bin_dir = root / "opt/edge-agent/venv/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "edge-agent").symlink_to(cli)
    r = _install(root, EDGE_INIT_ARGS="--device-id dock-0001 --unit-code 330100000000 --kind dock")
    assert r.returncode == 0, r.stdout + r.stderr
    config = root / "etc/edge-agent/agent.toml"
    text = config.read_text()
    assert "dock-0001" in text and str(root / "var/lib/edge-agent") in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    r2 = _install(root)
    assert r2.returncode == 0 and "keeping existing" in r2.stdout
    assert config.read_text() == text


def test_install_prefix_rewrites_units(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    venv_bin = root / "srv/edge/venv/bin"
    venv_bin.mkdir(parents=True)
    r = _install(root, EDGE_PREFIX="/srv/edge", EDGE_SKIP_INIT="1")
    assert r.returncode == 0, r.stderr
    unit = (root / "etc/systemd/system/edge-agent.service").read_text()
    assert "ExecStart=/srv/edge/venv/bin/edge-agent run" in unit
    retention = (root / "etc/systemd/system/edge-archive-retention.service").read_text()
    assert "ExecStart=/srv/edge/venv/bin/edge-agent archive retention run" in retention
    assert (root / "etc/systemd/system/edge-archive-retention.timer").is_file()
    assert not (root / "etc/edge-agent/agent.toml").exists()


def test_install_rejects_unknown_argument(tmp_path):
    r = _install(tmp_path, "--frobnicate")
    assert r.returncode == 2 and "unknown argument" in r.stderr


# --- agent.common.sdnotify -------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield s
    s.close()


def test_notify_without_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    assert sdnotify.ready() is False


def test_notify_messages(notify_socket):
    assert sdnotify.ready("listening")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=listening"
    assert sdnotify.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert sdnotify.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"
    assert sdnotify.status("上传中 / uploading")
    assert notify_socket.recv(4096).decode() == "STATUS=上传中 / uploading"


def test_notify_abstract_namespace(monkeypatch):
    name = f"edge-agent-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert sdnotify.ready()
        assert s.recv(4096) == b"READY=1"
    finally:
        s.close()


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    assert sdnotify.watchdog_interval() is None


def _until(pred, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


def test_watchdog_thread_pings_while_healthy(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s -> a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    healthy = threading.Event()
    healthy.set()
    wd = sdnotify.Watchdog(healthy=healthy.is_set)
    assert wd.interval == pytest.approx(0.2)
    with wd:
        t0 = time.monotonic()
        for _ in range(3):
            assert notify_socket.recv(64) == b"WATCHDOG=1"
        assert time.monotonic() - t0 < 2.0
        healthy.clear()
        _until(lambda: wd.withheld >= 1, "a ping withheld")  # the watchdog has seen the health flip
        notify_socket.setblocking(False)
        while True:  # drain pings sent before the health flip
            try:
                notify_socket.recv(64)
            except BlockingIOError:
                break
        n = wd.withheld
        _until(lambda: wd.withheld >= n + 2, "two more pings withheld")
        with pytest.raises(BlockingIOError):
            notify_socket.recv(64)  # unhealthy: none of them was sent
        healthy.set()
        notify_socket.settimeout(5)
        assert notify_socket.recv(64) == b"WATCHDOG=1"
    assert wd._thread is None


def test_watchdog_health_check_raising_is_unhealthy(notify_socket):
    def broken() -> bool:
        raise RuntimeError("db locked")

    wd = sdnotify.Watchdog(healthy=broken, interval=0.1).start()
    try:
        notify_socket.settimeout(0.3)
        with pytest.raises(TimeoutError):
            notify_socket.recv(64)
        assert wd.withheld >= 1 and wd.pings == 0
    finally:
        wd.stop()


def test_watchdog_disabled_without_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    wd = sdnotify.Watchdog()
    assert not wd.enabled
    wd.start()
    assert wd._thread is None
    wd.stop()
