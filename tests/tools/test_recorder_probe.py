"""tools/recorder_probe.py as the docs show it: the command lines of the acceptance check in
docs/dock.md that run on the simulator (``--simulate``) are run here and print what the doc says;
the exit status tells a technician whether the recorder passed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def doc_session(doc: Path, marker: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of the fenced block in ``doc`` that contains ``marker``."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for ln in doc.read_text(encoding="utf-8").splitlines():
        if ln.strip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(ln)
    block = next(b for b in blocks if any(marker in ln for ln in b))
    indent = min(len(ln) - len(ln.lstrip()) for ln in block if ln.strip())
    lines = [ln.strip() for ln in block]
    out: list[tuple[str, list[str]]] = []
    for raw, ln in zip(block, lines):
        if ln.startswith("$ "):
            out.append((ln[2:], []))
        elif out:
            out[-1][1].append(raw[indent:])
    return out


def test_the_acceptance_checks_probe_lines_run_on_the_simulator_as_documented(tmp_path):
    session = doc_session(ROOT / "docs" / "dock.md", "--simulate /tmp/probe-media --config")
    assert [c.split()[3] for c, _ in session] == ["recorder", "--simulate", "--simulate"]
    media = tmp_path / "probe-media"
    codes = []
    for cmd, expected in session:
        cmd = cmd.replace("/tmp/probe-media", str(media)).replace("python ", f"{sys.executable} ", 1)
        p = subprocess.run(cmd, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.stdout.splitlines() == expected, (cmd, p.stdout, p.stderr)
        codes.append(p.returncode)
    assert codes == [0, 0, 1]  # passed; a refused password fails the check


def test_probe_needs_a_node_or_the_simulator():
    p = subprocess.run([sys.executable, "-m", "tools.recorder_probe"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "give the sg node (e.g. /dev/sg2), or --simulate MEDIA" in p.stderr
