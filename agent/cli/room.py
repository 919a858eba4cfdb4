"""``edge-agent room``: start, stop and watch the interview-room recording of the running agent.

The commands talk to ``edge-agent run`` over its control socket (data_dir/control.sock); the
same handlers serve MQTT commands. There is deliberately no pause: a session records from
``room start`` to ``room stop``.
"""

from __future__ import annotations

import click

from agent.common.control import call
from . import main
from .base import Ctx, emit_json, json_option, pass_ctx, role


@main.group()
def room():
    """Interview room (同步录音录像): start, stop, status of the recording session."""


@room.command("start")
@click.option("--case", "case_number", help="Case number (案件编号), required.")
@click.option("--collector", help="Collector's name (采集人), required.")
@click.option("--collector-id", help="Collector's officer certificate number (执法证编号), required.")
@click.option("--proof", help="What the recording proves (证明对象), required.")
@click.option("--subject", help="Person interviewed (被询问人), optional.")
@json_option
@pass_ctx
@role("operator")
def room_start(c: Ctx, case_number, collector, collector_id, proof, subject, as_json):
    """Start recording; refused without the mandatory fields or while a session records.

    \b
    Example:
      edge-agent room start --case "杭司罚〔2026〕第0123号" --collector 张三 \\
          --collector-id 33010012345 --proof "询问笔录同步录音录像" --subject 李四
    """
    args = {"case": case_number, "collector": collector, "collector_id": collector_id, "proof": proof,
            "subject": subject}
    res = call(c.cfg.storage.data_dir, "room.start", args)
    if as_json:
        emit_json(res)
        return
    click.echo(f"{res.get('message')} — session {res.get('session')}, case {res.get('case_number')}, "
               f"since {res.get('started_at')}")


@room.command("stop")
@json_option
@pass_ctx
@role("operator")
def room_stop(c: Ctx, as_json):
    """End the session: the last segment is closed and sealed; prints how many were sealed.

    \b
    Example:
      edge-agent room stop
    """
    res = call(c.cfg.storage.data_dir, "room.stop", {}, timeout=180)
    if as_json:
        emit_json(res)
        return
    click.echo(f"{res.get('message')} — session {res.get('session')}")
    if res.get("error"):
        click.echo(f"warning: {res['error']}", err=True)


@room.command("status")
@json_option
@pass_ctx
@role("operator", "technician", "auditor")
def room_status(c: Ctx, as_json):
    """Recording state, fps, dropped frames, encoder lag, audio level, sensor, gaps, alarms.

    \b
    Example:
      edge-agent room status --json
    """
    st = call(c.cfg.storage.data_dir, "room.status", {})
    if as_json:
        emit_json(st)
        return
    if st.get("state") == "idle":
        click.echo(f"空闲 / idle: {st.get('room')}")
        last = st.get("last_session")
        if last:
            click.echo(f"last session {last.get('session')} (case {last.get('case_number')}): "
                       f"{last.get('segments_sealed')} segments, ended: {last.get('end_reason')}")
            if last.get("error"):
                click.echo(f"  {last['error']}")
        return
    click.echo(f"● REC 录制中 / recording: {st['room']}  session {st['session']}")
    click.echo(f"  案件编号 case {st['case_number']}  采集人 collector {st['collector']['name']} "
               f"({st['collector']['id']})  since {st['started']} ({st['elapsed_s']} s)")
    enc = st.get("encoder_ms") or {}
    click.echo(f"  fps {st['fps']:.0f}  frames {st['frames']}  repeated {st['repeated_frames']}  "
               f"placeholder {st['placeholder_frames']}  encoder {enc.get('mean', 0)} ms/frame "
               f"(p95 {enc.get('p95', 0)})  segments sealed {st['segments_sealed']}")
    for cam in st["cameras"]:
        click.echo(f"  camera {cam['name']}: {'online' if cam['online'] else '信号中断 LOST'} "
                   f"{cam['resolution'] or '-'} {cam['fps']:.0f} fps, reconnects {cam['reconnects']}"
                   + (f", {cam['last_error']}" if cam["last_error"] and not cam["online"] else ""))
    a = st["audio"]
    click.echo(f"  audio {a.get('source')}: {'online' if a.get('online') else 'lost/silent track'} "
               f"{a.get('level_dbfs')} dBFS" + ("  静音 silent" if a.get("silent") else ""))
    if st.get("sensor"):
        s = st["sensor"]
        click.echo(f"  sensor: {s['temperature_c'] if s['temperature_c'] is not None else '--'} ℃ "
                   f"{s['humidity_pct'] if s['humidity_pct'] is not None else '--'} %RH"
                   + ("" if s["ok"] else f"  (no data: {s['last_error']})"))
    lat = st["seal_latency_ms"]
    if lat["n"]:
        click.echo(f"  segment close -> sealed: p50 {lat['p50']} ms, p99 {lat['p99']} ms")
    for al in st.get("alarms", []):
        click.echo(f"  ALARM {al['code']}: {al['message']}")
