"""Attacks on the wire between the agent and the archive, run against a real Mosquitto, a real
archive receiver and a real uplink (issue 14 §2 "Receipts"). The attacker is an anonymous client
that reads and writes every topic (a misconfigured broker): it must still not be able to make the
agent free evidence, stop an item or silence the archive-unreachable alarm.

Every test ends with the genuine flow: the same item then archives and its receipt verifies."""

from __future__ import annotations

import datetime as _dt
import json
import secrets
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.wire import protocol as P
from agent.wire.client import ConnSettings
from agent.wire.mqtt import Connection
from agent.wire.receipts import (STATUS_FRESH_S, ArchiveSigner, ArchiveTrust, ReceiptError, new_nonce)
from agent.wire.topics import Topics

from tests.support.uplink import InProc, add_items, run, states, wait_for

DEV = "dock-0001"
T = Topics("edge")


class Attacker:
    """An anonymous MQTT client that records what it reads and publishes what it likes."""

    def __init__(self, port: int, filters: tuple[str, ...] = ("edge/xfer/#", "edge/ack/#", "edge/archive/status/+")):
        self.msgs: list[tuple[str, bytes, object]] = []
        self.cv = threading.Condition()
        self.conn = Connection(ConnSettings("127.0.0.1", port, f"attacker-{secrets.token_hex(3)}"),
                               on_message=self._on, name="attacker")
        for f in filters:
            self.conn.subscribe(f, 1)
        self.conn.start()
        assert self.conn.wait_connected(10), self.conn.last_error

    def _on(self, topic, payload, props):
        with self.cv:
            self.msgs.append((topic, bytes(payload), props))
            self.cv.notify_all()

    def wait(self, pred, what: str, timeout: float = 20):
        with self.cv:
            ok = self.cv.wait_for(lambda: next((m for m in self.msgs if pred(*m)), None), timeout)
        assert ok, f"attacker did not see {what}; saw {[(m[0], m[1][:300]) for m in self.msgs][-8:]}"
        return ok

    def send(self, topic: str, payload, *, corr: bytes | None = None, response_topic: str | None = None,
             props: list[tuple[str, str]] | None = None, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        h = self.conn.publish(topic, data, qos=1, retain=retain, correlation=corr, response_topic=response_topic,
                              user_properties=props)
        assert h.wait(10) and h.ok, h.error

    def close(self):
        self.conn.stop()


@pytest.fixture
def setup(open_broker, tmp_path):
    """The misconfigured broker of actor 1 on purpose (``open_broker``: anonymous, no ACL)."""
    broker = open_broker
    t = InProc(tmp_path, broker.port, uplink__ack_timeout_s=8)
    spy = Attacker(broker.port)
    yield t, spy
    spy.close()
    t.close()


def _request(spy: Attacker, item: str, kind: str = "manifest"):
    """The agent's request for ``item`` as the attacker read it: (correlation, nonce, payload)."""
    topic, payload, props = spy.wait(lambda tp, _b, _p: tp == T.xfer(DEV, item, kind), f"the {kind} of {item}")
    return bytes(props.CorrelationData), P.user_props(props)["nonce"], payload


def _files(manifest: bytes) -> list[dict]:
    return [{"name": f["name"], "size": f["size"], "hash": f["hash"]} for f in json.loads(manifest)["files"]]


def _receipt_body(item: str, manifest: bytes, mhash: str) -> dict:
    files = _files(manifest)
    return {"device": DEV, "item": item, "seq": 1, "manifest_hash": mhash, "item_hash": "0" * 64,
            "hash_alg": "sha256", "files": files, "size": sum(f["size"] for f in files), "annotations": 0,
            "stored_at": "2026-12-04T10:00:00+00:00"}


def _ignored(t: InProc) -> int:
    return t.uplink.transfer.answers_ignored


def _genuine_receipt_checks(t: InProc, item: str) -> dict:
    """The receipt the ledger holds for ``item`` verifies against the pinned key and names the item."""
    row = t.store.item(item)
    receipt = json.loads(row["receipt"])
    trust = ArchiveTrust.load([t.store.data_dir / "keys" / "archive"])
    trust.verify(receipt, "receipt")
    assert receipt["item"] == item and receipt["device"] == DEV
    assert receipt["manifest_hash"] == row["manifest_hash"]
    manifest = (Path(row["path"]) / "manifest.json").read_bytes() if Path(row["path"]).exists() else None
    if manifest is not None:
        assert sorted(map(str, receipt["files"])) == sorted(map(str, _files(manifest)))
    assert "path" not in receipt and "case_number" not in json.dumps(receipt)  # nothing for a third party
    return receipt


# --- forged "stored" with a captured correlation id ------------------------------------------------
def test_forged_stored_answer_never_archives_nor_frees(setup, tmp_path):
    t, spy = setup
    ids = add_items(t.store, tmp_path, [200_000])
    item = ids[0]
    t.enroll()
    t.start_agent()  # no archive yet: nobody genuine answers
    corr, nonce, manifest = _request(spy, item)
    mhash = t.store.item(item)["manifest_hash"]
    body = {"item": item, "kind": "manifest", "status": "stored", "annotations": 0,
            "receipt": _receipt_body(item, manifest, mhash)}
    before = _ignored(t)
    # 1. unsigned, everything else right (the attack that used to free the spool copy)
    spy.send(T.ack(DEV), dict(body, device=DEV, nonce=nonce), corr=corr)
    # 2. signed, but by a key of the attacker's own
    rogue = ArchiveSigner(Ed25519PrivateKey.generate(), "archive")
    spy.send(T.ack(DEV), rogue.answer(body, device=DEV, nonce=nonce), corr=corr)
    # 3. a "stored" chunk answer (unsigned; chunk answers never count as the item's answer)
    spy.send(T.ack(DEV), {"item": item, "kind": "chunk", "status": "stored"}, corr=corr)
    wait_for(lambda: _ignored(t) >= before + 3, 20, "three forged answers ignored")
    row = t.store.item(item)
    assert row["state"] == "uploading" and not row["receipt"] and not row["archived_at"]
    assert (Path(row["path"]) / "manifest.json").is_file()  # the spool copy is kept
    assert t.uplink.stats()["items_archived"] == 0
    # the genuine archive then stores it, and only its receipt is kept
    t.start_archive()
    t.wait_archived(ids)
    _genuine_receipt_checks(t, item)


# --- a genuine signed answer about another item, with this request's correlation and nonce ----------
def test_query_about_another_item_with_this_correlation_is_never_filed_under_it(setup, tmp_path):
    t, spy = setup
    b_ids = add_items(t.store, tmp_path, [100_000], seed=1)
    t.enroll()
    rx = t.start_archive()
    t.start_agent()
    t.wait_archived(b_ids)
    item_b = b_ids[0]
    rx.stop()
    rx.store.close()
    t.receivers.remove(rx)
    a_ids = add_items(t.store, tmp_path, [150_000], seed=2)
    item_a = a_ids[0]
    t.uplink.transfer.wake.set()
    corr, nonce, _ = _request(spy, item_a)   # A's manifest, sent while no archive listens
    t.start_archive("archive-2")
    # its status passed the broker after its subscription did: from now on it hears the query
    spy.wait(lambda tp, b, _p: tp == T.archive_receiver("archive-2") and b'"online"' in b, "archive-2 online")
    before = _ignored(t)
    # the anonymous query about B, carrying A's correlation data and A's nonce
    spy.send(T.xfer(DEV, item_b, "query"), b"{}", corr=corr, response_topic="evil/answers",
             props=[("proto", P.PROTO), ("nonce", nonce)])
    _topic, payload, _p = spy.wait(lambda tp, b, p: tp == T.ack(DEV) and getattr(p, "CorrelationData", None) == corr
                                   and b"stored" in b, "the archive's genuine answer about B")
    answer = json.loads(payload)
    assert answer["item"] == item_b and answer["nonce"] == nonce and answer["receipt"]["item"] == item_b
    assert not any(tp.startswith("evil/") for tp, _b, _p in spy.msgs)  # answers go only to P/ack/D
    wait_for(lambda: _ignored(t) > before, 20, "the answer about B ignored for A")
    assert t.store.item(item_a)["state"] == "uploading"
    t.wait_archived(a_ids)  # the next genuine answer about A archives it
    assert _genuine_receipt_checks(t, item_a)["item"] == item_a
    assert _genuine_receipt_checks(t, item_b)["item"] == item_b


# --- forged "rejected" -------------------------------------------------------------------------------
def test_forged_rejected_never_stops_an_item(setup, tmp_path):
    t, spy = setup
    ids = add_items(t.store, tmp_path, [120_000])
    item = ids[0]
    t.enroll()
    t.start_agent()
    corr, nonce, _ = _request(spy, item)
    body = {"item": item, "kind": "manifest", "status": "rejected", "reason": "forged: refused for good"}
    before = _ignored(t)
    spy.send(T.ack(DEV), dict(body, device=DEV, nonce=nonce), corr=corr)                           # unsigned
    spy.send(T.ack(DEV), ArchiveSigner(Ed25519PrivateKey.generate(), "x").answer(body, device=DEV, nonce=nonce),
             corr=corr)                                                                           # rogue key
    genuine = ArchiveSigner(t.archive.signing_key, "archive")  # a real archive answer from another request
    spy.send(T.ack(DEV), genuine.answer(body, device=DEV, nonce=new_nonce()), corr=corr)          # replayed
    spy.send(T.ack(DEV), {"item": item, "kind": "chunk", "status": "rejected"}, corr=corr)           # as a chunk answer
    wait_for(lambda: _ignored(t) >= before + 4, 20, "four forged refusals ignored")
    assert t.store.item(item)["state"] == "uploading"
    t.start_archive()
    t.wait_archived(ids)
    assert t.uplink.stats()["items_rejected"] == 0
    _genuine_receipt_checks(t, item)


# --- forged archive status -----------------------------------------------------------------------------
def test_forged_archive_status_never_silences_archive_unreachable(setup, tmp_path):
    t, spy = setup
    t.enroll()
    t.start_agent()
    wait_for(lambda: t.uplink.connected, 20, "agent connected")
    now = _dt.datetime.now(_dt.timezone.utc)
    before = _ignored(t)
    spy.send(T.archive_receiver("rx-forged"), {"state": "online", "time": now.isoformat(timespec="seconds"),
                                               "receiver": "rx-forged"}, retain=True)             # unsigned
    rogue = ArchiveSigner(Ed25519PrivateKey.generate(), "rx-rogue")
    spy.send(T.archive_receiver("rx-rogue"), rogue.status("online"), retain=True)               # rogue key
    genuine = ArchiveSigner(t.archive.signing_key, "rx-old")  # a genuine status captured long ago, replayed
    old = (now - _dt.timedelta(seconds=STATUS_FRESH_S * 10)).isoformat(timespec="seconds")
    spy.send(T.archive_receiver("rx-old"), _resign(genuine, {"state": "online", "time": old}, "rx-old"), retain=True)
    spy.send(T.archive_receiver("rx-elsewhere"), ArchiveSigner(t.archive.signing_key, "rx-a").status("online"),
             retain=True)                                                                   # another receiver's
    wait_for(lambda: _ignored(t) >= before + 4, 20, "four forged statuses ignored")
    st = t.uplink.stats()
    assert st["archive_reachable"] is False, st  # health raises archive_unreachable from exactly this
    t.start_archive("rx-real")
    wait_for(lambda: t.uplink.stats()["archive_reachable"] is True, 20, "the genuine receiver's status counted")
    for rid in ("rx-forged", "rx-rogue", "rx-old", "rx-elsewhere"):  # retained: clear them
        spy.send(T.archive_receiver(rid), b"", retain=True)


def _resign(signer: ArchiveSigner, body: dict, receiver: str) -> dict:
    """A status body signed with the genuine key for ``receiver`` (a replay of an old one)."""
    from agent.common.canon import canonical
    from agent.evidence import keys

    d = dict(body, receiver=receiver, key_id=signer.key_id)
    d["sig"] = keys.sign(signer.key, canonical(d))
    return d


# --- no key pinned: nothing sent, nothing freed ---------------------------------------------------------
def test_without_a_pinned_archive_key_nothing_is_sent_or_freed(setup, tmp_path):
    from agent.uplink.trust import NO_KEY

    t, spy = setup
    ids = add_items(t.store, tmp_path, [50_000])
    t.archive.registry.enroll(DEV, t.store.pub_path.read_bytes(), "330100000000")  # enrolled, key not pinned
    t.start_archive()
    t.start_agent()
    wait_for(lambda: t.uplink.stats()["last_error"] == NO_KEY, 20, "the bilingual refusal")
    assert "未固定归档服务器公钥" in NO_KEY and "no archive key pinned" in NO_KEY
    assert states(t.config)[ids[0]] == "sealed"
    assert not any(tp.startswith("edge/xfer/") for tp, _b, _p in spy.msgs)
    p = run(["uplink", "status"], config=t.config)
    assert p.returncode == 0 and "no archive key pinned" in p.stdout, p.stdout
    p = run(["uplink", "trust-archive", str(t.root / "_archive" / "archive.pub"), "--json"], config=t.config)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["key_id"] == t.receivers[0].signer.key_id
    t.wait_archived(ids, timeout=40)  # picked up without a restart
    _genuine_receipt_checks(t, ids[0])
    st = json.loads(run(["uplink", "status", "--json"], config=t.config, check=True).stdout)
    assert st["archive_keys"] == [t.receivers[0].signer.key_id]


def test_trust_archive_refuses_what_is_not_a_public_key(tmp_path):
    from tests.support.uplink import agent_config

    cfg = agent_config(tmp_path, 1)
    bad = tmp_path / "x.pub"
    bad.write_text("not a key")
    p = run(["uplink", "trust-archive", str(bad)], config=cfg)
    assert p.returncode != 0 and "not a PEM or base64 Ed25519 public key" in p.stderr
    assert not (tmp_path / DEV / "keys" / "archive").exists() or not list((tmp_path / DEV / "keys" / "archive").iterdir())


# --- the receipt checks themselves ------------------------------------------------------------------------
def test_every_field_of_a_receipt_is_checked():
    key = Ed25519PrivateKey.generate()
    signer = ArchiveSigner(key, "archive")
    trust = ArchiveTrust()
    trust.ring.add(key.public_key())
    files = [{"name": "a.mp4", "size": 10, "hash": "1" * 64}, {"name": "b.wav", "size": 0, "hash": "2" * 64}]
    nonce = new_nonce()
    body = {"device": DEV, "item": "I1", "seq": 3, "manifest_hash": "m" * 64, "item_hash": "h" * 64,
            "hash_alg": "sha256", "files": files, "size": 10, "annotations": 1, "stored_at": "2026-12-04T10:00:00+00:00"}
    good = signer.receipt(body, nonce=nonce)
    want = dict(device=DEV, item="I1", nonce=nonce, manifest_hash="m" * 64, files=list(reversed(files)), annotations=1)
    assert trust.check_receipt(good, **want) is good
    for k, bad in [("device", "dock-0002"), ("item", "I2"), ("nonce", new_nonce()), ("manifest_hash", "n" * 64),
                   ("files", files[:1]), ("files", [dict(files[0], size=11), files[1]]),
                   ("files", [dict(files[0], hash="3" * 64), files[1]]), ("annotations", 2)]:
        with pytest.raises(ReceiptError):
            trust.check_receipt(good, **dict(want, **{k: bad}))
    for k, v in [("item", "I2"), ("files", files[:1]), ("annotations", 5), ("nonce", new_nonce())]:
        tampered = dict(good, **{k: v})  # changed after signing
        with pytest.raises(ReceiptError, match="signature does not verify"):
            trust.check_receipt(tampered, **want)
    with pytest.raises(ReceiptError, match="unsigned"):
        trust.check_receipt({k: v for k, v in good.items() if k != "sig"}, **want)
    with pytest.raises(ReceiptError, match="not a pinned archive key"):
        trust.check_receipt(ArchiveSigner(Ed25519PrivateKey.generate(), "a").receipt(body, nonce=nonce), **want)
    with pytest.raises(ReceiptError, match="not a JSON object"):
        trust.check_receipt(None, **want)


def test_archive_key_rotation_in_two_steps(tmp_path):
    from agent.archive.storage import ArchiveStore

    root = tmp_path / "archive"
    ArchiveStore(root).close()
    first = json.loads(run(["archive", "key", "--root", str(root), "--json"], check=True).stdout)
    p = run(["archive", "key", "--rotate", "--root", str(root)])
    assert p.returncode != 0 and "--new-next" in p.stderr
    nxt = json.loads(run(["archive", "key", "--new-next", "--root", str(root), "--json"], check=True).stdout)
    assert nxt["key_id"] == first["key_id"] and nxt["next_key_id"] not in (None, first["key_id"])
    rot = json.loads(run(["archive", "key", "--rotate", "--root", str(root), "--json"], check=True).stdout)
    assert rot["key_id"] == nxt["next_key_id"] and rot["next_key_id"] is None
    assert any(first["key_id"] in r for r in rot["retired"])
    st = ArchiveStore(root)
    try:
        assert ArchiveSigner(st.signing_key, "r").key_id == rot["key_id"]  # receivers started now sign with it
    finally:
        st.close()


# --- the genuine flow: nothing of the archive's own is ignored ---------------------------------------------
def test_chunk_answers_come_a_few_at_a_time_and_answer_every_chunk(setup, tmp_path):
    """The receiver answers a stream of chunks a few at a time (agent/archive/receiver.py,
    ANSWER_BATCH, ANSWER_WAIT_S): one answer message names the other chunks' correlation data in
    ``more``, their ranges committed to the index before it is sent. Far fewer answer messages
    than chunks, yet every chunk answered once: nothing retransmitted, the item archived."""
    t, spy = setup
    (item,) = add_items(t.store, tmp_path, [16 << 20])
    t.enroll()
    t.start_archive()
    t.start_agent()
    t.wait_archived([item], timeout=60)
    chunks = sum(1 for tp, _b, _p in list(spy.msgs) if tp == T.xfer(DEV, item, "chunk"))
    answers = [json.loads(b) for tp, b, _p in list(spy.msgs) if tp == T.ack(DEV)]
    chunk_answers = [a for a in answers if a.get("kind") == "chunk"]
    assert chunks >= 16 and sum(1 + len(a.get("more") or []) for a in chunk_answers) == chunks
    assert len(chunk_answers) <= chunks // 2, [len(a.get("more") or []) for a in chunk_answers]
    assert t.uplink.stats()["retransmits"] == 0


def test_genuine_parallel_transfers_ignore_no_answer(setup, tmp_path):
    """Two lanes send two items at once; the receiver answers the chunks of both in one batch
    (``more``). Every genuine answer is taken: nothing ignored, nothing retransmitted, each item
    archived under its own verified receipt (a check too strict here cost 30 s per stall)."""
    t, _spy = setup
    ids = add_items(t.store, tmp_path, [3 << 20, 3 << 20, 3 << 20, 3 << 20])
    t.enroll()
    t.start_archive()
    t.start_agent()
    t.wait_archived(ids, timeout=60)
    st = t.uplink.stats()
    assert st["answers_ignored"] == 0 and st["retransmits"] == 0 and st["receipts_refused"] == 0, st
    for i in ids:
        _genuine_receipt_checks(t, i)
