"""Config schema, init, config commands and the CLI's error contract (one line, no traceback)."""

from __future__ import annotations

import os
import stat

import pytest

from agent import config as config_mod
from agent.common.errors import ConfigError
from tests.support.spine import make_config, run_cli


def test_default_config_is_valid_and_commented():
    text = config_mod.render_default()
    cfg = config_mod.loads(text)
    assert cfg.device.kind == "dock" and cfg.evidence.hash_algorithm == "sha256"
    assert "# Free disk to keep in reserve" in text


@pytest.mark.parametrize("text,match", [
    ('[device]\nid = 5\n', r"device.id: expected a string, got 5 \(line 2\)"),
    ('[device]\nkind = "car"\n', r"device.kind: 'car' is not one of dock, room"),
    ('[storage]\nreserve_mb = -1\n', r"storage.reserve_mb: -1 is below the minimum 0"),
    ('[storage]\nfoo = 1\n', r"storage.foo: unknown key"),
    ('[nope]\nx = 1\n', r"\[nope\]: unknown section"),
    ('[device]\nid = "../etc"\n', r"device.id: '../etc': letters, digits"),
    ('[evidence]\nhash_algorithm = "md5"\n', r"evidence.hash_algorithm: 'md5': not available"),
    ('[device\nid = 1', r"invalid TOML"),
])
def test_errors_name_the_key(text, match):
    with pytest.raises(ConfigError, match=match):
        config_mod.loads(text)


def test_init_writes_config_data_dir_and_private_key_0600(tmp_path):
    cfg = tmp_path / "etc" / "agent.toml"
    p = run_cli(cfg, "init", "--data-dir", str(tmp_path / "data"), "--device-id", "room-07", "--kind", "room",
                "--unit-code", "330106000000")
    assert p.returncode == 0, p.stderr
    key = tmp_path / "data" / "keys" / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert config_mod.load(cfg).device.id == "room-07"
    again = run_cli(cfg, "init")
    assert again.returncode == 1 and "already exists; use --force" in again.stderr
    before = key.read_bytes()
    forced = run_cli(cfg, "init", "--force")
    assert forced.returncode == 0 and key.read_bytes() != before


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
    assert bad.returncode == 2 and "expected an integer" in bad.stderr
    bad2 = run_cli(cfg, "config", "set", "device.kind", "car")
    assert bad2.returncode == 2 and "not one of" in bad2.stderr
    assert cfg.read_text() == before  # nothing written on a refused set
    show = run_cli(cfg, "config", "show", "--json")
    assert '"reserve_mb": 2048' in show.stdout
    run_cli(cfg, "config", "set", "mqtt.password", "s3cret", check=True)
    assert "s3cret" not in run_cli(cfg, "config", "show").stdout


def test_env_var_and_missing_config(tmp_path):
    cfg = make_config(tmp_path)
    env = dict(os.environ, EDGE_AGENT_CONFIG=str(cfg))
    import subprocess
    from tests.support.spine import EDGE
    p = subprocess.run([EDGE, "config", "get", "device.id"], capture_output=True, text=True, env=env)
    assert p.stdout.strip() == "dock-01"
    missing = run_cli(tmp_path / "none.toml", "status")
    assert missing.returncode == 2 and "config file not found" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_malformed_config_file_is_one_clear_line(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[device]\nid = "ok"\nkind = 3\n')
    p = run_cli(cfg, "status")
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: {cfg}: device.kind: expected a string, got 3 (line 3)"


def test_every_command_has_help():
    """(docs/cli.md against --help: tests/test_cli_doc.py)"""
    import click

    from agent.cli import main

    def walk(cmd, path):
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])

    bare = [" ".join(path) for path, cmd in walk(main, []) if path and not cmd.help]
    assert not bare, f"commands without help: {bare}"
