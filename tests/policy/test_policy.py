"""The unit policy pushed down to the stations (issue 18, "Policy down to the station").

A real Mosquitto with the generated identities and ACL; a real station (the agent of `edge-agent
run`, in process: uplink, health, docking station, policy) with the dock identity; the centre's
`edge-agent archive policy publish` as a subprocess with the archive identity. Time is moved by
the station's injectable clock; every wait is on the station having considered N messages.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.archive import policy as ap
from agent.evidence import keys
from agent.wire import broker_auth
from agent.wire import policy as wp
from agent.wire.client import ConnSettings
from agent.wire.topics import Topics
from tests.support.broker import login
from tests.support.uplink import UNIT, agent_config, open_store, run

DEV = "dock-0001"
OTHER_UNIT = "330200000000"
T = Topics("edge")
DEADLINE = 20.0

POLICY_TOML = f"""
[rules]
erase_policy = "never"
upload_deadline_h = 24
case_number_pattern = '^杭.+号$'

[rules.retention]
normal_days = 183

[rules.quotas]
max_unarchived_items = 5000

[[units]]
code = "{UNIT}"
name = "示例执法单位"

[[officers]]
number = "33010001"
name = "张三"
unit = "{UNIT}"

[[officers]]
number = "33010002"
name = "李四"
unit = "{UNIT}"

[[assignments]]
recorder = "RX0001"
officer = "33010001"
"""


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def centre(tmp_path, make_broker):
    """An archive root with a policy key, the station enrolled (and both keys pinned on it), the
    broker with the generated identities and ACL, and the policy file."""
    root = tmp_path / "archive"
    cfg_path = None
    ident = broker_auth.generate(tmp_path / "broker", [DEV], units={DEV: UNIT})
    pw = {i.name: i.password for i in ident.identities}
    mq = make_broker(password_file=ident.passwd, acl_file=ident.acl)
    cfg_path = agent_config(tmp_path, mq.port, DEV, mqtt__username=DEV, mqtt__password=pw[DEV],
                            dock__bays=[str(tmp_path / "no-bays" / "*")])
    store = open_store(cfg_path)
    run(["archive", "policy", "key", "--new", "--root", str(root)], check=True)
    run(["archive", "enroll", DEV, str(store.pub_path), "--unit", UNIT, "--root", str(root),
         "--pin-to", str(store.data_dir)], check=True)
    store.close()
    (tmp_path / "policy.toml").write_text(POLICY_TOML, encoding="utf-8")

    class C:
        pass

    c = C()
    c.root, c.mq, c.config, c.tmp = root, mq, cfg_path, tmp_path
    c.archive_cfg = ident.credentials["archive"]   # the archive identity's [mqtt], a config of its own
    c.archive_settings = ConnSettings("127.0.0.1", mq.port, "test-archive", keepalive=10, username="archive",
                                      password=pw["archive"])
    c.file = tmp_path / "policy.toml"
    return c


def publish_cli(c, *extra: str, file: Path | None = None):
    return run(["archive", "policy", "publish", "--unit", UNIT, "--file", str(file or c.file), "--root", str(c.root),
                "--broker", f"127.0.0.1:{c.mq.port}", "--json", *extra], config=c.archive_cfg)


def publish_raw(c, payload: bytes, unit: str = UNIT) -> None:
    """Publish a payload retained on the unit's topic with the archive identity."""
    ap.publish(c.archive_settings, T.unit_policy(unit), payload)


class Station:
    """The agent of `edge-agent run` in process, its policy component on an injectable clock."""

    def __init__(self, config: Path, clock: Clock):
        from agent.runtime import build_agent

        self.cfg = config_mod.load(config)
        self.agent = build_agent(self.cfg)
        self.policy = next(c for c in self.agent.components if c.name == "policy")
        self.policy.keeper.clock = clock
        self.keeper = self.policy.keeper
        self.agent.start()

    def wait(self, n: int) -> None:
        assert self.keeper.wait_handled(n, DEADLINE), f"the station considered {self.keeper.handled} message(s), not {n}"

    def version(self):
        return self.keeper.current()["version"] if self.keeper.current() else None

    def alarms(self) -> set[str]:
        return {a.key for a in self.agent.health.alarms.active()}

    def stop(self) -> None:
        self.agent.stop()
        self.agent.store.close()


@pytest.fixture
def station_factory(centre):
    made = []

    def make(clock: Clock | None = None) -> Station:
        s = Station(centre.config, clock or Clock(__import__("time").time()))
        made.append(s)
        return s

    yield make
    for s in made:
        try:
            s.stop()
        except Exception:
            pass


def signed(c, version: int, *, unit: str = UNIT, now: float | None = None, key=None, expires_days: int = 30) -> bytes:
    import time

    content = ap.read_content(c.file)
    return wp.sign(key or ap.signing_key(c.root), unit, version, content, now=time.time() if now is None else now,
                   expires_days=expires_days)


# -- applied ----------------------------------------------------------------------------------------
def test_a_signed_policy_is_applied_to_the_dock_and_shown(centre, station_factory):
    st = station_factory()
    assert st.agent.uplink.conn.wait_connected(DEADLINE)
    p = publish_cli(centre)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["version"] == 1 and out["topic"] == T.unit_policy(UNIT)
    st.wait(1)
    assert st.keeper.outcomes == ["applied"]
    assert st.version() == 1
    # roster and assignments in the dock's registry, the erase policy on the dock (and in its config file)
    from agent.dock.registry import Registry

    reg = Registry(st.cfg.data_dir)
    try:
        assert [(o["number"], o["name"], o["unit_name"]) for o in reg.officers()] == [
            ("33010001", "张三", "示例执法单位"), ("33010002", "李四", "示例执法单位")]
        assert reg.query("SELECT serial, officer_number FROM assignments") == [
            {"serial": "RX0001", "officer_number": "33010001"}]
    finally:
        reg.close()
    assert st.cfg.dock.erase_policy == "never"
    assert config_mod.load(centre.config).dock.erase_policy == "never"
    # the health report carries the version in force
    assert st.agent.health.tick()["policy_version"] == 1
    assert not st.alarms() & {"policy_refused", "policy_expired"}
    # `policy show`: version, issuer key, when and where from
    key_id = json.loads(run(["archive", "policy", "key", "--root", str(centre.root), "--json"], check=True).stdout)["key_id"]
    shown = json.loads(run(["policy", "show", "--json"], config=centre.config, check=True).stdout)
    f = shown["in_force"]
    assert (f["version"], f["key_id"], f["unit"], f["expired"]) == (1, key_id, UNIT, False)
    assert f["source"] == f"{T.unit_policy(UNIT)} @ 127.0.0.1:{centre.mq.port}" and f["applied_at"]
    assert f["counts"] == {"units": 1, "officers": 2, "assignments": 1}
    text = run(["policy", "show"], config=centre.config, check=True).stdout
    assert "执行中的策略版本 / policy version in force: 1" in text and key_id in text
    # the station's audit log holds the application
    entries = [e for e in st.agent.store.audit.entries() if e["action"] == "policy-applied"]
    assert len(entries) == 1


# -- refused ----------------------------------------------------------------------------------------
def test_forged_altered_rollback_expired_and_other_unit_are_refused_and_alarmed(centre, station_factory):
    import time

    now = time.time()
    clock = Clock(now)
    st = station_factory(clock)
    assert st.agent.uplink.conn.wait_connected(DEADLINE)
    publish_raw(centre, signed(centre, 2))
    st.wait(1)
    assert st.version() == 2 and st.keeper.outcomes == ["applied"]
    n = 1
    cases = []
    # forged: signed by a key that is not the pinned policy key (e.g. the archive's receipt key)
    forger = keys.generate(centre.tmp / "forger.key", centre.tmp / "forger.pub")
    cases.append(("unknown_key", signed(centre, 9, key=forger)))
    # altered: the pinned key's signature over other content
    good = json.loads(signed(centre, 9))
    good["rules"]["erase_policy"] = "after-local-verify"
    cases.append(("bad_signature", json.dumps(good).encode()))
    # rollback: an older, genuinely signed version
    cases.append(("rollback", signed(centre, 1)))
    # expired: genuinely signed, newer, but its expiry has passed
    cases.append(("expired", signed(centre, 3, now=now - 40 * 86400, expires_days=30)))
    # another unit's policy, put on this unit's topic
    cases.append(("other_unit", signed(centre, 4, unit=OTHER_UNIT)))
    # the same version with other content
    cases.append(("conflict", signed(centre, 2, now=now + 5)))
    for reason, payload in cases:
        publish_raw(centre, payload)
        n += 1
        st.wait(n)
        assert st.keeper.outcomes[-1] == "refused", reason
        refused = json.loads(st.agent.store.get_meta("policy.last_refused"))
        assert refused["reason"] == reason, (reason, refused)
        assert "policy_refused" in st.alarms(), reason
        assert st.version() == 2, reason
    alarm = next(a for a in st.agent.health.alarms.active() if a.key == "policy_refused")
    assert alarm.severity == "critical" and alarm.message_zh and alarm.message_en
    assert st.cfg.dock.erase_policy == "never"
    audit = [e for e in st.agent.store.audit.entries() if e["action"] == "policy-refused"]
    assert len(audit) == len(cases)
    # a newer genuine version is applied and ends the alarm
    publish_raw(centre, signed(centre, 5))
    st.wait(n + 1)
    assert st.version() == 5 and "policy_refused" not in st.alarms()


def newer_signed(c, version: int, rules: dict, *, key=None) -> bytes:
    """A document as the centre's newer software signs it: rule fields this release does not know."""
    from agent.common.canon import canonical

    body = json.loads(signed(c, version))
    del body["sig"]
    for name, value in rules.items():
        if isinstance(value, dict) and isinstance(body["rules"].get(name), dict):
            body["rules"][name].update(value)
        else:
            body["rules"][name] = value
    key = key or ap.signing_key(c.root)
    body["key_id"] = keys.key_id(key.public_key())
    body["sig"] = keys.sign(key, canonical(body))
    return json.dumps(body, ensure_ascii=False).encode()


def test_a_genuine_policy_with_rules_this_station_does_not_know_is_refused_whole_and_says_upgrade(
        centre, station_factory):
    """Forward compatibility, the security view: a station of an older release never applies a
    newer policy while silently ignoring a rule it does not know. It refuses the whole document,
    keeps the policy in force and raises `policy_upgrade_needed` naming the unknown fields and
    "upgrade the station" — only for a document genuinely signed with the pinned key; the same
    fields in a forged or altered one are refused as forged or altered (an attacker cannot make
    the station ask for an upgrade)."""
    st = station_factory()
    assert st.agent.uplink.conn.wait_connected(DEADLINE)
    publish_raw(centre, signed(centre, 1))
    st.wait(1)
    assert st.version() == 1
    newer = {"retention": {"evidence_hash_days": 400}, "night_patrol": {"min_officers": 2}}
    publish_raw(centre, newer_signed(centre, 2, newer))
    st.wait(2)
    assert st.keeper.outcomes[-1] == "refused" and st.version() == 1
    refused = json.loads(st.agent.store.get_meta("policy.last_refused"))
    assert refused["reason"] == "upgrade_needed"
    assert "rules.night_patrol, rules.retention.evidence_hash_days" in refused["message"]
    assert st.alarms() >= {"policy_upgrade_needed"} and "policy_refused" not in st.alarms()
    alarm = next(a for a in st.agent.health.alarms.active() if a.key == "policy_upgrade_needed")
    assert alarm.severity == "critical"
    assert "upgrade the station" in alarm.message_en and "rules.night_patrol" in alarm.message_en
    assert "请升级本站软件" in alarm.message_zh and "rules.retention.evidence_hash_days" in alarm.message_zh
    assert st.agent.health.tick()["policy_version"] == 1  # the monitor sees the station behind its unit
    text = run(["policy", "show"], config=centre.config, check=True).stdout
    assert "upgrade_needed" in text and "upgrade the station" in text

    # the same fields, forged (another key) or added after signing: refused as such, no upgrade alarm
    forger = keys.generate(centre.tmp / "forger.key", centre.tmp / "forger.pub")
    altered = json.loads(signed(centre, 3))
    altered["rules"]["night_patrol"] = {"min_officers": 2}
    for n, (reason, payload) in enumerate([("unknown_key", newer_signed(centre, 3, newer, key=forger)),
                                           ("bad_signature", json.dumps(altered).encode())], 3):
        publish_raw(centre, payload)
        st.wait(n)
        refused = json.loads(st.agent.store.get_meta("policy.last_refused"))
        assert refused["reason"] == reason and "policy_refused" in st.alarms() and st.version() == 1
    audit = [e for e in st.agent.store.audit.entries() if e["action"] == "policy-refused"]
    assert [json.loads(e["detail"])["reason"] for e in audit] == ["upgrade_needed", "unknown_key", "bad_signature"]

    # the centre publishes what this release knows (or the station is upgraded): applied, alarms end
    publish_raw(centre, signed(centre, 4))
    st.wait(5)
    assert st.version() == 4 and not st.alarms() & {"policy_upgrade_needed", "policy_refused"}


def test_a_genuine_policy_with_a_value_this_release_cannot_read_needs_an_upgrade(tmp_path):
    """A known field with a value of a kind this release does not know (an erase policy added
    later) is the same case: refused whole, `upgrade_needed`, the field named."""
    from agent.common.canon import canonical

    k = keys.generate(tmp_path / "p.key", tmp_path / "p.pub")
    ring = keys.KeyRing.from_paths(key=tmp_path / "p.pub")
    import time

    body = json.loads(wp.sign(k, UNIT, 5, wp.Content(), now=time.time()))
    del body["sig"]
    body["rules"]["erase_policy"] = "after-court-release"
    body["sig"] = keys.sign(k, canonical(body))
    with pytest.raises(wp.PolicyError) as exc:
        wp.verify(json.dumps(body).encode(), ring, unit=UNIT, now=time.time(), in_force=(4, "x"))
    assert exc.value.reason == "upgrade_needed"
    assert "rules.erase_policy" in str(exc.value) and "upgrade the station" in str(exc.value)
    # an older version of it is a rollback, another unit's is another unit's, whatever this release can read
    with pytest.raises(wp.PolicyError, match="not above version 5") as exc:
        wp.verify(json.dumps(body).encode(), ring, unit=UNIT, now=time.time(), in_force=(5, "x"))
    assert exc.value.reason == "rollback"
    with pytest.raises(wp.PolicyError) as exc:
        wp.verify(json.dumps(body).encode(), ring, unit=OTHER_UNIT, now=time.time())
    assert exc.value.reason == "other_unit"


def test_the_policy_in_force_expiring_raises_an_alarm_until_a_newer_one_comes(centre, station_factory):
    import time

    clock = Clock(time.time())
    st = station_factory(clock)
    publish_raw(centre, signed(centre, 1, expires_days=1))
    st.wait(1)
    assert st.version() == 1 and not st.keeper.check_expiry()
    clock.t += 2 * 86400   # two days later: nothing newer came (frozen)
    assert st.keeper.check_expiry() and "policy_expired" in st.alarms()
    shown = json.loads(run(["policy", "show", "--json"], config=centre.config, check=True).stdout)
    assert shown["in_force"]["version"] == 1   # still in force (nothing better), shown as expired by wall time later
    publish_raw(centre, signed(centre, 2, now=clock.t))
    st.wait(2)
    assert st.version() == 2 and "policy_expired" not in st.alarms()


# -- offline, restart -------------------------------------------------------------------------------
def test_a_station_offline_for_a_week_applies_the_newest_on_connect_and_a_restart_keeps_it(centre, station_factory):
    import time

    t0 = time.time()
    # published while the station is off: versions 1, 2 and 3 (the broker keeps the last, retained)
    for v in (1, 2, 3):
        p = publish_cli(centre)
        assert p.returncode == 0 and json.loads(p.stdout)["version"] == v, p.stderr
    # a week later the station comes online (its clock says so)
    st = station_factory(Clock(t0 + 7 * 86400))
    st.wait(1)
    assert st.keeper.outcomes == ["applied"] and st.version() == 3
    applied = [e for e in st.agent.store.audit.entries() if e["action"] == "policy-applied"]
    assert len(applied) == 1 and json.loads(applied[0]["detail"])["version"] == 3
    st.stop()
    # restart: the policy in force is kept; the retained copy delivered again changes nothing
    st2 = station_factory(Clock(t0 + 7 * 86400 + 60))
    assert st2.version() == 3          # from the ledger, before any message
    st2.wait(1)
    assert st2.keeper.outcomes == ["same"] and st2.version() == 3
    assert len([e for e in st2.agent.store.audit.entries() if e["action"] == "policy-applied"]) == 1
    assert st2.agent.health.tick()["policy_version"] == 3


# -- the centre's bad input -------------------------------------------------------------------------
@pytest.mark.parametrize("text, msg", [
    (POLICY_TOML.replace('officer = "33010001"', 'officer = "99999999"'), "officer '99999999' is not in officers"),
    (POLICY_TOML.replace('number = "33010002"', 'number = "33010001"'), "number '33010001' appears twice"),
    (POLICY_TOML.replace("'^杭.+号$'", "'([unclosed'"), "case_number_pattern"),
    (POLICY_TOML.replace("normal_days = 183", "normal_days = 30"), "normal_days"),
    (POLICY_TOML.replace('erase_policy = "never"', 'erase_policy = "sometimes"'), "erase_policy"),
    (POLICY_TOML.replace("upload_deadline_h = 24", "upload_deadline_h = 24.5"), "upload_deadline_h"),
    (POLICY_TOML + "\n[extra]\nx = 1\n", "extra"),
    (POLICY_TOML.replace("[rules]", "[rules", 1), "invalid TOML"),
])
def test_a_bad_policy_file_is_refused_with_a_clear_error_and_nothing_is_signed(centre, text, msg):
    bad = centre.tmp / "bad.toml"
    bad.write_text(text, encoding="utf-8")
    p = publish_cli(centre, file=bad)
    assert p.returncode != 0 and msg in p.stderr, p.stderr
    assert ap.last_published(centre.root, UNIT) is None


def test_versions_never_go_back_at_the_centre_and_json_files_are_read_strictly(centre):
    p = publish_cli(centre, "--version", "5")
    assert p.returncode == 0, p.stderr
    p = publish_cli(centre, "--version", "5")
    assert p.returncode != 0 and "is not above version 5" in p.stderr
    assert json.loads(publish_cli(centre).stdout)["version"] == 6
    dup = centre.tmp / "dup.json"
    dup.write_text('{"rules": {"upload_deadline_h": 24, "upload_deadline_h": 48}}', encoding="utf-8")
    p = publish_cli(centre, file=dup)
    assert p.returncode != 0 and "duplicate key 'upload_deadline_h'" in p.stderr
    assert ap.last_published(centre.root, UNIT)[0].version == 6


def test_the_broker_lets_only_the_archive_write_and_each_device_read_its_own_unit(tmp_path, make_broker):
    """The ACL: a device cannot publish a policy (not even its own unit's) and does not receive
    another unit's; the archive identity publishes; the monitor reads."""
    import uuid

    from tests.wire.test_broker_auth import ACCEPTED, Peer

    ident = broker_auth.generate(tmp_path / "b", ["dock-0001", "dock-0002"],
                                 units={"dock-0001": UNIT, "dock-0002": OTHER_UNIT})
    mq = make_broker(password_file=ident.passwd, acl_file=ident.acl)
    pw = {i.name: i.password for i in ident.identities}
    peers = {n: Peer(mq.port, n, pw[n]) for n in ("dock-0001", "dock-0002", "archive", "monitor")}
    try:
        for p in peers.values():
            assert p.connect().value == 0
        a, b, archive, monitor = (peers[n] for n in ("dock-0001", "dock-0002", "archive", "monitor"))
        for p in (a, b, monitor):
            p.subscribe(T.all_unit_policies())
        assert a.publish(T.unit_policy(UNIT), b"forged", retain=True) == 0x87
        assert b.publish(T.unit_policy(UNIT), b"forged", retain=True) == 0x87
        assert monitor.publish(T.unit_policy(UNIT), b"forged", retain=True) == 0x87
        other = uuid.uuid4().hex.encode()
        assert archive.publish(T.unit_policy(OTHER_UNIT), other, retain=True) in ACCEPTED
        mine = uuid.uuid4().hex.encode()
        assert archive.publish(T.unit_policy(UNIT), mine, retain=True) in ACCEPTED
        # dock-0001 gets only its unit's; dock-0002 only its own; the monitor both
        assert a.receive_until(T.unit_policy(UNIT), mine) == []
        assert b.receive_until(T.unit_policy(OTHER_UNIT), other) == []
        got = monitor.receive_until(T.unit_policy(UNIT), mine)
        assert got == [(T.unit_policy(OTHER_UNIT), other)]
        other2 = uuid.uuid4().hex.encode()
        assert archive.publish(T.unit_policy(OTHER_UNIT), other2, retain=True) in ACCEPTED
        assert b.receive_until(T.unit_policy(OTHER_UNIT), other2) == [], "dock-0002 got unit 1's policy"
    finally:
        for p in peers.values():
            p.close()


# -- the monitor ------------------------------------------------------------------------------------
def test_the_monitor_shows_a_station_running_an_old_policy(tmp_path, make_broker):
    """Two stations of one unit report the version they run in their health; the monitor (the
    `edge-agent monitor` process, through the broker) marks the one still on version 1 after the
    other applied version 2."""
    from tests.support.health import MonitorProc

    mq = make_broker()
    root = tmp_path / "archive"
    run(["archive", "policy", "key", "--new", "--root", str(root)], check=True)
    configs = []
    for dev in ("dock-0001", "dock-0002"):
        cfg = agent_config(tmp_path, mq.port, dev, dock__bays=[str(tmp_path / "no-bays" / "*")])
        store = open_store(cfg)
        run(["archive", "enroll", dev, str(store.pub_path), "--unit", UNIT, "--root", str(root),
             "--pin-to", str(store.data_dir)], check=True)
        store.close()
        configs.append(cfg)
    (tmp_path / "policy.toml").write_text(POLICY_TOML, encoding="utf-8")
    settings = ConnSettings("127.0.0.1", mq.port, "test-archive", keepalive=10,
                             **login(mq.port, "archive", "archive"))

    def publish_version(v: int) -> None:
        content = ap.read_content(tmp_path / "policy.toml")
        import time

        ap.publish(settings, T.unit_policy(UNIT), wp.sign(ap.signing_key(root), UNIT, v, content, now=time.time()))

    db = tmp_path / "monitor.db"
    mon = MonitorProc(db, mq.port, lost_after=600, enrolment=root)  # the monitor believes enrolled devices only
    a = b = None
    try:
        import time

        a, b = Station(configs[0], Clock(time.time())), Station(configs[1], Clock(time.time()))
        publish_version(1)
        a.wait(1)
        b.wait(1)
        b.agent.health.tick()
        b.stop()                      # dock-0002 goes away still on version 1
        publish_version(2)
        a.wait(2)
        assert a.version() == 2
        a.agent.health.tick()

        def fleet():
            p = run(["monitor", "fleet", "--db", str(db), "--lost-after", "600", "--json"], check=True)
            return json.loads(p.stdout)

        deadline = time.monotonic() + DEADLINE
        while True:
            f = fleet()
            devs = {d["id"]: d for d in f["devices"]}
            if {devs.get(x, {}).get("policy_version") for x in ("dock-0001", "dock-0002")} == {1, 2}:
                break
            assert time.monotonic() < deadline, f"monitor never saw both versions: {devs}"
            time.sleep(0.2)
        assert devs["dock-0002"]["policy_old"] is True and devs["dock-0001"]["policy_old"] is False
        unit = next(u for u in f["units"] if u["code"] == UNIT)
        assert unit["policy_newest"] == 2 and unit["policy_old"] == ["dock-0002"]
    finally:
        if a is not None:
            a.stop()
        assert mon.stop() == 0


def test_a_policy_key_pinned_in_the_config_counts_and_a_broken_one_is_a_clear_refusal(tmp_path, make_broker):
    """policy.keys names the key (no copy in DATA_DIR/keys/policy): the policy is applied. A
    config naming a file that is no key: every policy refused with the reason, alarmed, nothing lost."""
    import time

    mq = make_broker()
    root = tmp_path / "archive"
    run(["archive", "policy", "key", "--new", "--root", str(root)], check=True)
    pub = root / "_policy" / "policy.pub"
    (tmp_path / "policy.toml").write_text(POLICY_TOML, encoding="utf-8")
    settings = ConnSettings("127.0.0.1", mq.port, "test-archive", keepalive=10,
                             **login(mq.port, "archive", "archive"))
    content = ap.read_content(tmp_path / "policy.toml")
    cfg = agent_config(tmp_path, mq.port, DEV, dock__bays=[str(tmp_path / "no-bays" / "*")], policy__keys=[str(pub)])
    open_store(cfg).close()
    assert not (tmp_path / DEV / "keys" / "policy").exists()
    st = Station(cfg, Clock(time.time()))
    try:
        ap.publish(settings, T.unit_policy(UNIT), wp.sign(ap.signing_key(root), UNIT, 1, content, now=time.time()))
        st.wait(1)
        assert st.version() == 1
        shown = json.loads(run(["policy", "show", "--json"], config=cfg, check=True).stdout)
        assert shown["pinned_keys"] == [shown["in_force"]["key_id"]]
        # the config now names a file that is not a key
        bad = tmp_path / "not-a-key.pub"
        bad.write_text("garbage", encoding="utf-8")
        config_mod.set_value(cfg, "policy.keys", [str(bad)])
        st.cfg.policy.keys = [str(bad)]
        ap.publish(settings, T.unit_policy(UNIT), wp.sign(ap.signing_key(root), UNIT, 2, content, now=time.time()))
        st.wait(2)
        refused = json.loads(st.agent.store.get_meta("policy.last_refused"))
        assert refused["reason"] == "unknown_key" and "policy.keys" in refused["message"], refused
        assert st.version() == 1 and "policy_refused" in st.alarms()
        p = run(["policy", "show"], config=cfg)
        assert p.returncode != 0 and "policy.keys" in p.stderr, p.stderr
    finally:
        st.stop()


def test_concurrent_publishes_on_one_login_take_turns_and_none_is_lost(centre):
    """Four `archive policy publish` started at once on this host with one credentials file (one
    login, ``archive.policy``; one session at the broker): they take turns (the per-host lock of
    `command send`), so each signs its own version (1 … 4, none signed twice with another's
    content), each is acknowledged, none takes another's session, and what the broker retains is
    the last one signed."""
    import subprocess

    from agent.wire.client import settings_from_config
    from agent.wire.session import exchange
    from tests.support.health import EDGE

    procs = [subprocess.Popen([EDGE, "--config", str(centre.archive_cfg), "archive", "policy", "publish", "--unit", UNIT,
                               "--file", str(centre.file), "--root", str(centre.root), "--broker",
                               f"127.0.0.1:{centre.mq.port}", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e[-800:] for _o, e in outs]
    versions = sorted(json.loads(o)["version"] for o, _e in outs)
    assert versions == [1, 2, 3, 4], versions
    last = ap.last_published(centre.root, UNIT)
    assert last[0].version == 4
    # the station's view: its login reads its unit's policy, retained
    station = settings_from_config(config_mod.load(centre.config).mqtt, "policy-reader",
                                   broker=f"127.0.0.1:{centre.mq.port}")
    ex = exchange(station, subscribe=(T.unit_policy(UNIT),), until=bool, timeout=10)
    assert [b for _t, b, _p in ex.messages] == [last[1]], ex.error
    assert "already connected" not in centre.mq.log_path.read_text()
