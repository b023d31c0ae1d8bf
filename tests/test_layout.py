"""Layout: presentation lives under vpmutrace/report/; the capture side installs as vpmutrace.collectors."""

from __future__ import annotations

import importlib.util

from conftest import ROOT


def test_presentation_has_one_home() -> None:
    assert not (ROOT / "vpmutrace" / "report_text.py").exists() and not (ROOT / "vpmutrace" / "render.py").exists()
    from vpmutrace.report.text import info_dict, render_info, time_text  # noqa: F401


def test_collectors_import_as_a_vpmutrace_subpackage() -> None:
    spec = importlib.util.find_spec("vpmutrace.collectors.record")
    assert spec is not None and spec.origin == str(ROOT / "collectors" / "record.py")
    for f in (ROOT / "collectors").glob("*.py"):
        text = f.read_text()
        assert "from collectors" not in text and "import collectors" not in text, f
