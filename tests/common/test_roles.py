"""Roles by Unix group: an officer (no group) cannot annotate, export or change settings; an
operator can annotate; an auditor can read the audit log but not annotate; root can do all."""

from __future__ import annotations

import grp
import os
import subprocess

import pytest

from agent import config as config_mod
from agent.common.roles import RoleError, require, roles_of
from tests.support.spine import make_config, run_cli


def _group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if os.geteuid() != 0:
            pytest.skip("needs root to create groups")
        subprocess.run(["groupadd", "-f", name], check=True)
        return grp.getgrnam(name).gr_gid


def test_roles_by_group(tmp_path):
    cfg = config_mod.load(make_config(tmp_path))
    op, aud, tech = _group("edge-operator"), _group("edge-audit"), _group("edge-tech")
    officer = dict(uid=1000, gids=[1000])
    with pytest.raises(RoleError, match="权限不足 / not permitted: this needs the role 操作员 operator \\(group edge-operator\\)"):
        require(cfg, "operator", **officer)
    with pytest.raises(RoleError):
        require(cfg, "technician", **officer)
    require(cfg, "operator", uid=1000, gids=[1000, op])
    with pytest.raises(RoleError):
        require(cfg, "operator", uid=1000, gids=[aud])
    require(cfg, "auditor", uid=1000, gids=[aud])
    assert roles_of(cfg, uid=1000, gids=[op, aud, tech]) == {"operator", "auditor", "technician"}
    assert roles_of(cfg, uid=0, gids=[]) == {"operator", "auditor", "technician"}


def test_cli_refuses_without_role_and_enforce_switch(tmp_path):
    path = make_config(tmp_path, roles__operator_group="no-such-group-x", roles__auditor_group="no-such-group-y")
    assert run_cli(path, "init").returncode == 0
    # root is always allowed
    assert run_cli(path, "audit", "list").returncode == 0
    cfg = config_mod.load(path)
    with pytest.raises(RoleError):
        require(cfg, "operator", uid=4242, gids=[4242])
    run_cli(path, "config", "set", "roles.enforce", "false", check=True)
    require(config_mod.load(path), "operator", uid=4242, gids=[4242])  # enforcement off: allowed
