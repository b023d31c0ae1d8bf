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


def test_design_sections_cited_exist_in_the_projects_reference() -> None:
    """Every "§N.M" the code, docs and findings cite is a section of docs/design.md, which is in the
    clone (and the wheel: tests/test_wheel.py)."""
    import re

    from vpmutrace.report import reference

    assert reference.path() == ROOT / "docs" / "design.md"
    sections = reference.sections()
    cited: dict[str, set[str]] = {}
    for f in [*ROOT.glob("vpmutrace/**/*.py"), *ROOT.glob("collectors/*.py"), ROOT / "README.md",
              *ROOT.glob("docs/*.md")]:
        for n in reference.cited(f.read_text()):
            cited.setdefault(n, set()).add(str(f.relative_to(ROOT)))
    assert len(cited) >= 15
    missing = {n: sorted(w) for n, w in cited.items() if n not in sections}
    assert not missing, missing
    for f in ROOT.glob("vpmutrace/**/*.py"):  # no citation of a document that is not in the clone
        assert not re.search(r"vpmu-reference|shared/docs", f.read_text()), f
    assert sections["1.3"][0] == "MSR interception" and "vmx_recalc_pmu_msr_intercepts()" in sections["1.3"][1]
