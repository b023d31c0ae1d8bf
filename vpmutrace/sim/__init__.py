"""Ground-truth trace simulator (scenarios from the reference model, with truth.json)."""

from __future__ import annotations

import json
from pathlib import Path

from vpmutrace.sim.generate import DEFAULT_KERNEL, SCENARIOS, Sim
from vpmutrace.sim.truth import truth

__all__ = ["DEFAULT_KERNEL", "SCENARIOS", "Sim", "simulate", "truth"]


def simulate(scenario: str, isa: str, seed: int, out: Path, kernel: str | None = None,
             guest_os: str = "linux") -> dict:
    """Write report.txt (trace-cmd report -t text), trace.perf.data, host.json, dataset/ and truth.json."""
    from vpmutrace.readers import load_trace

    sim = Sim(scenario, isa, seed, kernel, guest_os)
    sim.run()
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.txt").write_text(sim.report_text())
    sim.write_perf_data(out / "trace.perf.data")
    host = sim.host_snapshot()
    (out / "host.json").write_text(json.dumps(host, indent=2) + "\n")
    td = load_trace([out / "report.txt"])
    td.meta["host"] = host
    td.meta["kernel_release"] = sim.kernel_release
    td.meta["simulated"] = {"scenario": scenario, "isa": isa, "seed": seed, "model": sim.model, "kernel": sim.kernel,
                            "guest_os": guest_os, "description": SCENARIOS[scenario]}
    td.save(out / "dataset")
    t = truth(sim)
    t["scenario"] = {"name": scenario, "isa": isa, "seed": seed, "model": sim.model, "kernel": sim.kernel,
                     "guest_os": guest_os}
    (out / "truth.json").write_text(json.dumps(t, indent=2) + "\n")
    return t
