"""One login, one session (issue 14, the rest): what a process does when another logs in with its
login, on the shipped broker (``broker`` fixture: the generated ACL, ``use_username_as_clientid``).

Mosquitto 2.0.11 ends the older connection without a DISCONNECT (no reason code 0x8E), so a
connection that reconnects cannot tell a takeover from a lost link by itself: the connections of
``archive serve`` and ``command send`` claim their login on ``P/session/LOGIN`` and read that
claim when they reconnect (agent/wire/mqtt.py).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.common.errors import SessionTakenOver
from agent.wire.client import ConnSettings
from agent.wire.mqtt import Connection
from agent.wire.topics import Topics
from tests.support.uplink import (EDGE, add_items, agent_config, all_archived, check_archive, credentials, enroll,
                                  open_store, Proc, run, start_agent, wait_for)

T = Topics("edge")
DEADLINE = 30.0


def _held(root) -> int:
    import sqlite3
    try:
        con = sqlite3.connect(str(root / "archive.db"), timeout=10)
        try:
            return con.execute("SELECT coalesce(sum(end - start), 0) FROM ranges").fetchone()[0] \
                + con.execute("SELECT coalesce(sum(size), 0) FROM items").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_a_connection_whose_login_another_process_takes_stops_and_says_so(broker):
    """Two Connections with one login and a claim: the second takes the session; the first, on
    reconnecting, finds the other's claim, leaves (one bounce of the second at most) and reports
    ``taken_over``; the second stays connected. A reconnect after a plain loss (a broker restart)
    finds its own claim and carries on."""
    user, pw = broker.identity("archive", "archive")
    s = ConnSettings(host="127.0.0.1", port=broker.port, client_id="x", username=user, password=pw,
                     min_backoff=0.2, max_backoff=1.0)
    first = Connection(s, claim=T.session(user), name="first")
    second = Connection(s, claim=T.session(user), name="second")
    first.start()
    try:
        assert first.wait_connected(DEADLINE)
        broker.restart()  # a plain loss: its own claim is what it finds
        deadline = time.monotonic() + DEADLINE
        while first.connects < 2 and time.monotonic() < deadline:
            first.wait_connected(0.1)
        assert first.connects == 2 and first.taken_over is None
        second.start()
        assert second.wait_connected(DEADLINE)
        first._thread.join(DEADLINE)
        assert not first._thread.is_alive(), "the first connection went on taking the session back"
        assert first.taken_over and "另一个进程以同一登录名登录" in first.taken_over and "'archive'" in first.taken_over
        assert second.wait_connected(DEADLINE) and second.taken_over is None
        assert second.connects <= 2  # taken back once (the first's reconnect that found the claim), no more
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # and it stays so
            assert second._thread.is_alive() and second.taken_over is None
            time.sleep(0.2)
        assert second.connects <= 2
    finally:
        first.stop(timeout=2)
        second.stop(timeout=2)


def test_two_receivers_on_one_shared_login_the_one_taken_over_stops_nothing_lost(broker, tmp_path):
    """Two `archive serve` not enrolled (the shared ``archive`` login) on one broker: the second
    takes the session; the first says why and exits with status 6 (the unit does not restart on
    it), the second receives everything; every item once, verifying."""
    cfg = agent_config(tmp_path, broker.port, uplink__bandwidth_limit=3_000_000, uplink__chunk_size=128 * 1024,
                       uplink__ack_timeout_s=3)
    store = open_store(cfg)
    ids = add_items(store, tmp_path, [2_000_000, 2_000_000, 2_000_000])
    root = tmp_path / "archive"
    enroll(root, store)
    store.close()
    shared = credentials(tmp_path, broker.port, "archive", "archive")

    def serve(name: str) -> Proc:  # not enrolled: the shared login `archive`, client id NAME
        p = Proc([*shared, "archive", "serve", "--root", str(root), "--broker", f"127.0.0.1:{broker.port}",
                  "--client-id", name, "--share", "archive"], tmp_path / f"{name}.log")
        wait_for(lambda: "archive: connected to" in p.text() or not p.alive(), 20, f"{name} connected", [p])
        return p

    a1 = serve("rx1")
    ag = start_agent(cfg, tmp_path)
    a2 = None
    try:
        wait_for(lambda: _held(root) > 300_000, 30, "transfer under way", [a1, ag], step=0.05)
        a2 = serve("rx2")
        wait_for(lambda: not a1.alive(), 30, "the receiver taken over to stop", [a1, a2])
        assert a1.p.returncode == SessionTakenOver.exit_code == 6, a1.text()
        text = a1.text()
        assert "另一个接收端以同一登录名登录 / another receiver logged in as 'archive'" in text, text
        assert "`edge-agent archive receiver add NAME`" in text and "Traceback" not in text
        wait_for(all_archived(cfg, ids), 90, "all archived by the second receiver", [a2, ag])
        check_archive(root, ids)
        assert a2.alive(), a2.text()
        assert a2.text().count("archive: connected to") <= 2, a2.text()  # no ping-pong
    finally:
        ag.stop()
        if a2 is not None:
            a2.stop()
        a1.stop()


def _tls_credentials(tmp_path, tls_broker, pki, cn: str, name: str) -> list[str]:
    """``["--config", FILE]``: TLS with the client certificate of ``cn`` and no user name (certificate
    identities: the broker knows the holder by the CN)."""
    from agent import config as config_mod

    cert = pki.client(cn)
    path = tmp_path / name
    path.write_text(config_mod.render_default({"mqtt": {
        "host": "127.0.0.1", "port": tls_broker.tls_port, "tls": True, "cafile": str(pki.ca.cert),
        "certfile": str(cert.cert), "keyfile": str(cert.key)}}), encoding="utf-8")
    return ["--config", str(path)]


def test_two_receivers_with_one_certificate_the_one_taken_over_stops(tls_broker, pki, tmp_path):
    """Certificate identities (`archive broker-config --tls-identity certificate`): two `archive
    serve` with the one client certificate (CN ``archive``, no user name) share one session. Each
    claims the CN's session as it would a user name's: the first, taken over, says why and exits
    with status 6; the second stays and archives what the device sends (verifying)."""
    cfg = agent_config(tmp_path, tls_broker.port)  # the device logs in by password on the loopback listener
    store = open_store(cfg)
    ids = add_items(store, tmp_path, [300_000])
    root = tmp_path / "archive"
    enroll(root, store)
    store.close()
    cert = _tls_credentials(tmp_path, tls_broker, pki, "archive", "archive-cert.toml")

    def serve(name: str) -> Proc:
        p = Proc([*cert, "archive", "serve", "--root", str(root), "--broker", f"127.0.0.1:{tls_broker.tls_port}",
                  "--client-id", name, "--share", "archive"], tmp_path / f"{name}.log")
        wait_for(lambda: "archive: connected to" in p.text() or not p.alive(), 20, f"{name} connected", [p])
        return p

    a1 = serve("rx1")
    a2 = ag = None
    try:
        assert a1.alive(), a1.text()
        a2 = serve("rx2")
        wait_for(lambda: not a1.alive(), 30, "the receiver taken over to stop", [a1, a2])
        assert a1.p.returncode == SessionTakenOver.exit_code == 6, a1.text()
        text = a1.text()
        assert "另一个接收端以同一登录名登录 / another receiver logged in as 'archive'" in text, text
        assert "a client certificate of its own whose CN is that NAME" in text, text  # the remedy here
        assert "Traceback" not in text
        ag = start_agent(cfg, tmp_path)
        wait_for(all_archived(cfg, ids), 60, "archived by the second receiver", [a2, ag])
        check_archive(root, ids)
        assert a2.alive(), a2.text()
        assert a2.text().count("archive: connected to") <= 2, a2.text()  # no ping-pong
    finally:
        if ag is not None:
            ag.stop()
        if a2 is not None:
            a2.stop()
        a1.stop()


def test_a_login_claims_only_its_own_session_topic(broker):
    """Nobody can make a receiver believe its session was taken (and stop) by writing its claim:
    each login reads and writes ``P/session/ITS-LOGIN`` only."""
    from tests.wire.test_broker_auth import ACCEPTED, Peer, nothing_between

    dev = Peer(broker.port, *broker.identity("dock-0001"))
    ops = Peer(broker.port, *broker.identity("ops", "ops"))
    rx = Peer(broker.port, *broker.identity("archive", "archive"))
    try:
        for p in (dev, ops, rx):
            assert p.connect().value == 0
        assert rx.publish(T.session("archive"), b'{"holder": "rx"}', retain=True) in ACCEPTED
        assert dev.publish(T.session("dock-0001"), b"{}", retain=True) in ACCEPTED
        assert ops.publish(T.session("ops"), b"{}", retain=True) in ACCEPTED
        for p in (dev, ops):
            assert p.publish(T.session("archive"), b'{"holder": "forged"}', retain=True) == 0x87
        assert dev.publish(T.session("ops"), b"{}") == 0x87
        ops.subscribe(T.session("archive"))  # granted by Mosquitto 2.0.11, but nothing is delivered
        assert ops.subscribe(T.session("ops")) == [1]
        got = nothing_between(ops, ops, T.session("ops"))  # its own retained claim, the archive's never
        assert [t for t, _b in got if t != T.session("ops")] == []
    finally:
        for p in (dev, ops, rx):
            p.close()


class SlowDevice:
    """dock-0001 on the broker with its own login: answers each command on its response topic,
    the first one only once ``release`` is set (so the first `command send` is mid-session when
    the second starts)."""

    def __init__(self, port: int, login: tuple[str, str]):
        self.release = threading.Event()
        self.got: list[bytes] = []
        self.seen = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dock-0001", protocol=mqtt.MQTTv5)
        self.c.username_pw_set(*login)
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *_a: subscribed.set()
        self.c.on_connect = lambda c, *_a: c.subscribe(T.cmd("dock-0001"), qos=1)
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        assert subscribed.wait(DEADLINE)

    def _on_message(self, client, userdata, msg) -> None:
        with self.seen:
            self.got.append(bytes(msg.payload))
            n = len(self.got)
            self.seen.notify_all()
        threading.Thread(target=self._answer, args=(msg, n), daemon=True).start()

    def _answer(self, msg, n: int) -> None:
        if n == 1:
            self.release.wait(DEADLINE)
        cmd = json.loads(bytes(msg.payload))
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = msg.properties.CorrelationData
        body = json.dumps({"ok": True, "cmd": cmd["cmd"], "result": {"n": n}, "nonce": cmd["nonce"]}).encode()
        self.c.publish(msg.properties.ResponseTopic, body, qos=1, properties=props)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _send(tmp_path, auth: list[str], port: int) -> list[str]:
    """`command send status` to dock-0001 signed with the key of `command keygen ops --out TMP/op`."""
    return [EDGE, *auth, "command", "send", "status", "--device", "dock-0001", "--key", str(tmp_path / "op" / "ops.key"),
            "--broker", f"127.0.0.1:{port}", "--json", "--timeout", "20"]


def test_two_command_sends_at_once_with_one_ops_login_both_get_their_answer(broker, tmp_path):
    """Two `command send` with the one ``ops`` login at the same moment on one host: the second
    waits for the first (and says so) instead of ending its session; both get the device's answer."""
    run(["command", "keygen", "ops", "--out", str(tmp_path / "op")], check=True)
    ops = credentials(tmp_path, broker.port, "ops", "ops")
    device = SlowDevice(broker.port, broker.identity("dock-0001"))
    send = _send(tmp_path, ops, broker.port)
    logs = [tmp_path / f"send{k}.err" for k in (1, 2)]
    procs = []
    try:
        procs.append(subprocess.Popen(send, stdout=subprocess.PIPE, stderr=logs[0].open("wb"), text=True))
        with device.seen:  # the first command reached the device: its sender waits for the answer
            assert device.seen.wait_for(lambda: len(device.got) >= 1, DEADLINE)
        procs.append(subprocess.Popen(send, stdout=subprocess.PIPE, stderr=logs[1].open("wb"), text=True))
        # the second either waits for the first (the fix) or logs in and takes its session (before the fix:
        # its command then reaches the device)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and "waiting" not in logs[1].read_text() and len(device.got) < 2 \
                and procs[1].poll() is None:
            time.sleep(0.05)
        device.release.set()
        outs = [p.communicate(timeout=60)[0] for p in procs]
        errs = [log.read_text() for log in logs]
        for p, out, err in zip(procs, outs, errs):
            assert p.returncode == 0, err
            assert json.loads(out)["ok"] is True
        assert "等待本机另一个会话结束 / waiting" in errs[1] and "'ops'" in errs[1]
        assert len(device.got) == 2 and device.got[0] != device.got[1]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        device.close()


@pytest.mark.parametrize("identity", ["password", "certificate"])
def test_two_command_sends_with_one_ops_login_from_two_hosts(identity, request, tmp_path):
    """Two operator hosts with the one ``ops`` login (the per-host lock is a file in the temporary
    directory: each "host" has its own, so they do not take turns). The first's command reaches the
    device, which holds its answer; the second logs in and takes the session, sends and gets its
    answer. The first, whose command went out, does not send it again: it exits with status 6 and
    says the command may have reached the device (docs/mqtt.md, "A session taken over"). The same
    with certificate identities: both hosts hold the certificate of CN ``ops`` and no user name."""
    import os

    run(["command", "keygen", "ops", "--out", str(tmp_path / "op")], check=True)
    if identity == "password":
        broker = request.getfixturevalue("broker")
        ops, port = credentials(tmp_path, broker.port, "ops", "ops"), broker.port
    else:
        broker = request.getfixturevalue("tls_broker")
        ops = _tls_credentials(tmp_path, broker, request.getfixturevalue("pki"), "ops", "ops-cert.toml")
        port = broker.tls_port
    device = SlowDevice(broker.port, broker.identity("dock-0001"))
    send = _send(tmp_path, ops, port)
    logs = [tmp_path / f"host{k}.err" for k in (1, 2)]
    procs = []
    try:
        for k, log in enumerate(logs):
            host_tmp = tmp_path / f"host{k + 1}-tmp"
            host_tmp.mkdir()
            procs.append(subprocess.Popen(send, stdout=subprocess.PIPE, stderr=log.open("wb"), text=True,
                                          env={**os.environ, "TMPDIR": str(host_tmp)}))
            with device.seen:  # this host's command reached the device (the first's answer is held)
                assert device.seen.wait_for(lambda: len(device.got) >= k + 1, DEADLINE), log.read_text()
        out2 = procs[1].communicate(timeout=60)[0]
        assert procs[1].returncode == 0, logs[1].read_text()
        assert json.loads(out2)["ok"] is True and json.loads(out2)["result"] == {"n": 2}
        assert procs[0].wait(DEADLINE) == SessionTakenOver.exit_code, logs[0].read_text()
        err1 = logs[0].read_text()
        assert "会话被接管 / another process (another host) logged in as 'ops'" in err1, err1
        assert "the command went out and may have reached the device" in err1 and "Traceback" not in err1
        assert "trying once more" not in err1  # it went out: not sent again
        assert all("waiting" not in log.read_text() for log in logs)  # two hosts: no turns
        assert len(device.got) == 2 and device.got[0] != device.got[1]
    finally:
        device.release.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
        device.close()


def test_a_command_send_taken_over_before_its_command_went_out_sends_it_once_more(broker, tmp_path):
    """Two operator hosts with the one ``ops`` login, each held by the pause point
    ``exchange:before-publish`` (``EDGE_AGENT_PAUSE_AT``, agent/common/faults.py) once connected
    with its claim on the login, before its command goes out. The second's login takes the first's
    session; the first's connection, reconnecting, finds the second's claim and leaves (and bounces
    the second once, which reconnects to its own claim). Nothing has reached the device. Let go, the
    second sends and gets its answer; then the first, whose command never went out, says
    "会话被接管，重试一次 / session taken over before the command went out", sends the same signed
    command once more on a new session, gets the device's answer and exits 0: the device got each
    host's command once."""
    import os

    from agent.common.faults import pause_files

    point = "exchange:before-publish"
    run(["command", "keygen", "ops", "--out", str(tmp_path / "op")], check=True)
    ops = credentials(tmp_path, broker.port, "ops", "ops")
    device = SlowDevice(broker.port, broker.identity("dock-0001"))
    device.release.set()  # answers every command at once
    send = _send(tmp_path, ops, broker.port)
    logs = [tmp_path / f"host{k}.err" for k in (1, 2)]
    pauses = [pause_files(point, tmp_path / f"host{k}-tmp") for k in (1, 2)]  # (NAME.paused, NAME.resume)
    procs: list[subprocess.Popen] = []

    def until(pred, what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {DEADLINE:g} s waiting for {what}\n"
                                     + "\n".join(f"--- {log.name} ---\n{log.read_text()}" for log in logs))
            time.sleep(0.02)

    try:
        for k, log in enumerate(logs):  # each "host" its own temporary directory: its own login lock
            host_tmp = tmp_path / f"host{k + 1}-tmp"
            host_tmp.mkdir()
            procs.append(subprocess.Popen(send, stdout=subprocess.PIPE, stderr=log.open("wb"), text=True, env={
                **os.environ, "TMPDIR": str(host_tmp), "EDGE_AGENT_PAUSE_AT": point,
                "EDGE_AGENT_PAUSE_DIR": str(host_tmp)}))
            until(lambda: pauses[k][0].exists() or procs[k].poll() is not None,
                  f"host {k + 1} connected, its command not yet sent")
            assert procs[k].poll() is None, log.read_text()
        # the second's login ended the first's session; the first, reconnecting, finds the second's claim
        until(lambda: "另一个进程以同一登录名登录 / another process logged in as 'ops'" in logs[0].read_text(),
              "host 1 to find its session taken over")
        # that reconnect ended the second's session once: it reconnects to its own claim (let go before that,
        # it waits for the reconnect: nothing had gone out)
        until(lambda: "connection lost" in logs[1].read_text(), "host 2 bounced once by host 1's reconnect")
        assert device.got == []  # neither command went out yet
        pauses[1][1].touch()  # the second sends
        out2 = procs[1].communicate(timeout=60)[0]
        assert procs[1].returncode == 0, logs[1].read_text()
        assert json.loads(out2)["ok"] is True and json.loads(out2)["result"] == {"n": 1}
        pauses[0][1].touch()  # the first goes on: its session was taken before its command went out
        out1 = procs[0].communicate(timeout=60)[0]
        err1 = logs[0].read_text()
        assert procs[0].returncode == 0, err1
        assert json.loads(out1)["ok"] is True and json.loads(out1)["result"] == {"n": 2}, out1
        assert err1.count("会话被接管，重试一次 / session taken over before the command went out: "
                          "另一个进程以同一登录名登录 / another process logged in as 'ops'") == 1, err1
        assert err1.count("trying once more") == 1, err1
        assert "may have reached the device" not in err1 and "error:" not in err1 and "Traceback" not in err1
        assert all("waiting" not in log.read_text() for log in logs)  # two hosts: no turns
        assert len(device.got) == 2 and device.got[0] != device.got[1]  # each host's command once
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        device.close()


def test_a_second_monitor_with_the_same_logins_the_first_stops_and_says_why(broker, tmp_path):
    """Two `edge-agent monitor` with the one set of monitor logins (``monitor``, ``monitor.1`` …):
    the second takes the sessions; the first says why and exits with status 6 (the unit does not
    restart on it) instead of taking them back; the second stays up."""
    from tests.support.health import MonitorProc

    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    first = MonitorProc(tmp_path / "m1" / "monitor.db", broker.port, extra=["--connections", "2"])
    second = None
    try:
        second = MonitorProc(tmp_path / "m2" / "monitor.db", broker.port, extra=["--connections", "2"])
        deadline = time.monotonic() + DEADLINE
        while first.p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.p.poll() == SessionTakenOver.exit_code, first.log.read_text()[-3000:]
        text = first.log.read_text()
        assert "另一个监控以同一登录名登录 / another monitor logged in as 'monitor" in text and "Traceback" not in text
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # the second stays up
            assert second.p.poll() is None, second.log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0


def test_operator_hosts_with_their_own_logins_send_at_once(broker, tmp_path):
    """`archive broker-config --ops-logins N` gives each operator host a login (ops, ops.1 …, one
    password): two hosts' sends at the same moment both get their answer, neither waits."""
    from agent.wire import broker_auth

    files = broker_auth.generate(tmp_path / "b", ["dock-0001"], ops_logins=3)
    assert files.ops_instances == ["ops.1", "ops.2"]
    pw = {i.name: i.password for i in files.identities}
    hashes = dict(ln.split(":", 1) for ln in files.passwd.read_text().splitlines())
    assert all(broker_auth.check_password(pw["ops"], hashes[n]) for n in ("ops", "ops.1", "ops.2"))
    assert "user ops.2\n" in files.acl.read_text() and "user ops.3\n" not in files.acl.read_text()

    run(["command", "keygen", "ops", "--out", str(tmp_path / "op")], check=True)
    hosts = [credentials(tmp_path, broker.port, login, "ops") for login in ("ops", "ops.1")]
    device = SlowDevice(broker.port, broker.identity("dock-0001"))
    procs, logs = [], [tmp_path / f"host{k}.err" for k in (1, 2)]
    try:
        for auth, log in zip(hosts, logs):
            procs.append(subprocess.Popen(_send(tmp_path, auth, broker.port), stdout=subprocess.PIPE,
                                          stderr=log.open("wb"), text=True))
        with device.seen:  # both commands reach the device while the first waits for its answer
            assert device.seen.wait_for(lambda: len(device.got) >= 2, DEADLINE), [log.read_text() for log in logs]
        device.release.set()
        for p, log in zip(procs, logs):
            out = p.communicate(timeout=60)[0]
            assert p.returncode == 0, log.read_text()
            assert json.loads(out)["ok"] is True and "waiting" not in log.read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        device.close()


def _fake_broker(refuse_probe: bool):
    """A socket standing in for a broker that sends DISCONNECT 0x8E "Session taken over" (Mosquitto
    2.0.11 does not): CONNACK, then, if the client probes the session topic's ACL (a QoS 1 PUBLISH
    on .../probe), PUBACK 0x87 (the shipped ACL) or 0x00 (a broker without it), then the DISCONNECT.
    Returns (port, accepted sockets, stop)."""
    import socket

    srv = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def packets(conn, deadline):
        buf = b""
        while time.monotonic() < deadline:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                more = conn.recv(65536)
            except (socket.timeout, OSError):
                return
            if not more:
                return
            buf += more
            while len(buf) >= 2:
                n, mult, k = 0, 1, 1
                while k < len(buf):
                    n += (buf[k] & 0x7F) * mult
                    mult <<= 7
                    k += 1
                    if not buf[k - 1] & 0x80:
                        break
                else:
                    break
                if len(buf) < k + n:
                    break
                yield buf[0], buf[k:k + n]
                buf = buf[k + n:]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)
            first = True
            for head, body in packets(conn, time.monotonic() + 1.0):
                if first:  # CONNECT
                    conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK v5: success, no properties
                    first = False
                    continue
                if head >> 4 == 3 and (head >> 1) & 3:  # PUBLISH QoS 1: topic, packet id
                    tlen = (body[0] << 8) | body[1]
                    topic, mid = body[2:2 + tlen], body[2 + tlen:4 + tlen]
                    if topic.endswith(b"/probe"):
                        conn.sendall(b"\x40\x03" + mid + (b"\x87" if refuse_probe else b"\x00"))
                        break
            if first:
                continue
            conn.sendall(b"\xe0\x02\x8e\x00")  # DISCONNECT 0x8E, no properties

    threading.Thread(target=serve, daemon=True).start()

    def stop() -> None:
        srv.close()
        for x in accepted:
            x.close()

    return srv.getsockname()[1], accepted, stop


def _comes_back(c: Connection, accepted: list, max_backoff: float) -> None:
    """``c`` notes the 0x8E, does not stop, and reconnects only after its longest back-off."""
    n0 = len(accepted)
    t0 = time.monotonic()
    c.start()
    deadline = time.monotonic() + DEADLINE
    while len(accepted) < n0 + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    took = time.monotonic() - t0
    assert len(accepted) >= n0 + 2, f"{c.name} gave up after a DISCONNECT 0x8E"
    assert c.taken_over is None and c._thread.is_alive()
    assert "0x8E" in (c.last_error or "")
    assert took >= max_backoff * 0.5, f"came back {took:.2f} s after the takeover: not after max_backoff"


def test_disconnect_0x8e_from_the_broker_is_a_takeover_at_once(tmp_path):
    """A broker that says so, and whose ACL keeps other logins off the claim (the probe refused):
    a connection with a claim (a receiver, the monitor) stops at once, without coming back. A
    device's own connection never gives its uplink up: it notes the takeover and comes back after
    its longest back-off, not in a tight loop."""
    port, accepted, stop = _fake_broker(refuse_probe=True)
    c = Connection(ConnSettings(host="127.0.0.1", port=port, client_id="x", username="archive", password="p",
                                min_backoff=0.1, max_backoff=0.2), name="t", claim="edge/session/archive")
    c.start()
    try:
        c._thread.join(DEADLINE)
        assert not c._thread.is_alive() and c.taken_over and "0x8E" in c.taken_over
        assert len(accepted) == 1, "it came back after the takeover"
    finally:
        c.stop(timeout=1)
    d = Connection(ConnSettings(host="127.0.0.1", port=port, client_id="dock-1", username="dock-1", password="p",
                                min_backoff=0.05, max_backoff=0.6), name="dev")
    try:
        _comes_back(d, accepted, 0.6)
        assert "dock-1" in d.last_error
    finally:
        d.stop(timeout=1)
        stop()


def test_on_a_broker_that_lets_anyone_write_the_claim_a_stranger_cannot_stop_a_receiver(open_broker):
    """"Nothing a stranger sends stops the centre": on a broker without the per-login ACL (here an
    open one) anyone can write a login's claim and, with its client id, end its session. A
    receiver's connection (with a claim) finds its probe accepted, so it takes neither a forged
    claim nor a DISCONNECT 0x8E as a takeover: it notes it and goes on."""
    s = ConnSettings(host="127.0.0.1", port=open_broker.port, client_id="rx-1", username="archive", password="p",
                     min_backoff=0.2, max_backoff=1.0)
    c = Connection(s, claim=T.session("archive"), name="rx")
    c.start()
    # once: taken over in turn by the receiver's reconnect, it does not come back (a second round
    # would find the receiver's own claim again, with nothing to note)
    stranger = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rx-1", protocol=mqtt.MQTTv5,
                           reconnect_on_failure=False)
    try:
        assert c.wait_connected(DEADLINE)
        # the stranger: a retained claim for 'archive', then a connection with the receiver's client id
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"forger-{uuid.uuid4().hex[:6]}",
                          protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", open_broker.port)
        pub.loop_start()
        pub.publish(T.session("archive"), json.dumps({"holder": "evil:1:x"}).encode(), qos=1,
                    retain=True).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        connects = c.connects
        stranger.connect("127.0.0.1", open_broker.port)  # same client id: the broker ends the receiver's session
        stranger.loop_start()
        wait_for(lambda: c.connects > connects, DEADLINE, "the receiver's reconnect")
        stranger.loop_stop()
        stranger.disconnect()
        assert c.wait_connected(DEADLINE)
        # noted once the receiver's claim round on the new connection is done (after its CONNACK)
        wait_for(lambda: c.connected and "lets any client write it" in (c.last_error or ""), DEADLINE,
                 "the receiver noting the unguarded claim")
        assert c.taken_over is None and c._thread.is_alive(), c.taken_over
        assert c.claim is not None and not c.claim.guarded  # its probe was accepted: no per-login ACL
    finally:
        c.stop(timeout=2)
    # the same with a DISCONNECT 0x8E from a broker that sends it: noted, not a reason to stop
    port, accepted, stop = _fake_broker(refuse_probe=False)
    r = Connection(ConnSettings(host="127.0.0.1", port=port, client_id="x", username="archive", password="p",
                                min_backoff=0.05, max_backoff=0.6), name="rx0x8e", claim="edge/session/archive")
    try:
        _comes_back(r, accepted, 0.6)
    finally:
        r.stop(timeout=1)
        stop()
