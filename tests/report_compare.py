"""Compare ``vpmutrace show`` lines with ``trace-cmd report`` text, event type by event type.

Used by tests/test_exact_text.py, and by hand on any trace (trace-cmd 3.2 on PATH or TRACE_CMD):

    .venv/bin/python tests/report_compare.py TRACE.dat [REPORT.txt] [--limit N]

Lines are matched per (event, CPU) in order (trace-cmd and vpmutrace may order events of
different CPUs with the same microsecond differently); a line's body may span several lines
(an event whose text holds a newline).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

LINE = re.compile(r"^(?:(?P<src>\S+): )?\s*(?P<comm>.*?)-(?P<pid>-?\d+)\s+\[(?P<cpu>\d+)\]\s*(?P<ts>\d+(?:\.\d+)?): "
                  r"(?P<event>[\w.+-]+):\s(?P<body>.*)$", re.S)


PERF_LINE = re.compile(r"^\s*(?P<comm>.*?)\s+(?P<pid>-?\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<ts>\d+\.\d+):\s+"
                       r"(?P<system>[\w.+-]+):(?P<event>[\w.+-]+):\s(?P<body>.*)$", re.S)


def parse_perf_script(text: str) -> list[dict[str, str]]:
    """Rows of ``perf script`` text (``comm pid [cpu] ts: system:event: body``)."""
    out: list[dict[str, str]] = []
    for ln in text.split("\n"):
        m = PERF_LINE.match(ln)
        if m:
            row = m.groupdict()
            row["body"] = row["body"].lstrip(" ")
            out.append(row)
        elif out and ln:
            out[-1]["body"] += "\n" + ln
    return out


def parse_report(text: str | Iterable[str]) -> list[dict[str, str]]:
    """Rows of report text; lines that do not start an event continue the previous event's body.
    Lines given as a list (ours) have their undecodable bytes (kept as surrogates) replaced as the
    report's bytes are when decoded with errors="replace"."""
    lines = text.split("\n") if isinstance(text, str) else \
        [ln.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for ln in text]
    out: list[dict[str, str]] = []
    for ln in lines:
        m = LINE.match(ln)
        if m:
            row = m.groupdict()
            row["body"] = _strip_pad(row["body"])
            out.append(row)
        elif out and not ln.startswith("cpus="):
            out[-1]["body"] += "\n" + ln
    for row in out:
        row["body"] = row["body"].rstrip("\n")
    return out


def _strip_pad(body: str) -> str:
    """The body without the padding after the event name (``name:`` is padded to 21 columns)."""
    return body.lstrip(" ")


def by_event(rows: list[dict[str, str]], limit: int | None = None) -> dict[str, dict[str, list[str]]]:
    """{event: {cpu: [body, ...]}} (the first ``limit`` rows of each event)."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    seen: dict[str, int] = defaultdict(int)
    for r in rows:
        if limit is not None and seen[r["event"]] >= limit:
            continue
        seen[r["event"]] += 1
        out[r["event"]][r["cpu"]].append(r["body"])
    return out


def differences(ours: list[dict[str, str]], ref: list[dict[str, str]], limit: int | None = None
                ) -> dict[str, tuple[str, str]]:
    """{event: (our body, trace-cmd's body)} of the first differing line of each event type whose
    lines differ (a missing line is the empty body)."""
    a, b = by_event(ours, limit), by_event(ref, limit)
    out: dict[str, tuple[str, str]] = {}
    for ev in sorted(set(a) | set(b)):
        for cpu in sorted(set(a.get(ev, {})) | set(b.get(ev, {}))):
            x, y = a.get(ev, {}).get(cpu, []), b.get(ev, {}).get(cpu, [])
            for i in range(max(len(x), len(y))):
                p = x[i] if i < len(x) else "<no line>"
                q = y[i] if i < len(y) else "<no line>"
                if p != q:
                    out.setdefault(ev, (p, q))
                    break
    return out


def trace_cmd() -> str | None:
    tc = os.environ.get("TRACE_CMD") or "/work/tools/tc32/trace-cmd"
    return tc if Path(tc).exists() else None


def report(path: Path) -> str:
    tc = trace_cmd()
    if tc is None:
        raise SystemExit("no trace-cmd 3.2 (set TRACE_CMD)")
    return subprocess.run([tc, "report", "-N", str(path)], capture_output=True, check=True).stdout.decode(
        "utf-8", "replace")


def main(argv: list[str]) -> int:
    from vpmutrace.readers import load_trace
    from vpmutrace.show import lines

    limit = None
    if "--limit" in argv:
        i = argv.index("--limit")
        limit = int(argv[i + 1])
        del argv[i:i + 2]
    path = Path(argv[0])
    perf = path.name.endswith("perf.data") or "data" in path.name.split(".")
    if perf:
        ref_text = Path(argv[1]).read_text(errors="replace") if len(argv) > 1 else subprocess.run(
            ["perf", "script", "-i", str(path)], capture_output=True).stdout.decode("utf-8", "replace")
        ref = parse_perf_script(ref_text)
    else:
        ref_text = Path(argv[1]).read_text(errors="replace") if len(argv) > 1 else report(path)
        ref = parse_report(ref_text)
    td = load_trace([path])
    events = sorted({r["event"] for r in ref})
    ours: list[dict[str, str]] = []
    owners = td.event_tables()
    for ev in events:
        full = next((e for e in owners if e.partition(":")[2] == ev), None)
        if full is None:
            continue
        ours += parse_report(list(lines(td, full, limit)))
    diff = differences(ours, ref, limit)
    print(f"{path}: {len(diff)} of {len(events)} event types differ")
    for ev, (p, q) in diff.items():
        print(f"  {ev}:\n    ours {p!r}\n    tc   {q!r}")
    for e in td.stats.entries():
        if e.category.startswith("text_"):
            print(f"  counted {e.category} {e.name} {e.count}: {e.examples[:1]}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
