"""Regenerate docs/cli.md from the click commands' help: `python -m tools.gen_cli_doc`."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from agent.cli import main

#: help is formatted for this many columns whatever the terminal (the width click uses on an
#: 80-column terminal), so the file does not change with the window it was generated in
HELP_WIDTH = 78


def _walk(cmd, path):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], path + [name])


def help_text(path: list[str]) -> str:
    """What ``edge-agent PATH --help`` prints (context settings such as ``-h`` included)."""
    r = CliRunner().invoke(main, [*path, "--help"], prog_name="edge-agent", terminal_width=HELP_WIDTH)
    if r.exit_code != 0:
        raise SystemExit(f"edge-agent {' '.join(path)} --help failed: {r.output}")
    return r.output.rstrip("\n")


def render() -> str:
    out = ["# edge-agent command line", "",
           "Generated from the commands' own help by `python -m tools.gen_cli_doc`; "
           "`tests/cli/test_cli_doc.py` checks that each section is what the command's `--help` prints.", "",
           "Every command exits 0 on success and non-zero with a one-line `error: …` naming the cause "
           "(2 for configuration errors).", "",
           "Every command that prints a result takes `--json`: one JSON object (indented, keys sorted, "
           "UTF-8 as is) on stdout instead of the text; errors stay one line on stderr. The long-running "
           "ones (`archive serve`, `run`, `monitor`, `dock watch`) print JSON lines instead: one object per "
           "line, each with `event` and `time` (`ready`/`started`, `status` or `state`, `stopped`); their "
           "logs stay on stderr. `tests/cli/test_cli_words.py` fails on a command without `--json`, "
           "`tests/cli/test_cli_json.py` runs them and parses what they print.", ""]
    for path, _cmd in _walk(main, []):
        name = " ".join(["edge-agent", *path])
        out += [f"## {name}", "", "```", help_text(path), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    Path(__file__).resolve().parent.parent.joinpath("docs", "cli.md").write_text(render(), encoding="utf-8")
    print("docs/cli.md written")
