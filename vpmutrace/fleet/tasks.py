"""The work of one capture, run as a Dask task on a worker: ingest its traces, or analyse its dataset.

Each task is the single-host command on that capture alone (``vpmutrace ingest`` / ``vpmutrace
analyze`` and ``report``: the same loader, configuration defaults and analyzers), so a fleet run
gives every host the numbers it gets on its own. A bad input becomes that capture's one-line error
in the result (the other captures go on); the fleet commands report it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vpmutrace.errors import InputError
from vpmutrace.fleet.tree import trace_files

ANALYSIS = "analysis.json"
REPORT = "report.html"


def ingest_capture(src: str, out: str) -> dict[str, Any]:
    """Ingest the trace files of the capture directory ``src`` (its host.json is found next to them)
    into the dataset ``out``: {"events", "tables", "lost_events", "unparsed"} or {"error"}."""
    from vpmutrace.readers import load_trace

    try:
        td = load_trace(trace_files(Path(src)))
        td.save(out)
    except InputError as e:
        return {"error": str(e)}
    m = td.meta
    return {"events": sum(m["events"].values()), "tables": len(td.tables), "lost_events": m.get("lost_events", 0),
            "unparsed": m.get("unparsed", 0)}


def analyze_capture(dataset: str, out: str, title: str, report: bool = True) -> dict[str, Any]:
    """Every analyzer on the dataset ``dataset`` (read lazily), as ``vpmutrace analyze`` runs them with
    its defaults; writes ``out``/analysis.json and, with ``report``, ``out``/report.html. Returns
    {"doc": the analysis document} or {"error"}."""
    from vpmutrace.analyze import run
    from vpmutrace.analyze.context import Config
    from vpmutrace.readers import load_trace

    try:
        td = load_trace([Path(dataset)])
        doc, results = run(td, Config.for_trace(td))
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        (o / ANALYSIS).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        if report:
            from vpmutrace.report.html import build

            build(td, doc, results, o / REPORT, title=title)
    except InputError as e:
        return {"error": str(e)}
    return {"doc": json.loads(json.dumps(doc, default=str))}
