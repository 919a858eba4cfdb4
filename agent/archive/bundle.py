"""The court bundle (`edge-agent archive export --case NO --bundle DEST`; docs/custody.md).

A folder (and DEST.zip beside it) that a court clerk checks without installing edge-agent:

```
DEST/
  README.txt            how to check it (Chinese / English)
  report.html           the case, its items, times, hashes, the verification result and the chain
                        of custody from capture to this export; report.pdf when a CJK font is found
  verify.py             the standalone verifier (standard library + cryptography)
  items/ITEM_ID/        each item as stored: manifest.json, manifest.sig, files/, annotations/
  keys/archive.pub      the archive's key that signs bundle.json
  keys/devices/DEV-KEYID.pub, keys/annotators/UNIT/NAME.pub
  enrolment.json        which device key and which annotator belongs to whom (and since when)
  custody.json          the same chain of custody as the report, as data
  bundle.json           every file above with its size and SHA-256, the case, the request; canonical
  bundle.sig            the archive's Ed25519 signature over bundle.json
```

Every item is verified before it is copied and the copy is checked by ``verify.py``'s own code
before the command returns; the export is in the archive's audit chain with what left.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
import shutil
import stat
import time
import zipfile
from pathlib import Path

from agent.common.canon import canonical
from agent.common.errors import EdgeError
from agent.common.fs import atomic_write_at, create_temp_at
from agent.common.timeutil import now_iso
from ..evidence import keys, manifest as mf
from ..evidence.verify import verify_item
from . import bundle_verify
from .paths import export_tree

FORMAT = bundle_verify.BUNDLE_FORMAT
FIELDS = ("case_number", "capture_start", "capture_end", "place", "collector", "proof")


def build(store, req: dict, case: str, dest: Path) -> dict:
    """Write the bundle for the items of CASE to DEST (new or empty) and DEST.zip; returns the summary.

    Nothing is written through a symlink: DEST is opened with O_NOFOLLOW, every file in it is
    created new (O_CREAT|O_EXCL|O_NOFOLLOW through directory descriptors, then linked into place,
    never replacing what is there), and the zip is built in a temporary file created the same way
    beside DEST and linked to DEST.zip only if that name is still free."""
    dest = Path(dest)
    zpath = dest.with_name(dest.name + ".zip")
    _refuse_taken(zpath)
    rows = store.db.query("SELECT * FROM items WHERE case_number = ? ORDER BY device, seq", [case])
    if not rows:
        raise EdgeError(f"case {case!r}: no item of this case in the archive")
    export_tree_empty(dest)
    try:
        dfd = os.open(str(dest), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise EdgeError(f"{_UNSAFE} {dest} ({exc.strerror})") from None
    try:
        return _build(store, req, case, dest, dfd, zpath, rows)
    finally:
        os.close(dfd)


_UNSAFE = "路径不安全，拒绝写入 / refusing to write through"


def _refuse_taken(path: Path) -> None:
    if path.is_symlink():
        raise EdgeError(f"{_UNSAFE} {path}: it is a symlink (planted?); the bundle's zip is written beside the "
                        "folder as a new file")
    if path.exists():
        raise EdgeError(f"{path}: 已存在 / exists already; the bundle's zip is written beside the folder as a new file")


def _subdir(dfd: int, parts: list[str], dest: Path) -> int:
    """A descriptor of DEST/parts..., each level created as needed and opened with O_NOFOLLOW."""
    fd = os.dup(dfd)
    try:
        for i, part in enumerate(parts):
            try:
                os.mkdir(part, 0o750, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
                raise EdgeError(f"{_UNSAFE} {dest.joinpath(*parts[:i + 1])}: it is a symlink or not a directory "
                                f"({exc.strerror})") from None
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _put(dfd: int, dest: Path, rel: str, data: bytes) -> None:
    """DEST/rel created new with ``data``; anything already there (a planted symlink) is refused."""
    *parts, name = rel.split("/")
    fd = _subdir(dfd, parts, dest)
    try:
        atomic_write_at(fd, name, data, 0o640, replace=False)
    except FileExistsError:
        raise EdgeError(f"{_UNSAFE} {dest / rel}: something is already there (a planted symlink?)") from None
    finally:
        os.close(fd)


def _tree(fd: int, prefix: str, dest: Path) -> list[tuple[str, int, str]]:
    """Every regular file under the folder ``fd`` (relative path, size, SHA-256), sorted; a
    symlink or any other kind of entry is refused, never followed."""
    out = []
    for entry in sorted(os.listdir(fd)):
        rel = f"{prefix}{entry}"
        st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                out += _tree(sub, rel + "/", dest)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            h, size = hashlib.sha256(), 0
            with _open_at(fd, entry) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                    size += len(block)
            out.append((rel, size, h.hexdigest()))
        else:
            raise EdgeError(f"{_UNSAFE} {dest / rel}: not a regular file or folder (a symlink?)")
    return out


def _open_at(dfd: int, rel: str):
    *parts, name = rel.split("/")
    fd = os.dup(dfd)
    try:
        for part in parts:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.fdopen(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd), "rb")
    finally:
        os.close(fd)


def _zip(dfd: int, dest: Path, zpath: Path, files: list[tuple[str, int, str]]) -> str:
    """DEST.zip (DEST/... inside, as ``shutil.make_archive`` lays it out), built in a new temporary
    file beside DEST and linked to DEST.zip only if the name is free; returns its SHA-256."""
    pfd = os.open(str(zpath.parent), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp, fd = create_temp_at(pfd, zpath.name, 0o640)
        try:
            with os.fdopen(fd, "w+b") as f:
                with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                    dirs = {dest.name}
                    for rel, _, _ in files:
                        parts = rel.split("/")[:-1]
                        dirs |= {"/".join([dest.name, *parts[:k]]) for k in range(1, len(parts) + 1)}
                    for d in sorted(dirs):
                        z.mkdir(d)
                    for rel, _, _ in files:
                        info = zipfile.ZipInfo(f"{dest.name}/{rel}", date_time=time.localtime()[:6])
                        info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o640 << 16
                        with _open_at(dfd, rel) as src, z.open(info, "w", force_zip64=True) as out:
                            shutil.copyfileobj(src, out, 1 << 20)
                f.flush()
                os.fsync(f.fileno())
                f.seek(0)
                h = hashlib.sha256()
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            try:
                os.link(tmp, zpath.name, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileExistsError:
                _refuse_taken(zpath)
                raise
        finally:
            os.unlink(tmp, dir_fd=pfd)
        os.fsync(pfd)
    finally:
        os.close(pfd)
    return h.hexdigest()


def _build(store, req: dict, case: str, dest: Path, dfd: int, zpath: Path, rows) -> dict:
    os.mkdir("items", 0o750, dir_fd=dfd)
    enrol: dict = {"devices": {}, "annotators": {}}
    items, custody = [], []
    for row in rows:
        ring = store.registry.ring(row["device"])
        with store.storage.local(row["path"]) as src:
            verify_item(src, ring, expected_device=row["device"])
            stage = f".stage-{row['item']}"
            export_tree(src, dest / stage, row["item"], {})
            sfd, ifd = _subdir(dfd, [stage], dest), _subdir(dfd, ["items"], dest)
            try:
                os.rename(row["item"], row["item"], src_dir_fd=sfd, dst_dir_fd=ifd)
            finally:
                os.close(sfd)
                os.close(ifd)
            os.rmdir(stage, dir_fd=dfd)
        d = dest / "items" / row["item"]
        m = json.loads((d / mf.MANIFEST).read_bytes())
        anns = mf.read_annotations(d)
        meta = mf.effective_metadata(m, anns)
        _keys(store, row["device"], m["device"]["unit_code"], dfd, dest, enrol)
        items.append({"item": row["item"], "device": row["device"], "seq": row["seq"], "unit": row["unit"],
                      "manifest_hash": row["manifest_hash"], "item_hash": row["item_hash"], "hash_alg": m["hash_alg"],
                      "files": [{k: f[k] for k in ("name", "size", "hash")} for f in m["files"]],
                      "metadata": {k: meta.get(k) for k in FIELDS},
                      "verified": "签名、文件、分段、批注均无误 / ok: signature, files, segments, annotations"})
        custody.append(_custody(store, row, m, anns))
    _put(dfd, dest, "keys/archive.pub", keys.public_pem(store.signing_key.public_key()))
    akid = keys.key_id(store.signing_key.public_key())
    created = now_iso()
    request = {"id": req["id"], "purpose": req["purpose"], "reason": req["reason"], "requester": req["requester"],
               "requested_at": req["requested_at"], "approver": req["approver"], "approved_at": req["approved_at"],
               "record": req["record"], "sig": req["sig"], "approval": req["approval"], "approval_sig": req["approval_sig"]}
    _put(dfd, dest, "enrolment.json", json.dumps(enrol, ensure_ascii=False, indent=2, sort_keys=True).encode())
    _put(dfd, dest, "custody.json", json.dumps({"case_number": case, "request": request, "items": custody},
                                               ensure_ascii=False, indent=2, sort_keys=True).encode())
    _put(dfd, dest, "verify.py", Path(bundle_verify.__file__).read_bytes())
    _put(dfd, dest, "README.txt", _readme(case, akid).encode())
    page = _report_html(case, request, items, custody, akid, created)
    _put(dfd, dest, "report.html", page.encode())
    pdf = _report_pdf(case, request, items, custody, akid, created)
    if pdf is not None:
        _put(dfd, dest, "report.pdf", pdf)
    files = [{"path": rel, "size": size, "sha256": sha} for rel, size, sha in _tree(dfd, "", dest)]
    index = {"format": FORMAT, "case_number": case, "created": created, "archive_key_id": akid,
             "items": [i["item"] for i in items], "request": {k: request[k] for k in ("id", "purpose", "reason",
                                                                                     "requester", "approver")},
             "files": files}
    data = canonical(index)
    _put(dfd, dest, "bundle.json", data)
    _put(dfd, dest, "bundle.sig", json.dumps({"alg": "ed25519", "key_id": akid,
                                              "sig": keys.sign(store.signing_key, data)}).encode())
    # the clerk's check, run here before anything is said to have left
    found: list[str] = []
    bundle_verify.verify_index(dest, found)
    if found:
        raise EdgeError(f"the bundle at {dest} does not verify: {'; '.join(found)}")
    zsha = _zip(dfd, dest, zpath, _tree(dfd, "", dest))
    return {"case_number": case, "bundle": str(dest), "zip": str(zpath), "items": items, "files": len(files),
            "bundle_sha256": hashlib.sha256(data).hexdigest(), "zip_sha256": zsha,
            "archive_key_id": akid, "report": str(dest / "report.html"), "pdf": str(dest / "report.pdf") if pdf else None}


def export_tree_empty(dest: Path) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.mkdir(mode=0o750)
    except FileExistsError:
        if dest.is_symlink() or not dest.is_dir() or any(dest.iterdir()):
            raise EdgeError(f"导出目标必须是新建或空的目录 / the bundle destination must be a new or empty directory: "
                            f"{dest}") from None


def _keys(store, device: str, unit: str, dfd: int, dest: Path, enrol: dict) -> None:
    if device in enrol["devices"]:
        return
    row = store.registry.device(device)
    pems = [row["pubkey"].encode()] + [p.read_bytes() for p in sorted(store.registry.keys_dir.glob(f"{device}.*.pub.old"))]
    entry = {"unit": row["unit"], "enrolled_at": row["enrolled_at"], "key_id": row["key_id"], "keys": []}
    for pem in pems:
        kid = keys.key_id(keys.parse_public(pem))
        rel = f"keys/devices/{device}-{kid}.pub"
        _put(dfd, dest, rel, pem)
        entry["keys"].append({"key_id": kid, "file": rel})
    enrol["devices"][device] = entry
    adir = store.registry.keys_dir / "annotators" / unit
    if unit not in enrol["annotators"] and adir.is_dir():
        enrol["annotators"][unit] = {}
        for p in sorted(adir.glob("*.pub")):
            rel = f"keys/annotators/{unit}/{p.name}"
            _put(dfd, dest, rel, p.read_bytes())
            enrol["annotators"][unit][p.stem] = [keys.key_id(keys.load_public(p)), rel]


def _custody(store, row: dict, m: dict, anns) -> dict:
    """Capture, sealing, arrival, annotations and every retrieval the audit chain recorded."""
    meta = m["metadata"]
    events = [{"time": meta.get("capture_start"), "event": "开始采集 / capture start",
               "by": f"{m['device']['id']} {json.dumps(m.get('source', {}), ensure_ascii=False)[:200]}"},
              {"time": meta.get("capture_end"), "event": "结束采集 / capture end", "by": m["device"]["id"]},
              {"time": m.get("sealed_at"), "event": "封存签名 / sealed and signed",
               "by": f"{m['device']['id']} key {m['device'].get('key_id')}"}]
    for a in anns:
        r = a.record
        events.append({"time": r.get("time"), "event": f"annotation {r.get('seq')} / 批注: "
                       + json.dumps(r.get("set"), ensure_ascii=False), "by": f"{r.get('actor')} ({r.get('reason')})"})
    for e in store.audit.entries(item_id=row["item"]):
        events.append({"time": e["ts"], "event": f"archive: {e['action']}", "by": e["actor"] or "",
                       "detail": e["detail"]})
    return {"item": row["item"], "device": row["device"], "seq": row["seq"], "stored_at": row["stored_at"],
            "events": events}


def _readme(case: str, akid: str) -> str:
    return (f"案件 / case: {case}\n\n"
            "核验方法 / How to check this bundle (no edge-agent needed):\n"
            "  python3 -m venv v && v/bin/pip install cryptography && v/bin/python verify.py\n"
            "输出 OK 表示全部文件与签名无误；任何改动都会列为 FAIL。\n"
            "OK means every file and signature holds; any change is listed as FAIL.\n\n"
            f"归档签名公钥 / archive key id: {akid} (keys/archive.pub) — 请与归档中心公布的公钥编号核对 / compare it "
            "with the key id the archive centre publishes.\n"
            "report.html: 报告 / the human-readable report.\n")


def _report_lines(case, request, items, custody, akid, created) -> list[str]:
    out = [f"证据导出报告 / Evidence export report — {case}", f"导出时间 / exported: {created}",
           f"申请 / request {request['id']} ({request['purpose']}) by {request['requester']} at {request['requested_at']}",
           f"理由 / reason: {request['reason']}",
           f"审批 / approved by: {request['approver'] or '(policy: no approval needed)'} at {request['approved_at'] or '-'}",
           f"归档签名公钥 / archive key: {akid}", "", f"资料 / items: {len(items)}"]
    for i in items:
        md = i["metadata"]
        col = md.get("collector") or {}
        out += [f"{i['item']}  device {i['device']} seq {i['seq']}  verified: {i['verified']}",
                f"  采集时间 capture: {md.get('capture_start')} – {md.get('capture_end')}",
                f"  采集地点 place: {md.get('place')}  采集人 collector: {col.get('name')} ({col.get('id')})",
                f"  证明对象 proof: {md.get('proof')}", f"  manifest {i['manifest_hash']}"]
        out += [f"  file {f['name']} {f['size']} bytes {i['hash_alg']} {f['hash']}" for f in i["files"]]
    out += ["", "保管链 / chain of custody"]
    for c in custody:
        out.append(c["item"])
        out += [f"  {e['time']}  {e['event']}  {e['by']}" for e in c["events"]]
    return out


def _report_html(case, request, items, custody, akid, created) -> str:
    e = html.escape
    rows = []
    for i in items:
        md = i["metadata"]
        col = md.get("collector") or {}
        files = "<br>".join(f"{e(f['name'])} — {f['size']} bytes<br><code>{i['hash_alg']} {e(f['hash'])}</code>"
                            for f in i["files"])
        rows.append(f"<tr><td><code>{e(i['item'])}</code><br>{e(i['device'])} #{i['seq']}</td>"
                    f"<td>{e(str(md.get('capture_start')))}<br>{e(str(md.get('capture_end')))}</td>"
                    f"<td>{e(str(md.get('place')))}</td><td>{e(str(col.get('name')))} ({e(str(col.get('id')))})</td>"
                    f"<td>{e(str(md.get('proof')))}</td><td>{files}<br>manifest <code>{e(i['manifest_hash'])}</code></td>"
                    f"<td class=ok>{e(i['verified'])}</td></tr>")
    chain = []
    for c in custody:
        chain.append(f"<h3><code>{e(c['item'])}</code></h3><table><tr><th>时间 Time</th><th>事件 Event</th>"
                     "<th>执行者 By</th></tr>" + "".join(
                         f"<tr><td>{e(str(x['time']))}</td><td>{e(x['event'])}</td><td>{e(str(x['by']))}"
                         + (f"<br><small>{e(str(x['detail']))}</small>" if x.get("detail") else "") + "</td></tr>"
                         for x in c["events"]) + "</table>")
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>证据导出报告 / Evidence export report — {e(case)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #999;padding:4px 6px;vertical-align:top;font-size:13px}} code{{font-size:11px;word-break:break-all}}
.ok{{color:#060}}</style></head><body>
<h1>证据导出报告 / Evidence export report</h1>
<table>
<tr><th>案件编号 Case number</th><td>{e(case)}</td></tr>
<tr><th>导出时间 Exported</th><td>{e(created)}</td></tr>
<tr><th>申请 Request</th><td>{request['id']} ({e(request['purpose'])}) — {e(request['requester'])}, {e(request['requested_at'])}</td></tr>
<tr><th>理由 Reason</th><td>{e(request['reason'])}</td></tr>
<tr><th>审批 Approved by</th><td>{e(str(request['approver'] or '— (单位策略不要求 / not required by the unit policy)'))}, {e(str(request['approved_at'] or ''))}</td></tr>
<tr><th>归档签名公钥 Archive key</th><td><code>{e(akid)}</code> (keys/archive.pub; 请与归档中心公布的编号核对 / compare with the key id the centre publishes)</td></tr>
<tr><th>核验 Verification</th><td class=ok>每份资料导出前已核验通过；复核：<code>python3 verify.py</code> / every item verified before export; check again with <code>python3 verify.py</code></td></tr>
</table>
<h2>资料 / Items ({len(items)})</h2>
<table><tr><th>资料 Item</th><th>采集时间 Capture</th><th>采集地点 Place</th><th>采集人 Collector</th><th>证明对象 Proof</th>
<th>文件与哈希 Files and hashes</th><th>核验 Verified</th></tr>
{''.join(rows)}</table>
<h2>保管链 / Chain of custody (capture → export)</h2>
{''.join(chain)}
</body></html>
"""


def _font() -> str | None:
    """A font with Chinese glyphs (for report.pdf): the fonts fontconfig lists for zh (a regular
    sans first), else the usual Noto CJK paths; None when there is none."""
    import subprocess

    found: list[str] = []
    try:
        p = subprocess.run(["fc-list", ":lang=zh", "-f", "%{file}\n"], capture_output=True, text=True, timeout=10)
        if p.returncode == 0:
            found = sorted({f for f in p.stdout.splitlines() if f and Path(f).is_file()})
    except (OSError, subprocess.SubprocessError):
        pass
    found += [c for c in ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
                          "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc") if Path(c).is_file()]
    rank = sorted(found, key=lambda f: ("Sans" not in f, "Regular" not in f, f))
    return rank[0] if rank else None


def _report_pdf(case, request, items, custody, akid, created) -> bytes | None:
    """report.pdf's bytes: the report's text on A4 pages, drawn with Pillow (already a dependency)
    in a font with Chinese glyphs; None (no PDF, the HTML is the report) when no such font is found."""
    font_path = _font()
    if font_path is None:
        return None
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path, 22)
    width, height, margin, step = 1654, 2339, 90, 30  # A4 at 200 dpi
    lines: list[str] = []
    for line in _report_lines(case, request, items, custody, akid, created):
        while line:  # wrap by measured width
            n = len(line)
            while n > 1 and font.getlength(line[:n]) > width - 2 * margin:
                n -= 1
            lines.append(line[:n])
            line = ("    " + line[n:]) if n < len(line) else ""
    per_page = (height - 2 * margin) // step
    pages = []
    for start in range(0, max(len(lines), 1), per_page):
        img = Image.new("L", (width, height), 255)
        draw = ImageDraw.Draw(img)
        for k, line in enumerate(lines[start:start + per_page]):
            draw.text((margin, margin + k * step), line, font=font, fill=0)
        draw.text((width - margin - 200, height - margin // 2), f"{start // per_page + 1}", font=font, fill=0)
        pages.append(img)
    out = io.BytesIO()
    pages[0].save(out, "PDF", resolution=200.0, save_all=True, append_images=pages[1:])
    return out.getvalue()
