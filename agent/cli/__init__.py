"""The ``edge-agent`` command: thin click commands over the library.

Each command opens the library, calls one function, and turns library errors into a one-line
``error: …`` on stderr with a non-zero exit. Command groups live one per module.
"""

from __future__ import annotations

import errno
import sys

import click

from drivers.recorder.errors import RecorderError

from agent.common.errors import EdgeError
from .base import Ctx, pass_ctx  # noqa: F401


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (EdgeError, RecorderError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except PermissionError as exc:
            click.echo(f"error: permission denied: {exc.filename or exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            if exc.errno == errno.ENOSPC:  # wherever it struck (a copy reports it itself, with the byte)
                click.echo(f"error: 磁盘已满 / disk full: {where}{exc.strerror or exc} — free space on the "
                           "data disk (see `edge-agent status`)", err=True)
            else:
                click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", envvar="EDGE_AGENT_CONFIG", type=click.Path(dir_okay=False),
              help="Config file (default /etc/edge-agent/agent.toml; env EDGE_AGENT_CONFIG).")
@click.version_option(package_name="edge-agent", prog_name="edge-agent")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """edge-agent: law-enforcement recordings, sealed and archived as evidence.

    \b
    Example:
      edge-agent --config ./agent.toml init --device-id dock-01 --unit-code 330100000000
      edge-agent ingest clip.mp4 --case "杭司罚〔2026〕12号" --collector 张三 --collector-id 33010001 \\
          --place "西湖区文三路" --proof "现场检查过程"
    """
    ctx.obj = Ctx(config_path)


from . import audit, core, items  # noqa: E402,F401  (each registers its commands on main)

from . import archive, dock, monitor, ops, report, room, uplink  # noqa: E402,F401  (each registers its group)
from . import broker  # noqa: E402,F401  (archive broker-config)
from . import receivers  # noqa: E402,F401  (archive receiver add|list|revoke)
from . import policy  # noqa: E402,F401  (policy show|trust, archive policy key|publish|show)
from . import retrieval  # noqa: E402,F401  (archive user|request|approve|requests)
from . import retention  # noqa: E402,F401  (archive retention ..., archive hold ...)
from . import deadlines  # noqa: E402,F401  (report deadlines)
from . import chain  # noqa: E402,F401  (archive chain)
