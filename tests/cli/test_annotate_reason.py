"""Annotations (issue 16 item 12): changing a mandatory field that already has a value needs a
reason, the reason is in the signed annotation, and the offline verifier refuses an annotation
that changes one without a reason; capture time and collector are never changed by annotation."""

from __future__ import annotations

import json

import pytest

from agent.common.errors import MetadataError, VerifyError
from agent.common.timeutil import now_iso
from agent.evidence import hashing, manifest as mf
from agent.evidence.verify import verify_item
from agent.store.ingest import ingest
from tests.support.spine import META, make_store, run_cli


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path)
    yield s
    s.close()


def _seal(store, tmp_path, **meta):
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"x" * 5000)
    m = ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00", **meta))
    return m["item_id"], store.items_dir / m["item_id"]


def test_changing_a_mandatory_field_needs_a_reason_which_is_signed(store, tmp_path):
    item, d = _seal(store, tmp_path)
    for field, value in (("case_number", "杭司罚〔2026〕第0999号"), ("place", "西湖区"), ("proof", "另一事项")):
        with pytest.raises(MetadataError, match="needs a reason") as exc:
            store.annotate(item, {field: value}, reason="  ")
        assert mf.LABELS[field] in str(exc.value) and "--reason" in str(exc.value)
    assert not (d / mf.ANNOTATIONS_DIR).exists() or not list((d / mf.ANNOTATIONS_DIR).iterdir())
    # the same value again, or a note, is not a change of a mandatory field
    store.annotate(item, {"case_number": META["case_number"], "note": "复核"})
    rec = store.annotate(item, {"case_number": "杭司罚〔2026〕第0999号"}, reason="案件编号录错")
    assert rec["reason"] == "案件编号录错"
    signed = json.loads((d / mf.ANNOTATIONS_DIR / "0002.json").read_bytes())
    assert signed["reason"] == "案件编号录错" and signed["set"] == {"case_number": "杭司罚〔2026〕第0999号"}
    assert verify_item(d, store.keyring()).annotations == 2
    audit = store.audit.entries(action="annotate")[-1]
    assert "案件编号录错" in json.dumps(audit, ensure_ascii=False)


def test_completing_a_pending_field_needs_no_reason(store, tmp_path):
    item, d = _seal(store, tmp_path, case_number=None, proof=None, pending=["case_number", "proof"])
    store.annotate(item, {"case_number": "杭司罚〔2026〕第0001号", "proof": "执法过程"})
    # once completed, changing it again is a change
    with pytest.raises(MetadataError, match="needs a reason"):
        store.annotate(item, {"proof": "别的"})
    assert verify_item(d, store.keyring()).annotations == 1


@pytest.mark.parametrize("field,value", [("capture_start", "2026-11-27T08:00:00+08:00"),
                                         ("capture_end", "2026-11-27T10:00:00+08:00"),
                                         ("collector", {"name": "李四", "id": "33010002"})])
def test_capture_time_and_collector_are_never_annotated(store, tmp_path, field, value):
    item, _ = _seal(store, tmp_path)
    with pytest.raises(MetadataError, match="cannot be\\s+changed by an annotation"):
        store.annotate(item, {field: value}, reason="有理由也不行")


def test_verifier_refuses_a_signed_change_without_reason(store, tmp_path):
    item, d = _seal(store, tmp_path)
    m = json.loads((d / mf.MANIFEST).read_bytes())
    # a signed annotation written by other software that skips the rule
    rec = {"format": mf.ANNOTATION_FORMAT, "item_id": item, "manifest_hash": mf.manifest_hash(m["hash_alg"],
           (d / mf.MANIFEST).read_bytes()), "hash_alg": m["hash_alg"], "seq": 1, "prev": None, "time": now_iso(),
           "actor": "x", "set": {"place": "别处"}, "reason": ""}
    data = hashing.canonical(rec)
    (d / mf.ANNOTATIONS_DIR).mkdir()
    (d / mf.ANNOTATIONS_DIR / "0001.json").write_bytes(data)
    (d / mf.ANNOTATIONS_DIR / "0001.sig").write_bytes(mf.signature_record(store.private_key, data))
    with pytest.raises(VerifyError, match="changes place without a reason"):
        verify_item(d, store.keyring())
    rec["reason"] = "地点录错"
    data = hashing.canonical(rec)
    (d / mf.ANNOTATIONS_DIR / "0001.json").write_bytes(data)
    (d / mf.ANNOTATIONS_DIR / "0001.sig").write_bytes(mf.signature_record(store.private_key, data))
    assert verify_item(d, store.keyring()).annotations == 1


def test_cli_annotate_refuses_without_reason_and_changes_nothing(store, tmp_path):
    item, d = _seal(store, tmp_path)
    cfg = tmp_path / "agent.toml"
    p = run_cli(cfg, "items", "annotate", item, "--case", "杭司罚〔2026〕第0999号")
    assert p.returncode == 1 and "needs a reason" in p.stderr and "Traceback" not in p.stderr
    assert not (d / mf.ANNOTATIONS_DIR).exists() or not list((d / mf.ANNOTATIONS_DIR).iterdir())
    p = run_cli(cfg, "items", "annotate", item, "--case", "杭司罚〔2026〕第0999号", "--reason", "录错")
    assert p.returncode == 0, p.stderr
    shown = json.loads(run_cli(cfg, "items", "show", item, "--json").stdout)
    assert shown["annotations"][0]["reason"] == "录错"
