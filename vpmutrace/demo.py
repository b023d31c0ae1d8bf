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
    typer.echo(f"{'trace':<34} {'events':>8} {'exits':>6} {'pmu msr':>8} {'findings':>8}  report")
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
        ev = td.meta["events"]
        f = findings(doc, td)
        serious = sum(1 for x in f if x["severity"] in ("high", "medium"))
        typer.echo(f"{name:<34} {sum(ev.values()):>8} {ev.get('kvm:kvm_exit', 0):>6} "
                   f"{(doc['pmu_msr'] or {}).get('pmu_msr_accesses', '-')!s:>8} {serious:>8}  {report}")
    typer.echo(f"\nreports, analysis.json and datasets under {out}; open a report.html in a browser "
               f"(it works offline)")
