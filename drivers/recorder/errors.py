"""Errors of the recorder driver. Every message is one bilingual line: ``中文 / English``."""

from __future__ import annotations

class RecorderError(Exception):
    """Base of every recorder driver error (drivers know nothing of the agent: the CLI and the dock
    turn these into their own messages)."""

    exit_code = 1

class RecorderTimeout(RecorderError):
    """The recorder did not answer a request, retries included."""

class ProtocolError(RecorderError):
    """The recorder answered something this driver cannot accept (malformed payload, bad name...)."""

class Unsupported(ProtocolError):
    """The recorder does not know this command (result 15 UNKNOWN_COMMAND): e.g. no clock read."""

class UnsafeName(ProtocolError):
    """A file name from a recorder carries a path, NUL, control characters or is too long."""

class AuthError(RecorderError):
    """Admin password refused, or a command needs authentication first."""

class RecorderGone(RecorderError):
    """The serial port disappeared or hung up (recorder unplugged)."""

class RecorderRefused(RecorderError):
    """The recorder answered with a failure result code (``.result``)."""

    def __init__(self, message: str, result: int):
        super().__init__(message)
        self.result = result
