"""`vpmutrace demo`: the main job on the bundled traces (works offline, in a checkout or an installed wheel).

For each bundled real capture and a set of simulator scenarios: ingest to a dataset,
run every analyzer, write the JSON and an interactive HTML report, and print a summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vpmutrace import bundled
from vpmutrace.analyze import run
from vpmutrace.analyze.context import Config
from vpmutrace.errors import InputError
from vpmutrace.readers import load_trace
from vpmutrace.report.html import build, findings
from vpmutrace.sim import simulate

# simulator scenarios with known answers: (scenario, isa, seed)
DEMO_SCENARIOS = (("emulated-multiplex", "vmx", 1), ("mediated-steady", "svm", 1), ("pinned-contention", "vmx", 1),
                  ("skid", "vmx", 1), ("emulated-watchdog", "vmx", 1), ("mediated-partial", "vmx", 1),
                  ("mediated-refused", "svm", 1))


def run_demo(out: Path, fixtures: Path | None = None) -> None:
    fx = fixtures or bundled.location()
    if fx is None or not fx.is_dir():
        raise InputError(str(fixtures or bundled.checkout_fixtures()),
                         "bundled traces not found; pass --fixtures DIR (a checkout's fixtures/)")
    out.mkdir(parents=True, exist_ok=True)
    typer.echo(table_header())
    jobs: list[tuple[str, list[Path]]] = [(n, [fx / f for f in files]) for n, files in bundled.DEMO_TRACES]
    for scenario, isa, seed in DEMO_SCENARIOS:
        name = f"sim-{scenario}-{isa}"
        simulate(scenario, isa, seed, out / name)
        jobs.append((name, [out / name / "dataset"]))
    for name, inputs in jobs:
        td = load_trace(inputs)
        if not name.startswith("sim-"):
            td.save(out / name / "dataset")
        # the design comes from each trace's host snapshot or signatures (the simulator writes a snapshot)
        doc, results = run(td, Config.for_trace(td))
        (out / name / "analysis.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
        report = build(td, doc, results, out / name / "report.html", title=f"vpmutrace: {name}")
        typer.echo("\n".join(table_rows(name, td.meta["events"], doc, findings(doc, td), report)))
    typer.echo(f"\nreports, analysis.json and datasets under {out}; open a report.html in a browser "
               f"(it works offline)")


# the demo table's analysis columns: (header, analyzer, summary key of the number shown)
COLUMNS = (("exits", "exits", "exits_total"), ("pmu msr", "pmu_msr", "pmu_msr_accesses"))
COLUMN_WIDTH = 40  # fits n/a (needs kvm:kvm_exit, kvm:kvm_entry)
MAX_FINDINGS = 4  # per trace in the terminal; the report and analysis.json have them all


def table_header() -> str:
    return f"{'trace':<26} {'events':>8} " + " ".join(f"{h:<{COLUMN_WIDTH}}" for h, _, _ in COLUMNS).rstrip()


def cell(doc: dict, analyzer: str, key: str) -> str:
    """A number an analysis computed, or ``n/a (needs X)`` when that analysis is not computable
    (its own ``needs``, shortened to the event names), never a 0 that was not measured."""
    r = doc.get(analyzer) or {}
    if r.get("computable") is False:
        short = [n.split(" (")[0].removesuffix(" events") for n in r.get("needs") or []]
        return f"n/a (needs {', '.join(short)})"
    v = r.get(key)
    return "n/a" if v is None else str(v)


def table_rows(name: str, events: dict[str, int], doc: dict, found: list[dict[str, str]], report: object) -> list[str]:
    """One trace's row, then its findings' text (most severe first; not-computable notes are the cells),
    then its report."""
    cells = [cell(doc, a, k) for _, a, k in COLUMNS]
    out = [(f"{name:<26} {sum(events.values()):>8} " + " ".join(f"{c:<{COLUMN_WIDTH}}" for c in cells)).rstrip()]
    shown = [f for f in found if f["severity"] != "info"]
    for f in shown[:MAX_FINDINGS]:
        out.append(f"    [{f['severity']}/{f['certainty']}] {f['analyzer']}: {f['finding']}")
    if len(shown) > MAX_FINDINGS:
        out.append(f"    ... and {len(shown) - MAX_FINDINGS} more in {report}")
    if not shown:
        out.append("    no findings")
    out.append(f"    report: {report}")
    return out
