"""``[mqtt]``: the broker (agent/wire/client.py builds the one client from it)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from agent.common.netaddr import is_loopback, plaintext_refusal
from .base import ConfigModel, Ident, secret

#: HOST:PORT, [IPv6]:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (agent.wire.client.parse_broker reads it)
_ADDR = re.compile(r"^(?:(?:mqtts?|tcp|ssl)://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::\d{1,5})?/?"
                   r"|(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5})$")


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
    allow_plaintext: bool = Field(False, description="Allow plain MQTT (mqtt.tls = false) to a broker that is not on "
                                                     "the loopback: for a lab only, `doctor` warns while it is on. "
                                                     "Without it such a broker is refused: the password and every "
                                                     "message would cross the network unencrypted.")
    fallback: list[str] = Field(default_factory=list, max_length=8,
                                description="Fallback brokers, in order (HOST:PORT or mqtt(s)://HOST[:PORT]): when "
                                            "the broker at host:port cannot be reached or the connection is lost, "
                                            "the next one is tried, then the primary again. Same user name, "
                                            "password and TLS settings. A transfer goes on through whichever "
                                            "broker is up, from the byte ranges the archive holds.")
    failback_s: int = Field(300, ge=0, le=86400,
                            description="While on a fallback broker, try the primary every this many seconds "
                                        "and move back to it once it accepts the device and an archive receiver "
                                        "is online there (at a pause between items, or within 30 s at most: a "
                                        "transfer goes on through the primary from the byte ranges the archive "
                                        "holds). 0: stay on the fallback until it fails.")

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, value: list[str]) -> list[str]:
        for v in value:
            if not _ADDR.match(v):
                raise ValueError(f"代理地址无效 / {v!r} is not a broker address: HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        if len(set(value)) != len(value):
            raise ValueError("代理重复 / a broker is listed twice")
        return value

    @model_validator(mode="after")
    def _plaintext(self) -> "MqttConfig":
        if self.tls or self.allow_plaintext:
            return self
        off = [] if is_loopback(self.host) else [self.host]
        for v in self.fallback:
            scheme, sep, rest = v.partition("://")
            if sep and scheme.lower() in ("mqtts", "ssl"):
                continue
            addr = (rest if sep else v).rstrip("/")
            host = addr[1:].partition("]")[0] if addr.startswith("[") else addr.partition(":")[0]
            if not is_loopback(host):
                off.append(host)
        if off:
            raise ValueError(plaintext_refusal(off))
        return self
