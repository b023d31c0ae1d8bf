"""The README's main job: `vpmutrace demo` on the bundled traces, offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_writes_reports_for_every_trace(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "vpmutrace", "demo", "-o", str(tmp_path)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    reports = sorted(tmp_path.glob("*/report.html"))
    assert len(reports) == 11
    for rep in reports:
        assert rep.stat().st_size > 4 * 2**20  # plotly.js is inlined: the report works offline
        doc = json.loads((rep.parent / "analysis.json").read_text())
        assert set(doc) >= {"trace", "exits", "pmu_msr", "ownership", "watchdog", "skid", "silent", "diff", "what_if"}
    pinned = json.loads((tmp_path / "sim-pinned-contention-vmx" / "analysis.json").read_text())
    assert pinned["silent"]["findings"]["frozen_counter"] > 0
    assert "sim-pinned-contention-vmx" in r.stdout and "report.html" in r.stdout
