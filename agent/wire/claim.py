"""Who holds a login now: the session claim (one login, one session; agent/wire/broker_auth.py).

The broker ends a connection when another logs in with the same login. A broker that says so sends
DISCONNECT 0x8E "Session taken over"; Mosquitto 2.0.11 only closes the socket, which looks like any
lost connection, and reconnecting would take the session back from the other process, which then
does the same, for ever. So each connection claims its login on ``P/session/LOGIN`` (retained, the
ACL lets every login read and write its own only) and, on every connect, reads that claim first:

1. SUBSCRIBE ``P/session/LOGIN`` and, right behind it, PUBLISH a *fence* there (QoS 1, not retained).
   The broker handles the SUBSCRIBE (sending the retained claim, if any) before the PUBLISH, so the
   fence's echo comes after the claim.
2. On the echo: if this connection held the login before (its claim stood on an earlier connect)
   and the claim now names another holder, another process logged in since: *taken over*, leave
   (a clean DISCONNECT) and stay away. Otherwise claim the login (retained) and go on.

A newcomer always claims; the one it displaced finds the newcomer's claim on its reconnect and
leaves (the newcomer is taken back once, by that reconnect, and comes back to its own claim). A
loss without a takeover (a network cut, a broker restart) finds its own claim or none.

    claim = SessionClaim(topics.session(login), login)
    claim.begin(client, "HOST:PORT")          # on CONNACK
    claim.on_message(retain, payload)         # a message on claim.topic: "ready", "taken" or None
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from typing import Any

#: DISCONNECT reason code "Session taken over" (MQTT v5)
SESSION_TAKEN_OVER = 0x8E
TAKEN_BY_BROKER = "DISCONNECT 0x8E Session taken over"

READY = "ready"          # this connection holds the login: go on
TAKEN = "taken"          # another process took the login: leave, do not come back
UNCHECKED = "unchecked"  # the broker refuses the session topic (an older ACL): go on without the check


def says_taken_over(reason_code: Any) -> bool:
    """Did the broker end the connection with DISCONNECT 0x8E "Session taken over"?"""
    return getattr(reason_code, "value", reason_code) == SESSION_TAKEN_OVER


def certificate_login(certfile: str | None) -> str | None:
    """The login a broker with certificate identities (``use_identity_as_username``,
    `archive broker-config --tls-identity certificate`) gives the holder of ``certfile``: its
    subject's CN (the first certificate of a PEM file). None when there is no file, it cannot be
    read, or it names no CN (the connection then fails, or goes on unclaimed, on its own terms)."""
    if not certfile:
        return None
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        with open(certfile, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except (OSError, ValueError):
        return None
    return str(names[0].value) if names else None


def session_login(settings: Any) -> str | None:
    """The login the broker knows a connection with ``settings`` (a ConnSettings) by: its user name,
    or, with TLS, a client certificate and no user name, the certificate's CN (certificate
    identities: :func:`certificate_login`). None when neither (nothing to claim)."""
    if settings.username:
        return settings.username
    tls = settings.tls
    return certificate_login(tls.certfile) if tls is not None and tls.certfile else None


def taken_over_message(login: str | None, who: str = "") -> str:
    """What a process whose login another took says (logged, and shown by its owner)."""
    by = f" ({who})" if who else ""
    return (f"另一个进程以同一登录名登录 / another process logged in as {login or '(this login)'!r}{by}: the broker "
            "keeps one session per login, so this one stops instead of taking it back")


#: the claim's probe: a write below the login's claim, which the shipped ACL refuses (SessionClaim.begin)
PROBE = "probe"
_PROBE_LOG = re.compile(r"'[^']*/session/[^/']+/" + PROBE + "'")


def is_probe_refusal(log_line: str) -> bool:
    """A broker log line about the claim's deliberate probe (expected: one ``Denied PUBLISH`` per
    connect of a connection with a claim), not a refusal of real work."""
    return bool(_PROBE_LOG.search(log_line))


class SessionClaim:
    """The claim of one connection (kept across its reconnects) on its login's session topic."""

    def __init__(self, topic: str, login: str | None):
        self.topic = topic
        self.login = login
        #: this process and connection, as named in its claim
        self.instance = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self.claimed: set[str] = set()   # the brokers on which a claim of ours stood (on an earlier connect)
        self._where = ""
        self.deciding = False      # between begin() and the fence's echo
        #: by whom the login was taken ("now held by HOST:PID:…", or the broker's DISCONNECT); None: not taken
        self.taken_by: str | None = None
        self._other = ""           # the other holder named by the retained claim found on this connect
        self._mids: dict[int, str] = {}
        self._sub_mid: int | None = None
        #: the broker keeps other logins off this claim (its ACL refused our write to a session topic
        #: not ours, on this connect): only then can a claim by another holder, or a DISCONNECT 0x8E,
        #: be trusted as a takeover. On a broker without that ACL anyone may write the claim, and a
        #: stranger must not be able to stop a receiver or a monitor with it ("the centre never stops")
        self.guarded = False
        self.unguarded_seen = False  # told once: the broker lets anyone write this claim

    @property
    def taken_over(self) -> str | None:
        return taken_over_message(self.login, self.taken_by) if self.taken_by is not None else None

    def begin(self, client: Any, where: str = "") -> None:
        """On every CONNACK (success) from broker ``where`` (HOST:PORT; brokers share no claims):
        read the claim, behind it the fence."""
        self._where = where
        self._other = ""
        self._mids.clear()
        self.deciding = True
        _rc, self._sub_mid = client.subscribe(self.topic, qos=1)
        # a write where the ACL lets no login write (below its own claim): refused (0x87) by a broker
        # with the shipped ACL, taken by one without. The broker answers it before it reads the fence,
        # so the answer is known when the fence's echo comes
        self.guarded = False
        self._mids[client.publish(f"{self.topic}/{PROBE}", b"", qos=1).mid] = "probe"
        fence = json.dumps({"holder": self.instance, "fence": True}).encode()
        self._mids[client.publish(self.topic, fence, qos=1).mid] = "fence"

    def on_subscribe(self, mid: int, reason_codes) -> str | None:
        if mid != self._sub_mid:
            return None
        self._sub_mid = None
        if self.deciding and any(getattr(rc, "value", rc) >= 0x80 for rc in reason_codes):
            self.deciding = False
            return UNCHECKED
        return None

    def on_publish(self, mid: int, reason: int) -> tuple[bool, str | None]:
        """(whether the PUBACK was for one of ours, UNCHECKED if the fence was refused)."""
        kind = self._mids.pop(mid, None)
        if kind is None:
            return False, None
        if kind == "probe":
            self.guarded = reason >= 0x80
            return True, None
        if kind == "fence" and reason >= 0x80 and self.deciding:  # no echo will come
            self.deciding = False
            return True, UNCHECKED
        return True, None

    def on_message(self, client: Any, retain: bool, payload: bytes | bytearray) -> str | None:
        try:
            body = json.loads(bytes(payload))
            holder = str(body.get("holder", ""))
        except (ValueError, AttributeError):
            body, holder = {}, ""
        if not self.deciding:
            return None
        if retain:
            self._other = "" if holder == self.instance else (holder or "?")
            return None
        if holder != self.instance or not body.get("fence"):
            return None
        self.deciding = False
        if self._other and self._where in self.claimed:  # held it, lost the connection, another claimed it since
            if self.guarded:
                self.taken_by = f"now held by {self._other}"
                return TAKEN
            self.unguarded_seen = True  # anyone could have written that claim: not a reason to stop
        claim = json.dumps({"holder": self.instance, "since": time.time()}).encode()
        self._mids[client.publish(self.topic, claim, qos=1, retain=True).mid] = "claim"
        self.claimed.add(self._where)
        return READY

    def on_disconnect(self, reason_code: Any) -> bool:
        """True if the broker said DISCONNECT 0x8E "Session taken over" (then taken)."""
        if says_taken_over(reason_code) and self.taken_by is None and self.guarded:
            self.taken_by = TAKEN_BY_BROKER
            return True
        return False
