"""Config schema, init, config commands and the CLI's error contract (one line, no traceback)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.common.errors import ConfigError
from tests.support.spine import EDGE, make_config, run_cli


def test_default_config_is_valid_and_commented():
    text = config_mod.render_default()
    cfg = config_mod.loads(text)
    assert cfg.device.kind == "dock" and cfg.evidence.hash_algorithm == "sha256"
    assert "# Free disk to keep in reserve" in text


def test_init_writes_config_data_dir_and_private_key_0600(tmp_path):
    cfg = tmp_path / "etc" / "agent.toml"
    p = run_cli(cfg, "init", "--data-dir", str(tmp_path / "data"), "--device-id", "room-07", "--kind", "room",
                "--unit-code", "330106000000")
    assert p.returncode == 0, p.stderr
    key = tmp_path / "data" / "keys" / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert config_mod.load(cfg).device.id == "room-07"
    before, text = key.read_bytes(), cfg.read_text()
    again = run_cli(cfg, "init")
    assert again.returncode == 0, again.stderr
    assert "(已保留 kept)" in again.stdout and "密钥 key" in again.stdout and "已保留 kept; --force" in again.stdout
    assert key.read_bytes() == before and cfg.read_text() == text
    moved = run_cli(cfg, "init", "--location", "西湖区询问室2", "--kind", "room")
    assert moved.returncode == 0 and "device.location: \"未设置地点 / location not set\" → \"西湖区询问室2\"" in moved.stdout
    assert "device.kind" not in moved.stdout and key.read_bytes() == before
    assert config_mod.load(cfg).device.location == "西湖区询问室2"
    text = cfg.read_text()
    renamed = run_cli(cfg, "init", "--device-id", "room-08")
    assert renamed.returncode == 1 and "changing device.id to room-08 needs --force" in renamed.stderr
    assert cfg.read_text() == text and key.read_bytes() == before
    forced = run_cli(cfg, "init", "--force")
    assert forced.returncode == 0 and key.read_bytes() != before and "新建 new" in forced.stdout


def test_config_get_set_show_validate(tmp_path):
    cfg = make_config(tmp_path)
    assert run_cli(cfg, "config", "validate").returncode == 0
    assert run_cli(cfg, "config", "get", "device.id").stdout.strip() == "dock-01"
    p = run_cli(cfg, "config", "set", "storage.reserve_mb", "2048")
    assert p.returncode == 0, p.stderr
    assert config_mod.load(cfg).storage.reserve_mb == 2048
    assert "# Free disk to keep in reserve" in cfg.read_text()  # comments survive
    before = cfg.read_text()
    bad = run_cli(cfg, "config", "set", "storage.reserve_mb", "lots")
    assert bad.returncode == 2
    assert bad.stderr == "error: storage.reserve_mb: 应为整数 / expected an integer, got 'lots'\n"
    bad2 = run_cli(cfg, "config", "set", "device.kind", "car")
    assert bad2.returncode == 2 and "'car' 不是可选值 / 'car' is not one of dock, room (第 " in bad2.stderr
    assert cfg.read_text() == before  # nothing written on a refused set
    show = run_cli(cfg, "config", "show", "--json")
    assert '"reserve_mb": 2048' in show.stdout
    run_cli(cfg, "config", "set", "mqtt.password", "s3cret", check=True)
    shown = run_cli(cfg, "config", "show").stdout
    assert "s3cret" not in shown and 'password = "********"' in shown
    assert config_mod.parse_toml(shown)["dock"]["bays"] == ["/dev/ttyACM*"]  # what show prints is TOML
    assert run_cli(cfg, "config", "get", "dock.probe").stdout == "true\n"


def test_env_var_and_missing_config(tmp_path):
    cfg = make_config(tmp_path)
    env = dict(os.environ, EDGE_AGENT_CONFIG=str(cfg))
    p = subprocess.run([EDGE, "config", "get", "device.id"], capture_output=True, text=True, env=env)
    assert p.stdout.strip() == "dock-01"
    missing = run_cli(tmp_path / "none.toml", "status")
    assert missing.returncode == 2
    assert f"配置文件不存在 / config file not found (run `edge-agent --config {tmp_path / 'none.toml'} init`)" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_malformed_config_file_is_one_clear_line(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[device]\nid = "ok"\nkind = 3\n')
    p = run_cli(cfg, "status")
    assert p.returncode == 2
    assert p.stderr == f"error: {cfg}: device.kind: 3 不是可选值 / 3 is not one of dock, room (第 3 行 / line 3)\n"
    cfg.write_text('[device]\nid = "ok"\nkind = "dock\n')
    p = run_cli(cfg, "config", "validate")
    assert p.returncode == 2
    assert p.stderr == (f"error: {cfg}: TOML 语法错误 / invalid TOML: Illegal character '\\n' "
                        "(第 3 行第 13 列 / at line 3, column 13)\n")


def test_every_command_has_help():
    """(docs/cli.md against --help: tests/cli/test_cli_doc.py)"""
    import click

    from agent.cli import main

    def walk(cmd, path):
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])

    bare = [" ".join(path) for path, cmd in walk(main, []) if path and not cmd.help]
    assert not bare, f"commands without help: {bare}"


# --- config set: lists and tables in TOML syntax, validated before the file is written ----------
def test_config_set_lists_and_tables_keeps_comments(tmp_path):
    cfg = make_config(tmp_path)
    p = run_cli(cfg, "config", "set", "room.cameras", '["/dev/video0", "rtsp://10.0.0.2/main"]')
    assert p.returncode == 0, p.stderr
    assert p.stdout == 'room.cameras = ["/dev/video0", "rtsp://10.0.0.2/main"]\n'
    p = run_cli(cfg, "config", "set", "dock.bays", '["/dev/ttyACM*", {name = "front", port = "/dev/ttyUSB0"}]')
    assert p.returncode == 0, p.stderr
    text = cfg.read_text()
    assert 'bays = ["/dev/ttyACM*", {name = "front", port = "/dev/ttyUSB0"}]\n' in text  # as typed
    assert "# Camera sources, main (frontal) first" in text and "# Bays: serial-port globs" in text
    loaded = config_mod.load(cfg)
    assert loaded.room.cameras == ["/dev/video0", "rtsp://10.0.0.2/main"]
    assert [b.name for b in loaded.dock.bays] == [None, "front"]
    config_mod.set_value(cfg, "dock.mass_storage_map",
                         '[{label = "REC1", serial = "7000001", officer_number = "000123"}]')
    assert config_mod.load(cfg).dock.mass_storage_map[0].officer_number == "000123"
    # a plain value from a signed central command takes the same road
    config_mod.set_value(cfg, "room.cameras", ["file:/srv/a.mp4"])
    assert config_mod.load(cfg).room.cameras == ["file:/srv/a.mp4"]


@pytest.mark.parametrize("key,value,message", [
    ("room.cameras", "/dev/video0",
     "room.cameras: 应为 TOML 列表 / expected a list in TOML syntax, e.g. '[\"a\", \"b\"]', got '/dev/video0'"),
    ("room.cameras", '["/dev/video0"', "room.cameras: TOML 语法错误 / invalid TOML value '[\"/dev/video0\"': "),
    ("room.cameras", '["a", "b", "c"]', "room.cameras: 须给 1 或 2 个摄像头 / give 1 or 2 camera sources"),
    ("dock.bays", '["ttyACM*"]', "dock.bays: 第 1 项 / entry 1: 'ttyACM*': 须为绝对路径 / 'ttyACM*' must be an absolute path"),
    ("dock.bays", '[{name = "b1", prot = "/dev/x"}]', "dock.bays: 第 1 项 / entry 1: prot: 未知的键 / unknown key"),
    ("dock.bays", '[{port = "/dev/x", mount = "/m"}]', "port 与 mount 须且只能给一个 / give exactly one of port"),
    ("dock.mass_storage_map", '[{label = "x"}]', "dock.mass_storage_map: 第 1 项 / entry 1: 缺少 serial / serial is required"),
    ("device.unit_name", '["a", "b"]', "device.unit_name: 应为字符串 / expected a string, got a list: '[\"a\", \"b\"]'"),
    ("device.unit_name", "{zh = 'a'}", "device.unit_name: 应为字符串 / expected a string, got a table"),
    ("storage.reserve_mb", "[1]", "storage.reserve_mb: 应为整数 / expected an integer, got '[1]'"),
    ("storage.reserve_mb", "99999999999999999999999", "整数超出 64 位范围 / integer out of the 64-bit range"),
    ("mqtt.port", "0", "mqtt.port: 0 小于最小值 1 / 0 is below the minimum 1"),
    ("device.unit_name", "x" * 5000, "文本过长 / text too long: 5000 characters, at most 4096"),
    ("device.location", "a\nb", "不允许控制字符 / control character U+000A not allowed"),
    ("device.location", "a\udcffb", "不是有效的 UTF-8 文本 / not valid UTF-8 text"),  # a non-UTF-8 byte on argv
    ("storage.reserv_mb", "1", "是否应为 / did you mean reserve_mb?"),
    ("storage", "{reserve_mb = 1}", "storage: 键的写法是 节.键 / a key is written SECTION.KEY"),
])
def test_refused_set_leaves_the_file_byte_identical(tmp_path, key, value, message):
    cfg = make_config(tmp_path)
    before = cfg.read_bytes()
    with pytest.raises(ConfigError) as e:
        config_mod.set_value(cfg, key, value)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert cfg.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml"]  # no temporary file left behind


def test_refused_set_on_the_command_line(tmp_path):
    cfg = make_config(tmp_path)
    before = cfg.read_bytes()
    p = run_cli(cfg, "config", "set", "dock.bays", '[{name = "b 1", port = "/dev/x"}]')
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith(f"error: {cfg}: dock.bays: 第 1 项 / entry 1: ") and "name 'b 1'" in p.stderr
    assert re.search(r" \(第 \d+ 行 / line \d+\)\n$", p.stderr), p.stderr
    # a byte that is not UTF-8, as a shell passes it
    q = subprocess.run([EDGE.encode(), b"--config", str(cfg).encode(), b"config", b"set", b"device.unit_name", b"\xff"],
                       capture_output=True)
    assert q.returncode == 2 and "不是有效的 UTF-8 文本 / not valid UTF-8 text" in q.stderr.decode()
    assert cfg.read_bytes() == before


def test_set_validates_the_whole_file(tmp_path):
    cfg = make_config(tmp_path)
    cfg.write_text(cfg.read_text() + '\n[extra]\nx = 1\n')
    before = cfg.read_bytes()
    with pytest.raises(ConfigError, match=r"\[extra\]: 未知的节 / unknown section .*\(第 \d+ 行 / line \d+\)"):
        config_mod.set_value(cfg, "storage.reserve_mb", "5")
    assert cfg.read_bytes() == before
