"""The one factory of paho clients and the one reader of broker addresses (docs/mqtt.md).

:func:`parse_broker` reads ``HOST:PORT`` / ``mqtt://`` / ``mqtts://``; :func:`settings_from_config`
turns the config's ``[mqtt]`` section plus command-line overrides into :class:`ConnSettings`;
:func:`new_client` builds the paho client (MQTT v5, credentials, TLS) from them; :func:`probe` asks
a broker whether it takes us now (the fail-back's test of the primary). The connection
that keeps itself up is :class:`agent.wire.mqtt.Connection`.
"""

from __future__ import annotations

import dataclasses
import ssl
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.common.errors import EdgeError
from agent.common.netaddr import is_loopback, plaintext_refusal


class BrokerAddressError(EdgeError):
    """A broker address that is not HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]."""


@dataclasses.dataclass
class TlsConfig:
    cafile: str
    certfile: str | None = None
    keyfile: str | None = None


@dataclasses.dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    #: True for ``mqtts://``, False for ``mqtt://``, None for a bare HOST:PORT (TLS as configured)
    tls: bool | None = None


_SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}


def parse_broker(value: str) -> BrokerAddress:
    """The one parser of a broker address: ``HOST:PORT``, ``[IPv6]:PORT``, ``mqtt://HOST[:PORT]``
    (plain, default port 1883) or ``mqtts://HOST[:PORT]`` (TLS, default port 8883).

    >>> parse_broker("10.0.0.5:8883")
    BrokerAddress(host='10.0.0.5', port=8883, tls=None)
    >>> parse_broker("mqtts://broker.example")
    BrokerAddress(host='broker.example', port=8883, tls=True)
    """
    text = (value or "").strip()
    hint = "expected HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT], e.g. 127.0.0.1:1883"

    def bad(why: str) -> BrokerAddressError:
        return BrokerAddressError(f"代理地址无效 / invalid broker address {value!r}: {why} ({hint})")

    default_port, tls = None, None
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme.lower() not in _SCHEMES:
            raise bad(f"unknown scheme {scheme!r} (mqtt or mqtts)")
        default_port, tls = _SCHEMES[scheme.lower()]
        text = text.rstrip("/")
        if "/" in text or "@" in text:
            raise bad("no path or user part allowed (user name and password come from the config)")
    if text.startswith("["):  # [IPv6]:PORT
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise bad("unclosed '['")
        if rest and not rest.startswith(":"):
            raise bad(f"unexpected {rest!r} after the address")
        port_s = rest[1:] if rest else ""
    elif text.count(":") > 1:
        raise bad("an IPv6 address needs brackets, e.g. [::1]:1883")
    else:
        host, sep, port_s = text.partition(":")
        if sep and not port_s:
            raise bad("empty port")
    if not host:
        raise bad("no host")
    if not port_s:
        if default_port is None:
            raise bad("no port")
        return BrokerAddress(host, default_port, tls)
    if not (port_s.isascii() and port_s.isdigit()):
        raise bad(f"port {port_s!r} is not a number")
    port = int(port_s)
    if not 1 <= port <= 65535:
        raise bad(f"port {port} out of range 1..65535")
    return BrokerAddress(host, port, tls)


def settings_from_config(mqtt_cfg: Any | None, client_id: str, *, broker: str | None = None,
                         cafile: str | None = None, certfile: str | None = None, keyfile: str | None = None,
                         **extra: Any) -> ConnSettings:
    """Connection settings from the config's ``[mqtt]`` section (or the defaults without one),
    with a ``--broker`` address and TLS files given on the command line taking precedence.

    TLS is on when the config says so, when the address is ``mqtts://``, or when a CA file is
    given; ``mqtt://`` turns it off. User name and password always come from the config. Plain
    MQTT to a broker off the loopback is refused (:class:`PlaintextRefused`) unless the config
    says ``mqtt.allow_plaintext = true``."""
    host, port = (mqtt_cfg.host, mqtt_cfg.port) if mqtt_cfg is not None else ("127.0.0.1", 1883)
    use_tls = bool(mqtt_cfg.tls) if mqtt_cfg is not None else False
    if broker:
        addr = parse_broker(broker)
        host, port = addr.host, addr.port
        if addr.tls is not None:
            use_tls = addr.tls
    if cafile or certfile or keyfile:
        if not cafile and not (mqtt_cfg is not None and mqtt_cfg.cafile):
            raise EdgeError("TLS 需要 CA 文件 / TLS needs a CA file (--cafile, or mqtt.cafile in the config)")
        use_tls = True
    tls = None
    if use_tls:
        pick = (lambda given, key: given or (getattr(mqtt_cfg, key, "") if mqtt_cfg is not None else "") or None)
        tls = TlsConfig(pick(cafile, "cafile") or "", pick(certfile, "certfile"), pick(keyfile, "keyfile"))
    kw: dict[str, Any] = {}
    if mqtt_cfg is not None:
        kw = {"keepalive": mqtt_cfg.keepalive, "username": mqtt_cfg.username or None,
              "password": mqtt_cfg.password or None}
        kw["allow_plaintext"] = bool(getattr(mqtt_cfg, "allow_plaintext", False))
        if not broker:  # a --broker given on the command line is the one broker to use
            kw["fallback"] = fallback_addresses(getattr(mqtt_cfg, "fallback", None) or [], tls=bool(tls))
            kw["failback_s"] = float(getattr(mqtt_cfg, "failback_s", 0) or 0)
    kw.update(extra)
    s = ConnSettings(host=host, port=port, client_id=client_id, tls=tls, **kw)
    check_plaintext(s.brokers, bool(s.tls), s.allow_plaintext)  # at start, not in the connection's thread
    return s


def fallback_addresses(values: list[str], *, tls: bool) -> tuple[tuple[str, int], ...]:
    """``mqtt.fallback`` as (host, port) pairs; an address whose scheme says otherwise than the
    connection's TLS setting is refused (one set of credentials and TLS files serves them all)."""
    out = []
    for v in values:
        addr = parse_broker(v)
        if addr.tls is not None and addr.tls != tls:
            raise BrokerAddressError(f"代理地址无效 / invalid broker address in mqtt.fallback {v!r}: {'TLS' if addr.tls else 'plain MQTT'}, but the "
                                     f"primary broker is {'TLS' if tls else 'plain MQTT'} (the same TLS settings serve every broker)")
        out.append((addr.host, addr.port))
    return tuple(out)


def instance_user(username: str, k: int | str) -> str:
    """The login of a process's connection ``k`` when it opens several to one broker at once (the
    monitor's shares) or beside another process of the same identity (``archive policy publish``
    beside the receiver: ``k`` = "policy"). The broker binds each login to one session
    (``use_username_as_clientid``, agent/wire/broker_auth.py), so connection 0 logs in as
    ``username`` and connection k as ``username.k``, which `archive broker-config` creates with
    the same password."""
    return username if k == 0 else f"{username}.{k}"


class PlaintextRefused(EdgeError):
    """Plain MQTT to a broker off the loopback, without ``mqtt.allow_plaintext``."""


def check_plaintext(brokers: list[tuple[str, int]], tls: bool, allow: bool) -> None:
    """Refuse plain MQTT to any broker that is not on the loopback (the password and every message
    would cross the network in clear) unless ``mqtt.allow_plaintext`` says this is a lab."""
    if tls or allow:
        return
    off = [f"{h}:{p}" for h, p in brokers if not is_loopback(h)]
    if off:
        raise PlaintextRefused(plaintext_refusal(off))


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Does ``topic`` match the subscription ``topic_filter`` (``+``/``#`` wildcards)?"""
    return mqtt.topic_matches_sub(topic_filter, topic)


def new_client(s: "ConnSettings", *, reconnect: bool = True, buffered: bool = False) -> mqtt.Client:
    """The one factory of paho clients: MQTT v5, the settings' user name/password and TLS
    (server verified against ``cafile``, or the system's CAs when it is empty; client certificate
    when given). Plain MQTT to a broker off the loopback is refused unless ``s.allow_plaintext``
    (:func:`check_plaintext`). Callers set the callbacks and connect with ``client.connect(s.host, s.port)``.
    ``buffered``: read the socket 64 KiB at a time (agent/wire/fastread.py; for subscribers of
    many small messages, the monitor)."""
    from .fastread import AVAILABLE, BufferedClient

    check_plaintext(s.brokers, bool(s.tls), s.allow_plaintext)
    cls = BufferedClient if buffered and AVAILABLE else mqtt.Client
    c = cls(callback_api_version=CallbackAPIVersion.VERSION2, client_id=s.client_id,
            protocol=mqtt.MQTTv5, reconnect_on_failure=reconnect)
    if s.username:
        c.username_pw_set(s.username, s.password or None)
    if s.tls:
        try:
            c.tls_set(ca_certs=s.tls.cafile or None, certfile=s.tls.certfile or None,
                      keyfile=s.tls.keyfile or None, cert_reqs=ssl.CERT_REQUIRED,
                      tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise EdgeError(f"TLS 设置失败 / TLS set-up failed ({s.tls.cafile or 'system CAs'}, "
                            f"{s.tls.certfile or 'no client certificate'}): {exc}") from None
    return c


def probe(settings: ConnSettings, host: str, port: int, *, timeout: float, stop: threading.Event | None = None,
          subscribe: tuple[str, ...] = (), accept: Callable[[str, bytes], bool] | None = None) -> str | None:
    """Does the broker at host:port take us now? A connection of its own (same identity, no will,
    clean start), CONNACK success, and when ``accept`` is given one message of the ``subscribe``
    filters (retained ones arrive at once) for which it returns True. None when all holds, else why
    not. Ends with a clean DISCONNECT."""
    done = threading.Event()
    seen: dict[str, Any] = {}

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        seen["rc"] = reason_code
        if reason_code.is_failure:
            done.set()
            return
        for t in subscribe:
            client.subscribe(t, qos=1)
        if accept is None:
            done.set()

    def on_message(client, userdata, msg) -> None:
        try:
            if accept is not None and accept(msg.topic, bytes(msg.payload)):
                seen["accepted"] = msg.topic
                done.set()
        except Exception as exc:  # the owner's check refused it
            seen["why"] = f"{msg.topic}: {exc}"

    def on_disconnect(client, userdata, flags, reason_code, properties) -> None:
        seen.setdefault("closed", str(reason_code))
        done.set()

    c = new_client(dataclasses.replace(settings, host=host, port=port, fallback=()), reconnect=False)
    c.on_connect, c.on_message, c.on_disconnect = on_connect, on_message, on_disconnect
    try:
        c.connect(host, port, keepalive=max(5, int(timeout) + 5), clean_start=True)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return f"cannot connect to {host}:{port}: {exc}"
    c.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not done.wait(0.1):
            if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                break
        rc = seen.get("rc")
        if rc is None:
            return f"no CONNACK from {host}:{port} within {timeout:g} s" if "closed" not in seen else \
                f"connection to {host}:{port} closed before CONNACK: {seen['closed']}"
        if rc.is_failure:
            return f"connection refused by {host}:{port}: {rc} ({rc.value:#04x})"
        if accept is not None and "accepted" not in seen:
            return seen.get("why") or f"nothing on {', '.join(subscribe)} passed within {timeout:g} s"
        return None
    finally:
        try:
            c.disconnect()
        except Exception:
            pass
        c.loop_stop()


@dataclasses.dataclass
class ConnSettings:
    host: str
    port: int
    client_id: str
    keepalive: int = 30
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    min_backoff: float = 0.5
    max_backoff: float = 30.0
    connect_timeout: float = 10.0
    #: Receive Maximum we announce in CONNECT: how many QoS 1 messages the broker may have in
    #: flight to us (None: the protocol default, 65535)
    receive_maximum: int | None = None
    #: brokers tried in turn after host:port when it cannot be reached or the connection is lost
    fallback: tuple[tuple[str, int], ...] = ()
    #: on a fallback broker: probe the primary every this many seconds and move back to it (0: never)
    failback_s: float = 0.0
    #: plain MQTT allowed to a broker off the loopback (``mqtt.allow_plaintext``: a lab only)
    allow_plaintext: bool = False

    @property
    def brokers(self) -> list[tuple[str, int]]:
        """Every broker in the order tried: the primary first."""
        return [(self.host, self.port), *[b for b in self.fallback if b != (self.host, self.port)]]
