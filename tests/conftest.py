"""Shared fixtures. Keep this file small: the machinery lives in tests/support/."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto
from tests.support.pki import Pki, make_pki

# Client certificate CNs issued up front (per-device identity = CN); pki.client(cn) makes more.
DEVICE_IDS = ("dock-0001", "room-0001", "archive", "monitor")


@pytest.fixture
def tmp_data(tmp_path: Path) -> Path:
    """A fresh, empty data directory for an agent / archive."""
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA + server cert (127.0.0.1/localhost) + client certs (DEVICE_IDS) + a rogue client cert."""
    return make_pki(tmp_path_factory.mktemp("pki"), DEVICE_IDS)


@pytest.fixture
def make_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Mosquitto]]:
    """Factory: ``make_broker(extra_config=[...], tls=pki, persistence_dir=...)`` -> started broker.

    Without a password file, ACL, TLS or ``allow_anonymous`` of its own the broker runs the shipped
    configuration (``shipped=True``: anonymous off, generated identities on demand with
    ``mq.identity(name, role)``); ``make_broker(shipped=False)`` is an open broker.
    Every broker made is stopped at teardown."""
    made: list[Mosquitto] = []

    def factory(**kwargs) -> Mosquitto:
        own = {"password_file", "acl_file", "tls", "allow_anonymous"} & kwargs.keys()
        kwargs.setdefault("shipped", not own)
        mq = Mosquitto(tmp_path_factory.mktemp("mosquitto"), **kwargs)
        made.append(mq)
        return mq.start()

    yield factory
    for mq in made:
        mq.kill()  # no-op if already stopped


@pytest.fixture
def broker(make_broker) -> Mosquitto:
    """A private broker for one test (free port on 127.0.0.1; ``.port``) in the shipped
    configuration: anonymous off, the generated ACL, one login = one session; logins made with
    ``broker.identity(name, role)`` (the harnesses do it for their agents, archives, monitors)."""
    return make_broker()


@pytest.fixture
def open_broker(make_broker) -> Mosquitto:
    """A misconfigured broker on purpose: anonymous clients, no ACL, any client id. Only for the
    tests that show what the agent, archive and monitor still refuse when the broker lets anyone
    publish anything (docs/security.md)."""
    return make_broker(shipped=False)


@pytest.fixture(scope="session")
def broker_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One shipped-configuration broker shared by the whole session (of one worker): use unique
    device ids and logins, don't restart it."""
    mq = Mosquitto(tmp_path_factory.mktemp("mosquitto-session"), shipped=True).start()
    yield mq
    mq.stop()


@pytest.fixture
def tls_broker(make_broker, pki: Pki) -> Mosquitto:
    """A shipped-configuration broker with certificate identities (``archive broker-config
    --tls-identity certificate``): the mutual-TLS listener (``.tls_port``) requires a client
    certificate from the test CA and takes its CN as the user name, the generated ACL applied to
    it (CN ``dock-0001`` is that device, ``archive``, ``monitor`` the services; no password), one
    certificate = one session; and the loopback listener (``.port``) with passwords
    (``tls_broker.identity(name, role)``)."""
    return make_broker(tls=pki, identity_as_username=True, shipped=True)
