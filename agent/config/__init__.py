"""The one configuration schema of edge-agent, its loader and its writer.

The configuration is a single TOML file (default ``/etc/edge-agent/agent.toml``; overridden by
``--config PATH`` or ``$EDGE_AGENT_CONFIG``). Its schema is a tree of pydantic models: the root
:class:`Config` (``root.py``) with one model per section, one module each (``device.py``,
``mqtt.py``, ``dock.py`` …), every key with its default, bounds and description. Unknown
sections and keys are refused, types are strict, and every refusal is one :class:`ConfigError`
line that names the key and the line of the file (``explain.py``). This package is the only
reader of TOML in the agent (``file.py``).
"""

from __future__ import annotations

from .file import (DEFAULT_PATH, ENV_VAR, atomic_write_text, config_path, load, loads, parse_cli_value,
                   parse_toml, render_default, set_value, toml_text, validate, validate_value)
from .keys import SCHEMA, KeyInfo, split_key
from .root import Config

__all__ = ["DEFAULT_PATH", "ENV_VAR", "SCHEMA", "Config", "KeyInfo", "atomic_write_text", "config_path", "load",
           "loads", "parse_cli_value", "parse_toml", "render_default", "set_value", "split_key", "toml_text", "validate",
           "validate_value"]
