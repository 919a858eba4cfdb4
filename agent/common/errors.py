"""User-facing errors. The CLI prints ``error: <message>`` and exits non-zero; never a traceback."""

from __future__ import annotations


class EdgeError(Exception):
    """An error a user can act on; the message is one line naming the cause."""

    exit_code = 1


class ConfigError(EdgeError):
    """The configuration file is missing, unreadable or invalid (names the key)."""

    exit_code = 2


class SessionTakenOver(EdgeError):
    """Another process logged in with this process's broker login and took its session (one login,
    one session). Exit status 6 (LSB "not configured"): the service units do not restart on it
    (``RestartPreventExitStatus=6``), so two processes never take one login back and forth."""

    exit_code = 6


class MetadataError(EdgeError):
    """Mandatory evidence metadata missing or malformed."""


class VerifyError(EdgeError):
    """An item or chain failed verification; the message says exactly where."""


class DiskReserveError(EdgeError):
    """Accepting new work would cross the configured free-disk reserve."""


class DuplicateError(EdgeError):
    """The same content was already ingested for the same case."""

    def __init__(self, message: str, existing_id: str):
        super().__init__(message)
        self.existing_id = existing_id


class NotFoundError(EdgeError):
    """A named item, key or record does not exist."""
