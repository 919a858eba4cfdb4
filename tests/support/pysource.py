"""ast.parse for tests that read the project's sources.

CPython 3.11 (3.11.7 on these machines) keeps the AST converter's recursion depth per
interpreter, not per thread (gh-106905, fixed in 3.12): when another thread formats a traceback
at the same moment (3.11's traceback module parses the failing line to place its carets), the
converter can raise ``SystemError: AST constructor recursion depth mismatch``. Parsing the same
text again is correct; any other error is raised at once.
"""

from __future__ import annotations

import ast


def parse(source: str, filename: str = "<unknown>", attempts: int = 5) -> ast.Module:
    for attempt in range(attempts):
        try:
            return ast.parse(source, filename=filename)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
