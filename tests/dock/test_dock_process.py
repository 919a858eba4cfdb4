"""The station as a real process (`edge-agent run`, kind dock): kill -9 mid-copy, restart, resume;
and the CLI (`dock status`, `roster`, `dock report`) against what that process wrote."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.config import render_default
from tests.dock.test_dock import SERIAL, media, media_master, sha, start_sim  # noqa: F401  (fixtures)
from tools.media import CHINA_TZ, make_big_file

EDGE = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "edge-agent")


def write_config(tmp: Path, ports: Path, **dock) -> Path:
    values = {
        "device": {"id": "dock-0001", "kind": "dock", "location": "西湖区文三路100号 采集站"},
        "storage": {"data_dir": str(tmp / "data"), "reserve_mb": 0},
        "uplink": {"enabled": False},
        "log": {"format": "text", "level": "info"},
        "dock": {"bays": [str(ports / "ttyREC*")], "poll_ms": 100, "serial_timeout_ms": 300, **dock},
    }
    path = tmp / "agent.toml"
    path.write_text(render_default(values), encoding="utf-8")
    subprocess.run([EDGE, "--config", str(path), "init"], check=True, capture_output=True)
    return path


def cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([EDGE, "--config", str(config), *args], capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"{args}: rc={p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def bay_state(data: Path, name: str) -> dict:
    try:
        st = json.loads((data / "dock" / "bays.json").read_text())
    except (OSError, ValueError):
        return {}
    return next((b for b in st["bays"] if b["name"] == name), {})


def wait_bay(data: Path, name: str, pred, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    b = {}
    while time.monotonic() < deadline:
        b = bay_state(data, name)
        if b and pred(b):
            return b
        time.sleep(0.05)
    raise AssertionError(f"bay {name}: condition not met in {timeout} s: {b}")


@pytest.fixture
def proc_env(tmp_path):
    made = {"sims": [], "procs": []}
    ports = tmp_path / "ports"
    ports.mkdir()
    yield tmp_path, ports, made
    for p in made["procs"]:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    for s in made["sims"]:
        s.stop()


def run_agent(made, config: Path, log: Path) -> subprocess.Popen:
    p = subprocess.Popen([EDGE, "--config", str(config), "run"], stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    made["procs"].append(p)
    return p


def test_kill9_mid_copy_then_restart_resumes(proc_env, media):
    tmp, ports, made = proc_env
    later = datetime.datetime.now(CHINA_TZ) + datetime.timedelta(hours=1)  # after the clips: copied last
    big = make_big_file(media / f"{SERIAL}_{later:%Y%m%d%H%M%S}_0009.MP4", 24 << 20, seed=9)
    want = sha(big)
    config = write_config(tmp, ports, bay_rate_limit_mib=8, erase_policy="never", probe=False)
    data = tmp / "data"
    start_sim(made, media, ports / "ttyREC4")
    p = run_agent(made, config, tmp / "agent.log")
    wait_bay(data, "bay-4", lambda b: b.get("file_name") == big.name and b["bytes_done"] > 8 << 20, timeout=30)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    # dock status tells the officer the station is down, with the last state
    out = cli(config, "dock", "status").stdout
    assert "not running" in out and "bay-4" in out
    p2 = run_agent(made, config, tmp / "agent.log")
    b = wait_bay(data, "bay-4", lambda b: b["state"] in ("done", "error") and b.get("running", True), timeout=40)
    assert b["state"] == "done", b
    assert b["resumed_bytes"] > 8 << 20
    assert b["already"] >= 1  # files sealed before the kill are not copied again
    st = json.loads(cli(config, "dock", "status", "--json").stdout)
    assert st["running"] is True and st["bays"][0]["state"] == "done"
    import sqlite3

    db = sqlite3.connect(data / "ledger.db")
    rows = db.execute("SELECT state, content_hash, source_key FROM items").fetchall()
    sealed = [r for r in rows if r[0] == "sealed"]
    assert len(sealed) == len(list(media.iterdir()))
    assert len({r[2] for r in sealed}) == len(sealed)  # one item per recorder file, none twice
    assert want in {r[1] for r in sealed}
    assert not [r for r in rows if r[0] == "receiving"]
    cli(config, "verify", "--chain", str(data / "spool" / "items"))
    p2.send_signal(signal.SIGTERM)
    assert p2.wait(20) == 0


ROSTER = "警号,姓名,单位编号,单位名称\n000123,张三,330100000001,杭州市城市管理局\n" + "".join(
    f"{n:06d},警员{n},330100000001,杭州市城市管理局\n" for n in range(200, 208)) + "000300,王五,330100000002,西湖区执法局\n"


def test_roster_registry_ratio_and_status_cli(proc_env, media):
    tmp, ports, made = proc_env
    config = write_config(tmp, ports, erase_policy="never")
    data = tmp / "data"
    roster = tmp / "officers.csv"
    roster.write_text(ROSTER, encoding="gbk")  # GBK files from Excel are common
    assert "imported 10" in cli(config, "roster", "import", str(roster)).stdout
    listed = json.loads(cli(config, "roster", "list", "--json").stdout)
    assert len(listed) == 10 and listed[0]["name"] == "张三"
    before = json.loads(cli(config, "dock", "report", "ratio", "--json").stdout)
    assert {r["unit_code"]: r["meets_minimum"] for r in before} == {"330100000001": False, "330100000002": False}
    start_sim(made, media, ports / "ttyREC1")
    run_agent(made, config, tmp / "agent.log")
    wait_bay(data, "bay-1", lambda b: b["state"] == "done", timeout=30)
    rows = {r["unit_code"]: r for r in json.loads(cli(config, "dock", "report", "ratio", "--json").stdout)}
    u = rows["330100000001"]
    assert (u["officers"], u["recorders_in_service"], u["ratio_pct"], u["meets_minimum"]) == (9, 1, 11, False)
    assert (u["recorders_registered"], u["recorders_used"], u["usage_pct"]) == (1, 1, 100)
    csv_out = cli(config, "dock", "report", "ratio", "--csv").stdout.splitlines()
    assert csv_out[0].startswith("unit_code,unit_name,officers") and len(csv_out) == 3
    rec = json.loads(cli(config, "dock", "recorders", "--json").stdout)
    assert rec[0]["serial"] == SERIAL and rec[0]["officer_number"] == "000123" and rec[0]["docks"] == 1
    pending = json.loads(cli(config, "dock", "report", "pending", "--json").stdout)
    assert pending == [{"officer_number": "000123", "officer_name": "张三", "unit_code": "330100000001",
                        "pending_items": 5, "oldest": pending[0]["oldest"]}]
    table = cli(config, "dock", "status").stdout
    assert "bay-1" in table and "完成 / Done" in table and "张三" in table
    screen = cli(config, "dock", "watch", "--once").stdout
    assert "仓位" in screen and "Bay" in screen and "完成 / Done" in screen
    # bad input: each a one-line error, non-zero exit, nothing imported
    bad = {
        "missing.csv": None,
        "nocol.csv": "number,name\n1,a\n",
        "dup.csv": "officer_number,name,unit\n000001,甲,U1\n000001,乙,U1\n",
        "empty_no.csv": "officer_number,name,unit\n,甲,U1\n",
        "short.csv": "officer_number,name,unit\n000001,甲\n",
        "slash.csv": "officer_number,name,unit\n../x,甲,U1\n",
        "header_only.csv": "officer_number,name,unit\n",
        "binary.csv": "\x00\x01\x02",
    }
    for name, text in bad.items():
        path = tmp / name
        if text is not None:
            path.write_text(text, encoding="utf-8")
        r = cli(config, "roster", "import", str(path), check=False)
        assert r.returncode != 0 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, (name, r.stderr)
        assert "Traceback" not in r.stderr
    r = cli(config, "roster", "import", str(tmp), check=False)
    assert r.returncode != 0 and "directory" in r.stderr
    assert len(json.loads(cli(config, "roster", "list", "--json").stdout)) == 10
    r = cli(config, "dock", "report", "ratio", "--json", "--csv", check=False)
    assert r.returncode != 0 and "one of" in r.stderr


def test_dock_status_without_a_station(tmp_path):
    config = write_config(tmp_path, tmp_path)
    r = cli(config, "dock", "status", check=False)
    assert r.returncode == 1 and "no station state" in r.stderr


def test_every_dock_command_documented():
    from agent.cli import main

    doc = (Path(__file__).resolve().parents[2] / "docs" / "dock.md").read_text(encoding="utf-8")
    groups = {"dock": main.commands["dock"], "roster": main.commands["roster"]}
    seen = 0
    for gname, group in groups.items():
        stack = [(f"{gname}", group)]
        while stack:
            path, cmd = stack.pop()
            if hasattr(cmd, "commands"):
                stack.extend((f"{path} {n}", c) for n, c in cmd.commands.items())
                continue
            seen += 1
            assert "Example:" in (cmd.help or ""), path
            assert f"edge-agent {path}" in doc, f"docs/dock.md does not show `edge-agent {path}`"
    assert seen >= 7
