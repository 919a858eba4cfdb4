"""Files the archive writes: `archive export` only into a new or empty destination and never
through a symlink; the directories the archive derives from a message (``_tmp/DEVICE/ITEM``,
``UNIT/CASE``, ``_quarantine/DEVICE``) are walked level by level with O_NOFOLLOW, so a planted
symlink is refused, never followed, and the item waits (nothing lost) until it is removed."""

from __future__ import annotations

import json
import os

import pytest

from agent.archive.paths import UnsafePath
from agent.archive.storage import ArchiveStore
from agent.evidence import keys, manifest as mf
from agent.evidence.verify import verify_item
from agent.wire import protocol as P
from tests.support.archived import approved_request
from tests.support.uplink import UNIT, add_items, agent_config, enroll, open_store, run

DEV = "dock-0001"


@pytest.fixture()
def archived(tmp_path):
    cfg = agent_config(tmp_path, 1, evidence__block_size=64 * 1024)
    store = open_store(cfg)
    root = tmp_path / "archive"
    enroll(root, store)
    ar = ArchiveStore(root)
    yield store, ar, root
    ar.close()


def _send(ar, store, item, finish=True):
    d = store.item_dir(item)
    m = json.loads((d / mf.MANIFEST).read_bytes())
    ans = ar.handle(DEV, item, "manifest", (d / mf.MANIFEST).read_bytes(),
                    dict(P.manifest_props((d / mf.SIGNATURE).read_bytes())))
    assert ans.status == P.RECEIVING, ans
    for f in m["files"]:
        data = (d / mf.FILES_DIR / f["name"]).read_bytes()
        for off in range(0, len(data), 64 * 1024):
            piece = data[off:off + 64 * 1024]
            assert ar.handle(DEV, item, "chunk", piece, dict(P.chunk_props(f["name"], off, piece))).status == P.OK
    ar.commit_ranges()
    return ar.handle(DEV, item, "finish", P.finish_payload(m["files"], []), {}) if finish else m


def test_export_into_a_new_directory(archived, tmp_path):
    store, ar, root = archived
    (item,) = add_items(store, tmp_path, [150_000])
    assert _send(ar, store, item).status == P.STORED
    ar.close()
    out = tmp_path / "usb" / "case-1"
    (tmp_path / "usb").mkdir()
    p = run(["archive", "export", item, str(out), "--root", str(root), "--request", approved_request(root, item)],
            check=True)
    target = out / item
    assert p.stdout.strip() == str(target)
    ring = keys.KeyRing.from_paths(keys_dir=out)
    assert verify_item(target, ring, expected_device=DEV).item_id == item
    assert sorted(os.listdir(out)) == sorted([item, f"{DEV}.pub"])
    # an empty existing directory is fine too; a second export into the same one is not
    empty = tmp_path / "empty"
    empty.mkdir()
    run(["archive", "export", item, str(empty), "--root", str(root), "--request", approved_request(root, item)],
        check=True)
    again = run(["archive", "export", item, str(empty), "--root", str(root), "--request", approved_request(root, item)])
    assert again.returncode != 0 and "导出目标必须是新建或空的目录" in again.stderr and "not empty" in again.stderr


def test_export_refuses_planted_symlinks(archived, tmp_path):
    store, ar, root = archived
    (item,) = add_items(store, tmp_path, [100_000])
    assert _send(ar, store, item).status == P.STORED
    ar.close()
    outside = tmp_path / "outside"
    outside.mkdir()
    # 1. the destination holds a symlink named like the item (it would be written through)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / item).symlink_to(outside)
    rid = approved_request(root, item)  # a failed export leaves the request usable
    p = run(["archive", "export", item, str(dest), "--root", str(root), "--request", rid])
    assert p.returncode != 0 and "the export destination must be a new or empty directory" in p.stderr, p.stderr
    # 2. the destination itself is a symlink to an empty directory
    link = tmp_path / "link"
    link.symlink_to(outside)
    p = run(["archive", "export", item, str(link), "--root", str(root), "--request", rid])
    assert p.returncode != 0 and "not a symlink" in p.stderr, p.stderr
    # 3. a symlink inside the stored item is not copied through
    stored = root / json.loads(run(["archive", "list", "--json", "--root", str(root)], check=True).stdout)[0]["path"]
    (stored / "files" / "extra").symlink_to("/etc/passwd")
    p = run(["archive", "export", item, str(tmp_path / "new"), "--root", str(root), "--request", rid])
    assert p.returncode != 0
    assert os.listdir(outside) == []
    assert not (tmp_path / "new" / item).exists()


def test_planted_symlink_in_a_case_folder_is_refused_and_the_item_waits(archived, tmp_path):
    store, ar, root = archived
    (item,) = add_items(store, tmp_path, [100_000])
    case = json.loads((store.item_dir(item) / mf.MANIFEST).read_bytes())["metadata"]["case_number"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / UNIT).mkdir(parents=True)
    (root / UNIT / case).symlink_to(outside)  # points outside the root
    with pytest.raises(UnsafePath, match="refusing to write through"):
        _send(ar, store, item)
    assert os.listdir(outside) == []
    assert (root / "_tmp" / DEV / item / mf.MANIFEST).is_file()  # kept: nothing lost
    (root / UNIT / case).unlink()
    inner = root / "elsewhere"
    inner.mkdir()
    (root / UNIT / case).symlink_to(inner)  # even pointing inside the root: refused
    m = json.loads((store.item_dir(item) / mf.MANIFEST).read_bytes())
    with pytest.raises(UnsafePath):
        ar.handle(DEV, item, "finish", P.finish_payload(m["files"], []), {})
    (root / UNIT / case).unlink()
    assert ar.handle(DEV, item, "finish", P.finish_payload(m["files"], []), {}).status == P.STORED
    assert not (root / UNIT / case).is_symlink() and (root / UNIT / case / item / mf.MANIFEST).is_file()
    assert os.listdir(inner) == []


def test_planted_symlink_in_tmp_is_refused(archived, tmp_path):
    store, ar, root = archived
    (item,) = add_items(store, tmp_path, [50_000])
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "_tmp" / DEV).symlink_to(outside)
    with pytest.raises(UnsafePath):
        _send(ar, store, item, finish=False)
    assert os.listdir(outside) == []
    inner = root / "elsewhere"
    inner.mkdir()
    (root / "_tmp" / DEV).unlink()
    (root / "_tmp" / DEV).symlink_to(inner)  # inside the root, still a symlink: refused
    with pytest.raises(UnsafePath, match="refusing to write through"):
        _send(ar, store, item, finish=False)
    assert os.listdir(inner) == []
    (root / "_tmp" / DEV).unlink()
    assert _send(ar, store, item).status == P.STORED
