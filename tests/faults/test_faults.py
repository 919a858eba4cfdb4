"""Each fault of issue 7 at least once, with real processes (tests/faults/harness.py): kill -9 of the
agent mid-ingest and mid-transfer, of the archive and of the broker mid-transfer; the broker down
for a while; a full disk at the edge; the agent's clock jumping an hour forward and back; network
loss between namespaces; corrupt chunks and items. After each: every item produced at the edge is
in the archive exactly once and verifies, the edge lost nothing, nothing corrupt was accepted.

Slow variants (``-m slow``): the broker and the link down until the agent's reconnect delay has
grown to its maximum (30 s)."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest

from agent.common.faults import pause_files
from agent.evidence import manifest as mf
from agent.wire import protocol as P
from tests.faults.harness import (CAPTURED_AT, Clock, Cluster, HarnessError, NetLink, Tmpfs, wait_for)

MB = 1_000_000


@pytest.fixture
def cluster(tmp_path):
    cl = Cluster(tmp_path / "cl")
    try:
        cl.start()
        yield cl
    finally:
        cl.close()


def _uploading(node) -> bool:
    return any(s == "uploading" for s in node.states().values())


# --- kill -9 of the agent ------------------------------------------------------------------------
def test_agent_killed_mid_ingest_and_ingest_killed_mid_seal(cluster):
    """The agent and a CLI ingest killed together mid-copy (power cut); then CLI ingests killed at
    each sealing step while the agent keeps running: the chain never forks, nothing is stranded."""
    node = cluster.add_node().start()
    first = node.ingest(2, 300_000)
    proc = node.ingest_cli(80 * MB, wait=False)
    incoming = node.data_dir / "spool" / "incoming"

    def copying():
        return any(f.stat().st_size > 2 * MB for f in incoming.glob("*/files/*"))

    wait_for(lambda: copying() or not proc.alive(), 30, "the ingest copying", [proc])
    assert proc.alive(), f"the ingest finished before it could be killed: {proc.tail()}"
    node.kill()  # run and the ingest, kill -9 together
    assert any(r["state"] == "receiving" for r in node.rows())
    node.start()  # recovery discards the partial copy
    wait_for(lambda: not any(r["state"] == "receiving" for r in node.rows()), 20, "partial copy discarded",
             node.logs())
    assert "interrupted before sealing" in node.run_proc.text()
    assert not list(incoming.iterdir())
    # crash points between the durable steps of sealing, agent still running: the next ingest
    # must record the sealed-but-unrecorded item first instead of reusing its chain position
    for point in ("seal:after-sig", "seal:after-manifest", "seal:after-rename", "seal:after-ledger"):
        p = node.ingest_cli(200_000, wait=False, env={"EDGE_AGENT_CRASH_AT": point})
        assert p.wait(60) == -9, p.tail()
        node.ingest_cli(150_000)
    cluster.wait_archived(60)
    out = cluster.check().assert_ok()
    # three of the four crash points had sealed the item on disk: produced, hence archived
    assert out.produced == len(first) + 4 + 3, out.counts()
    assert all(s in ("archived", "discarded", "receiving") for s in node.states().values())


def test_agent_killed_mid_transfer(cluster):
    node = cluster.add_node().start()
    node.ingest(3, 2 * MB)
    cluster.wait_transfer_started(min_bytes=300_000)
    node.kill()
    assert _uploading(node)
    node.start()
    cluster.wait_archived(60)
    cluster.check().assert_ok()


def test_killed_between_stored_and_recorded(cluster):
    """The two narrowest windows of the hand-over, by crash point: the archive killed after its
    atomic rename but before its database commit; the agent killed after the archive answered
    "stored" but before its ledger says archived. Neither duplicates nor loses an item."""
    node = cluster.add_node()
    node.ingest(2, 300_000)
    cluster.restart_archive(env={"EDGE_AGENT_CRASH_AT": "archive:after-rename"})
    node.start()
    wait_for(lambda: not cluster.archive.alive(), 30, "the archive at its crash point", cluster.logs())
    assert cluster.archive_copies() and not cluster.archive_rows()  # renamed into place, not committed
    node.kill()
    cluster.start_archive()
    node.start(extra_env={"EDGE_AGENT_CRASH_AT": "uplink:before-mark-archived"})
    wait_for(lambda: not node.alive(), 30, "the agent at its crash point", node.logs())
    assert cluster.archive_rows() and not cluster.settled()
    node.start()
    cluster.wait_archived(60)
    out = cluster.check().assert_ok()
    assert out.produced == out.archived == 2


# --- kill -9 of the archive and of the broker ----------------------------------------------------
def test_archive_killed_mid_transfer_two_agents(cluster):
    a = cluster.add_node("dock-0001").start()
    b = cluster.add_node("dock-0002").start()
    a.ingest(2, 2 * MB)
    b.ingest(2, 2 * MB)
    cluster.wait_transfer_started(min_bytes=300_000)
    cluster.kill_archive()
    # an agent that still has an item in flight asks again into the silence (one may be done already)
    sent = {n: n.live_status().get("retransmits", 0) for n in (a, b)}
    wait_for(lambda: any(n.live_status().get("retransmits", 0) > r for n, r in sent.items()), 60,
             "an agent retransmitting into the archive's silence", cluster.logs())
    assert not cluster.settled()
    cluster.start_archive()
    cluster.wait_archived(60)
    out = cluster.check().assert_ok()
    assert out.produced == out.archived == 4
    assert a.alive() and b.alive()


def test_broker_killed_mid_transfer(cluster):
    node = cluster.add_node().start()
    node.ingest(3, 2 * MB)
    cluster.wait_transfer_started(min_bytes=300_000)
    cluster.restart_broker(downtime=0.5)
    cluster.wait_archived(60)
    cluster.check().assert_ok()
    assert node.alive()


def _counter(proc, *lines: str):
    """How many times ``proc`` has logged any of ``lines`` so far: the ticks of an outage."""
    return lambda: sum(proc.text().count(t) for t in lines)


def _max_backoff(proc, since: int) -> bool:
    """The uplink's reconnect delay has reached its maximum (30 s, halved at most by the jitter)
    in what ``proc`` logged after offset ``since``."""
    return any(float(w) >= 15 for w in re.findall(r"uplink: reconnecting in ([0-9.]+) s", proc.text()[since:]))


def _steady_held(cl: Cluster, tick, what: str, timeout: float = 60) -> int:
    """The archive's held bytes once the reads at two successive ``tick`` s agree: it has handled
    what had reached it before the outage."""
    deadline = time.monotonic() + timeout
    prev = None
    while True:
        n = tick()
        wait_for(lambda: tick() > n, max(1.0, deadline - time.monotonic()), what, cl.logs())
        cur = cl.held_bytes()
        if cur == prev:
            return cur
        prev = cur


def _asking(proc, since: int):
    """Rounds of the agent asking into the archive's silence, in what ``proc`` logged after offset
    ``since``: the first query, each retransmission (two items in flight log one each per
    round), each reconnect once the keepalive has dropped the connection."""
    def rounds() -> int:
        t = proc.text()[since:]
        attempts = [int(n) for n in re.findall(r"\(attempt (\d+)\): retransmitting", t)]
        return ("s: querying" in t) + max(attempts, default=0) + t.count("uplink: reconnecting in")
    return rounds


@pytest.mark.parametrize("outage", [pytest.param("short", id="short"),
                                    pytest.param("long", id="long", marks=pytest.mark.slow)])
def test_broker_down_for_a_while(cluster, outage):
    """The broker gone for a while: the edge keeps sealing (items wait in the outbox), nothing is
    archived meanwhile, everything drains after the broker returns. The outage lasts while the
    agent tries to reconnect (short: until its third failed attempt; long, slow: until its
    reconnect delay has grown to the maximum, 30 s) — the agent's own log is the clock."""
    node = cluster.add_node().start()
    node.ingest(2, 1 * MB)
    cluster.wait_transfer_started(min_bytes=100_000)
    cluster.kill_broker()
    wait_for(lambda: "uplink: disconnected" in node.run_proc.text(), 30, "the agent seeing the broker gone",
             node.logs())
    since = len(node.run_proc.text())
    offline = node.ingest(3, 500_000)  # produced while offline
    failed = _counter(node.run_proc, "uplink: cannot connect to")
    held = _steady_held(cluster, failed, "the agent failing to reconnect")
    n = failed()
    if outage == "short":
        wait_for(lambda: failed() > n, 30, "another failed reconnect", node.logs())
    else:
        wait_for(lambda: _max_backoff(node.run_proc, since), 150, "the reconnect delay at its maximum", node.logs())
    assert node.alive(), node.run_proc.tail()
    assert cluster.held_bytes() == held, "the archive received bytes while the broker was down"
    assert cluster.held_bytes(offline) == 0
    assert not cluster.settled()
    cluster.broker.restart(kill=True)
    cluster.wait_archived(60 if outage == "short" else 120)  # (agent and archive back off up to 30 s)
    out = cluster.check().assert_ok()
    assert out.produced == 5


# --- a full disk at the edge ---------------------------------------------------------------------
def test_disk_full_on_the_edge(cluster, tmp_path):
    """A 48 MB tmpfs as the data directory: the reserve refuses an ingest before any byte is
    copied; a disk filled to the last byte while items are in transfer stops nothing for good;
    a disk that fills up mid-copy gives a clean error and leaves no partial item."""
    why = Tmpfs.unavailable()
    if why:
        pytest.skip(why)
    fs = Tmpfs(tmp_path / "edge-disk", 48)
    cluster.extra.append(fs)
    node = cluster.add_node(data_dir=fs.path / "data", reserve_mb=2).start()
    ok = node.ingest(2, 1 * MB)
    # 1. the reserve: refused before copying, a clear bilingual message
    ballast = fs.fill(leave_bytes=3 * 2**20)
    with pytest.raises(HarnessError, match="磁盘空间不足 / disk reserve reached"):
        node.ingest_cli(2 * MB)
    # 2. the disk completely full while items transfer: the agent keeps its items
    ballast.unlink()
    more = node.ingest(3, 2 * MB)
    cluster.wait_transfer_started(min_bytes=200_000)
    full = fs.fill(leave_bytes=0, name="ballast2")
    wait_for(lambda: any(s in node.run_proc.text() for s in ("No space left on device", "disk is full")), 30,
             "the agent running into the full disk", [node.run_proc])
    assert node.alive(), node.run_proc.tail(10)  # a full disk is no reason to die
    full.unlink()
    cluster.wait_archived(60)  # the worker survived the failed ledger writes and carries on
    assert "Exception in thread" not in node.run_proc.text(), node.run_proc.tail(30)
    # 3. full mid-copy: ENOSPC while copying (the ingest holds after its first 8 MiB while the disk
    # fills up: on a loaded machine a 20 MB copy to tmpfs could finish before the ballast did)
    paused, resume = pause_files("copy:8mib", tmp_path)
    proc = node.ingest_cli(20 * MB, wait=False, env={"EDGE_AGENT_PAUSE_AT": "copy:8mib",
                                                     "EDGE_AGENT_PAUSE_DIR": str(tmp_path)})
    incoming = node.data_dir / "spool" / "incoming"
    wait_for(lambda: paused.exists() or not proc.alive(), 30, "the copy holding after 8 MiB", [proc])
    assert any(incoming.glob("*/files/*")), "no copy under way"
    fs.fill(leave_bytes=0, name="ballast3")
    resume.touch()
    rc = proc.wait(60)
    text = proc.text()
    assert rc != 0, text
    assert "Traceback" not in text, text
    assert "磁盘已满 / disk full" in text or "磁盘空间不足 / disk reserve reached" in text, text
    (fs.path / "ballast3").unlink()
    assert not list(incoming.iterdir()), "a partial item was left behind"
    assert all(r["state"] != "receiving" for r in node.rows())
    node.ingest_cli(500_000)
    cluster.wait_archived(60)
    out = cluster.check().assert_ok()
    assert out.produced == len(ok) + len(more) + 1


# --- the clock ---------------------------------------------------------------------------------------
def _iso(s: str) -> float:
    return dt.datetime.fromisoformat(s).timestamp()


def test_clock_jumps_forward_and_back_an_hour(cluster, tmp_path):
    """`edge-agent run` and `edge-agent ingest` under libfaketime; the wall clock jumps +1 h, then
    back to -1 h while the agent runs and transfers. Items still archive and verify; the capture
    time stays as recorded; ingest_time shows the device's (faked) clock, so the jump is visible in
    the sealed record; the chain order (device_seq) is unaffected by the clock."""
    why = Clock.unavailable()
    if why:
        pytest.skip(why)
    clock = Clock(tmp_path / "clock")
    node = cluster.add_node(clock=clock).start()
    expected = {}
    expected[node.ingest_cli(300_000)] = 0
    node.ingest(2, 2 * MB)
    cluster.wait_transfer_started(min_bytes=100_000)

    def agent_sees(offset: int) -> None:  # the running agent's own figures carry its (faked) time
        wait_for(lambda: abs(_iso(node.live_status().get("time") or "1970-01-01T00:00:00+00:00") - time.time()
                             - offset) < 600, 30, f"the agent's clock at {offset:+d} s", node.logs())

    clock.set("+1h")
    agent_sees(3600)
    expected[node.ingest_cli(300_000)] = 3600
    clock.set("-1h")
    agent_sees(-3600)
    expected[node.ingest_cli(300_000)] = -3600
    clock.set("+0")
    cluster.wait_archived(60)
    cluster.check().assert_ok()
    assert node.alive()
    for item, offset in expected.items():
        m = json.loads((node.data_dir / "spool" / "items" / item / mf.MANIFEST).read_bytes())
        assert m["metadata"]["capture_start"] == CAPTURED_AT  # as recorded, whatever the clock
        # ingest_time is the device's clock at sealing: real time shifted by the jump
        shown = _iso(m["ingest_time"]) - time.time()
        assert abs(shown - offset) < 600, (item, m["ingest_time"], offset)
    seqs = sorted((r["device_seq"], r["id"]) for r in node.rows() if r["device_seq"])
    assert [s for s, _ in seqs] == list(range(1, len(seqs) + 1))


# --- the network ---------------------------------------------------------------------------------
@pytest.mark.parametrize("outage", [pytest.param("short", id="short"),
                                    pytest.param("long", id="long", marks=pytest.mark.slow)])
def test_network_loss_between_namespaces(tmp_path, outage):
    """The agent in its own network namespace, joined to the broker by a veth pair; the link goes
    down mid-transfer (no RST, packets just vanish), then comes back. Short: down while the agent
    asks the archive again three times (1 s without an answer each: the TCP connection survives);
    long (slow): down until the agent's keepalive has dropped the connection and its reconnect
    delay has grown to the maximum."""
    why = NetLink.unavailable()
    if why:
        pytest.skip(why)
    link = NetLink()
    cl = Cluster(tmp_path / "cl", netlink=link)
    cl.extra.append(link)
    try:
        cl.start()
        # (short: answers awaited 1 s, so the agent asks three times into the silence within ~4 s)
        node = cl.add_node(keepalive=5, **({"uplink__ack_timeout_s": 1} if outage == "short" else {})).start()
        wait_for(lambda: node.live_status().get("connected"), 20, "agent connected across the veth", node.logs())
        node.ingest(3, 2 * MB)
        cl.wait_transfer_started(min_bytes=200_000)
        link.down()
        since = len(node.run_proc.text())
        offline = node.ingest(1, 300_000)  # sealed while the link is down
        silent = _asking(node.run_proc, since)
        held = _steady_held(cl, silent, "the agent noticing the archive's silence")
        n = silent()
        if outage == "short":
            wait_for(lambda: silent() > n, 30, "the agent asking again into the silence", node.logs())
        else:
            wait_for(lambda: _max_backoff(node.run_proc, since), 180, "the reconnect delay at its maximum",
                     node.logs())
        assert cl.held_bytes() == held, "bytes arrived over a link that is down"
        assert cl.held_bytes(offline) == 0
        assert node.alive()
        link.up()
        cl.wait_archived(90 if outage == "short" else 120)
        cl.check().assert_ok()
    finally:
        cl.close()


# --- corrupt input -------------------------------------------------------------------------------
def test_corrupt_chunks_and_items_refused(cluster):
    """A chunk that does not match its hash, a manifest altered after signing, a signed manifest with
    other content (refused chunk by chunk), and an item damaged on the edge's disk before upload
    (its altered block refused; the agent marks it rejected): all refused, none stored;
    the other items of the device archive and the archive's chain verifies around the refused one."""
    node = cluster.add_node()
    ids = node.ingest(4, 500_000)
    node.damage_item(ids[1])
    a = cluster.inject_corrupt_chunk(node)
    assert a.status == P.ERROR and "sha256 mismatch" in (a.reason or ""), a
    b = cluster.inject_forged_manifest(node)
    assert b.status == P.REJECTED and "signature" in (b.reason or "").lower(), b
    c = cluster.inject_swapped_content(node)
    assert c.status == P.ERROR and "differs from the signed manifest" in (c.reason or ""), c  # never written
    node.start()
    cluster.wait_archived(60)
    out = cluster.check().assert_ok()
    assert out.produced == 3 and out.archived == 3
    assert out.corrupt_injected == 4 and out.corrupt_accepted == 0
    # the item damaged at the edge: its altered block is refused by the archive, the agent finds
    # its copy differs from what it sealed and marks it rejected; the archive never held it
    assert node.states()[ids[1]] == "rejected"
    assert ids[1] not in {q["item"] for q in cluster.quarantined()}


# --- kill -9 mid room recording --------------------------------------------------------------------
def test_agent_killed_mid_room_recording(cluster, tmp_path):
    """An interview room (kind room, two file cameras, a tone microphone, 2 s segments) recording
    while its segments stream to the archive; `edge-agent run` killed with SIGKILL mid-segment,
    restarted, the session resumed and stopped. The archive holds every segment once, the session's
    segments chain (verify_chain checks it), the crash is a gap in the record."""
    from tests.support.rtsp import make_clip

    clip = make_clip(tmp_path / "cam.mp4", (320, 240), seconds=30)
    node = cluster.add_node("room-0001", kind="room", reserve_mb=0,
                            room__cameras=[f"file:{clip}", f"file:{clip}"], room__size="704x576", room__fps=10,
                            room__segment_seconds=2, room__microphone="tone").start()
    wait_for(lambda: node.room_status().get("state") == "idle", 30, "room idle", node.logs())
    node.cli("room", "start", "--case", "杭司罚〔2026〕第0456号", "--collector", "王五", "--collector-id",
             "33010099999", "--proof", "询问过程同步录音录像")
    wait_for(lambda: node.room_status().get("segments_sealed", 0) >= 2, 40, "two segments sealed", node.logs())
    time.sleep(1.0 + (time.monotonic_ns() % 1000) / 1000)  # somewhere inside a segment
    sid = node.room_status()["session"]
    node.kill()
    node.start()
    wait_for(lambda: node.room_status().get("state") == "recording", 30, "recording resumed", node.logs())
    st = node.room_status()
    assert st["session"] == sid and [i["reason"] for i in st["interruptions"]] == ["crash"], st
    n = st["segments_sealed"]
    wait_for(lambda: node.room_status().get("segments_sealed", 0) >= n + 1, 30, "a segment after restart",
             node.logs())
    node.cli("room", "stop")
    wait_for(lambda: node.room_status().get("state") == "idle", 30, "room stopped", node.logs())
    cluster.wait_archived(90)
    out = cluster.check().assert_ok()
    ms = [json.loads(p.read_bytes()) for p in (cluster.root).rglob(mf.MANIFEST)
          if not p.relative_to(cluster.root).parts[0].startswith("_")]
    ms.sort(key=lambda m: m["session"]["index"])
    assert out.produced == len(ms) >= 4
    assert [m["session"]["index"] for m in ms] == list(range(len(ms))) and ms[-1]["session"]["final"]
    assert any(g["component"] == "agent" for m in ms for g in m["gaps"]), "the crash is not a gap in the record"


# --- the report tool -----------------------------------------------------------------------------
def test_faults_report_tool(tmp_path, capsys):
    """tools/faults_report.py: the table from a result file; clear errors for a missing or bad file;
    exit 1 when an item was lost or a corrupt item accepted."""
    from tools import faults_report

    good = {"trials": 3, "items_produced": 7, "items_archived": 7, "items_lost": 0, "corrupt_injected": 1,
            "corrupt_accepted": 0, "duplicates": 0, "failures": [], "by_fault": {"broker_kill": 3}, "seed": 5}
    p = tmp_path / "faults.json"
    p.write_text(json.dumps(good), encoding="utf-8")
    out_txt = tmp_path / "faults.txt"
    assert faults_report.main(["--json", str(p), "--write", str(out_txt)]) == 0
    text = capsys.readouterr().out
    assert "items produced" in text and "通过 / PASS" in text and out_txt.read_text().strip() == text.strip()
    p.write_text(json.dumps({**good, "items_lost": 1}), encoding="utf-8")
    assert faults_report.main(["--json", str(p)]) == 1
    assert "未通过 / FAIL" in capsys.readouterr().out
    assert faults_report.main(["--json", str(tmp_path / "none.json")]) == 2
    assert "no results yet" in capsys.readouterr().err
    p.write_text("{not json", encoding="utf-8")
    assert faults_report.main(["--json", str(p)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    p.write_text("[]", encoding="utf-8")
    assert faults_report.main(["--json", str(p)]) == 2
    assert "not a fault-injection result" in capsys.readouterr().err
