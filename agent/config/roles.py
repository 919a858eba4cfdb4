"""``[roles]``: who may do what on the local CLI (agent/common/roles.py)."""

from __future__ import annotations

from pydantic import Field

from .base import ConfigModel


class RolesConfig(ConfigModel):
    enforce: bool = Field(True, description="Check the caller's Unix groups before commands that change evidence or settings "
                                            "(root is always allowed).")
    technician_group: str = Field("edge-tech", description="Group of technicians: init, config set, recover, doctor, dock/room set-up.")
    operator_group: str = Field("edge-operator", description="Group of operators: ingest, annotate, room start/stop, export.")
    auditor_group: str = Field("edge-audit", description="Group of auditors: audit list/verify/export, verify, items show/list.")
