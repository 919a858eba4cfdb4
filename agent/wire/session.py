"""Short MQTT sessions for the command line, the doctor and the tools: :func:`exchange` connects,
subscribes, publishes one message, collects the answers and disconnects (on a
:class:`agent.wire.mqtt.Connection`). :func:`login_lock` lets the short sessions of one host that
share a login (one login, one session) take turns instead of ending each other."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from agent.common.faults import pausepoint

from .claim import session_login
from .client import ConnSettings
from .mqtt import Connection
from .publish import PublishError


def lock_path(settings: ConnSettings) -> Path:
    """The lock file of one login on one broker, shared by every user of this host (with a client
    certificate and no user name the login is the certificate's CN)."""
    login = session_login(settings) or "anonymous"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{login}@{settings.host}_{settings.port}")
    return Path(tempfile.gettempdir()) / f"edge-agent-login-{name}.lock"


@contextlib.contextmanager
def login_lock(settings: ConnSettings, *, timeout: float, waiting: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold this host's lock of ``settings``' login while the block runs: the broker keeps one
    session per login, so two short sessions with one login at the same moment would end one
    another; here the second waits (at most ``timeout``; ``waiting()`` is called once when it has
    to) and yields False if the lock never came (the block then runs without it)."""
    with file_lock(lock_path(settings), timeout=timeout, waiting=waiting) as held:
        yield held


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float, waiting: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive ``flock`` of ``path`` (made if missing) while the block runs, waiting at
    most ``timeout`` for it; yields False if it never came, or the file cannot be opened."""
    fd = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        fd = None
    if fd is None:  # no lock to be had (read-only /tmp, a foreign file): as before, unserialized
        yield False
        return
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    held = False
                    break
                if not told and waiting is not None:
                    waiting()
                    told = True
                time.sleep(0.05)  # flock has no timeout: poll (the holder ends within its own timeout)
        yield held
    finally:
        os.close(fd)  # releases the lock


@dataclasses.dataclass
class Exchange:
    """What :func:`exchange` saw: whether the broker accepted us, why not, and the messages."""

    connected: bool
    error: str | None
    messages: list[tuple[str, bytes, Any]]
    #: another process logged in with this login and took the session (agent/wire/mqtt.py): why
    taken_over: str | None = None
    #: the message was handed to the broker (a takeover after this may have delivered it)
    sent: bool = False


def exchange(settings: ConnSettings, *, subscribe: tuple[str, ...] = (),
             publish: tuple[str, bytes] | None = None, response_topic: str | None = None,
             correlation: bytes | None = None,
             until: Callable[[list[tuple[str, bytes, Any]]], bool] | None = None,
             timeout: float = 10.0, claim: str | None = None) -> Exchange:
    """One short session for the command line and the doctor: connect (TLS and credentials as
    set), subscribe, publish one message (QoS 1, with response topic and correlation data when
    given; the broker handles the subscription first), collect messages until ``until(messages)``
    holds or ``timeout`` passes, disconnect. ``claim``: the login's session topic
    (``Topics.session``): a session taken over by another process with the same login ends the
    exchange (``taken_over``) instead of taking it back."""
    got: list[tuple[str, bytes, Any]] = []
    done = threading.Event()

    def on_message(topic: str, payload: bytes, props: Any) -> None:
        got.append((topic, payload, props))
        if until is not None and until(got):
            done.set()

    conn = Connection(dataclasses.replace(settings, max_backoff=1.0), on_message=on_message, name="mqtt-exchange",
                      claim=claim)
    for t in subscribe:
        conn.subscribe(t, 1)
    deadline = time.monotonic() + timeout

    def wait(event: Callable[[float], bool]) -> bool:
        """``event`` within the deadline, unless the session is taken over first."""
        while not conn.taken_over:
            left = deadline - time.monotonic()
            if event(min(0.1, max(0.0, left))):
                return True
            if left <= 0:
                return False
        return False

    conn.start()
    sent = False
    try:
        if not wait(conn.wait_connected):
            return Exchange(False, conn.taken_over or conn.last_error or f"no connection within {timeout:g} s", got,
                            conn.taken_over)
        if publish is not None:
            pausepoint("exchange:before-publish")  # tests: another process takes the session here
            while True:
                try:
                    h = conn.publish(publish[0], publish[1], qos=1, response_topic=response_topic,
                                     correlation=correlation, timeout=max(0.1, deadline - time.monotonic()))
                    break
                except PublishError:
                    # the connection went between its CONNACK and here (lost, or taken over by another
                    # process with this login): nothing went out. Wait for the reconnect, or the takeover
                    if conn.connected and not conn.taken_over:
                        raise  # refused for another reason (too large): as it says
                    if not wait(conn.wait_connected):
                        return Exchange(False, conn.taken_over or conn.last_error
                                        or f"connection lost, not back within {timeout:g} s", got, conn.taken_over)
            sent = True
            if wait(h.wait) and not h.ok:
                return Exchange(True, conn.taken_over or h.error, got, conn.taken_over, sent)
        if until is not None:
            wait(done.wait)
        return Exchange(True, conn.taken_over, got, conn.taken_over, sent)
    finally:
        conn.stop(timeout=2.0)
