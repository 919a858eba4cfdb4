"""agent.wire owns MQTT: one broker-address parser, one client factory (TLS, credentials, v5),
and the only place a topic string is written."""

from __future__ import annotations

import ast

from tests.support import pysource
import json
import re
import shutil
from pathlib import Path

import pytest

from agent.common.errors import EdgeError
from agent.wire.client import BrokerAddress, BrokerAddressError, parse_broker, settings_from_config
from agent.wire.session import exchange
from agent.wire.topics import Topics

from tests.support.uplink import agent_config, open_store, run, start_agent, wait_for

AGENT = Path(__file__).resolve().parents[2] / "agent"


# --- the broker address --------------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:1883", BrokerAddress("127.0.0.1", 1883, None)),
    ("broker.example:8883", BrokerAddress("broker.example", 8883, None)),
    ("[::1]:1884", BrokerAddress("::1", 1884, None)),
    ("mqtt://10.0.0.5", BrokerAddress("10.0.0.5", 1883, False)),
    ("mqtt://10.0.0.5:1999/", BrokerAddress("10.0.0.5", 1999, False)),
    ("mqtts://broker.example", BrokerAddress("broker.example", 8883, True)),
    ("MQTTS://[::1]:9883", BrokerAddress("::1", 9883, True)),
])
def test_broker_address_forms(text, want):
    assert parse_broker(text) == want


@pytest.mark.parametrize("text, why", [
    ("", "no host"), ("10.0.0.5", "no port"), (":1883", "no host"), ("10.0.0.5:", "empty port"),
    ("10.0.0.5:x", "not a number"), ("10.0.0.5:0", "out of range"), ("10.0.0.5:70000", "out of range"),
    ("::1:1883", "brackets"), ("[::1:1883", "unclosed"), ("http://x:1", "unknown scheme"),
    ("mqtt://user:pw@x", "no path or user part"), ("mqtt://x/edge", "no path"),
])
def test_broker_address_refused_with_a_clear_bilingual_reason(text, why):
    with pytest.raises(BrokerAddressError, match=why) as e:
        parse_broker(text)
    assert "代理地址无效 / invalid broker address" in str(e.value)


def test_settings_take_tls_and_credentials_from_the_config(tmp_path):
    from agent import config as config_mod

    cfg = config_mod.load(agent_config(tmp_path, 8883, mqtt__tls=True, mqtt__cafile="/etc/ca.pem",
                                       mqtt__username="dock", mqtt__password="pw"))
    s = settings_from_config(cfg.mqtt, "c1")
    assert (s.host, s.port, s.username, s.password) == ("127.0.0.1", 8883, "dock", "pw")
    assert s.tls is not None and s.tls.cafile == "/etc/ca.pem"
    assert settings_from_config(cfg.mqtt, "c1", broker="mqtt://127.0.0.1").tls is None  # mqtt:// turns it off
    plain = config_mod.load(agent_config(tmp_path, 1883))
    s = settings_from_config(plain.mqtt, "c1", broker="mqtts://10.0.0.9")
    assert (s.host, s.port, s.tls is not None) == ("10.0.0.9", 8883, True)
    assert settings_from_config(None, "c1").tls is None
    with pytest.raises(EdgeError, match="TLS needs a CA file"):
        settings_from_config(None, "c1", certfile="/x.crt")


def test_plain_mqtt_off_the_loopback_is_refused_unless_a_lab_says_so(tmp_path):
    """mqtt.tls = false with a broker that is not on the loopback would send the broker password and
    every message in clear: refused when the config is read, when a --broker overrides it (agent,
    archive, monitor) and by the one client factory whoever built the settings; a lab says
    mqtt.allow_plaintext = true, and doctor then warns loudly."""
    from agent import config as config_mod
    from agent.common.errors import ConfigError
    from agent.runtime.doctor import check_tls
    from agent.wire.client import ConnSettings, PlaintextRefused, new_client

    why = "拒绝明文连接 / refusing plain MQTT to"
    for values in ({"mqtt__host": "10.0.0.5"}, {"mqtt__host": "archive.xh.example"},
                   {"mqtt__fallback": ["mqtt://10.0.0.6:1883"]}):
        with pytest.raises(ConfigError) as e:
            config_mod.load(agent_config(tmp_path, 1883, **values))
        assert why in str(e.value) and "mqtt.tls = true" in str(e.value) and "mqtt.allow_plaintext = true" in str(e.value)
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):  # the loopback: plain MQTT is fine
        assert config_mod.load(agent_config(tmp_path, 1883, mqtt__host=host)).mqtt.host == host
    plain = config_mod.load(agent_config(tmp_path, 1883))
    with pytest.raises(PlaintextRefused, match="refusing plain MQTT to 10.0.0.9:1883"):
        settings_from_config(plain.mqtt, "c1", broker="10.0.0.9:1883")
    with pytest.raises(PlaintextRefused, match="refusing plain MQTT to 10.0.0.9:1883"):
        settings_from_config(None, "c1", broker="mqtt://10.0.0.9")
    with pytest.raises(PlaintextRefused, match="10.0.0.7:1883"):  # settings built by hand (the monitor's way)
        new_client(ConnSettings("127.0.0.1", 1883, "c1", fallback=(("10.0.0.7", 1883),)))
    # the command line says it before anything starts (both commands at once: they never reach a network)
    import subprocess

    from agent.archive.storage import ArchiveStore
    from tests.support.uplink import EDGE

    ArchiveStore(tmp_path / "archive").close()
    procs = [subprocess.Popen([EDGE, *args, "--broker", "10.0.0.9:1883"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for args in (["archive", "serve", "--root", str(tmp_path / "archive")],
                          ["monitor", "--enrolment", str(tmp_path / "archive"), "--db", str(tmp_path / "m.db"), "--no-tui"])]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode != 0 and why in err and "mqtt.allow_plaintext = true" in err, err
    # a lab: allowed, and doctor says so loudly
    lab = config_mod.load(agent_config(tmp_path, 1883, mqtt__host="10.0.0.5", mqtt__allow_plaintext=True))
    s = settings_from_config(lab.mqtt, "c1")
    assert (s.host, s.tls, s.allow_plaintext) == ("10.0.0.5", None, True)
    new_client(s)
    [w] = check_tls(lab)
    assert w.status == "WARN" and "明文连接！/ PLAIN MQTT to 10.0.0.5" in w.detail and "mqtt.allow_plaintext = true" in w.detail


# --- only agent/wire knows a topic -----------------------------------------------------------------
_LEVELS = ("xfer", "ack", "dev", "archive", "operator")
_KINDS = ("status", "health", "alarm", "component", "chain", "ratio", "cmd", "resp", "manifest", "chunk",
          "finish", "query", "annotation")
_TOPICISH = [
    re.compile(r"(^|/)(" + "|".join(_LEVELS) + r")/(\+|#|X|[a-z])"),   # P/xfer/…, P/ack/D, P/archive/status
    re.compile(r"(^|[^/])/(" + "|".join(_KINDS) + r")$"),             # …/chunk, …/status
    re.compile(r"(^|/)[+#](/|$)"),                                    # wildcards
    re.compile(r"^\$share/"),
]
_DEVICE_FILES = re.compile(r"^/(dev/(tty|video|snd|serial|null|shm)|proc/|sys/)")


def topic_literals(source: str) -> list[tuple[int, str]]:
    """String constants (f-strings with X for each placeholder) of ``source`` that look like
    MQTT topics of this project."""
    found = []
    tree = pysource.parse(source)
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if id(node) in parts:  # a piece of an f-string: judged as the whole string
            continue
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "X"
                           for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if "/" not in text or " " in text or "\n" in text or _DEVICE_FILES.match(text):
            continue
        if any(p.search(text) for p in _TOPICISH):
            found.append((node.lineno, text))
    return found


def test_the_topic_detector_finds_what_it_should():
    src = ('a = f"{prefix}/operator/{x}"\nb = "edge/xfer/+/+/+"\nc = topic.endswith("/chunk")\n'
           'd = f"{p}/ack/{dev}"\ne = "/dev/ttyACM*"\nf = "see docs/mqtt.md"\ng = "$share/g/edge/xfer/#"\n')
    assert sorted({line for line, _ in topic_literals(src)}) == [1, 2, 3, 4, 7]


def test_no_topic_literal_outside_agent_wire():
    offenders = []
    for path in sorted(AGENT.rglob("*.py")):
        rel = path.relative_to(AGENT.parent)
        if rel.parts[1] == "wire":
            continue
        offenders += [f"{rel}:{line}: {text!r}" for line, text in topic_literals(path.read_text(encoding="utf-8"))]
    assert not offenders, "topic strings belong to agent/wire/topics.py:\n" + "\n".join(offenders)


def test_no_module_outside_the_wire_imports_paho():
    offenders = []
    for path in sorted(AGENT.rglob("*.py")):
        rel = path.relative_to(AGENT.parent)
        if rel.parts[1] == "wire":
            continue
        for node in ast.walk(pysource.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{rel}:{node.lineno}" for n in names if n == "paho" or n.startswith("paho.")]
    assert not offenders, offenders


# --- the clients that used to build their own -------------------------------------------------------
def test_exchange_reports_a_refused_login(make_broker, tmp_path):
    mq = make_broker(allow_anonymous=False, extra_config=[f"password_file {_pwfile(tmp_path)}"])
    s = settings_from_config(None, "probe", broker=f"127.0.0.1:{mq.port}", connect_timeout=3)
    ex = exchange(s, timeout=3)
    assert not ex.connected and "refused" in (ex.error or ""), ex.error


def _pwfile(tmp: Path) -> Path:
    import subprocess

    p = tmp / "passwd"
    p.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(p), "operator", "secret"], check=True, capture_output=True)
    return p


def test_command_send_uses_tls_and_credentials_from_the_config(pki, tmp_path):
    """`command send` with a config whose [mqtt] says TLS + user/password reaches a broker that
    only has a TLS listener and refuses anonymous clients: the generated configuration's TLS
    listener (``broker_auth.tls_listener``, identities by password, one login = one session) with
    its ACL and password file, the device as itself, the operator as ``ops``; a plain connection to
    the TLS port never leaves."""
    from tests.support.broker import Mosquitto
    from tests.support.uplink import UNIT

    mq = Mosquitto(tmp_path / "mosquitto", tls=pki, plain=False, shipped=True)
    dev_user, dev_pw = mq.identity("dock-0001", unit=UNIT)  # made before the start: no listener to probe yet
    ops_user, ops_pw = mq.identity("ops", "ops")
    with mq:  # started here, stopped after
        _command_send_over_tls(mq, pki, tmp_path, dev_user, dev_pw, ops_user, ops_pw)
    log = mq.log_path.read_text()
    assert " as dock-0001 " in log and " as ops " in log and "already connected" not in log, log[-3000:]


def _command_send_over_tls(mq, pki, tmp_path, dev_user, dev_pw, ops_user, ops_pw) -> None:
    tls = {"mqtt__tls": True, "mqtt__cafile": str(pki.ca.cert)}
    cfg = agent_config(tmp_path, mq.tls_port, mqtt__username=dev_user, mqtt__password=dev_pw, **tls)
    ops_cfg = agent_config(tmp_path, mq.tls_port, "ops-host", mqtt__username=ops_user, mqtt__password=ops_pw, **tls)
    store = open_store(cfg)
    run(["command", "keygen", "ops", "--out", str(tmp_path / "op")], check=True)
    (store.data_dir / "keys" / "operators").mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "op" / "ops.pub", store.data_dir / "keys" / "operators" / "ops.pub")
    store.close()
    ag = start_agent(cfg, tmp_path)
    try:
        wait_for(lambda: "uplink: connected" in ag.text(), 20, "agent connected over TLS", [ag])
        p = run(["command", "send", "status", "--device", "dock-0001", "--key", str(tmp_path / "op" / "ops.key"),
                 "--json", "--timeout", "60"], config=ops_cfg)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["ok"] is True
        # a plain connection to the TLS port is refused: the command never leaves
        p = run(["command", "send", "status", "--device", "dock-0001", "--key", str(tmp_path / "op" / "ops.key"),
                 "--broker", f"mqtt://127.0.0.1:{mq.tls_port}", "--timeout", "3"], config=ops_cfg)
        assert p.returncode != 0 and "cannot reach the broker" in p.stderr, p.stderr
    finally:
        ag.stop()


def test_topics_of_operators_and_receivers_are_built_and_parsed_in_the_wire():
    t = Topics("edge")
    assert t.operator_reply("ab12") == "edge/operator/ab12"
    with pytest.raises(ValueError):
        t.operator_reply("a/#")
    assert t.is_archive_receiver(t.archive_receiver("rx-1")) == "rx-1"
    assert t.is_archive_receiver("edge/archive/status") is None
    assert t.is_archive_receiver("edge/archive/status/a/b") is None
    assert t.kind_of(t.xfer("d", "i", "chunk")) == "chunk"
