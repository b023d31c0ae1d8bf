"""Where commands write: one output root for every default output, and checks on output paths.

Rules (README, "Where outputs go"):
- A command given no ``-o`` writes under ``./vpmutrace-out/`` (``OUTPUT_ROOT``), created when
  needed: ``record`` -> ``capture/``, ``selftest`` -> ``selftest/``, ``simulate`` -> ``sim/``,
  ``report`` -> ``report.html``, ``demo`` -> ``demo/``. The checkout's .gitignore ignores it.
- A path given with ``-o`` is used as given, but its parent directory must exist: a typo such as
  ``-o /nonexistent/dir/x.html`` is an error, never a silently created tree.
- An output directory that exists must be empty or hold what the command writes (a dataset for
  ``ingest``, an ``analysis.json`` for ``analyze -o``): the files it replaces are its own, never a
  user's; an output file must not be a directory, an output directory must not be a file.
"""

from __future__ import annotations

from pathlib import Path

from vpmutrace.errors import InputError

OUTPUT_ROOT = Path("vpmutrace-out")
ANALYSIS_FILE = "analysis.json"  # what `analyze -o DIR` writes beside its Parquet files
DEFAULTS = {"record": "capture", "selftest": "selftest", "simulate": "sim", "report": "report.html",
            "demo": "demo"}


def default_output(command: str) -> Path:
    """The default output of ``command``, under the output root."""
    return OUTPUT_ROOT / DEFAULTS[command]


def _parent_exists(path: Path, option: str) -> None:
    parent = path.parent
    if parent == OUTPUT_ROOT:
        OUTPUT_ROOT.mkdir(exist_ok=True)  # the one directory created unasked: the documented root
    if not parent.exists():
        raise InputError(option, f"{path}: directory {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise InputError(option, f"{path}: {parent} is not a directory")


def output_file(path: Path | None, command: str, option: str = "-o") -> Path:
    """The file ``command`` writes: ``path`` (its directory must exist; not a directory), or the default."""
    path = default_output(command) if path is None else path
    try:
        if path.is_dir():
            raise InputError(option, f"{path} is a directory; give a file name (e.g. {path / 'report.html'})")
        _parent_exists(path, option)
    except PermissionError as e:
        raise InputError(option, f"{path}: cannot access ({e.strerror})") from None
    return path


def output_dir(path: Path | None, command: str, option: str = "-o", owns: tuple[str, ...] = ()) -> Path:
    """The directory ``command`` writes into: ``path`` or the default. An existing one must be a
    directory, and empty or holding one of ``owns`` (a file the command itself writes there)."""
    path = default_output(command) if path is None else path
    try:
        if path.exists() and not path.is_dir():
            raise InputError(option, f"{path} exists and is not a directory")
        if path.is_dir():
            if owns and any(path.iterdir()) and not any((path / f).exists() for f in owns):
                raise InputError(option, f"{path} is a directory with other files in it; give a new or empty "
                                         f"directory (it would hold {', '.join(owns)})")
            return path
        _parent_exists(path, option)
    except PermissionError as e:
        raise InputError(option, f"{path}: cannot access ({e.strerror})") from None
    return path
