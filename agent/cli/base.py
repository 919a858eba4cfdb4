"""Shared CLI plumbing: the lazily opened config and store, output helpers."""

from __future__ import annotations

import json
from typing import Any

import click

from .. import config as config_mod


class Ctx:
    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self._cfg = None
        self._store = None

    @property
    def cfg(self) -> config_mod.Config:
        if self._cfg is None:
            self._cfg = config_mod.load(self.config_path)
        return self._cfg

    @property
    def store(self):
        if self._store is None:
            from ..store.store import Store

            self._store = Store(self.cfg)
        return self._store


pass_ctx = click.make_pass_decorator(Ctx)


def role(*allowed: str):
    """Decorator: the command needs one of these roles (checked before anything is opened)."""
    import functools

    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            from agent.common.roles import require

            ctx = click.get_current_context().find_object(Ctx)
            require(ctx.cfg, *allowed)
            return f(*args, **kwargs)
        return wrapper
    return deco


def emit_json(obj: Any) -> None:
    """The one JSON shape of every command's result: indented, keys sorted, UTF-8 as is."""
    click.echo(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True, default=str))


def db_upgrade(db, known: list[str], as_json: bool) -> None:
    """`archive db upgrade` and `monitor db upgrade`: apply the migrations ``db`` (opened without
    migrating, an :class:`agent.common.sqlbase.SqlDatabase`) lacks, close it, and say what was
    applied now and in all."""
    try:
        before = db.applied()
        done = db.upgrade()
        after = db.applied()
    finally:
        db.close()
    if as_json:
        emit_json({"db": str(db.path), "dialect": db.dialect, "applied_now": done, "applied": after,
                   "known": known, "was": before})
        return
    click.echo(f"{db.dialect} {db.path}: " + (f"已升级 / applied {', '.join(done)}" if done else "已是最新 / up to date")
               + f" ({len(after)} 个迁移 / migrations, 最新 / newest {after[-1] if after else '-'})")


def echo_audit(rows: list[dict], as_json: bool) -> None:
    """Audit entries as JSON, or one line each: ``audit list`` (the station's) and ``archive audit``
    print them alike."""
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['seq']:>6} {r['ts']} {r['actor']:<24} {r['action']:<9} {r['item_id'] or '-'} {r['detail']}")


def emit_json_line(event: str, **fields: Any) -> None:
    """One event of a long-running command (archive serve, run, monitor, dock watch) as one JSON
    line on stdout (JSON lines: ``{"event": ..., "time": ..., ...}``), flushed at once."""
    from agent.common.timeutil import now_iso

    click.echo(json.dumps({"event": event, "time": now_iso(), **fields}, ensure_ascii=False, sort_keys=True,
                          default=str))


class LazyChoice(click.Choice):
    """A click.Choice whose values come from ``load()`` when first needed (parsing or --help), so
    that starting the command does not import the module that defines them."""

    def __init__(self, load, case_sensitive: bool = True):
        self._load, self._loaded = load, None
        super().__init__((), case_sensitive=case_sensitive)

    @property
    def choices(self):
        if self._loaded is None:
            self._loaded = tuple(self._load())
        return self._loaded

    @choices.setter
    def choices(self, _value) -> None:
        pass


def item_states():
    from ..store.store import ITEM_STATES

    return ITEM_STATES


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
json_lines_option = click.option("--json", "as_json", is_flag=True,
                                 help="Print events as JSON lines on stdout (one object per line) instead of text.")
