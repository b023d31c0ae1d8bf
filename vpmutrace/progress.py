"""Progress of long operations on stderr (reading, ingesting, analysing, writing a report).

One transient status line drawn with rich (a spinner, what is being done, the time it has taken),
the way pip and cargo show theirs; it disappears when the work ends, so stdout and the final
stderr stay what they were. It is shown only when stderr is a terminal and the user did not ask
for quiet (``vpmutrace -q``): a pipe, a log file or a test never sees it.

Library code marks its stages with ``with progress.stage("reading perf.data (287 MB)"):``; with
no display enabled a stage costs a context manager and nothing is imported.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_state: dict[str, Any] = {"enabled": False, "progress": None, "depth": 0}


def enable(quiet: bool = False, stream: Any = None) -> bool:
    """Show progress from now on when ``stream`` (default stderr) is a terminal and not ``quiet``."""
    s = stream if stream is not None else sys.stderr
    _state["enabled"] = (not quiet) and bool(getattr(s, "isatty", lambda: False)())
    return bool(_state["enabled"])


def enabled() -> bool:
    return bool(_state["enabled"])


def _start() -> Any:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    p = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                 console=Console(stderr=True), transient=True)
    p.start()
    return p


@contextmanager
def stage(description: str) -> Iterator[None]:
    """Show ``description`` with a spinner and the elapsed time while the block runs (nested stages
    show below their parent)."""
    if not _state["enabled"]:
        yield
        return
    if _state["progress"] is None:
        _state["progress"] = _start()
    p = _state["progress"]
    task = p.add_task(description, total=None)
    _state["depth"] += 1
    try:
        yield
    finally:
        p.remove_task(task)
        _state["depth"] -= 1
        if _state["depth"] == 0:
            p.stop()
            _state["progress"] = None


def size_text(n: int) -> str:
    """A file size for a status line: 287 MB, 12 KB."""
    for unit, div in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= div:
            return f"{n / div:.0f} {unit}"
    return f"{n} bytes"


def each(items: list[Any], describe: Any) -> Iterator[Any]:
    """The items of a loop, each processed under its own stage (``describe(item)`` names it)."""
    for item in items:
        with stage(describe(item)):
            yield item


def reading(path: Any) -> str:
    """The stage of reading one input: its name and size."""
    from pathlib import Path

    p = Path(path)
    try:
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    except OSError:
        return f"reading {p}"
    return f"reading {p} ({size_text(size)})"
