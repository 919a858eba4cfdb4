"""A TCP relay that holds every piece of data a fixed time in each direction: a LAN's latency
between the archive receivers and PostgreSQL on a machine where ``tc qdisc … netem`` is not
available (these machines: "Specified qdisc kind is unknown").

    python -m tools.bench.delay_relay LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS

One thread per direction and connection: receive, sleep DELAY_MS, send (request/response traffic
such as PostgreSQL's; not for bulk data). With 0.125 ms each way, behind a veth into a network
namespace, ``SELECT 1`` took 0.54-0.57 ms per round trip on these machines instead of 0.04 ms on
the loopback (docs/scaling.md, "PostgreSQL across a network").
"""

from __future__ import annotations

import socket
import sys
import threading
import time

MAX_DELAY_MS = 1000.0


def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
    try:
        while data := src.recv(65536):
            if delay:
                time.sleep(delay)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(listen: tuple[str, int], target: tuple[str, int], delay_ms: float,
          stop: threading.Event | None = None, ready: threading.Event | None = None) -> None:
    """Relay connections to ``listen`` to ``target`` until ``stop`` is set."""
    if not 0 <= delay_ms <= MAX_DELAY_MS:
        raise ValueError(f"delay {delay_ms} ms: must be 0..{MAX_DELAY_MS:g}")
    stop = stop or threading.Event()
    with socket.create_server(listen) as srv:
        srv.settimeout(0.2)
        if ready is not None:
            ready.set()
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except TimeoutError:
                continue
            try:
                t = socket.create_connection(target, timeout=10)
            except OSError:
                c.close()
                continue
            t.settimeout(None)
            for s in (c, t):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b in ((c, t), (t, c)):
                threading.Thread(target=_pipe, args=(a, b, delay_ms / 1000), daemon=True).start()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) != 3:
            raise ValueError("usage: python -m tools.bench.delay_relay LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS")
        listen, target, delay = _addr(argv[0]), _addr(argv[1]), float(argv[2])
        serve(listen, target, delay)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
