"""The real captures `vpmutrace demo` runs on, declared once.

In a checkout they are read from ``fixtures/`` (see fixtures/PROVENANCE.md for their origin and
licence); a wheel carries copies of these files only (setup.py copies them into
``vpmutrace/demo_traces/`` at build time), so ``pip install`` + ``vpmutrace demo`` works anywhere.
This module imports nothing heavy: setup.py reads it at build time.
"""

from __future__ import annotations

from pathlib import Path

# (demo name, input files in fixtures/)
DEMO_TRACES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vmx-nested-ftrace", ("lkml_krause_vmx_nested_6x_ftrace.txt",)),
    ("svm-idle-hlt-ftrace", ("lkml_shukla_svm_idle_hlt_6x.txt",)),
    ("vmx-ept-loop-report", ("lkml_rak_ept_violation_loop_host_write_msr.txt",)),
    ("microguest-perf", ("microguest200.perf.data",)),
    ("microguest-tracedat", ("microguest200.trace.dat",)),
)
# what a wheel carries: the inputs and their provenance
FILES: tuple[str, ...] = tuple(sorted({f for _, fs in DEMO_TRACES for f in fs} | {"PROVENANCE.md"}))
PACKAGE_DIR = "demo_traces"


def checkout_fixtures() -> Path:
    """fixtures/ of the checkout this package runs from (absent in an installed wheel)."""
    return Path(__file__).resolve().parents[1] / "fixtures"


def location() -> Path | None:
    """Where the demo's inputs are: the checkout's fixtures/, else the copies inside the package;
    None when neither holds them all."""
    for d in (checkout_fixtures(), Path(__file__).resolve().parent / PACKAGE_DIR):
        if all((d / f).is_file() for f in FILES):
            return d
    return None
