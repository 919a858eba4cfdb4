"""Roles on the local CLI and control socket, by Unix group: technician, operator, auditor.

An officer who is in none of the groups can read nothing through the CLI and cannot erase,
annotate or change settings. root is always allowed (installation, recovery). The data
directory itself is 0750 for the edge-agent user/group, so the file system backs this up.
"""

from __future__ import annotations

import grp
import os

from agent.common.errors import EdgeError

ROLES = ("technician", "operator", "auditor")
LABELS = {"technician": "技术员 technician", "operator": "操作员 operator", "auditor": "审计员 auditor"}


class RoleError(EdgeError):
    exit_code = 3


def groups_of(uid: int | None = None, gids: list[int] | None = None) -> set[str]:
    ids = set(gids if gids is not None else os.getgroups()) | ({os.getegid()} if gids is None else set())
    names = set()
    for g in ids:
        try:
            names.add(grp.getgrgid(g).gr_name)
        except KeyError:
            pass
    return names


def roles_of(cfg, uid: int | None = None, gids: list[int] | None = None) -> set[str]:
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return set(ROLES)
    names = groups_of(uid, gids)
    r = cfg.roles
    out = set()
    for role, group in (("technician", r.technician_group), ("operator", r.operator_group),
                        ("auditor", r.auditor_group)):
        if group in names:
            out.add(role)
    return out


def require(cfg, *allowed: str, uid: int | None = None, gids: list[int] | None = None) -> None:
    """Raise RoleError unless the caller holds one of ``allowed`` roles (or enforcement is off)."""
    if not cfg.roles.enforce:
        return
    have = roles_of(cfg, uid, gids)
    if have & set(allowed):
        return
    groups = {"technician": cfg.roles.technician_group, "operator": cfg.roles.operator_group,
              "auditor": cfg.roles.auditor_group}
    need = " or ".join(f"{LABELS[a]} (group {groups[a]})" for a in allowed)
    raise RoleError(f"权限不足 / not permitted: this needs the role {need}")
