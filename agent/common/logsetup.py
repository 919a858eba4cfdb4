"""Structured logging: JSON lines on stderr, or journald's native protocol under systemd.

    setup_logging("info")                 # fmt="auto"
    log.info("segment sealed %s", seg_id, extra={"device_id": dev, "bytes": n})

fmt:
- "json":    one JSON object per line on stderr: ts, level, logger, msg, extra fields,
             and exc (the formatted traceback) when there is one.
- "journal": native journald datagrams to /run/systemd/journal/socket with MESSAGE, PRIORITY,
             SYSLOG_IDENTIFIER, CODE_FILE, CODE_LINE, CODE_FUNC, LOGGER, THREAD_NAME and the
             extra fields upper-cased (``device_id`` -> ``DEVICE_ID``). Falls back to "plain"
             when the socket is not there.
- "plain":   ``<6>logger: message key=value`` lines (the ``<N>`` prefix lets journald pick the
             priority from a stderr stream).
- "auto":    "journal" when stderr is the journal stream systemd gave us ($JOURNAL_STREAM
             matches stderr's device:inode, as sd_journal docs advise), otherwise "json".
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import re
import socket
import sys
import traceback
from typing import IO, Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_MARK = "_edge_agent_logsetup"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None)).keys()) | {
    "message", "asctime", "taskName",
}

_PRIORITY = {  # syslog priorities
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def priority(levelno: int) -> int:
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return _PRIORITY[threshold]
    return 7


def extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(created: float) -> str:
    return dt.datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


def _exc_text(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return "".join(traceback.format_exception(*record.exc_info)).rstrip()
    if record.exc_text:
        return record.exc_text
    return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extras(record).items():
            doc.setdefault(key, value)
        exc = _exc_text(record)
        if exc:
            doc["exc"] = exc
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """``<N>logger: message key=value`` (N = syslog priority, understood by journald)."""

    def __init__(self, prefix: bool = True) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{record.name}: {record.getMessage()}"]
        parts += [f"{k}={v}" for k, v in extras(record).items()]
        line = " ".join(parts)
        exc = _exc_text(record)
        if exc:
            line += "\n" + exc
        if self.prefix:
            pri = f"<{priority(record.levelno)}>"
            line = "\n".join(pri + part for part in line.split("\n"))
        return line


_FIELD_BAD = re.compile(r"[^A-Z0-9_]")


def journal_field(name: str) -> str | None:
    """A valid journal field name for ``name`` (upper-cased), or None if none can be made."""
    field = _FIELD_BAD.sub("_", name.upper()).lstrip("_")
    if not field.strip("_"):
        return None
    if field[0].isdigit():
        field = "X_" + field
    return field[:64]


def encode_journal(fields: dict[str, Any]) -> bytes:
    """journald native protocol: ``KEY=value\\n``, or ``KEY\\n<u64le len>value\\n`` for values
    with newlines."""
    out = bytearray()
    for key, value in fields.items():
        if value is None:
            continue
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        k = key.encode("ascii")
        if b"\n" in data:
            out += k + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += k + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends each record as one datagram to journald's native socket."""

    def __init__(
        self,
        identifier: str | None = None,
        socket_path: str = JOURNAL_SOCKET,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        self.identifier = identifier or os.path.basename(sys.argv[0] or "python") or "python"
        self.socket_path = socket_path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        message = record.getMessage()
        exc = _exc_text(record)
        if exc:
            message += "\n" + exc
        f: dict[str, Any] = {
            "MESSAGE": message,
            "PRIORITY": priority(record.levelno),
            "SYSLOG_IDENTIFIER": self.identifier,
            "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName,
            "LOGGER": record.name,
            "THREAD_NAME": record.threadName,
        }
        if exc:
            f["EXCEPTION_INFO"] = exc
        for key, value in extras(record).items():
            name = journal_field(key)
            if name and name not in f:
                f[name] = value if isinstance(value, (str, bytes, int)) else json.dumps(
                    value, ensure_ascii=False, default=str)
        return f

    def emit(self, record: logging.LogRecord) -> None:
        try:
            payload = encode_journal(self.fields(record))
            try:
                self.sock.sendto(payload, self.socket_path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_memfd(payload)
        except Exception:
            self.handleError(record)

    def _send_memfd(self, payload: bytes) -> None:
        """Too big for a datagram: pass a sealed memfd, as sd_journal_sendv does."""
        import fcntl

        fd = os.memfd_create("journal-message", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, payload)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))],
                              0, self.socket_path)
        finally:
            os.close(fd)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            super().close()


def under_journal(stream: IO[str] | None = None) -> bool:
    """True if ``stream`` (default stderr) is the journal stream named by $JOURNAL_STREAM."""
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    stream = stream or sys.stderr
    try:
        dev, ino = (int(x) for x in value.split(":", 1))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    name = level.strip().upper()
    if name == "WARN":
        name = "WARNING"
    value = logging.getLevelName(name)
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}")
    return value


def setup_logging(
    level: str | int = "info",
    fmt: str = "auto",
    *,
    stream: IO[str] | None = None,
    identifier: str = "edge-agent",
    journal_socket: str = JOURNAL_SOCKET,
) -> logging.Handler:
    """Configure the root logger with one handler (replacing one installed here before).

    Returns the handler. ``stream`` defaults to sys.stderr (json/plain)."""
    if fmt not in ("auto", "json", "journal", "plain"):
        raise ValueError(f"unknown log format {fmt!r} (auto, json, journal, plain)")
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "journal" if under_journal(stream) else "json"
    handler: logging.Handler
    if fmt == "journal":
        if os.path.exists(journal_socket):
            handler = JournalHandler(identifier, journal_socket)
        else:
            handler = logging.StreamHandler(stream)
            handler.setFormatter(PlainFormatter(prefix=True))
    elif fmt == "plain":
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PlainFormatter(prefix=under_journal(stream)))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    setattr(handler, _MARK, fmt)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _MARK, None):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(_level(level))
    logging.captureWarnings(True)
    return handler
