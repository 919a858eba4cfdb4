"""``[mqtt]``: the broker (agent/wire/client.py builds the one client from it)."""

from __future__ import annotations

from pydantic import Field

from .base import ConfigModel, Ident, secret


class MqttConfig(ConfigModel):
    host: str = Field("127.0.0.1", description="MQTT broker host.")
    port: int = Field(1883, ge=1, le=65535, description="MQTT broker port (8883 for TLS).")
    topic_prefix: Ident = Field("edge", description="Root of the topic tree.")
    username: str = Field("", description="MQTT user name (empty: none).")
    password: str = secret("", "MQTT password (empty: none).")
    tls: bool = Field(False, description="Use TLS (server verification).")
    cafile: str = Field("", description="CA bundle that signed the broker's certificate.")
    certfile: str = Field("", description="Client certificate (mutual TLS, per-device identity).")
    keyfile: str = Field("", description="Client private key.")
    keepalive: int = Field(30, ge=5, le=3600, description="Keepalive seconds.")
