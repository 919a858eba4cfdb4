"""Whether a broker is on this machine: plain MQTT is allowed only to the loopback (docs/security.md,
"Identity on the broker"), unless ``mqtt.allow_plaintext`` says this is a lab. Used by the config
(``[mqtt]``, checked at load) and by the wire (every client, whatever built its settings)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """``host`` names this machine without any network: ``localhost`` (or ``*.localhost``), an
    address in 127.0.0.0/8 or ``::1``. Names are not resolved (a name could point anywhere).

    >>> is_loopback("127.0.0.2"), is_loopback("[::1]"), is_loopback("10.0.0.5"), is_loopback("broker.example")
    (True, True, False, False)
    """
    h = (host or "").strip().strip("[]").lower().rstrip(".")
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def plaintext_refusal(off: list[str]) -> str:
    """The one message (bilingual, naming the keys) for plain MQTT to the brokers ``off``."""
    return (f"拒绝明文连接 / refusing plain MQTT to {', '.join(off)}: not on the loopback (mqtt.tls is false), so "
            "the password and every message would cross the network unencrypted. Set mqtt.tls = true (with "
            "mqtt.cafile), or, in a lab only, mqtt.allow_plaintext = true")
