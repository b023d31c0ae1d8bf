"""The README's main job: `vpmutrace demo` on the bundled traces, offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vpmutrace.analyze import keys


def test_demo_writes_reports_for_every_trace(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "vpmutrace", "demo", "-o", str(tmp_path)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    reports = sorted(tmp_path.glob("*/report.html"))
    assert len(reports) == 12
    for rep in reports:
        assert rep.stat().st_size > 4 * 2**20  # plotly.js is inlined: the report works offline
        doc = json.loads((rep.parent / "analysis.json").read_text())
        assert list(doc) == keys()
    pinned = json.loads((tmp_path / "sim-pinned-contention-vmx" / "analysis.json").read_text())
    assert pinned["silent"]["counts"]["frozen_counter"] > 0 and pinned["design"]["design"] == "emulated"
    refused = json.loads((tmp_path / "sim-mediated-refused-svm" / "analysis.json").read_text())
    assert {f["kind"] for f in refused["findings"][:2]} == {"mediated_refused", "watchdog_blocks_mediated"}
    assert "sim-pinned-contention-vmx" in r.stdout and "report.html" in r.stdout
