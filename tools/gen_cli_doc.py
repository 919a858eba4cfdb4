"""Regenerate docs/cli.md from the click commands' help: `python -m tools.gen_cli_doc`."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli import main


def _walk(cmd, path):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], path + [name])


def render() -> str:
    out = ["# edge-agent command line", "",
           "Generated from the commands' own help by `python -m tools.gen_cli_doc`; "
           "`tests/test_config_cli.py` checks that every command is listed here.", "",
           "Every command exits 0 on success and non-zero with a one-line `error: …` naming the cause "
           "(2 for configuration errors). Commands that read state take `--json`.", ""]
    for path, cmd in _walk(main, []):
        name = " ".join(["edge-agent", *path])
        ctx = click.Context(cmd, info_name=name)
        out += [f"## {name}", "", "```", cmd.get_help(ctx).replace(ctx.command_path, name), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    Path(__file__).resolve().parent.parent.joinpath("docs", "cli.md").write_text(render(), encoding="utf-8")
    print("docs/cli.md written")
