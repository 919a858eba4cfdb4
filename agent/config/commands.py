"""``[commands]``: signed central commands (agent/wire/commands.py)."""

from __future__ import annotations

from pydantic import Field

from .base import ConfigModel


class CommandsConfig(ConfigModel):
    operator_keys_dir: str = Field("", description="Directory of trusted operator public keys (*.pub, PEM); empty = "
                                                   "data_dir/keys/operators. Commands not signed by one of them are refused.")
    max_age_s: int = Field(300, ge=10, le=86400,
                           description="A command older (or further in the future) than this many seconds is refused as expired.")
