"""``[encryption]``: encryption at rest (agent/evidence/crypt.py)."""

from __future__ import annotations

from pydantic import Field

from .base import ConfigModel


class EncryptionConfig(ConfigModel):
    enabled: bool = Field(False, description="Encrypt every item on this device with a fresh AES-256-GCM key sealed to the "
                                             "archive's X25519 key (a stolen box reveals no recording).")
    archive_public_key: str = Field("", description="The archive's X25519 public key (PEM), from `edge-agent crypt keygen`; "
                                                    "required when enabled.")
