"""User-facing errors: one line naming the file, the place in it and what was wrong.

One hierarchy: every error the user caused or the host refuses is a :class:`VpmutraceError`
(InputError for inputs, BadFormat for a format description in a trace, the collectors'
Refusal for what the host cannot do); the CLI prints those as one line with exit status 2.
``ValueError`` and other exceptions are bugs, and are never reported as a usage error.
"""

from __future__ import annotations


class VpmutraceError(Exception):
    """Base of the errors reported to the user as one line (exit status 2)."""


class BadFormat(VpmutraceError):
    """A tracepoint format description (the text of a tracefs ``format`` file) that does not parse;
    readers count it (stats category bad_format) and keep that event's records raw."""


class InputError(VpmutraceError):
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
