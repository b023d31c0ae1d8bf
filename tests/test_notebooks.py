"""The notebooks run top to bottom on the bundled fixtures and the simulator."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_the_three_notebooks() -> None:
    assert {p.stem for p in NOTEBOOKS} >= {"mediated_worth_it", "silent_counter_errors", "watchdog_and_the_vpmu"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(o.get("data", {}).get("application/vnd.plotly.v1+json") for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
