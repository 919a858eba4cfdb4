"""Approved retrieval and the court bundle (issue 18; docs/custody.md "Approved retrieval and
court export"): request → approve → export, each a CLI command; an unapproved, self-approved or
reused export is refused with a bilingual error; the audit chain records requester, approver,
reason and what left; the bundle is checked by its own verify.py in a fresh venv (standard
library + cryptography only), which catches one flipped byte."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent.archive.approval import Approvals
from agent.archive.storage import ArchiveStore
from agent.evidence import keys
from tests.archive.test_archive_db_contract import pg_url  # noqa: F401 (fixture: a fresh PostgreSQL database)
from tests.support.archived import store_in_archive
from tests.support.uplink import UNIT, add_items, agent_config, open_store, run

CASE = "杭西执罚〔2026〕第0125号"
OTHER = "杭西执罚〔2026〕第0999号"


@pytest.fixture
def archive(tmp_path):
    """An archive holding three items of CASE (one by annotation) and one of another case, and
    three users: wang (requester), li (requester and approver), zhao (requester)."""
    cfg = agent_config(tmp_path, 1883)
    store = open_store(cfg)
    ids = add_items(store, tmp_path, [3000, 600_000], case=CASE)
    pending = add_items(store, tmp_path, [1000], case=None, seed=1)[0]
    store.annotate(pending, {"case_number": CASE}, reason="补录案件编号")
    other = add_items(store, tmp_path, [500], case=OTHER, seed=2)[0]
    root = tmp_path / "archive"
    st = ArchiveStore(root, create=True)
    st.registry.enroll("dock-0001", store.pub_path.read_bytes(), UNIT)
    for name, roles in (("wang", ["requester"]), ("li", ["requester", "approver"])):
        keys.generate(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
        Approvals(st).add_user(name, (tmp_path / f"{name}.pub").read_bytes(), roles)
    st.close()
    for i in [*ids, pending, other]:
        store_in_archive(root, store, i)
    store.close()
    keys.generate(tmp_path / "zhao.key", tmp_path / "zhao.pub")  # enrolled as the technician would
    out = run(["archive", "user", "add", "zhao", str(tmp_path / "zhao.pub"), "--role", "requester", "--root", str(root)],
              check=True).stdout
    assert "调阅用户 / user zhao: key" in out and "roles requester" in out
    return tmp_path, root, [*ids, pending], other


def cli(tmp, root, *args):
    return run([*args, "--root", str(root)])


def request(tmp, root, who, *extra):
    p = cli(tmp, root, "archive", "request", "--reason", "法院调取证据 / court order", "--as", who,
            "--key", str(tmp / f"{who}.key"), "--json", *extra)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_request_approve_export_and_every_refusal(archive):
    tmp, root, ids, other = archive
    bundle = tmp / "usb" / "case-0125"
    # no request at all
    p = cli(tmp, root, "archive", "export", "--case", CASE, "--bundle", str(bundle))
    assert p.returncode == 3 and "导出须经申请和审批 / an export needs a request" in p.stderr, p.stderr
    assert "edge-agent archive request --case" in p.stderr
    # a request not yet approved
    req = request(tmp, root, "wang", "--case", CASE)
    assert sorted(req["items"]) == sorted(ids) and other not in req["items"] and req["approval_needed"] is True
    rid = str(req["request"])
    p = cli(tmp, root, "archive", "export", "--case", CASE, "--bundle", str(bundle), "--request", rid)
    assert p.returncode == 3 and "未经审批 / request" in p.stderr and "is not approved" in p.stderr, p.stderr
    # a user without the approver role
    p = cli(tmp, root, "archive", "approve", rid, "--as", "zhao", "--key", str(tmp / "zhao.key"))
    assert p.returncode == 3 and "does not hold the approver role" in p.stderr
    # the approver's name with another's key
    p = cli(tmp, root, "archive", "approve", rid, "--as", "li", "--key", str(tmp / "zhao.key"))
    assert p.returncode == 3 and "is not user li's enrolled key" in p.stderr
    # self-approval: li asks and approves her own request
    own = str(request(tmp, root, "li", "--case", CASE)["request"])
    p = cli(tmp, root, "archive", "approve", own, "--as", "li", "--key", str(tmp / "li.key"))
    assert p.returncode == 3 and "不得自我审批 / request" in p.stderr and "cannot be approved by the same person" in p.stderr
    p = cli(tmp, root, "archive", "export", "--case", CASE, "--bundle", str(bundle), "--request", own)
    assert p.returncode == 3 and "is not approved" in p.stderr
    # a request for one case does not export another
    p = cli(tmp, root, "archive", "export", "--case", OTHER, "--bundle", str(bundle), "--request", rid)
    assert p.returncode == 3 and "not '杭西执罚〔2026〕第0999号'" in p.stderr
    assert not bundle.exists(), "nothing left before the approval"
    # li approves wang's request: the export runs, once
    ok = cli(tmp, root, "archive", "approve", rid, "--as", "li", "--key", str(tmp / "li.key"))
    assert ok.returncode == 0 and f"approved: request {rid} by wang, approved by li" in ok.stdout
    p = cli(tmp, root, "archive", "export", "--case", CASE, "--bundle", str(bundle), "--request", rid, "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["requester"], out["approver"], out["request"]) == ("wang", "li", int(rid))
    assert sorted(i["item"] for i in out["items"]) == sorted(ids) and Path(out["zip"]).is_file()
    again = cli(tmp, root, "archive", "export", "--case", CASE, "--bundle", str(tmp / "again"), "--request", rid)
    assert again.returncode == 3 and "申请已使用 / request" in again.stderr
    # the audit chain: who asked, why, who approved, exactly what left; and it still verifies
    audit = json.loads(cli(tmp, root, "archive", "audit", "--json").stdout)
    by = {e["action"]: e for e in audit}
    assert by["retrieval-requested"]["actor"] == "li"   # the newest request; wang's is the one before
    done = json.loads(by["retrieval-exported"]["detail"])
    assert by["retrieval-exported"]["actor"] == "wang (approved by li)"
    assert (done["requester"], done["approver"], done["reason"]) == ("wang", "li", "法院调取证据 / court order")
    index = json.loads((bundle / "bundle.json").read_bytes())
    import hashlib

    assert done["bundle_sha256"] == hashlib.sha256((bundle / "bundle.json").read_bytes()).hexdigest()
    assert sorted(x["item"] for x in done["items"]) == sorted(index["items"]) == sorted(ids)
    assert cli(tmp, root, "archive", "audit", "--verify").returncode == 0
    rows = json.loads(cli(tmp, root, "archive", "requests", "--json").stdout)
    assert [(r["id"], r["state"], r["approver"]) for r in rows] == [(int(rid), "used", "li"), (int(own), "pending", None)]


def test_viewing_needs_a_reason_and_one_item_export_an_approved_request(archive):
    tmp, root, ids, _ = archive
    p = cli(tmp, root, "archive", "show", ids[0])
    assert p.returncode == 1 and "调阅须说明理由 / viewing an item needs a reason" in p.stderr
    assert cli(tmp, root, "archive", "show", ids[0], "--reason", "复核").returncode == 0
    view = [e for e in json.loads(cli(tmp, root, "archive", "audit", "--json").stdout) if e["action"] == "view"]
    assert len(view) == 1 and json.loads(view[0]["detail"])["reason"] == "复核"
    p = cli(tmp, root, "archive", "export", ids[0], str(tmp / "out"))
    assert p.returncode == 3 and "--item " + ids[0] in p.stderr
    rid = str(request(tmp, root, "wang", "--item", ids[0])["request"])
    assert cli(tmp, root, "archive", "approve", rid, "--as", "li", "--key", str(tmp / "li.key")).returncode == 0
    p = cli(tmp, root, "archive", "export", ids[0], str(tmp / "out"), "--request", rid)
    assert p.returncode == 0 and Path(p.stdout.strip()) == tmp / "out" / ids[0]
    # a unit whose signed policy says export_approval = false: the request with its reason suffices
    from agent.archive import policy as ap
    from agent.wire import policy as wp

    ap.new_key(root)
    ap.sign_next(root, UNIT, wp.Content.model_validate({"rules": {"export_approval": False}}))
    req = request(tmp, root, "wang", "--item", ids[1])
    assert req["approval_needed"] is False
    p = cli(tmp, root, "archive", "export", ids[1], str(tmp / "out2"), "--request", str(req["request"]), "--json")
    assert p.returncode == 0, p.stderr
    assert (json.loads(p.stdout)["requester"], json.loads(p.stdout)["approver"]) == ("wang", None)


@pytest.fixture
def bundle(archive):
    tmp, root, ids, _ = archive
    rid = str(request(tmp, root, "wang", "--case", CASE)["request"])
    assert cli(tmp, root, "archive", "approve", rid, "--as", "li", "--key", str(tmp / "li.key")).returncode == 0
    dest = tmp / "usb" / "case-0125"
    p = cli(tmp, root, "archive", "export", "--case", CASE, "--bundle", str(dest), "--request", rid)
    assert p.returncode == 0, p.stderr
    return tmp, dest, ids


def test_the_bundle_checked_by_its_verifier_in_a_fresh_venv_catches_one_flipped_byte(bundle, tmp_path_factory):
    """What a clerk gets (report, items, keys, enrolment, zip), then the clerk's check: the zip
    unpacked elsewhere, verify.py run by a fresh venv's Python with cryptography only."""
    tmp, dest, ids = bundle
    for name in ("report.html", "verify.py", "README.txt", "enrolment.json", "custody.json", "bundle.json", "bundle.sig",
                 "keys/archive.pub"):
        assert (dest / name).is_file(), name
    for i in ids:
        assert (dest / "items" / i / "manifest.json").is_file() and (dest / "items" / i / "manifest.sig").is_file()
    page = (dest / "report.html").read_text(encoding="utf-8")
    assert CASE in page and all(i in page for i in ids) and "保管链 / Chain of custody" in page
    assert "法院调取证据 / court order" in page and "wang" in page and "li" in page
    assert "封存签名 / sealed and signed" in page and "annotation 1" in page and "archive: archive" in page
    from agent.archive.bundle import _font

    if _font() is not None:  # a font with Chinese glyphs on this host: the report as PDF too
        assert (dest / "report.pdf").read_bytes()[:5] == b"%PDF-"
    enrol = json.loads((dest / "enrolment.json").read_text(encoding="utf-8"))
    assert list(enrol["devices"]) == ["dock-0001"] and enrol["devices"]["dock-0001"]["unit"] == UNIT
    with zipfile.ZipFile(dest.with_name("case-0125.zip")) as z:
        names = set(z.namelist())
    assert {f"case-0125/{f['path']}" for f in json.loads((dest / "bundle.json").read_bytes())["files"]} <= names
    # verify.py imports the standard library and cryptography only
    tree = ast.parse((dest / "verify.py").read_text(encoding="utf-8"))
    mods = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
            for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert mods - set(sys.stdlib_module_names) == {"cryptography"}
    venv = tmp_path_factory.mktemp("clerk") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "cryptography"], capture_output=True, text=True,
                         timeout=300)
    assert pip.returncode == 0, pip.stderr
    py = str(venv / "bin" / "python")
    # the clerk unzips the zip somewhere else and runs its verify.py (isolated: no project on the path)
    clerk = tmp / "clerk"
    with zipfile.ZipFile(dest.with_name("case-0125.zip")) as z:
        z.extractall(clerk)
    good = subprocess.run([py, "-I", "verify.py"], cwd=clerk / "case-0125", capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.strip().splitlines()[-1].startswith(f"OK: case {CASE}: 3 item(s)")
    assert sum(line.startswith("ok ") for line in good.stdout.splitlines()) == 3
    # one byte flipped in the largest evidence file
    victim = max((clerk / "case-0125" / "items").rglob("files/*"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    bad = subprocess.run([py, "-I", str(clerk / "case-0125" / "verify.py"), str(clerk / "case-0125")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout
    rel = victim.relative_to(clerk / "case-0125").as_posix()
    assert f"FAIL {rel}: changed since the bundle was made" in bad.stdout
    assert "hash mismatch (the bytes were changed)" in bad.stdout
    assert "FAIL: 2 finding(s)" in bad.stdout
    # and a removed annotation, or a manifest edited and the index re-made by hand, is caught too
    shutil.copytree(dest, tmp / "edited")
    ann = next((tmp / "edited" / "items").rglob("annotations/0001.json"))
    ann.unlink()
    ann.with_suffix(".sig").unlink()
    gone = subprocess.run([py, "-I", str(tmp / "edited" / "verify.py"), str(tmp / "edited")], capture_output=True,
                          text=True, timeout=120)
    assert gone.returncode == 1 and "listed in bundle.json but missing" in gone.stdout


def test_the_same_workflow_on_postgresql(pg_url, tmp_path):
    """The archive's index on PostgreSQL: request, refusals, approval, the bundle, its verifier."""
    from agent.archive import bundle_verify
    from agent.archive.approval import ApprovalError, approved_export

    store = open_store(agent_config(tmp_path, 1883))
    ids = add_items(store, tmp_path, [2000, 300_000], case=CASE)
    root = tmp_path / "archive"
    st = ArchiveStore(root, db=pg_url, create=True)
    st.registry.enroll("dock-0001", store.pub_path.read_bytes(), UNIT)
    st.close()
    for i in ids:
        store_in_archive(root, store, i, db=pg_url)
    store.close()
    st = ArchiveStore(root, db=pg_url)
    try:
        assert st.db.dialect == "postgresql"
        ap = Approvals(st)
        wang, li = (keys.generate(tmp_path / f"{n}.key", tmp_path / f"{n}.pub") for n in ("wang", "li"))
        ap.add_user("wang", keys.public_pem(wang.public_key()), ["requester", "approver"])
        ap.add_user("li", keys.public_pem(li.public_key()), ["approver"])
        rid = ap.request(purpose="export", case=CASE, item=None, reason="court", actor="wang", private=wang)["request"]
        with pytest.raises(ApprovalError, match="is not approved"):
            approved_export(st, rid, case=CASE, bundle=tmp_path / "b")
        with pytest.raises(ApprovalError, match="不得自我审批"):
            ap.approve(rid, actor="wang", private=wang)
        assert ap.approve(rid, actor="li", private=li)["state"] == "approved"
        out = approved_export(st, rid, case=CASE, bundle=tmp_path / "b")
        assert sorted(i["item"] for i in out["items"]) == sorted(ids) and out["approver"] == "li"
        with pytest.raises(ApprovalError, match="was used"):
            approved_export(st, rid, case=CASE, bundle=tmp_path / "c")
        assert [r["state"] for r in ap.requests()] == ["used"]
    finally:
        st.close()
    assert bundle_verify.main(["verify.py", str(tmp_path / "b")]) == 0


def test_bundle_refuses_planted_symlinks(archive):
    """A symlink planted where the bundle's zip goes (dangling, so `exists()` is False) is refused
    with the reason and nothing is written through it; one planted at the zip's temporary name
    is stepped around: the zip is made, the link's target is never created or written."""
    tmp, root, ids, _ = archive
    usb = tmp / "usb"
    usb.mkdir()
    dest = usb / "case-0125"
    outside = tmp / "outside"
    outside.mkdir()
    (usb / "case-0125.zip").symlink_to(outside / "stolen.zip")
    rid = str(request(tmp, root, "wang", "--case", CASE)["request"])
    assert cli(tmp, root, "archive", "approve", rid, "--as", "li", "--key", str(tmp / "li.key")).returncode == 0
    p = cli(tmp, root, "archive", "export", "--case", CASE, "--bundle", str(dest), "--request", rid)
    assert p.returncode != 0 and "路径不安全，拒绝写入 / refusing to write through" in p.stderr, p.stderr
    assert "case-0125.zip: it is a symlink" in p.stderr
    assert list(outside.iterdir()) == [] and not dest.exists()
    (usb / "case-0125.zip").unlink()
    # the zip's temporary name planted (this process makes the bundle, so its pid is known)
    import os

    from agent.archive.approval import approved_export

    planted = usb / f".case-0125.zip.tmp-{os.getpid()}"
    planted.symlink_to(outside / "stolen.zip")
    st = ArchiveStore(root)
    try:
        out = approved_export(st, int(rid), case=CASE, bundle=dest)
    finally:
        st.close()
    assert list(outside.iterdir()) == [] and planted.is_symlink()
    zpath = Path(out["zip"])
    assert not zpath.is_symlink() and zipfile.ZipFile(zpath).testzip() is None
    with zipfile.ZipFile(zpath) as z:
        names = set(z.namelist())
    assert {f"case-0125/{f['path']}" for f in json.loads((dest / "bundle.json").read_bytes())["files"]} <= names
    assert sorted(os.listdir(usb)) == sorted(["case-0125", "case-0125.zip", planted.name])  # no temporary left
