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
import json
import os
import shutil
from pathlib import Path

from agent.common.canon import canonical
from agent.common.errors import EdgeError
from agent.common.fs import atomic_write
from agent.common.timeutil import now_iso
from ..evidence import keys, manifest as mf
from ..evidence.verify import verify_item
from . import bundle_verify
from .paths import export_tree

FORMAT = bundle_verify.BUNDLE_FORMAT
FIELDS = ("case_number", "capture_start", "capture_end", "place", "collector", "proof")


def build(store, req: dict, case: str, dest: Path) -> dict:
    """Write the bundle for the items of CASE to DEST (new or empty) and DEST.zip; returns the summary."""
    dest = Path(dest)
    zpath = dest.with_name(dest.name + ".zip")
    if zpath.exists():
        raise EdgeError(f"{zpath}: exists already; the bundle's zip is written beside the folder")
    rows = store.db.query("SELECT * FROM items WHERE case_number = ? ORDER BY device, seq", [case])
    if not rows:
        raise EdgeError(f"case {case!r}: no item of this case in the archive")
    export_tree_empty(dest)
    (dest / "items").mkdir()
    kd = dest / "keys"
    (kd / "devices").mkdir(parents=True)
    enrol: dict = {"devices": {}, "annotators": {}}
    items, custody = [], []
    for row in rows:
        ring = store.registry.ring(row["device"])
        with store.storage.local(row["path"]) as src:
            verify_item(src, ring, expected_device=row["device"])
            stage = dest / f".stage-{row['item']}"
            export_tree(src, stage, row["item"], {})
            os.rename(stage / row["item"], dest / "items" / row["item"])
            stage.rmdir()
        d = dest / "items" / row["item"]
        m = json.loads((d / mf.MANIFEST).read_bytes())
        anns = mf.read_annotations(d)
        meta = mf.effective_metadata(m, anns)
        _keys(store, row["device"], m["device"]["unit_code"], kd, dest, enrol)
        items.append({"item": row["item"], "device": row["device"], "seq": row["seq"], "unit": row["unit"],
                      "manifest_hash": row["manifest_hash"], "item_hash": row["item_hash"], "hash_alg": m["hash_alg"],
                      "files": [{k: f[k] for k in ("name", "size", "hash")} for f in m["files"]],
                      "metadata": {k: meta.get(k) for k in FIELDS},
                      "verified": "签名、文件、分段、批注均无误 / ok: signature, files, segments, annotations"})
        custody.append(_custody(store, row, m, anns))
    atomic_write(kd / "archive.pub", keys.public_pem(store.signing_key.public_key()))
    akid = keys.key_id(store.signing_key.public_key())
    created = now_iso()
    request = {"id": req["id"], "purpose": req["purpose"], "reason": req["reason"], "requester": req["requester"],
               "requested_at": req["requested_at"], "approver": req["approver"], "approved_at": req["approved_at"],
               "record": req["record"], "sig": req["sig"], "approval": req["approval"], "approval_sig": req["approval_sig"]}
    atomic_write(dest / "enrolment.json", json.dumps(enrol, ensure_ascii=False, indent=2, sort_keys=True).encode())
    atomic_write(dest / "custody.json", json.dumps({"case_number": case, "request": request, "items": custody},
                                                   ensure_ascii=False, indent=2, sort_keys=True).encode())
    atomic_write(dest / "verify.py", Path(bundle_verify.__file__).read_bytes())
    atomic_write(dest / "README.txt", _readme(case, akid).encode())
    page = _report_html(case, request, items, custody, akid, created)
    atomic_write(dest / "report.html", page.encode())
    pdf = _report_pdf(case, request, items, custody, akid, created, dest / "report.pdf")
    files = []
    for p in sorted(dest.rglob("*")):
        if p.is_file():
            raw = p.read_bytes()
            files.append({"path": p.relative_to(dest).as_posix(), "size": len(raw),
                          "sha256": hashlib.sha256(raw).hexdigest()})
    index = {"format": FORMAT, "case_number": case, "created": created, "archive_key_id": akid,
             "items": [i["item"] for i in items], "request": {k: request[k] for k in ("id", "purpose", "reason",
                                                                                     "requester", "approver")},
             "files": files}
    data = canonical(index)
    atomic_write(dest / "bundle.json", data)
    atomic_write(dest / "bundle.sig", json.dumps({"alg": "ed25519", "key_id": akid,
                                                  "sig": keys.sign(store.signing_key, data)}).encode())
    # the clerk's check, run here before anything is said to have left
    found: list[str] = []
    bundle_verify.verify_index(dest, found)
    if found:
        raise EdgeError(f"the bundle at {dest} does not verify: {'; '.join(found)}")
    shutil.make_archive(str(dest), "zip", root_dir=dest.parent, base_dir=dest.name)
    return {"case_number": case, "bundle": str(dest), "zip": str(zpath), "items": items, "files": len(files),
            "bundle_sha256": hashlib.sha256(data).hexdigest(), "zip_sha256": _sha256(zpath),
            "archive_key_id": akid, "report": str(dest / "report.html"), "pdf": str(pdf) if pdf else None}


def export_tree_empty(dest: Path) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.mkdir(mode=0o750)
    except FileExistsError:
        if dest.is_symlink() or not dest.is_dir() or any(dest.iterdir()):
            raise EdgeError(f"导出目标必须是新建或空的目录 / the bundle destination must be a new or empty directory: "
                            f"{dest}") from None


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _keys(store, device: str, unit: str, kd: Path, dest: Path, enrol: dict) -> None:
    if device in enrol["devices"]:
        return
    row = store.registry.device(device)
    pems = [row["pubkey"].encode()] + [p.read_bytes() for p in sorted(store.registry.keys_dir.glob(f"{device}.*.pub.old"))]
    entry = {"unit": row["unit"], "enrolled_at": row["enrolled_at"], "key_id": row["key_id"], "keys": []}
    for pem in pems:
        kid = keys.key_id(keys.parse_public(pem))
        path = kd / "devices" / f"{device}-{kid}.pub"
        atomic_write(path, pem)
        entry["keys"].append({"key_id": kid, "file": path.relative_to(dest).as_posix()})
    enrol["devices"][device] = entry
    adir = store.registry.keys_dir / "annotators" / unit
    if unit not in enrol["annotators"] and adir.is_dir():
        enrol["annotators"][unit] = {}
        for p in sorted(adir.glob("*.pub")):
            path = kd / "annotators" / unit / p.name
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, p.read_bytes())
            enrol["annotators"][unit][p.stem] = [keys.key_id(keys.load_public(p)), path.relative_to(dest).as_posix()]


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


def _report_pdf(case, request, items, custody, akid, created, path: Path) -> Path | None:
    """report.pdf: the report's text on A4 pages, drawn with Pillow (already a dependency) in a
    font with Chinese glyphs; None (no PDF, the HTML is the report) when no such font is found."""
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
    pages[0].save(path, "PDF", resolution=200.0, save_all=True, append_images=pages[1:])
    return path
