"""``[log]``: log level and format (agent/common/logsetup.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import ConfigModel


class LogConfig(ConfigModel):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["auto", "json", "text"] = Field("auto", description="auto (journald under systemd, else JSON lines), json or text.")
