"""``python -m tools.scale_sim``: see the package's docstring (tools/scale_sim/__init__.py)."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
