"""User-facing errors: one line naming the file, the place in it and what was wrong."""

from __future__ import annotations


class InputError(Exception):
    """Bad input from the user (a file we cannot read, a malformed record).

    Rendered by the CLI as a single line and exit code 2, never as a traceback.
    """

    def __init__(self, path: str, what: str, where: str | None = None) -> None:
        self.path = str(path)
        self.where = where
        self.what = what
        loc = f"{self.path}:{where}" if where else self.path
        super().__init__(f"{loc}: {what}")


class UnsupportedFormat(Exception):
    """A print fmt construct the format engine does not evaluate (the event keeps its raw fields)."""
