"""`vpmutrace demo`: the main job on the bundled traces (works offline on a fresh clone)."""

from __future__ import annotations

from pathlib import Path

import typer

from vpmutrace.errors import InputError
from vpmutrace.readers import load_trace
from vpmutrace.report_text import info_dict

# the bundled real traces, each one input of the demo (see fixtures/PROVENANCE.md)
DEMO_TRACES = (
    ("vmx-nested-ftrace", ["lkml_krause_vmx_nested_6x_ftrace.txt"]),
    ("svm-idle-hlt-ftrace", ["lkml_shukla_svm_idle_hlt_6x.txt"]),
    ("vmx-ept-loop-report", ["lkml_rak_ept_violation_loop_host_write_msr.txt"]),
    ("microguest-perf", ["microguest200.perf.data"]),
    ("microguest-tracedat", ["microguest200.trace.dat"]),
)


def default_fixtures() -> Path:
    return Path(__file__).resolve().parents[1] / "fixtures"


def run_demo(out: Path, fixtures: Path | None = None) -> None:
    fx = fixtures or default_fixtures()
    if not fx.is_dir():
        raise InputError(str(fx), "bundled traces not found; pass --fixtures DIR (a checkout's fixtures/)")
    out.mkdir(parents=True, exist_ok=True)
    typer.echo(f"{'trace':<22} {'format':<17} {'events':>8} {'exits':>6} {'msr':>6} {'lost':>5} "
               f"{'unparsed':>8}  dataset")
    for name, files in DEMO_TRACES:
        td = load_trace([fx / f for f in files])
        path = td.save(out / name)
        d = info_dict(td)
        ev = d["events"]
        typer.echo(f"{name:<22} {d['format']:<17} {sum(ev.values()):>8} {ev.get('kvm:kvm_exit', 0):>6} "
                   f"{ev.get('kvm:kvm_msr', 0):>6} {d['lost_events']:>5} {d['unparsed']:>8}  {path}")
    typer.echo(f"datasets in {out} (Parquet + trace_meta.json; `vpmutrace info {out}/<name>` shows one)")
