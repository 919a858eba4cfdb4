"""agent.common.logsetup: JSON lines, journald native protocol (against a real datagram socket), fallback."""
from __future__ import annotations

import array
import datetime as dt
import io
import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from agent.common import logsetup
from agent.common.logsetup import encode_journal, journal_field, setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def parse_journal(data: bytes) -> dict[str, str]:
    """Decode the native journal protocol (both KEY=value and binary-length forms)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v.decode()
            i = nl + 1
        else:
            n = int.from_bytes(data[nl + 1:nl + 9], "little")
            out[line.decode()] = data[nl + 9:nl + 9 + n].decode()
            assert data[nl + 9 + n:nl + 10 + n] == b"\n"
            i = nl + 10 + n
    return out


def test_json_lines():
    buf = io.StringIO()
    setup_logging("debug", "json", stream=buf)
    log = logging.getLogger("agent.dock.test")
    log.info("segment %s sealed", "seg-1", extra={"device_id": "dock-0001", "bytes": 1234})
    log.debug("调试 / debug")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("boom")
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert first["level"] == "info" and first["logger"] == "agent.dock.test"
    assert first["msg"] == "segment seg-1 sealed"
    assert first["device_id"] == "dock-0001" and first["bytes"] == 1234
    ts = dt.datetime.fromisoformat(first["ts"])
    assert ts.tzinfo is not None
    assert abs((dt.datetime.now(dt.timezone.utc) - ts).total_seconds()) < 60
    assert lines[1]["msg"] == "调试 / debug"
    assert "调试" in buf.getvalue()  # not \u-escaped
    assert lines[2]["level"] == "error" and "ZeroDivisionError" in lines[2]["exc"]


def test_level_filter_and_idempotent():
    buf = io.StringIO()
    setup_logging("warning", "json", stream=buf)
    setup_logging("warning", "json", stream=buf)  # replaces, doesn't duplicate
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown", extra={"obj": object()})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["msg"] == "shown"
    with pytest.raises(ValueError):
        setup_logging("loud", "json", stream=buf)
    with pytest.raises(ValueError):
        setup_logging("info", "xml", stream=buf)


def test_auto_is_json_outside_systemd(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    buf = io.StringIO()
    setup_logging("info", "auto", stream=buf)
    logging.getLogger("y").info("hi")
    assert json.loads(buf.getvalue())["msg"] == "hi"


@pytest.fixture
def journal_sock(tmp_path):
    path = str(tmp_path / "journal.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield s, path
    s.close()


def test_journal_native(journal_sock):
    sock, path = journal_sock
    setup_logging("info", "journal", journal_socket=path, identifier="edge-agent")
    log = logging.getLogger("agent.uplink")
    log.warning("link down\nsecond line", extra={"device_id": "dock-0001", "retry-count": 3, "_secret": 1})
    fields = parse_journal(sock.recv(65536))
    assert fields["MESSAGE"] == "link down\nsecond line"
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "edge-agent"
    assert fields["LOGGER"] == "agent.uplink"
    assert fields["CODE_FILE"].endswith("test_logsetup.py")
    assert fields["CODE_FUNC"] == "test_journal_native"
    assert int(fields["CODE_LINE"]) > 0
    assert fields["DEVICE_ID"] == "dock-0001"
    assert fields["RETRY_COUNT"] == "3"
    assert not any(k.startswith("_") for k in fields)


def test_journal_large_message_uses_memfd(journal_sock):
    sock, path = journal_sock
    handler = setup_logging("info", "journal", journal_socket=path)
    handler.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = "x" * 300_000
    logging.getLogger("big").info(big)
    fds = array.array("i")
    msg, anc, _flags, _addr = sock.recvmsg(1024, socket.CMSG_SPACE(fds.itemsize))
    assert msg == b""
    level, typ, data = anc[0]
    assert (level, typ) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fds.frombytes(data[: fds.itemsize])
    with os.fdopen(fds[0], "rb") as f:
        f.seek(0)  # journald reads the sealed memfd from the start
        fields = parse_journal(f.read())
    assert fields["MESSAGE"] == big, "memfd did not carry the message"  # don't print 300 kB


def test_journal_falls_back_to_plain(tmp_path):
    buf = io.StringIO()
    setup_logging("info", "journal", stream=buf, journal_socket=str(tmp_path / "missing.sock"))
    logging.getLogger("z").error("disk full", extra={"free": 0})
    assert buf.getvalue() == "<3>z: disk full free=0\n"


def test_journal_field_names():
    assert journal_field("device_id") == "DEVICE_ID"
    assert journal_field("_private") == "PRIVATE"
    assert journal_field("9lives") == "X_9LIVES"
    assert journal_field("a.b-c") == "A_B_C"
    assert journal_field("__") is None
    assert len(journal_field("k" * 100)) == 64
    assert encode_journal({"A": "1", "B": "x\ny"}) == b"A=1\nB\n" + (3).to_bytes(8, "little") + b"x\ny\n"


def test_auto_detects_journal_stream(tmp_path):
    """A child whose stderr matches $JOURNAL_STREAM logs natively; one whose doesn't uses JSON."""
    path = str(tmp_path / "j.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    errfile = tmp_path / "stderr"
    code = (
        "import logging, os, sys\n"
        "st = os.fstat(2)\n"
        "if sys.argv[1] == 'match': os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
        "else: os.environ['JOURNAL_STREAM'] = '1:1'\n"
        "from agent.common.logsetup import setup_logging\n"
        f"setup_logging('info', journal_socket={path!r})\n"
        "logging.getLogger('child').info('hello', extra={'k': 'v'})\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(errfile, "w") as err:
        subprocess.run([sys.executable, "-c", code, "match"], cwd=root, stderr=err, check=True)
    fields = parse_journal(sock.recv(65536))
    assert fields["MESSAGE"] == "hello" and fields["K"] == "v"
    assert errfile.read_text() == ""
    with open(errfile, "w") as err:
        subprocess.run([sys.executable, "-c", code, "other"], cwd=root, stderr=err, check=True)
    assert json.loads(errfile.read_text())["msg"] == "hello"
    sock.close()


def test_priority_map():
    assert logsetup.priority(logging.CRITICAL) == 2
    assert logsetup.priority(logging.ERROR) == 3
    assert logsetup.priority(logging.WARNING) == 4
    assert logsetup.priority(logging.INFO) == 6
    assert logsetup.priority(logging.DEBUG) == 7
