"""Regenerate docs/config.md from the one config schema: `python -m tools.gen_config_doc`."""

from __future__ import annotations

import json
import typing
from pathlib import Path

from pydantic import BaseModel

import annotated_types

from agent.config import SCHEMA, Config, render_default
from agent.config.keys import _type_name
from agent.config.base import MAX_TEXT
from agent.config.file import MAX_FILE_BYTES

INTRO = f"""\
# Configuration keys

One TOML file, default `/etc/edge-agent/agent.toml` (override with `--config PATH` or
`EDGE_AGENT_CONFIG`). It is validated against one schema, the package `agent/config/`: a
pydantic model per section, one module each (`device.py`, `mqtt.py`, `dock.py` …), under the
root model `Config` (`root.py`). That package is the only reader of TOML in the agent. Generated
by `python -m tools.gen_config_doc`; `tests/config/test_config_doc.py` checks that it is up to date.

What is refused, always with one line that names the key, what is wrong in Chinese and English,
and the line of the file (exit code 2):

- a section or key the schema does not know (a typo gets the closest key: *did you mean*);
- a value of the wrong type: types are strict, `port = "1883"`, `port = 1883.0` and
  `unit_name = ["a"]` are all refused, so is a table where a value is expected and the reverse;
- a number outside its bounds, a choice not in the list (the *allowed* column below);
- malformed TOML (line and column named);
- in any string: control characters (NUL, newline, escape …), text that is not UTF-8, more
  than {MAX_TEXT} characters; integers beyond 64 bits; a file larger than {MAX_FILE_BYTES // 1024} KiB.

Entries of a list of tables are counted from 1. `config set KEY VALUE` takes lists and tables in
TOML syntax (quote them for the shell); the whole file is validated before it is written, and a
refused value leaves the file byte for byte as it was. Comments in the file are kept.

```
$ edge-agent --config agent.toml config set storage.reserve_mb lots
error: storage.reserve_mb: 应为整数 / expected an integer, got 'lots'
$ edge-agent --config agent.toml config set storage.reserv_mb 2048
error: storage.reserv_mb: 未知的键 / unknown key (known in [storage]: data_dir, reserve_mb, retention_days); 是否应为 / did you mean reserve_mb?
$ edge-agent --config agent.toml config set storage.reserve_mb 2048
storage.reserve_mb = 2048
$ edge-agent --config agent.toml config set room.cameras /dev/video0
error: room.cameras: 应为 TOML 列表 / expected a list in TOML syntax, e.g. '["a", "b"]', got '/dev/video0'
$ edge-agent --config agent.toml config set room.cameras '["/dev/video0", "rtsp://10.0.0.2/main"]'
room.cameras = ["/dev/video0", "rtsp://10.0.0.2/main"]
$ edge-agent --config agent.toml config set dock.bays '["/dev/ttyACM*", {{name = "front", port = "/dev/ttyACM*"}}]'
error: agent.toml: dock.bays: 第 2 项 / entry 2: 有名称的仓位只能用固定路径 / a named bay takes one fixed path, not the glob '/dev/ttyACM*' (第 94 行 / line 94)
$ edge-agent --config agent.toml config set dock.bays '["/dev/ttyACM*", {{name = "front", port = "/dev/ttyUSB0"}}]'
dock.bays = ["/dev/ttyACM*", {{name = "front", port = "/dev/ttyUSB0"}}]
$ edge-agent --config bad.toml config validate
error: bad.toml: device.kind: 3 不是可选值 / 3 is not one of dock, room (第 3 行 / line 3)
```

## Example configurations

`config/` holds examples to copy to `/etc/edge-agent/` and edit (lines marked `改 / CHANGE`); keys
they do not write take the defaults below. `tests/config/test_config_examples.py` loads each through this
schema and checks the values a technician relies on.

| file | for | read by |
|---|---|---|
| [config/station.toml](../config/station.toml) | docking station with 8 named bays (`/dev/serial/by-path`), TLS to the broker | `edge-agent run` |
| [config/room.toml](../config/room.toml) | interview room: two RTSP cameras (main, panorama), microphone, RS-485 temperature/humidity sensor | `edge-agent run` |
| [config/archive.toml](../config/archive.toml) | central archive: `[archive]` and `[mqtt]` | `edge-agent --config FILE archive serve` (flags override) |
| [config/monitor.toml](../config/monitor.toml) | fleet monitor: `[mqtt]` only; database and web port are flags (`--db`/`EDGE_MONITOR_DB`, `--web`) | `edge-agent --config FILE monitor` |
| [config/station-scsi.toml](../config/station-scsi.toml) | docking station with 4 SCSI bays (`transport = "scsi"`, one per USB port, matched with udev; vendor table `jieli-dv16`) | `edge-agent run` |
| [config/scsi-vendors.toml](../config/scsi-vendors.toml) | `[[scsi.vendors]]`: the JieLi "DV16" SCSI command table (the only publicly documented one, built in) written out as the template for another vendor's; copy the block into agent.toml | `edge-agent run` (dock) |

```
$ edge-agent --config config/station.toml config validate
ok: config/station.toml is valid
```
"""


def _row(key: str, kind: str, default, choices, lo, hi, doc: str, secret: bool = False) -> str:
    allowed = []
    if choices:
        allowed.append(", ".join(map(str, choices)))
    if lo is not None:
        allowed.append(f">= {lo}")
    if hi is not None:
        allowed.append(f"<= {hi}")
    shown = ("(secret)" if secret and default else "(required)" if default is ... else "(none)" if default is None
             else json.dumps(default, ensure_ascii=False))
    doc = doc.replace("|", "\\|")
    return f"| `{key}` | {kind} | `{shown}` | {'; '.join(allowed)} | {doc} |"


def _entry_models(section: str) -> list[tuple[str, type[BaseModel]]]:
    """The keys of a section whose value is a list of tables, with the table's model."""
    model = Config.model_fields[section].annotation
    out = []
    for key, field in model.model_fields.items():  # type: ignore[union-attr]
        args = typing.get_args(field.annotation)
        if typing.get_origin(field.annotation) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            out.append((key, args[0]))
    return out


def render() -> str:
    out = [INTRO]
    for section, fields in SCHEMA.items():
        out += [f"## [{section}]", "", "| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        for key, f in fields.items():
            out.append(_row(key, f.type, f.default, f.choices, f.min, f.max, f.doc, f.secret))
        out.append("")
        for key, model in _entry_models(section):
            out += [f"Each table in `{section}.{key}`:", "", "| key | type | default | allowed | description |",
                    "|---|---|---|---|---|"]
            out += _model_rows(model)
            for name, sub in _nested_models(model):
                out += [f"Each `{section}.{key}` entry's `{name}`:", "", "| key | type | default | allowed | description |",
                        "|---|---|---|---|---|"]
                out += _model_rows(sub)
    out += ["## The default file (`edge-agent init` writes it)", "", "```toml", render_default().rstrip(), "```", ""]
    return "\n".join(out)


def _model_rows(model: type[BaseModel]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        kind, choices = _type_name(field.annotation)
        if kind.startswith("<") or "." in kind:
            kind = "table"
        lo = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
        hi = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
        default = ... if field.is_required() else field.default
        rows.append(_row(name, kind, default, choices, lo, hi, field.description or ""))
    return rows + [""]


def _nested_models(model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """Fields of an entry holding a table (``X | None``) or tables by name (``dict[str, X]``)."""
    out = []
    for name, field in model.model_fields.items():
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out.append((name, arg))
    return out


if __name__ == "__main__":
    Path(__file__).resolve().parent.parent.joinpath("docs", "config.md").write_text(render(), encoding="utf-8")
    print("docs/config.md written")
