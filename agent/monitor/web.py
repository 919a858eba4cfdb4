"""The monitor's web page and JSON API (stdlib http.server in a thread; no CDN, no build step).

    GET /              one self-contained HTML page (refreshes itself every 2 s from /api/fleet)
    GET /api/fleet     totals, units (with compliance), devices, active alarms, ingest counters
    GET /api/units     units only;  GET /api/alarms  active alarms;  GET /api/devices  devices
    GET /api/rejected  refused messages: total, by reason, by enrolled device (last 200)
    GET /api/history?device=D&unit=U&since=T&until=T&limit=N
                       status changes and alarms raised/cleared in a time range (agent/monitor/history.py;
                       T as ``monitor history`` takes it: 2026-12-04T08:00, 2h, 7d); the page's history view
    GET /healthz       "ok"

Read-only: every request opens the database read-only (a SQLite file, or a read-only connection to
PostgreSQL); nothing on the page changes state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from agent.common.errors import EdgeError
from agent.common.pg import ReaderPool, is_url
from .history import history, parse_time
from .state import connect, fleet

log = logging.getLogger(__name__)


class WebServer:
    def __init__(self, db_path: Path | str, port: int, lost_after: float, host: str = "127.0.0.1"):
        self.db_path = db_path  # a SQLite path or a postgresql:// URL (state.connect reads either)
        # PostgreSQL: a few read-only connections kept open (a connection per request would start a
        # server process per request); SQLite: the file opened read-only per request
        self._pool = ReaderPool(str(db_path)) if is_url(str(db_path)) else None
        self.lost_after = lost_after
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "edge-monitor"

            def log_message(self, fmt, *args):  # to logging, not stderr
                log.debug("web: " + fmt, *args)

            def do_GET(self):  # noqa: N802
                outer._get(self)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            from agent.common.errors import EdgeError

            raise EdgeError(f"--web {port}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def _send(self, h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Cache-Control", "no-store")
        h.send_header("X-Content-Type-Options", "nosniff")
        h.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'")
        h.end_headers()
        h.wfile.write(body)

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        try:
            if url.path == "/":
                self._send(h, 200, PAGE.encode("utf-8"), "text/html; charset=utf-8")
                return
            if url.path == "/healthz":
                self._send(h, 200, b"ok\n", "text/plain")
                return
            if url.path == "/api/history":
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                try:
                    since, until = parse_time(q.get("since"), "since"), parse_time(q.get("until"), "until")
                    limit = int(q.get("limit") or 1000)
                except (EdgeError, ValueError) as exc:
                    self._send(h, 400, json.dumps({"error": str(exc)}, ensure_ascii=False).encode(), "application/json")
                    return
                try:
                    with self._reader() as conn:
                        data = history(conn, q.get("device") or None, q.get("unit") or None, since, until, limit)
                except EdgeError as exc:
                    self._send(h, 400, json.dumps({"error": str(exc)}, ensure_ascii=False).encode(), "application/json")
                    return
                self._send(h, 200, json.dumps(data, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")
                return
            if url.path in ("/api/fleet", "/api/units", "/api/alarms", "/api/devices", "/api/rejected"):
                q = parse_qs(url.query)
                with self._reader() as conn:
                    data = fleet(conn, self.lost_after)
                part = url.path.rsplit("/", 1)[1]
                if part != "fleet":
                    data = data[part]
                    unit = (q.get("unit") or [None])[0]
                    if unit and part in ("devices", "alarms"):
                        data = [x for x in data if x.get("unit_code") == unit]
                    elif unit and part == "units":
                        data = [x for x in data if x["code"] == unit]
                body = json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
                self._send(h, 200, body, "application/json; charset=utf-8")
                return
            self._send(h, 404, json.dumps({"error": f"no such page: {url.path}"}).encode(), "application/json")
        except Exception as exc:
            log.exception("web request %s failed", url.path)
            try:
                self._send(h, int(HTTPStatus.INTERNAL_SERVER_ERROR),
                           json.dumps({"error": str(exc)[:200]}).encode(), "application/json")
            except OSError:
                pass

    def start(self) -> "WebServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="monitor-web", daemon=True)
        self._thread.start()
        log.info("monitor web page on http://%s:%s/", *self.httpd.server_address[:2])
        return self

    @contextlib.contextmanager
    def _reader(self):
        if self._pool is not None:
            with self._pool.reader() as r:
                yield r
            return
        conn = connect(self.db_path, readonly=True)
        try:
            yield conn
        finally:
            conn.close()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._pool is not None:
            self._pool.close()


PAGE = r"""<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>执法记录设备监控 / Recording equipment monitor</title>
<style>
:root { --ok:#1b7f3a; --bad:#b3261e; --warn:#a15c00; --lost:#6b3fa0; --mute:#666; }
* { box-sizing: border-box; }
body { font-family: "Noto Sans CJK SC", "Noto Sans SC", "Microsoft YaHei", sans-serif; margin: 0; background:#f4f5f7; color:#1d1d1f; font-size:14px; }
header { background:#12325a; color:#fff; padding:10px 18px; display:flex; align-items:baseline; gap:18px; flex-wrap:wrap; }
header h1 { font-size:19px; margin:0; }
header .meta { font-size:12px; opacity:.85; }
main { padding: 12px 18px; }
section { background:#fff; border-radius:6px; box-shadow:0 1px 2px rgba(0,0,0,.12); margin-bottom:14px; padding:10px 14px; }
h2 { font-size:16px; margin:4px 0 8px; }
table { border-collapse: collapse; width:100%; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid #e4e4e7; vertical-align:top; }
th { font-size:12px; color:#444; background:#fafafa; }
.num { text-align:right; font-variant-numeric: tabular-nums; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; color:#fff; white-space:nowrap; }
.ok { background:var(--ok); } .bad { background:var(--bad); } .warn { background:var(--warn); } .lost { background:var(--lost); } .mute { background:var(--mute); }
.txt-ok { color:var(--ok); font-weight:600; } .txt-bad { color:var(--bad); font-weight:600; }
.cards { display:flex; gap:10px; flex-wrap:wrap; }
.card { background:#fff; border-radius:6px; box-shadow:0 1px 2px rgba(0,0,0,.12); padding:8px 14px; min-width:120px; }
.card .v { font-size:22px; font-weight:700; } .card .l { font-size:12px; color:#555; }
.small { font-size:12px; color:#555; }
#err { color:var(--bad); font-weight:600; }
</style>
</head>
<body>
<header>
  <h1>执法记录设备监控 / Recording equipment monitor</h1>
  <span class="meta">更新 / updated: <span id="generated">—</span></span>
  <span class="meta">失联判定 / lost after: <span id="lostafter">—</span> s</span>
  <span id="err"></span>
</header>
<main>
  <div class="cards" id="cards"></div>
  <section>
    <h2>执法单位与配备达标 / Units and equipment compliance</h2>
    <p class="small">标准 / minimum: 单位策略规定的配备率下限与询问室数（工作站执行的签名单位策略 rules.equipment；尚未应用策略时为工作站配置 dock.min_ratio_pct、dock.min_rooms；默认每五名执法人员至少一台执法记录仪、每个单位至少一间询问室）/ the recorder ratio and room count of the signed unit policy the unit's stations have in force (while none: the stations' configuration; by default one recorder per five officers and one interview room per unit); each ratio names its source; a recorder counts when enrolled, assigned and healthy</p>
    <table id="units"><thead><tr>
      <th>单位 / Unit</th><th class="num">执法人员 / Officers</th><th class="num">记录仪 / Recorders</th>
      <th class="num">配备率 / Ratio</th><th class="num">询问室 / Rooms</th><th class="num">采集站 / Docks</th>
      <th>设备 / Devices</th><th class="num">告警 / Alarms</th><th class="num">最久积压 / Oldest backlog</th><th>达标 / Compliant</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>告警 / Active alarms</h2>
    <table id="alarms"><thead><tr>
      <th>级别 / Severity</th><th>设备 / Device</th><th>单位 / Unit</th><th>告警 / Alarm</th><th>说明 / Message</th><th>开始 / Since</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>设备 / Devices</h2>
    <table id="devices"><thead><tr>
      <th>设备 / Device</th><th>类型 / Kind</th><th>单位 / Unit</th><th>状态 / State</th><th class="num">静默 / Silent</th>
      <th class="num">待上传 / Pending</th><th class="num">最久 / Oldest</th><th class="num">磁盘剩余 / Disk free</th>
      <th>时钟 / Clock</th><th>部件 / Bays, cameras, sensors</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>历史 / History</h2>
    <form id="hist-form" class="small">
      设备 / device <input name="device" size="16"> 单位 / unit <input name="unit" size="10">
      自 / since <input name="since" size="18" value="24h"> 至 / until <input name="until" size="18">
      <button type="submit">查询 / show</button> <span id="hist-note"></span>
    </form>
    <table id="history"><thead><tr>
      <th>时间 / Time</th><th>设备 / Device</th><th>单位 / Unit</th><th>事件 / Event</th><th>说明 / Detail</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>拒收消息 / Rejected messages: <span id="rejected-total">0</span></h2>
    <p class="small">只显示设备本身签名的状态；以下消息未签名、签名无效、来自未登记设备、重放或超量，已计数但未采用。 /
      Only what a device signed is shown as its state; these messages (unsigned, badly signed, unknown device,
      replayed, flood) were counted and never applied.</p>
    <p id="rejected-reasons" class="small">—</p>
    <table id="rejections"><thead><tr>
      <th>设备 / Device</th><th>原因 / Reason</th><th class="num">次数 / Count</th><th>最近 / Last</th><th>说明 / Detail</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <p class="small">接收 / ingest: <span id="ingest">—</span></p>
</main>
<script>
"use strict";
const KIND = {dock: "采集站 / dock", room: "询问室 / room", archive: "归档 / archive"};
const STATE = {online: ["在线 / online", "ok"], offline: ["离线 / offline", "bad"], lost: ["失联 / lost", "lost"], unknown: ["未知 / unknown", "mute"]};
const SEV = {critical: ["严重 / critical", "bad"], warning: ["警告 / warning", "warn"], info: ["提示 / info", "mute"]};
const CSTATE = {ok: "ok", warning: "warn", error: "bad", offline: "bad", stopped: "mute", starting: "mute", unknown: "mute"};
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) { if (k === "class") e.className = v; else e.setAttribute(k, v); }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "—" : String(k)));
  return e;
}
function badge(text, cls) { return el("span", {class: "badge " + cls}, text); }
function age(s) {
  if (s == null) return "—";
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}
function bytes(b) {
  if (b == null) return "—";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return b.toFixed(i ? 1 : 0) + " " + u[i];
}
function fill(id, rows) { const tb = document.querySelector("#" + id + " tbody"); tb.replaceChildren(...rows); }
function render(f) {
  document.getElementById("generated").textContent = f.generated;
  document.getElementById("lostafter").textContent = f.lost_after_s;
  const t = f.totals;
  const cards = [["执法单位 / Units", t.units], ["达标单位 / Compliant units", t.compliant_units + " / " + t.units],
                 ["在线 / Online", t.online], ["离线 / Offline", t.offline], ["失联 / Lost", t.lost], ["告警 / Alarms", t.alarms]];
  document.getElementById("cards").replaceChildren(...cards.map(([l, v]) => el("div", {class: "card"}, el("div", {class: "v"}, v), el("div", {class: "l"}, l))));
  fill("units", f.units.map(u => el("tr", {"data-unit": u.code},
    el("td", {}, u.name ? u.name + " (" + u.code + ")" : u.code),
    el("td", {class: "num"}, u.officers == null ? "未知 / unknown" : u.officers),
    el("td", {class: "num"}, u.recorders),
    el("td", {class: "num " + (u.ratio_ok ? "txt-ok" : "txt-bad"), "data-source": (u.thresholds || {}).source || ""},
      u.ratio == null ? "—" : u.ratio.toFixed(2) + (u.ratio_ok ? " ≥ " : " < ") + u.min_ratio.toFixed(2),
      el("div", {class: "small"}, (u.thresholds || {}).source === "policy" ? "策略 / policy v" + u.thresholds.policy_version
                                  : (u.thresholds || {}).source === "config" ? "配置 / config" : "默认 / default")),
    el("td", {class: "num " + (u.rooms_ok ? "txt-ok" : "txt-bad")}, u.rooms + (u.rooms_ok ? " ≥ " : " < ") + u.min_rooms,
      ...(u.rooms_out || []).map(r => badge(r.id + " " + (STATE[r.state] || [r.state])[0] + (r.since ? " 自 since " + r.since : ""), "bad"))),
    el("td", {class: "num"}, u.docks),
    el("td", {}, badge(u.online + " 在线", "ok"), " ", badge(u.offline + " 离线", u.offline ? "bad" : "mute"), " ", badge(u.lost + " 失联", u.lost ? "lost" : "mute"),
      (u.policy_old || []).length ? badge(u.policy_old.length + " 策略过旧 / old policy (< v" + u.policy_newest + ")", "warn") : ""),
    el("td", {class: "num"}, u.alarms),
    el("td", {class: "num"}, age(u.oldest_buffer_age_s)),
    el("td", {}, u.compliant ? badge("达标 / compliant", "ok") : badge(u.officers == null ? "人员未知 / officers unknown" : "不达标 / not compliant", "bad")))));
  fill("alarms", f.alarms.map(a => el("tr", {"data-alarm": a.device + "/" + a.key},
    el("td", {}, badge(...(SEV[a.severity] || [a.severity, "mute"]))),
    el("td", {}, a.device), el("td", {}, a.unit_code), el("td", {}, a.key),
    el("td", {}, a.message_zh + " / " + a.message_en), el("td", {}, a.since))));
  if (!f.alarms.length) fill("alarms", [el("tr", {}, el("td", {colspan: 6}, "无告警 / no active alarms"))]);
  fill("devices", f.devices.map(d => {
    const h = d.health || {};
    const st = STATE[d.display_state] || [d.display_state, "mute"];
    const live = d.display_state === "online";  // an offline or silent device's parts lose their colours
    const comps = Object.entries(d.components || {}).map(([n, c]) => badge(n + ": " + (c.label || c.state) + (live ? "" : " ?"), live ? (CSTATE[c.state] || "mute") : "mute"));
    const clock = h.clock_synchronized === true ? "已同步 / synced" : h.clock_synchronized === false ? "未同步 / unsynced" : "—";
    return el("tr", {"data-device": d.id, "data-state": d.display_state},
      el("td", {}, d.id), el("td", {}, KIND[d.kind] || d.kind), el("td", {}, d.unit_code),
      el("td", {}, badge(st[0] + (!live && d.since ? " 自 since " + d.since : ""), st[1]), d.unit_conflicts ? badge("单位冲突 / unit conflict ×" + d.unit_conflicts, "warn") : "",
        d.policy_old ? badge("策略过旧 / old policy " + (d.policy_version == null ? "none" : "v" + d.policy_version), "warn") : ""),
      el("td", {class: "num"}, age(d.silent_s)),
      el("td", {class: "num"}, h.buffer_items == null ? "—" : h.buffer_items + " (" + bytes(h.buffer_bytes) + ")"),
      el("td", {class: "num"}, age(h.oldest_age_s)),
      el("td", {class: "num"}, bytes(h.disk_free_bytes)),
      el("td", {}, clock), el("td", {}, ...comps));
  }));
  const rej = f.rejected || {total: 0, by_reason: {}, by_device: []};
  document.getElementById("rejected-total").textContent = rej.total;
  document.getElementById("rejected-reasons").textContent =
    Object.entries(rej.by_reason).map(([k, v]) => k + "=" + v).join("  ") || "—";
  fill("rejections", rej.by_device.map(r => el("tr", {"data-device": r.device, "data-reason": r.reason},
    el("td", {}, r.device), el("td", {}, r.reason), el("td", {class: "num"}, String(r.count)),
    el("td", {}, r.last_at ? new Date(r.last_at * 1000).toLocaleString() : "—"), el("td", {}, r.last_detail || ""))));
  document.getElementById("ingest").textContent = Object.entries(f.ingest).map(([k, v]) => k + "=" + v).join("  ");
}
async function tick() {
  try {
    const r = await fetch("/api/fleet", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    document.getElementById("err").textContent = "";
    document.body.dataset.loaded = "1";
  } catch (e) {
    document.getElementById("err").textContent = "连接监控服务失败 / cannot reach the monitor: " + e.message;
  }
}
async function showHistory(ev) {
  if (ev) ev.preventDefault();
  const q = new URLSearchParams([...new FormData(document.getElementById("hist-form"))].filter(([k, v]) => v));
  const note = document.getElementById("hist-note");
  try {
    const r = await fetch("/api/history?" + q, {cache: "no-store"});
    const h = await r.json();
    if (!r.ok) { note.textContent = h.error; return; }
    note.textContent = h.count + " 条 / events" + (h.truncated ? " (最新 / newest " + h.count + ")" : "");
    fill("history", h.events.map(e => el("tr", {"data-event": e.type},
      el("td", {}, e.at), el("td", {}, e.device), el("td", {}, e.unit_code),
      e.type === "status" ? el("td", {}, badge(...(STATE[e.state] || [e.state, "mute"])))
                          : el("td", {}, badge(e.event === "raised" ? "告警 / raised" : "解除 / cleared", e.event === "raised" ? (SEV[e.severity] || ["", "mute"])[1] : "ok")),
      el("td", {}, e.type === "status" ? "bdseq " + e.bdseq + " (" + e.source + ")" : e.code + " " + e.key))));
  } catch (e) { note.textContent = e.message; }
}
document.getElementById("hist-form").addEventListener("submit", showHistory);
document.getElementById("devices").addEventListener("click", ev => {
  const tr = ev.target.closest("tr[data-device]");
  if (!tr) return;
  const f = document.getElementById("hist-form");
  f.device.value = tr.dataset.device; f.unit.value = "";
  showHistory();
});
tick();
setInterval(tick, 2000);
</script>
</body>
</html>
"""
