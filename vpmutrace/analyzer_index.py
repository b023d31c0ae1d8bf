"""The analyzers' names and titles without importing them, so that ``vpmutrace --help`` is instant.

Importing an analyzer imports polars (a fifth of a second, more on a busy machine); listing the
commands needs only each registry record's name, title and order. They are read from the
``ANALYZER = Analyzer("name", "title", ..., order=N)`` assignment of each module of
``vpmutrace.analyze`` with :mod:`ast`, the same records ``vpmutrace.analyze.registry()`` imports
(a test checks both agree). A record whose name or title is not a literal makes this fall back
to importing the registry.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ANALYZE_DIR = Path(__file__).resolve().parent / "analyze"
DEFAULT_ORDER = 100  # base.Analyzer.order's default


def _record(tree: ast.Module) -> tuple[str, str, int] | None | bool:
    """(name, title, order) of the module's ANALYZER, None when it has none, False when not literal."""
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ANALYZER"
                                                       for t in node.targets)):
            continue
        call = node.value
        if not (isinstance(call, ast.Call) and len(call.args) >= 2):
            return False
        try:
            name, title = ast.literal_eval(call.args[0]), ast.literal_eval(call.args[1])
            order = next((ast.literal_eval(k.value) for k in call.keywords if k.arg == "order"), DEFAULT_ORDER)
        except ValueError:
            return False
        return str(name), str(title), int(order)
    return None


@cache
def analyzer_titles() -> dict[str, str]:
    """{analyzer name: title}, in registry order (order, then name)."""
    found = []
    for f in sorted(ANALYZE_DIR.glob("*.py")):
        rec = _record(ast.parse(f.read_text(), str(f)))
        if rec is False:
            from vpmutrace.analyze import registry

            return {n: a.title for n, a in registry().items()}
        if rec:
            found.append(rec)
    return {n: t for n, t, _ in sorted(found, key=lambda r: (r[2], r[0]))}
