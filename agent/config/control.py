"""``[control]``: who may use the local control socket."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import ConfigModel


class ControlConfig(ConfigModel):
    groups: list[str] = Field(["edge-agent"],
                              description="Unix groups allowed on the control socket (data_dir/control.sock, mode 0660); "
                                          "root and the agent's own user always are.")

    @field_validator("groups")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        if any(not v for v in value):
            raise ValueError("组名不能为空 / group names must be non-empty strings")
        return value
