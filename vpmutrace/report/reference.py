"""The project's design reference (docs/design.md): where it is, its numbered sections, and the
sections a text cites ("design §1.3", "§2.1-§2.3").

In a checkout the file is ``docs/design.md``; a wheel carries it as ``vpmutrace/docs/design.md``
(setup.py copies it). Sections are the document's ``## N.`` and ``### N.M`` headings.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

DOC = "docs/design.md"
CITE = re.compile(r"§(\d+(?:\.\d+)?)")
_HEADING = re.compile(r"^(##|###) (\d+(?:\.\d+)?)\.? (.+)$")


def path() -> Path | None:
    here = Path(__file__).resolve()
    for p in (here.parents[2] / DOC, here.parents[1] / DOC):
        if p.is_file():
            return p
    return None


@cache
def sections() -> dict[str, tuple[str, str]]:
    """{number: (title, text)}; a section's text runs to the next heading (a top-level section's
    text is its own introduction, without its subsections)."""
    p = path()
    if p is None:
        return {}
    out: dict[str, tuple[str, str]] = {}
    cur: str | None = None
    for line in p.read_text().splitlines():
        m = _HEADING.match(line)
        if m:
            cur = m.group(2)
            out[cur] = (m.group(3).strip(), "")
        elif line.startswith("#"):
            cur = None
        elif cur is not None:
            title, text = out[cur]
            out[cur] = (title, text + line + "\n")
    return {k: (t, x.strip()) for k, (t, x) in out.items()}


def cited(text: str) -> list[str]:
    """Section numbers a text cites, in order of first citation."""
    return list(dict.fromkeys(CITE.findall(text)))
