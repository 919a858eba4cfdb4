"""tools/bench/delay_relay.py: the relay behind the "PostgreSQL across a network" figures holds
each message the given time in each direction and passes the bytes unchanged."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tools.bench import delay_relay


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def echo():
    """An echo server on 127.0.0.1 (the stand-in for PostgreSQL)."""
    srv = socket.create_server(("127.0.0.1", 0))

    def run():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=lambda: [c.sendall(d) for d in iter(lambda: c.recv(65536), b"")], daemon=True).start()

    threading.Thread(target=run, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def _round_trips(port: int, n: int = 20) -> list[float]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out = []
        for i in range(n):
            msg = f"SELECT {i};".encode()
            t = time.perf_counter()
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(100)
            out.append(time.perf_counter() - t)
            assert got == msg
        return out


@pytest.mark.parametrize("delay_ms", [0, 5])
def test_relay_holds_each_direction_and_passes_bytes(echo, delay_ms):
    port = _free_port()
    stop, ready = threading.Event(), threading.Event()
    th = threading.Thread(target=delay_relay.serve, args=(("127.0.0.1", port), ("127.0.0.1", echo), delay_ms, stop, ready),
                          daemon=True)
    th.start()
    assert ready.wait(5)
    try:
        rtts = sorted(_round_trips(port))
    finally:
        stop.set()
        th.join(5)
    if delay_ms:
        assert rtts[0] >= 2 * delay_ms / 1000, rtts  # held once each way
    else:
        assert rtts[len(rtts) // 2] < 0.010, rtts  # well below what 5 ms each way gives


@pytest.mark.parametrize("argv, message", [
    (["127.0.0.1:1"], "usage:"),
    (["127.0.0.1", "127.0.0.1:5432", "1"], "'127.0.0.1': expected HOST:PORT"),
    (["127.0.0.1:0", "127.0.0.1:5432", "1"], "expected HOST:PORT"),
    (["127.0.0.1:5999", "127.0.0.1:5432", "-1"], "delay -1.0 ms: must be 0..1000"),
])
def test_bad_arguments(argv, message, capsys):
    assert delay_relay.main(argv) == 2
    assert message in capsys.readouterr().err
