"""The config schema (agent/config/): typed sections, and refusals a technician can act on —
one line, in Chinese and English, naming the key and the line of the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.common.errors import ConfigError
from agent.config.dock import BaySpec, DockConfig, MassStorageRecorder
from agent.config.mqtt import MqttConfig

CJK = re.compile(r"[\u4e00-\u9fff]")


def refusal(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        config_mod.loads(text, Path("agent.toml"))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert CJK.search(msg) and " / " in msg, f"not bilingual: {msg}"
    assert e.value.exit_code == 2
    return msg


@pytest.mark.parametrize("text,expected", [
    # a typo: the closest key is named
    ('[storage]\nreserv_mb = 1\n',
     "agent.toml: storage.reserv_mb: 未知的键 / unknown key (known in [storage]: data_dir, reserve_mb, retention_days); "
     "是否应为 / did you mean reserve_mb? (第 2 行 / line 2)"),
    ('# comment\n\n[devcie]\nid = "a"\n',
     "agent.toml: [devcie]: 未知的节 / unknown section (known: device, storage, evidence, mqtt, uplink, archive, health, "
     "dock, scsi, room, control, encryption, roles, commands, policy, log); 是否应为 / did you mean device? (第 3 行 / line 3)"),
    # wrong type
    ('[device]\nid = "a"\n\nkind = 3\n',
     "agent.toml: device.kind: 3 不是可选值 / 3 is not one of dock, room (第 4 行 / line 4)"),
    ('[device]\nid = 5\n', "agent.toml: device.id: 应为字符串 / expected a string, got 5 (第 2 行 / line 2)"),
    ('[storage]\nreserve_mb = "lots"\n',
     "agent.toml: storage.reserve_mb: 应为整数 / expected an integer, got 'lots' (第 2 行 / line 2)"),
    ('[mqtt]\nport = 1883.0\n', "agent.toml: mqtt.port: 应为整数 / expected an integer, got 1883.0 (第 2 行 / line 2)"),
    ('[mqtt]\ntls = "yes"\n', "agent.toml: mqtt.tls: 应为 true 或 false / expected true or false, got 'yes' (第 2 行 / line 2)"),
    ('[mqtt]\nport = true\n', "agent.toml: mqtt.port: 应为整数 / expected an integer, got True (第 2 行 / line 2)"),
    ('[mqtt]\nhost = 1979-05-27\n',
     "agent.toml: mqtt.host: 应为字符串 / expected a string, got datetime.date(1979, 5, 27) (第 2 行 / line 2)"),
    # out of range, not a choice
    ('[storage]\nreserve_mb = -1\n', "agent.toml: storage.reserve_mb: -1 小于最小值 0 / -1 is below the minimum 0 (第 2 行 / line 2)"),
    ('[mqtt]\nport = 70000\n', "agent.toml: mqtt.port: 70000 大于最大值 65535 / 70000 is above the maximum 65535 (第 2 行 / line 2)"),
    ('[device]\nkind = "car"\n', "agent.toml: device.kind: 'car' 不是可选值 / 'car' is not one of dock, room (第 2 行 / line 2)"),
    ('[room]\nsensor_baudrate = 9601\n', "agent.toml: room.sensor_baudrate: 9601 不是可选值 / 9601 is not one of "
                                         "1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200 (第 2 行 / line 2)"),
    ('[device]\nid = "../etc"\n', "agent.toml: device.id: '../etc': 只能用字母、数字、'_'、'.'、'-'，1-64 个字符，不能是路径 / "
                                  "letters, digits, '_', '.', '-' only, 1-64 characters, no path (第 2 行 / line 2)"),
    # a list or a table where a scalar is expected, a scalar where a list or table is expected
    ('[device]\nunit_name = ["a", "b"]\n',
     "agent.toml: device.unit_name: 应为字符串 / expected a string, got ['a', 'b'] (第 2 行 / line 2)"),
    ('[device]\nunit_name = {zh = "a"}\n',
     "agent.toml: device.unit_name: 应为字符串 / expected a string, got {'zh': 'a'} (第 2 行 / line 2)"),
    ('[device.unit_name]\nzh = "a"\n',
     "agent.toml: device.unit_name: 应为字符串 / expected a string, got {'zh': 'a'} (第 1 行 / line 1)"),
    ('[room]\ncameras = "/dev/video0"\n',
     "agent.toml: room.cameras: 应为列表 / expected a list, got '/dev/video0' (第 2 行 / line 2)"),
    ('device = "dock-1"\n', "agent.toml: device: 应为表 / expected a table [device], got 'dock-1' (第 1 行 / line 1)"),
    # inside lists of tables: the key, the entry (from 1) and the line
    ('[dock]\npoll_ms = 500\nbays = [\n  "/dev/ttyACM*",\n  {name = "b1", prot = "/dev/a"},\n]\n',
     "agent.toml: dock.bays: 第 2 项 / entry 2: prot: 未知的键 / unknown key (第 3 行 / line 3)"),
    ('[[dock.mass_storage_map]]\nlabel = "REC1"\nofficer_number = "000123"\n',
     "agent.toml: dock.mass_storage_map: 第 1 项 / entry 1: 缺少 serial / serial is required (第 1 行 / line 1)"),
    ('[room]\ncameras = [1]\n', "agent.toml: room.cameras: 第 1 项 / entry 1: 应为字符串 / expected a string, got 1 (第 2 行 / line 2)"),
    ('[dock]\nbays = [{name = "b1", port = "/dev/a"}, {name = "b1", port = "/dev/b"}]\n',
     "agent.toml: dock.bays: 第 2 项 / entry 2: 仓位名称重复 / bay name 'b1' used twice (第 2 行 / line 2)"),
    # dotted keys at the top of the file
    ('dock.poll_ms = 5000\n', "agent.toml: dock.poll_ms: 5000 大于最大值 2000 / 5000 is above the maximum 2000 (第 1 行 / line 1)"),
    # malformed TOML: the line and column
    ('[device]\nid = "a"\nkind = \n', "agent.toml: TOML 语法错误 / invalid TOML: Invalid value (第 3 行第 8 列 / at line 3, column 8)"),
    ('[device\nid = 1', "agent.toml: TOML 语法错误 / invalid TOML: Expected ']' at the end of a table declaration "
                        "(第 1 行第 8 列 / at line 1, column 8)"),
    ('[device]\nid = "a"\n[device]\nkind = "room"\n',
     "agent.toml: TOML 语法错误 / invalid TOML: Cannot declare ('device',) twice (第 3 行第 8 列 / at line 3, column 8)"),
])
def test_refusal_names_key_and_line_in_both_languages(text, expected):
    assert refusal(text) == expected


@pytest.mark.parametrize("text,needle", [
    ('[device]\nunit_name = "a\\u0000b"\n', "device.unit_name: 'a\\x00b': 不允许控制字符 / control character U+0000 not allowed (第 2 行"),
    ('[device]\nlocation = "line1\\nline2"\n', "device.location: 'line1\\nline2': 不允许控制字符 / control character U+000A"),
    ('[room]\ncameras = ["/dev/video0\\u001b[2J"]\n', "room.cameras: 不允许控制字符 / control character U+001B not allowed (第 2 行"),
    ('[device]\nunit_name = "' + "字" * 5000 + '"\n', "device.unit_name: '字字字"),
    ('[device]\nunit_name = "' + "字" * 5000 + '"\n', "文本过长 / text too long: 5000 characters, at most 4096 (第 2 行 / line 2)"),
    ('[storage]\nreserve_mb = 99999999999999999999999\n', "整数超出 64 位范围 / integer out of the 64-bit range (第 2 行"),
    ('["a\\nb"]\nx = 1\n', "['a\\nb']: 未知的节 / unknown section"),
    ('[dock]\nbays = [{name = "b1", "p\\u0007" = "/dev/a"}]\n', "'p\\x07': 未知的键 / unknown key"),
])
def test_hostile_values_are_refused_on_one_short_line(text, needle):
    msg = refusal(text)
    assert needle in msg, msg


def test_huge_file_is_refused_before_parsing(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_text("# x\n" * 300_000)
    with pytest.raises(ConfigError, match=r"配置文件过大 / config file too large"):
        config_mod.load(p)
    p.write_bytes(b'[device]\nunit_name = "\xff"\n')
    with pytest.raises(ConfigError, match=r"不是 UTF-8 文本 / not UTF-8 text \(第 2 行 / line 2\)"):
        config_mod.load(p)


def test_sections_are_typed_models():
    cfg = config_mod.loads('[dock]\nbays = ["/dev/ttyACM*", {name = "front", port = "/dev/ttyUSB0"}]\n'
                           '[[dock.mass_storage_map]]\nlabel = "REC1"\nserial = "7000001"\nofficer_number = "000123"\n')
    assert isinstance(cfg.mqtt, MqttConfig) and isinstance(cfg.dock, DockConfig)
    assert cfg.dock.bays == [BaySpec(port="/dev/ttyACM*"), BaySpec(name="front", port="/dev/ttyUSB0")]
    assert cfg.dock.mass_storage_map == [MassStorageRecorder(label="REC1", serial="7000001", officer_number="000123")]
    # written back as the technician wrote it: a port-only bay is the plain glob again
    assert cfg.as_dict()["dock"]["bays"] == ["/dev/ttyACM*", {"name": "front", "port": "/dev/ttyUSB0"}]
    assert cfg.get("dock.bays") == cfg.as_dict()["dock"]["bays"]
    assert config_mod.loads(config_mod.render_default(cfg.as_dict(redact=False))) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        cfg.get("dock.bay")


def test_every_key_has_a_description():
    for section, fields in config_mod.SCHEMA.items():
        for key, info in fields.items():
            assert len(info.doc) > 5, f"{section}.{key} has no description"
    for model in (BaySpec, MassStorageRecorder):
        assert all(f.description for f in model.model_fields.values())


def test_assignment_is_validated():
    cfg = config_mod.Config.defaults()
    cfg.dock.erase_policy = "never"
    with pytest.raises(ValueError):
        cfg.dock.erase_policy = "sometimes"
    assert cfg.dock.erase_policy == "never"
    with pytest.raises(ConfigError, match="'sometimes' 不是可选值 / 'sometimes' is not one of after-archive"):
        config_mod.validate_value("dock.erase_policy", "sometimes")


def test_defaults_accept_both_spellings_and_refuse_like_the_file():
    cfg = config_mod.Config.defaults(storage__reserve_mb=5, **{"device.id": "dock-9"})
    assert cfg.storage.reserve_mb == 5 and cfg.device.id == "dock-9" and cfg.path is None
    with pytest.raises(ConfigError, match=r"^room.fps: 0 小于最小值 5 / 0 is below the minimum 5$"):
        config_mod.Config.defaults(room__fps=0)
