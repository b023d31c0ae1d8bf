"""Ground-truth trace simulator (scenarios from the reference model, with truth.json)."""

from __future__ import annotations

import json
from pathlib import Path

from vpmutrace.sim.generate import SCENARIOS, Sim
from vpmutrace.sim.truth import truth

__all__ = ["SCENARIOS", "Sim", "simulate", "truth"]


def simulate(scenario: str, isa: str, seed: int, out: Path) -> dict:
    """Write report.txt (trace-cmd report text), trace.perf.data, dataset/ and truth.json for one run."""
    from vpmutrace.readers import load_trace

    sim = Sim(scenario, isa, seed)
    sim.run()
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.txt").write_text(sim.report_text())
    sim.write_perf_data(out / "trace.perf.data")
    td = load_trace([out / "report.txt"])
    td.meta["host"] = sim.host_snapshot()
    td.meta["simulated"] = {"scenario": scenario, "isa": isa, "seed": seed, "model": sim.model,
                            "description": SCENARIOS[scenario]}
    td.save(out / "dataset")
    t = truth(sim)
    t["scenario"] = {"name": scenario, "isa": isa, "seed": seed, "model": sim.model}
    (out / "truth.json").write_text(json.dumps(t, indent=2) + "\n")
    return t
