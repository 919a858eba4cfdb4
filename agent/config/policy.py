"""``[policy]``: the unit's signed policy pushed down to the station (agent/policy, docs/custody.md)."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import ConfigModel


class PolicyConfig(ConfigModel):
    keys: list[str] = Field([], description="Pinned policy public keys besides data_dir/keys/policy/*.pub (where `edge-agent "
                                            "policy trust FILE` and `archive enroll --pin-to` put them): files or directories "
                                            "of *.pub. Only a unit policy signed by one of them is applied.")

    @field_validator("keys")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        if any(not v for v in value):
            raise ValueError("路径不能为空 / paths must be non-empty (files or directories of *.pub)")
        return value
