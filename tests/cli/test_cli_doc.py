"""docs/cli.md is what `edge-agent ... --help` prints, command by command, word for word
(regenerate with `python -m tools.gen_cli_doc`)."""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from agent.cli import main
from tools.gen_cli_doc import HELP_WIDTH

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def documented() -> dict[str, str]:
    """``{"edge-agent dock watch": help text}`` from the doc's sections."""
    out: dict[str, str] = {}
    for m in re.finditer(r"^## (edge-agent[^\n]*)\n\n```\n(.*?)\n```$", DOC.read_text(encoding="utf-8"), re.S | re.M):
        assert m.group(1) not in out, f"{m.group(1)} documented twice"
        out[m.group(1)] = m.group(2)
    return out


def commands(cmd: click.Command = main, path: tuple[str, ...] = ()):
    yield path
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from commands(sub, path + (name,))


def test_every_command_is_documented_once_and_nothing_else():
    doc = documented()
    have = {" ".join(("edge-agent",) + p) for p in commands()}
    assert sorted(have - set(doc)) == [], "commands missing from docs/cli.md: run `python -m tools.gen_cli_doc`"
    assert sorted(set(doc) - have) == [], "docs/cli.md documents commands that do not exist"


def test_docs_match_help_output():
    doc = documented()
    runner = CliRunner()
    stale = []
    for path in commands():
        name = " ".join(("edge-agent",) + path)
        r = runner.invoke(main, [*path, "--help"], prog_name="edge-agent", terminal_width=HELP_WIDTH)
        assert r.exit_code == 0, (name, r.output)
        assert r.output.startswith(f"Usage: {name} "), r.output.splitlines()[0]
        if r.output.rstrip("\n") != doc.get(name):
            stale.append(name)
    assert not stale, f"docs/cli.md differs from --help for {stale}: run `python -m tools.gen_cli_doc`"
