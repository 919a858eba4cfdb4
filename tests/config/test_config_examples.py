"""The example configurations in config/ (README, docs/config.md): each loads through the agent's
own loader and says what a technician relies on when they copy it to /etc/edge-agent/."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config as config_mod
from agent.common.errors import ConfigError
from agent.config.dock import parse_bays
from agent.room.state import RoomSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config"


def load(name: str) -> config_mod.Config:
    return config_mod.load(EXAMPLES / name)


def test_station_example_has_eight_named_bays():
    cfg = load("station.toml")
    assert cfg.device.kind == "dock" and cfg.device.id == "dock-xh-01"
    bays = parse_bays(cfg.dock.bays)
    assert [b.name for b in bays] == [f"bay-{i}" for i in range(1, 9)]
    assert all(b.port and b.port.startswith("/dev/serial/by-path/") and not b.mass_storage_only for b in bays)
    assert len({b.port for b in bays}) == 8, "two bays on one socket"
    assert cfg.dock.erase_policy == "after-archive"     # nothing leaves a recorder before the archive has it
    assert cfg.dock.min_ratio_pct == 20                 # 1:5
    assert cfg.storage.data_dir == "/var/lib/edge-agent" and cfg.storage.reserve_mb == 4096


def test_scsi_station_example_has_four_scsi_bays_on_usb_ports():
    cfg = load("station-scsi.toml")
    assert cfg.device.kind == "dock"
    bays = parse_bays(cfg.dock.bays)
    assert [b.name for b in bays] == [f"scsi-{i}" for i in range(1, 5)]
    assert all(b.scsi and b.usb_port and b.sg is None and b.vendor == "jieli-dv16" for b in bays)
    assert len({b.usb_port for b in bays}) == 4, "two bays on one USB port"
    assert [p.name for p in cfg.scsi.profiles()] == ["jieli-dv16"]
    assert cfg.dock.erase_policy == "after-archive"


def test_a_scsi_bay_naming_an_unknown_table_names_the_entry_and_line(tmp_path):
    text = (EXAMPLES / "station-scsi.toml").read_text(encoding="utf-8")
    bad = tmp_path / "agent.toml"
    bad.write_text(text.replace('builtin = ["jieli-dv16"]', "builtin = []"), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        config_mod.load(bad)
    msg = str(err.value)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if x.startswith("[[dock.bays]]"))
    assert msg.startswith(f"{bad}: dock.bays: 第 1 项 / entry 1: 未知的命令表 / vendor 'jieli-dv16' is no table of [scsi]")
    assert msg.endswith(f"(第 {line} 行 / line {line})")


def test_room_example_has_two_cameras_and_a_sensor():
    cfg = load("room.toml")
    assert cfg.device.kind == "room" and cfg.device.id == "room-xh-01"
    s = RoomSettings.from_config(cfg)
    assert len(s.cameras) == 2 and all(c.startswith("rtsp://") for c in s.cameras)
    assert s.layout == "pip" and (s.width, s.height, s.fps) == (1920, 1080, 25)
    assert s.sensor_port == "/dev/ttyUSB0" and s.sensor_slave == 1 and s.sensor_baudrate == 9600
    assert "env" in s.overlay_lines                     # temperature / humidity burned into the picture
    assert s.place == "西湖区综合行政执法局办案区 / case-handling area 第一询问室 / Interview room 1"
    assert "edge-operator" in cfg.control.groups


def test_archive_example():
    cfg = load("archive.toml")
    assert cfg.archive.root == "/var/lib/edge-archive"
    assert cfg.archive.share_group == "archive" and cfg.archive.max_item_mb == 64 * 1024
    assert cfg.mqtt.username == "archive" and cfg.mqtt.certfile.endswith("archive.crt")


def test_monitor_example():
    cfg = load("monitor.toml")
    assert cfg.mqtt.username == "monitor" and cfg.mqtt.certfile.endswith("monitor.crt")


@pytest.mark.parametrize("name", ["station.toml", "room.toml"])
def test_devices_log_in_as_themselves_over_tls(name):
    """The broker's ACL patterns use the user name (%u): a device's user is its device id."""
    cfg = load(name)
    assert cfg.mqtt.username == cfg.device.id
    assert cfg.mqtt.tls and cfg.mqtt.port == 8883 and cfg.mqtt.cafile and cfg.mqtt.keyfile


def test_one_fleet_one_topic_tree_and_one_broker_tls():
    """Devices, archive and monitor must share the topic prefix and the CA, or the archive and the
    monitor never see the devices."""
    cfgs = [load(n) for n in ("station.toml", "room.toml", "archive.toml", "monitor.toml")]
    assert {c.mqtt.topic_prefix for c in cfgs} == {"edge"}
    assert {c.mqtt.cafile for c in cfgs} == {"/etc/edge-agent/tls/ca.crt"}
    assert all(c.mqtt.tls and c.mqtt.port == 8883 for c in cfgs)


def test_every_example_is_documented():
    names = sorted(p.name for p in EXAMPLES.glob("*.toml"))
    assert names == ["archive.toml", "monitor.toml", "room.toml", "scsi-vendors.toml", "station-scsi.toml",
                     "station.toml"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    doc = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    for n in names:
        assert f"config/{n}" in readme and f"config/{n}" in doc, f"config/{n} not referenced"


def test_a_technicians_slip_in_the_station_example_names_the_key_and_line(tmp_path):
    text = (EXAMPLES / "station.toml").read_text(encoding="utf-8")
    bad = tmp_path / "agent.toml"
    bad.write_text(text.replace('name = "bay-2"', 'name = "bay-1"'), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        config_mod.load(bad)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if x.startswith("bays = ["))
    msg = str(err.value)
    assert msg.startswith(f"{bad}: dock.bays: ") and msg.endswith(f"(第 {line} 行 / line {line})")
    assert "第 2 项 / entry 2: 仓位名称重复 / bay name 'bay-1' used twice" in msg
