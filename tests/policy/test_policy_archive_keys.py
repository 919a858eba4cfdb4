"""The archive trust list carried by the unit policy (agent/wire/trust_list.py,
agent/policy/archive_keys.py): a receiver key revoked at the centre reaches a running station
through the next signed policy, without a visit.

A real Mosquitto with the generated identities and ACL; the station is the agent of `edge-agent
run` in process (uplink, health, dock, policy) with the dock identity; two receivers with keys of
their own serve it; the centre's `archive receiver revoke` and `archive policy publish` run as the
CLI with the archive identity. Every wait is on an event (the station having considered N policy
messages, the uplink having ignored an answer, an item archived), with a deadline.
"""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from agent import config as config_mod
from agent.archive import policy as ap, receivers
from agent.archive.receiver import Receiver
from agent.archive.storage import ArchiveStore
from agent.common.errors import EdgeError
from agent.evidence import keys
from agent.wire import broker_auth
from agent.wire import policy as wp
from agent.wire import trust_list as tl
from agent.wire.client import ConnSettings
from agent.wire.receipts import ArchiveSigner
from agent.wire.topics import Topics
from tests.support.uplink import UNIT, add_items, agent_config, open_store, run, states, wait_for

DEV = "dock-0001"
DEADLINE = 20.0
POLICY = f"""
[rules]
upload_deadline_h = 24

[[units]]
code = "{UNIT}"
name = "示例执法单位"
"""


def _receipt_key(data_dir, item: str) -> str:
    con = sqlite3.connect(str(data_dir / "ledger.db"), timeout=30)
    try:
        (text,) = con.execute("SELECT receipt FROM items WHERE id = ?", [item]).fetchone()
    finally:
        con.close()
    return json.loads(text)["key_id"]


def test_a_policy_revokes_a_receiver_on_a_running_station_and_forged_or_old_policies_change_nothing(
        tmp_path, make_broker):
    root = tmp_path / "archive"
    ArchiveStore(root, create=True).close()
    ap.new_key(root)
    a, b = receivers.add(root, "rx-a"), receivers.add(root, "rx-b")
    b_key = keys.load_private(root / "_archive" / "receivers" / "rx-b.key")  # what a thief of rx-b keeps
    root_key = keys.load_private(root / "_archive" / "archive.key")
    auth = broker_auth.generate(tmp_path / "broker", [DEV], units={DEV: UNIT}, receivers=["rx-a", "rx-b"])
    pw = {i.name: i.password for i in auth.identities}
    mq = make_broker(password_file=auth.passwd, acl_file=auth.acl)
    config = agent_config(tmp_path, mq.port, DEV, mqtt__username=DEV, mqtt__password=pw[DEV],
                          dock__bays=[str(tmp_path / "no-bays" / "*")], uplink__ack_timeout_s=2)
    store = open_store(config)
    run(["archive", "enroll", DEV, str(store.pub_path), "--unit", UNIT, "--root", str(root),
         "--pin-to", str(store.data_dir)], check=True)  # pins the root, rx-a, rx-b and the policy key
    store.close()
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY, encoding="utf-8")
    archive_cfg = auth.credentials["archive"]
    archive_settings = ConnSettings("127.0.0.1", mq.port, "test-archive", keepalive=10, username="archive",
                                    password=pw["archive"])
    topic = Topics("edge").unit_policy(UNIT)

    def publish(*extra: str) -> dict:
        p = run(["archive", "policy", "publish", "--unit", UNIT, "--root", str(root), "--broker",
                 f"127.0.0.1:{mq.port}", "--json", *extra], config=archive_cfg)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    from agent.runtime import build_agent

    agent = build_agent(config_mod.load(config))
    keeper = next(c for c in agent.components if c.name == "policy").keeper
    agent.start()
    up = agent.uplink
    running: list[Receiver] = []

    def serve(rid: str, *, signer_key=None) -> Receiver:
        st = ArchiveStore(root, receiver=rid)
        rx = Receiver(st, ConnSettings("127.0.0.1", mq.port, rid, keepalive=10, username=rid, password=pw[rid]),
                      receiver_id=rid if signer_key is None else "rx-thief")
        if signer_key is not None:  # a receiver host that kept rx-b's key after the revocation
            rx.signer = ArchiveSigner(signer_key, "rx-b")
        rx.start()
        assert rx.conn.wait_connected(DEADLINE), rx.conn.last_error
        running.append(rx)
        return rx

    def halt(rx: Receiver) -> None:
        rx.stop()
        rx.store.close()
        running.remove(rx)

    def alarms() -> set[str]:
        return {x.key for x in agent.health.alarms.active()}

    def handled(n: int) -> None:
        assert keeper.wait_handled(n, DEADLINE), f"the station considered {keeper.handled} policy message(s), not {n}"

    try:
        assert up.conn.wait_connected(DEADLINE)
        # version 1: the roster, and the trust list (rx-a, rx-b endorsed by the root key): nothing to change
        v1 = publish("--file", str(policy_file))
        assert v1["version"] == 1 and sorted(v1["archive_keys_pinned"]) == sorted([a["key_id"], b["key_id"]])
        handled(1)
        assert keeper.outcomes == ["applied"]
        v1_payload = (root / "_policy" / "published" / f"{UNIT}.json").read_bytes()
        assert b["key_id"] in up.stats()["archive_keys"]

        # rx-b receipts an item: accepted while trusted
        (i1,) = add_items(agent.store, tmp_path, [120_000], seed=1)
        rx = serve("rx-b")
        wait_for(lambda: states(config)[i1] == "archived", 60, "i1 archived by rx-b")
        assert _receipt_key(store.data_dir, i1) == b["key_id"]
        halt(rx)

        # the centre revokes rx-b; the command names the publish that carries it to the unit's stations
        out = json.loads(run(["archive", "receiver", "revoke", "rx-b", "--root", str(root), "--json"],
                             check=True).stdout)
        assert out["publish"] == [f"edge-agent archive policy publish --unit {UNIT} --root {root.resolve()}"]
        v2 = publish()  # no --file: the content last published, signed again with the new trust list
        assert v2["version"] == 2 and v2["archive_keys_revoked"] == [b["key_id"]]
        assert v2["archive_keys_pinned"] == [a["key_id"]]
        handled(2)
        # applied while running, the uplink re-read its keys at once (not at its 10 s re-read)
        assert keeper.outcomes[-1] == "applied"
        assert b["key_id"] not in up.stats()["archive_keys"] and a["key_id"] in up.stats()["archive_keys"]
        kd = tl.archive_keys_dir(store.data_dir)
        assert (kd / "revoked" / f"archive-{b['key_id']}.pub").is_file()
        assert not any(b["key_id"] in p.name for p in kd.glob("*.pub"))
        revoked = [json.loads(e["detail"]) for e in agent.store.audit.entries() if e["action"] == "archive-key-revoked"]
        assert [(r["key_id"], r["receiver"], r["policy_version"]) for r in revoked] == [(b["key_id"], "rx-b", 2)]
        # pinning it by hand (`uplink trust-archive`) is refused from now on
        from agent.uplink.trust import pin_archive_key

        with pytest.raises(EdgeError, match="revoked"):
            pin_archive_key(agent.cfg, root / "_archive" / "revoked" / f"rx-b-{b['key_id']}.pub")

        # a thief with rx-b's key answers and receipts: ignored, the item stays unarchived
        (i2,) = add_items(agent.store, tmp_path, [100_000], seed=2)
        seen = up.stats()["answers_ignored"]
        rx = serve("rx-b", signer_key=b_key)
        wait_for(lambda: up.stats()["answers_ignored"] > seen, 60, "the revoked key's answers ignored")
        assert states(config)[i2] != "archived"
        halt(rx)

        # a forged policy (not the policy key) revoking rx-a and pinning the attacker's key: refused, alarmed
        attacker = keys.generate(tmp_path / "attacker.key", tmp_path / "attacker.pub")
        evil = tl.ArchiveKeys(revoke=[tl.entry("rx-a", keys.load_public(root / "_archive" / "receivers" / "rx-a.pub"))],
                              pin=[tl.entry("rx-evil", attacker.public_key(), endorser=attacker)])
        forged = wp.sign(attacker, UNIT, 9, ap.content_of(wp.parse(v1_payload)[0]).model_copy(
            update={"archive_keys": evil}), now=time.time())
        ap.publish(archive_settings, topic, forged)
        handled(3)
        assert keeper.outcomes[-1] == "refused" and "policy_refused" in alarms()
        assert json.loads(agent.store.get_meta("policy.last_refused"))["reason"] == "unknown_key"
        trusted = set(up.stats()["archive_keys"])
        assert a["key_id"] in trusted and keys.key_id(attacker.public_key()) not in trusted

        # the same, altered after a genuine signature: refused as altered
        body = json.loads(v1_payload)
        body["version"], body["archive_keys"] = 9, evil.model_dump(mode="json")
        ap.publish(archive_settings, topic, json.dumps(body).encode())
        handled(4)
        assert json.loads(agent.store.get_meta("policy.last_refused"))["reason"] == "bad_signature"
        assert set(up.stats()["archive_keys"]) == trusted

        # rollback: version 1 again (it still pinned rx-b): refused, rx-b stays revoked
        ap.publish(archive_settings, topic, v1_payload)
        handled(5)
        assert json.loads(agent.store.get_meta("policy.last_refused"))["reason"] == "rollback"
        assert b["key_id"] not in up.stats()["archive_keys"]

        # the policy key alone (stolen) pins the attacker's key (endorsed by the revoked rx-b key) and rx-b
        # again (endorsed by the root): the policy applies, neither key is pinned, alarm and audit
        stolen = tl.ArchiveKeys(pin=[tl.entry("rx-evil", attacker.public_key(), endorser=b_key),
                                     tl.entry("rx-b", b_key.public_key(), endorser=root_key)])
        ap.publish(archive_settings, topic, wp.sign(ap.signing_key(root), UNIT, 3, ap.content_of(
            wp.parse(v1_payload)[0]).model_copy(update={"archive_keys": stolen}), now=time.time()))
        handled(6)
        assert keeper.outcomes[-1] == "applied" and "archive_key_refused" in alarms()
        assert set(up.stats()["archive_keys"]) == trusted  # rx-b was endorsed by the root, but it is revoked
        refused = [json.loads(e["detail"]) for e in agent.store.audit.entries() if e["action"] == "archive-key-refused"]
        assert [r["key_id"] for r in refused] == [keys.key_id(attacker.public_key())]
        assert "does not trust" in refused[0]["reason"]

        # the centre's next genuine version (above the thief's) ends the alarm; the keys stay as they are
        assert publish("--version", "4")["archive_keys_revoked"] == [b["key_id"]]
        handled(7)
        assert keeper.outcomes[-1] == "applied" and not alarms() & {"archive_key_refused", "policy_refused"}
        assert set(up.stats()["archive_keys"]) == trusted

        # a trusted receiver (rx-a) archives the item the revoked key could not
        serve("rx-a")
        wait_for(lambda: states(config)[i2] == "archived", 60, "i2 archived by rx-a")
        assert _receipt_key(store.data_dir, i2) == a["key_id"]
        # the station's audit chain still verifies with every change in it
        assert run(["audit", "verify"], config=config).returncode == 0
    finally:
        for rx in list(running):
            halt(rx)
        agent.stop()
        agent.store.close()


def test_trust_list_entries_are_unambiguous_and_revocation_wins(tmp_path):
    """*unit*: a key id that is not the given key's, a key both pinned and revoked, an unendorsed pin,
    an archive_keys section in the centre's policy file: refused with a clear error."""
    k = keys.generate(tmp_path / "k.key", tmp_path / "k.pub")
    other = keys.generate(tmp_path / "o.key", tmp_path / "o.pub")
    good = tl.entry("rx-1", k.public_key(), endorser=other)
    with pytest.raises(ValueError, match="ambiguous"):
        tl.ArchiveKey(receiver="rx-1", key_id=keys.key_id(other.public_key()), public=good.public)
    with pytest.raises(ValueError, match="also in revoke"):
        tl.ArchiveKeys(revoke=[tl.entry("rx-1", k.public_key())], pin=[good])
    with pytest.raises(ValueError, match="no endorsement"):
        tl.ArchiveKeys(pin=[tl.entry("rx-1", k.public_key())])
    assert tl.endorsement_ok(good, {keys.key_id(other.public_key()): other.public_key()}) is None
    assert "does not verify" in tl.endorsement_ok(
        good.model_copy(update={"receiver": "rx-2"}), {keys.key_id(other.public_key()): other.public_key()})
    # revoked in a key directory: never pinned again
    d = tmp_path / "keys"
    assert tl.pin_key(d, k.public_key(), "policy-rx-1") is not None
    assert tl.revoke_key(d, k.public_key()) and not list(d.glob("*.pub"))
    assert tl.pin_key(d, k.public_key(), "policy-rx-1") is None and not tl.revoke_key(d, k.public_key())
    f = tmp_path / "policy.toml"
    f.write_text("[archive_keys]\nrevoke = []\n", encoding="utf-8")
    with pytest.raises(EdgeError, match="archive_keys"):
        ap.read_content(f)
