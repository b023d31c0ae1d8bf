"""User-facing errors: one line naming the file, the place in it and what was wrong.

Every error a user can cause (a bad file, a bad option value, a host that cannot do what was
asked) is a :class:`UserError`; the CLI prints it as ``vpmutrace: error: <message>`` on one line
and exits with status 2, never with a traceback. One hierarchy: InputError for inputs, BadFormat
for a format description in a trace, the collectors' Refusal for what the host cannot do.
``ValueError`` and other exceptions are bugs, never reported as a usage error.
"""

from __future__ import annotations

PREFIX = "vpmutrace"  # the program name every message the CLI prints starts with


class UserError(Exception):
    """A mistake of the user or a refusal of the host: one line, exit status 2."""


class BadFormat(UserError):
    """A tracepoint format description (the text of a tracefs ``format`` file) that does not parse;
    readers count it (stats category bad_format) and keep that event's records raw."""


class InputError(UserError):
    """Bad input from the user (a file we cannot read, a malformed record, a bad option value).

    ``path`` names the file, or the option (``--window``) for a bad option value.
    """

    def __init__(self, path: str, what: str, where: str | None = None) -> None:
        self.path = str(path)
        self.where = where
        self.what = what
        loc = f"{self.path}:{where}" if where else self.path
        super().__init__(f"{loc}: {what}")


def error_line(message: object) -> str:
    """The one line the CLI prints for an error."""
    return f"{PREFIX}: error: {message}"


def warning_line(message: object) -> str:
    """The one line printed for a warning (the command goes on)."""
    return f"{PREFIX}: warning: {message}"


def plural(n: int, singular: str, plural_form: str | None = None) -> str:
    """``1 rule``, ``2 rules``: a count with its noun in the right number."""
    return f"{n} {singular if n == 1 else (plural_form or singular + 's')}"


class UnsupportedFormat(Exception):
    """A print fmt construct the format engine does not evaluate (the event keeps its raw fields)."""
