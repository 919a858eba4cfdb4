"""Retention by rule at the archive (issue 18): classes from the sealed item (mark 1 → important,
evidence mark → evidence), periods from the unit's signed policy, custodians raising a class by a
signed record and lowering it only with a second custodian's approval, legal holds, and
`retention run` deleting only expired, archived, unheld items — the boundaries (the expiry
instant, a hold placed during a run, a class raised during a run) moved by an injectable clock.
Real items sealed by a station's store and stored by the archive's storage code; SQLite and
PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.archive import policy as apol
from agent.archive.retention import Retention
from agent.common.errors import EdgeError, NotFoundError
from agent.evidence import keys
from agent.evidence.verify import verify_chain
from agent.wire import policy as wp
from tests.support.custody import Centre, pg_database

UNIT = "330100000000"
T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))  # capture end of the items


class Clock:
    def __init__(self, t: dt.datetime):
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t


@pytest.fixture(params=["sqlite", "postgresql"])
def centre(request, tmp_path):
    if request.param == "sqlite":
        c = Centre(tmp_path)
        yield c
        c.close()
    else:
        with pg_database() as url:
            c = Centre(tmp_path, db=url)
            yield c
            c.close()


def _verify_both(root: Path) -> str:
    """The chain verified by edge-agent and by the independent reference verifier."""
    rep = verify_chain(root / UNIT, keys.KeyRing.from_paths(keys_dir=root / "keys"))
    ref = subprocess.run([sys.executable, "tools/verify_reference.py", "--chain", str(root / UNIT),
                          str(root / "keys")], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert ref.returncode == 0, ref.stdout
    return rep, ref.stdout


def test_classes_expiry_instant_tombstone_and_chain(centre):
    normal = centre.item(T0)
    important = centre.item(T0, mark=1)
    evidence = centre.item(T0, evidence_mark=True)
    # the recorder's clock ran 2 h fast: its capture end is corrected by the sealed drift
    drift = centre.item(T0 + dt.timedelta(hours=2), clock_offset_ms=7_200_000,
                        clock_offset_measured_at="2026-03-01T12:00:00+08:00", clock_offset_source="measured")
    pending = centre.item(T0, store=False)
    centre.archive(pending, finish=False)  # a transfer under way: not archived
    keep = T0 + dt.timedelta(days=183)  # no policy published: normal 183 days, important permanent

    clock = Clock(keep - dt.timedelta(seconds=1))
    ret = Retention(centre.st, clock=clock)
    plan = ret.plan()
    assert [(d["item"], d["class"], d["keep_until"], d["state"]) for d in plan["items"]] == [
        (i, "normal", keep.isoformat(), "kept") for i in sorted([normal, drift])]
    assert plan["permanent"] == 2 and plan["due"] == 0
    assert ret.show(important)["class"] == "important" and ret.show(evidence)["class"] == "evidence"
    assert ret.run(actor="retention-test")["deleted"] == []

    clock.t = keep  # the instant the retention ends
    out = ret.run(actor="retention-test")
    assert sorted(d["item"] for d in out["deleted"]) == sorted([normal, drift])
    for i in (normal, drift):
        with pytest.raises(NotFoundError, match="deleted by its retention rule"):
            ret.show(i)
    assert (centre.root / "_tmp" / "dock-0001" / pending).is_dir()  # the unfinished transfer is untouched
    d = centre.root / out["deleted"][0]["path"]
    assert sorted(p.name for p in d.iterdir()) == ["tombstone.json", "tombstone.sig"]
    t = json.loads((d / "tombstone.json").read_bytes())
    assert t["format"] == "edge-agent-tombstone/1" and t["retention_class"] == "normal"
    assert t["by"] == "retention-test" and t["expired_at"] == keep.isoformat()

    # the device chain still verifies, with the expired links, by both verifiers
    rep, ref = _verify_both(centre.root)
    assert rep.devices["dock-0001"]["items"] == 4 and rep.devices["dock-0001"]["expired"] == 2
    assert ref.startswith("OK chain dock-0001: 4 items")
    # the station still holding it sends it again: refused for good, never stored a second time
    from agent.wire import protocol as P

    sd = centre.store.item_dir(normal)
    again = centre.st.on_manifest(centre.st.registry.device("dock-0001"), normal, (sd / "manifest.json").read_bytes(),
                                  dict(P.manifest_props((sd / "manifest.sig").read_bytes())))
    assert again.status == "rejected" and again.reason.startswith("expired: deleted by its retention rule")
    fin = centre.st.on_finish(centre.st.registry.device("dock-0001"), normal, P.finish_payload(
        json.loads((sd / "manifest.json").read_bytes())["files"], []))
    assert fin.status == "rejected" and fin.reason.startswith("expired")
    assert [t["item"] for t in ret.tombstones() if t["item"] == normal] == [normal]
    # the deletion is in the archive's audit chain, which still verifies
    expired = [e for e in centre.st.audit.entries(action="expire")]
    assert sorted(e["item_id"] for e in expired) == sorted([normal, drift])
    assert centre.st.audit.verify() >= 2
    # an altered tombstone is refused
    (d / "tombstone.json").write_bytes((d / "tombstone.json").read_bytes().replace(b'"normal"', b'"important"'))
    with pytest.raises(EdgeError, match="bad signature"):
        verify_chain(centre.root / UNIT, keys.KeyRing.from_paths(keys_dir=centre.root / "keys"))


def test_policy_periods_hold_placed_during_a_run(centre, tmp_path):
    # the unit's signed policy: normal 200 days, important 400 days
    apol.new_key(centre.root)
    apol.sign_next(centre.root, UNIT, wp.content_from({"rules": {"retention": {"normal_days": 200,
                                                                               "important_days": 400}}}))
    a, b, c = centre.item(T0), centre.item(T0), centre.item(T0, mark=1)
    clock = Clock(T0 + dt.timedelta(days=200))
    other = Retention(centre.second(), clock=clock)  # a custodian at another terminal

    def place_hold(cand):
        if cand["item"] == min(a, b):
            other.place_hold(item=max(a, b), reason="复议中 / under review", actor="legal-1")

    ret = Retention(centre.st, clock=clock, on_item=place_hold)
    assert ret.plan()["items"][-1]["keep_until"] == (T0 + dt.timedelta(days=400)).isoformat()
    out = ret.run(actor="retention-test")
    assert [d["item"] for d in out["deleted"]] == [min(a, b)]
    assert out["kept"] == [{"device": "dock-0001", "item": max(a, b), "deleted": False, "why": "held (1)"}]
    # a hold on the case keeps the important item past its 400 days; released, it goes
    case = json.loads((centre.store.item_dir(c) / "manifest.json").read_bytes())["metadata"]["case_number"]
    case_hold = other.place_hold(case=case, unit=UNIT, reason="诉讼 / litigation", actor="legal-1")["hold"]
    clock.t = T0 + dt.timedelta(days=400)
    assert Retention(centre.st, clock=clock).run(actor="retention-test")["deleted"] == []
    other.release_hold(case_hold, reason="判决生效 / judgment final", actor="legal-1")
    other.release_hold(1, reason="复议结束 / review closed", actor="legal-1")
    gone = Retention(centre.st, clock=clock).run(actor="retention-test")["deleted"]
    assert sorted(d["item"] for d in gone) == sorted([max(a, b), c])
    with pytest.raises(NotFoundError, match="deleted by its retention rule"):
        other.place_hold(item=c, reason="too late", actor="legal-1")
    other.store.close()


def test_class_raised_during_a_run_and_lowering_needs_a_second_person(centre):
    a, b = centre.item(T0), centre.item(T0)
    imp = centre.item(T0, mark=1)
    zhao, qian = centre.custodian("zhao"), centre.custodian("qian")
    clock = Clock(T0 + dt.timedelta(days=183))
    other = Retention(centre.second(), clock=clock)

    def raise_b(cand):
        if cand["item"] == min(a, b):
            other.raise_class(max(a, b), "evidence", actor="zhao", private=zhao, reason="行政复议证据 / evidence")

    out = Retention(centre.st, clock=clock, on_item=raise_b).run(actor="retention-test")
    assert [d["item"] for d in out["deleted"]] == [min(a, b)]
    assert out["kept"][0]["item"] == max(a, b) and out["kept"][0]["why"].startswith("class now evidence")

    ret = Retention(centre.st, clock=clock)
    with pytest.raises(EdgeError, match="raising goes to a higher class"):
        ret.raise_class(imp, "normal", actor="zhao", private=zhao, reason="x")
    with pytest.raises(EdgeError, match="not custodian qian's"):
        ret.raise_class(imp, "evidence", actor="qian", private=zhao, reason="x")
    with pytest.raises(EdgeError, match="not an enrolled custodian"):
        ret.raise_class(imp, "evidence", actor="sun", private=zhao, reason="x")
    with pytest.raises(EdgeError, match="reason is required"):
        ret.request_lower(imp, "normal", actor="zhao", private=zhao, reason="")
    req = ret.request_lower(imp, "normal", actor="zhao", private=zhao, reason="误标重点 / marked by mistake")
    assert req["state"] == "pending" and ret.show(imp)["class"] == "important"
    assert ret.run(actor="retention-test")["deleted"] == []  # not lowered until approved
    with pytest.raises(EdgeError, match="a second custodian"):
        ret.approve(req["change"], actor="zhao", private=zhao)
    done = ret.approve(req["change"], actor="qian", private=qian)
    assert done["state"] == "applied" and done["requester"] == "zhao" and done["approver"] == "qian"
    shown = ret.show(imp)
    assert shown["class"] == "normal" and shown["state"] == "due"
    assert [c["state"] for c in shown["changes"]] == ["applied"]
    assert [d["item"] for d in ret.run(actor="retention-test")["deleted"]] == [imp]
    acts = [e["action"] for e in centre.st.audit.entries() if e["action"].startswith("retention")]
    assert acts == ["retention-raise", "retention-lower-requested", "retention-lower-approved"]
    # each change carries the custodian's signature over its record
    row = centre.st.db.one("SELECT record, sig, approval, approval_sig FROM retention_changes WHERE id = ?",
                           [req["change"]])
    assert keys.verify_sig(zhao.public_key(), row["record"].encode(), row["sig"])
    assert keys.verify_sig(qian.public_key(), row["approval"].encode(), row["approval_sig"])
    _verify_both(centre.root)
    other.store.close()


def test_cli_plan_hold_run_and_verify(tmp_path):
    """What a records officer types: plan, hold, run, verify --chain (real clock: items captured on
    2026-03-01 are past 183 days)."""
    from tests.support.uplink import run

    c = Centre(tmp_path)
    a, b = c.item(T0), c.item(T0)
    c.item(T0, mark=1)  # important: permanent by default
    c.close()
    r = ["--root", str(c.root)]
    plan = json.loads(run(["archive", "retention", "plan", "--json", *r], check=True).stdout)
    assert sorted((d["item"], d["state"]) for d in plan["items"]) == sorted([(a, "due"), (b, "due")])
    assert plan["permanent"] == 1
    # retention ends 2026-08-31 10:00 +08:00: listed by that day, not by the day before
    assert run(["archive", "retention", "plan", "--until", "2026-08-31", *r], check=True).stdout.count(" due ") == 2
    assert json.loads(run(["archive", "retention", "plan", "--until", "2026-08-30", "--json", *r],
                          check=True).stdout)["items"] == []
    out = run(["archive", "hold", "place", "--item", b, "--reason", "行政诉讼 / lawsuit", "--as", "legal-1", *r],
              check=True).stdout
    assert out.startswith("保全 / hold 1:")
    bad = run(["archive", "hold", "place", "--item", b, "--case", "x", "--reason", "x", *r])
    assert bad.returncode != 0 and "one of them" in bad.stderr
    out = run(["archive", "retention", "run", "--as", "records-office", *r], check=True).stdout
    assert f"已删除 / deleted dock-0001/{a} (normal" in out and "删除 / deleted: 1   保留 / kept: 1" in out
    assert f"保留 / kept dock-0001/{b}: held (1)" in out
    assert b in run(["archive", "hold", "list", *r], check=True).stdout
    gone = json.loads(run(["archive", "retention", "expired", "--json", *r], check=True).stdout)
    assert [(t["item"], t["class"], t["expired_by"]) for t in gone] == [(a, "normal", "records-office")]
    v = run(["verify", "--chain", str(c.root / UNIT), "--keys", str(c.root / "keys")], check=True).stdout
    assert "ok: device dock-0001: 3 items (1 expired: tombstone signed by the archive" in v
    assert json.loads(run(["archive", "audit", "--json", *r], check=True).stdout) is not None


def test_tombstone_that_breaks_the_rule_is_refused_by_both_verifiers(tmp_path):
    """Re-signed with the archive's own key, a tombstone still may not name an evidence item nor a
    deletion before the retention ended: both verifiers refuse it."""
    from agent.evidence import tombstone as tb

    c = Centre(tmp_path)
    c.item(T0)
    c.item(T0)
    gone = Retention(c.st, clock=Clock(T0 + dt.timedelta(days=183))).run(actor="t")["deleted"]
    d = c.root / gone[0]["path"]
    good = json.loads((d / "tombstone.json").read_bytes())
    ring = keys.KeyRing.from_paths(keys_dir=c.root / "keys")
    for change, why in (({"retention_class": "evidence"}, "evidence is kept permanently"),
                        ({"expired_at": "2026-08-01T00:00:00+08:00"}, "before its retention ended")):
        bad = dict(good, **change)
        (d / "tombstone.json").write_bytes(tb.encode(bad))
        from agent.evidence.manifest import signature_record
        (d / "tombstone.sig").write_bytes(signature_record(c.st.signing_key, tb.encode(bad)))
        with pytest.raises(EdgeError, match=why):
            verify_chain(c.root / UNIT, ring)
        ref = subprocess.run([sys.executable, "tools/verify_reference.py", "--chain", str(c.root / UNIT),
                              str(c.root / "keys")], capture_output=True, text=True, cwd=Path(__file__).parents[2])
        assert ref.returncode == 1 and ref.stdout.startswith("FAIL tombstone"), ref.stdout
    # without the archive's key in KEYS/archive the tombstone is not trusted at all
    (d / "tombstone.json").write_bytes(tb.encode(good))
    (d / "tombstone.sig").write_bytes(signature_record(c.st.signing_key, tb.encode(good)))
    verify_chain(c.root / UNIT, ring)
    for p in (c.root / "keys" / "archive").iterdir():
        p.unlink()
    with pytest.raises(EdgeError, match="not an archive key"):
        verify_chain(c.root / UNIT, keys.KeyRing.from_paths(keys_dir=c.root / "keys"))
    c.close()


def test_a_run_stopped_after_recording_a_deletion_is_finished_by_the_next(tmp_path, monkeypatch):
    """The deletion is recorded (tombstone row, audit entry) before any file goes; a run that stops
    in between leaves the item's files, which verify as before, and the next run buries them."""
    c = Centre(tmp_path)
    a = c.item(T0)
    clock = Clock(T0 + dt.timedelta(days=183))
    real = Retention._bury

    def crash(self, d, t):
        raise OSError("power lost")
    monkeypatch.setattr(Retention, "_bury", crash)
    with pytest.raises(OSError):
        Retention(c.st, clock=clock).run(actor="t")
    d = c.root / c.st.db.one("SELECT path FROM tombstones WHERE item = ?", [a])["path"]
    assert (d / "manifest.json").is_file() and not (d / "tombstone.json").exists()
    verify_chain(c.root / UNIT, keys.KeyRing.from_paths(keys_dir=c.root / "keys"))
    monkeypatch.setattr(Retention, "_bury", real)
    assert Retention(c.st, clock=clock).run(actor="t")["deleted"] == []  # nothing left to decide
    assert sorted(p.name for p in d.iterdir()) == ["tombstone.json", "tombstone.sig"]
    _verify_both(c.root)
    c.close()


def test_proof_object_rule_of_the_policy_and_a_narrower_policy_never_lowers(centre):
    """The unit policy's evidence_proof_pattern makes an item whose proof object (证明对象) matches
    it evidence; the class it had when it arrived is its floor: a later policy without the rule does
    not lower it (only two custodians do), while an item arriving under that policy is normal."""
    apol.new_key(centre.root)
    apol.sign_next(centre.root, UNIT, wp.content_from({"rules": {"retention": {"evidence_proof_pattern": "妨碍执法"}}}))
    obstructed = centre.item(T0, proof="当事人妨碍执法过程")
    plain = centre.item(T0)
    clock = Clock(T0 + dt.timedelta(days=400))
    ret = Retention(centre.st, clock=clock)
    shown = ret.show(obstructed)
    assert (shown["class"], shown["keep_until"]) == ("evidence", None)
    assert shown["class_source"] == "proof object matches the policy (证明对象)"
    apol.sign_next(centre.root, UNIT, wp.content_from({"rules": {}}))  # version 2: no proof-object rule
    later = centre.item(T0, proof="当事人妨碍执法过程")
    assert ret.show(obstructed)["class"] == "evidence"
    assert ret.show(obstructed)["class_source"].endswith("at arrival")
    assert ret.show(later)["class"] == "normal"
    assert sorted(d["item"] for d in ret.run(actor="t")["deleted"]) == sorted([plain, later])
    assert ret.show(obstructed)["state"] == "permanent"


def test_bad_input_is_refused_with_a_clear_error_and_changes_nothing(tmp_path):
    from tests.support.uplink import run

    c = Centre(tmp_path)
    a = c.item(T0)
    zhao = c.custodian("zhao")
    ret = Retention(c.st, clock=Clock(T0))
    with pytest.raises(EdgeError, match="each custodian has a key of their own"):
        ret.enroll_custodian("qian", (tmp_path / "zhao.pub").read_bytes())
    with pytest.raises(NotFoundError, match="no such item in the archive"):
        ret.raise_class("dock-0001-20260101000000-abcdef", "evidence", actor="zhao", private=zhao, reason="x")
    with pytest.raises(EdgeError, match="one of normal, important, evidence"):
        ret.raise_class(a, "forever", actor="zhao", private=zhao, reason="x")
    with pytest.raises(NotFoundError, match="no such lowering request"):
        ret.approve(99, actor="zhao", private=zhao)
    with pytest.raises(NotFoundError, match="no such hold"):
        ret.release_hold(99, reason="x", actor="legal-1")
    with pytest.raises(EdgeError, match="reason is required"):
        ret.place_hold(item=a, reason=" ", actor="legal-1")
    h = ret.place_hold(item=a, reason="诉讼", actor="legal-1")["hold"]
    ret.release_hold(h, reason="结案", actor="legal-1")
    with pytest.raises(EdgeError, match="released already"):
        ret.release_hold(h, reason="again", actor="legal-1")
    c.close()
    r = ["--root", str(c.root)]
    bad = run(["archive", "retention", "plan", "--until", "next spring", *r])
    assert bad.returncode != 0 and "--until 'next spring': a date (2027-06-30)" in bad.stderr
    bad = run(["archive", "retention", "raise", a, "--class", "evidence", "--as", "sun", "--key",
               str(tmp_path / "zhao.key"), "--reason", "x", *r])
    assert bad.returncode != 0 and "sun: 不是登记的保管人 / not an enrolled custodian" in bad.stderr
    # nothing changed: the item is still archived, normal, unheld, and no change was recorded
    shown = json.loads(run(["archive", "retention", "show", a, "--json", *r], check=True).stdout)
    assert (shown["class"], shown["holds"], shown["changes"]) == ("normal", [], [])


def test_plan_and_run_go_through_the_evidence_storage(tmp_path):
    """Retention reads manifests and removes an expired item only through the archive's evidence
    storage (agent/archive/backend.py), by the item's key, as the receivers do: an object-store
    backend serves it unchanged. The storage here records every call it gets."""
    from agent.archive.backend import PosixStorage

    calls: list[tuple[str, str, tuple]] = []

    class Recording(PosixStorage):
        def __getattribute__(self, name):
            attr = super().__getattribute__(name)
            if name in ("get", "names", "put", "has", "keep_only", "delete", "remove") and callable(attr):
                def rec(key, *args, **kw):
                    calls.append((name, key, args))
                    return attr(key, *args, **kw)
                return rec
            return attr

    c = Centre(tmp_path)
    a, kept = c.item(T0), c.item(T0, mark=1)
    c.st.storage = Recording(c.st.storage.root)
    key = c.st.db.one("SELECT path FROM items WHERE item = ?", [a])["path"]
    clock = Clock(T0 + dt.timedelta(days=183))
    assert [d["item"] for d in Retention(c.st, clock=clock).plan()["items"]] == [a]
    assert calls == []  # the plan is decided from the index
    assert [d["item"] for d in Retention(c.st, clock=clock).run(actor="t")["deleted"]] == [a]
    # the deletion is decided again from the signed manifest, read through the storage
    assert ("get", key, ("manifest.json",)) in calls and ("names", key, ("annotations",)) in calls
    assert ("put", key, ("tombstone.json", (c.root / key / "tombstone.json").read_bytes())) in calls
    assert ("keep_only", key, (["tombstone.json", "tombstone.sig"],)) in calls
    # written or removed: the expired item's key only (the important one is only read)
    assert {k for n, k, _ in calls if n in ("put", "keep_only", "delete", "remove")} == {key}
    assert sorted(p.name for p in (c.root / key).iterdir()) == ["tombstone.json", "tombstone.sig"]
    _verify_both(c.root)
    c.close()


def test_the_plan_is_decided_from_the_index_and_old_rows_are_filled_in(centre):
    """`retention plan` reads no manifest: what it needs of each item (the drift-corrected end of
    capture, the mark, the evidence mark, the proof object) is noted in the index when the item or
    an annotation arrives. Its answer is the one decided from the signed manifests, item by item,
    for every way a class is set (mark, evidence annotation arriving later, the policy's proof
    rule, a custodian's raise, drift, a hold). Rows stored before the facts were kept (migration
    0011) are read from their manifests once, by the first plan, and noted."""
    from agent.wire import protocol as P

    apol.new_key(centre.root)
    apol.sign_next(centre.root, UNIT, wp.content_from({"rules": {"retention": {
        "normal_days": 200, "important_days": 400, "evidence_proof_pattern": "妨碍执法"}}}))
    normal, important, raised, held = (centre.item(T0), centre.item(T0, mark=1), centre.item(T0),
                                       centre.item(T0 - dt.timedelta(days=1)))
    obstructed = centre.item(T0, proof="当事人妨碍执法过程")
    drift = centre.item(T0 + dt.timedelta(hours=2), clock_offset_ms=7_200_000,
                        clock_offset_measured_at="2026-03-01T12:00:00+08:00", clock_offset_source="measured")
    annotated = centre.item(T0)
    centre.store.annotate(annotated, {"evidence_mark": True}, reason="证据 / evidence")  # sent after it was stored
    d = centre.store.item_dir(annotated)
    anns = [(p.read_bytes(), p.with_suffix(".sig").read_bytes()) for p in sorted((d / "annotations").glob("*.json"))]
    fin = centre.st.on_finish(centre.st.registry.device("dock-0001"), annotated, P.finish_payload(
        json.loads((d / "manifest.json").read_bytes())["files"], anns))
    assert fin.status == "stored" and fin.annotations == 1, fin
    zhao = centre.custodian("zhao")
    clock = Clock(T0 + dt.timedelta(days=200))
    ret = Retention(centre.st, clock=clock)
    ret.raise_class(raised, "important", actor="zhao", private=zhao, reason="重点 / important")
    ret.place_hold(item=held, reason="复议中 / under review", actor="legal-1")

    now = clock()
    decided = [ret.status(r).as_dict(now) for r in centre.st.db.query("SELECT * FROM items")]  # from the manifests
    plan = ret.plan()
    assert plan["items"] == sorted([s for s in decided if s["keep_until"]],
                                   key=lambda s: (s["keep_until"], s["device"], s["item"]))
    assert plan["permanent"] == 2 and plan["unreadable"] == []  # the evidence annotation, the proof object
    by = {s["item"]: s for s in plan["items"]}
    assert set(by) == {normal, important, raised, held, drift}
    assert by[normal]["state"] == by[drift]["state"] == "due" and by[held]["state"] == "held"
    assert (by[raised]["class"], by[raised]["class_source"]) == ("important", "change 1")
    assert by[important]["keep_until"] == (T0 + dt.timedelta(days=400)).isoformat()

    # an index from before migration 0011: the first plan fills the facts in from the manifests
    with centre.st.db.atomic() as db:
        db.execute("DELETE FROM retention_facts")
    assert ret.plan() == plan
    assert centre.st.db.one("SELECT count(*) AS n FROM retention_facts")["n"] == 7
    assert ret.plan() == plan
    out = ret.run(actor="t")
    assert sorted(x["item"] for x in out["deleted"]) == sorted([normal, drift])
    assert centre.st.db.one("SELECT count(*) AS n FROM retention_facts")["n"] == 5  # gone with their items
