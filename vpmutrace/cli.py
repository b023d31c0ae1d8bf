"""Command-line interface (thin: parse arguments, call the library, print)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from vpmutrace import __version__
from vpmutrace.errors import InputError
from vpmutrace.report_text import info_dict, render_info

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Trace analysis for KVM virtual PMUs (emulated and mediated passthrough vPMU).\n\n"
                       "Exit codes: 0 success, 1 findings-level failure where a command documents it, "
                       "2 usage or input error.")

Traces = Annotated[list[Path], typer.Argument(help="trace files (perf.data, trace.dat, ftrace / trace-cmd "
                                                   "report / perf script text) or one ingested dataset dir")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vpmutrace {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    pass


@app.command()
def info(traces: Traces,
         as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False) -> None:
    """Format, tool/kernel, time span, CPUs, events per kind, lost and unparsed counts."""
    from vpmutrace.readers import load_trace

    td = load_trace(list(traces))
    d = info_dict(td)
    typer.echo(json.dumps(d, indent=2, sort_keys=True) if as_json else render_info(d))


@app.command()
def ingest(traces: Traces,
           out: Annotated[Path, typer.Option("-o", "--out", help="output dataset directory")]) -> None:
    """Decode traces into a Parquet dataset (one file per table + trace_meta.json)."""
    from vpmutrace.readers import load_trace

    td = load_trace(list(traces))
    path = td.save(out)
    d = info_dict(td)
    typer.echo(f"wrote {path}: {sum(d['events'].values())} events in {len(td.tables)} tables; "
               f"lost {d['lost_events']}, unparsed {d['unparsed']}")


@app.command()
def show(traces: Traces,
         event: Annotated[str | None, typer.Option(help="only this event: system:name, name, or a table")] = None,
         limit: Annotated[int, typer.Option(help="at most N lines, the first in time (0: all)")] = 0) -> None:
    """Events as text lines, as trace-cmd report prints them (computed for the lines shown only)."""
    from vpmutrace.readers import load_trace
    from vpmutrace.show import lines

    td = load_trace(list(traces))
    out = sys.stdout
    try:
        for line in lines(td, event, limit or None):
            out.write(line + "\n")
        out.flush()
    except BrokenPipeError:  # (| head)
        sys.stdout = None  # type: ignore[assignment]


@app.command()
def demo(out: Annotated[Path, typer.Option("-o", "--out", help="where to write the results")] = Path("out/demo"),
         fixtures: Annotated[Path | None, typer.Option(help="bundled traces directory (default: the "
                                                            "checkout's fixtures/)")] = None) -> None:
    """The main job on the bundled real traces: ingest each, summarise it, write its dataset."""
    from vpmutrace.demo import run_demo

    run_demo(out, fixtures)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def record(
    command: Annotated[list[str] | None, typer.Argument(help="workload to run and record: put it after --")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="output directory")] = Path("vpmu-capture"),
    duration: Annotated[float | None, typer.Option(help="record for S seconds (default 10 without a command)")]
    = None,
    backend: Annotated[str, typer.Option(help="perf (perf record -a) or tracefs (private tracefs instance)")]
    = "perf",
    events: Annotated[str, typer.Option(help="event sets and/or system:event names, comma separated: "
                                              "vpmu (default), exits, host-msr, full")] = "vpmu",
    cpus: Annotated[str | None, typer.Option(help="CPU list to record, e.g. 0-3,6 (default all)")] = None,
    samples: Annotated[bool, typer.Option(help="also sample cycles (guest+host) or cpu-clock without a PMU")]
    = False,
    raw_only: Annotated[bool, typer.Option(help="keep the raw capture only, do not ingest")] = False,
    buffer_kb: Annotated[int, typer.Option(help="tracefs backend: ring buffer per CPU in KiB")] = 16384,
) -> None:
    """Record a KVM host (kvm tracepoints, NMIs, scheduling) with a host snapshot, then ingest it.

    Event sets: exits = kvm_exit/kvm_entry; vpmu = exits + kvm_msr, kvm_inj_virq, kvm_apic_accept_irq,
    kvm_inj_exception, kvm_cpuid, kvm_pio, kvm_userspace_exit, nmi_handler, sched_switch,
    local_timer_entry; host-msr = msr:read_msr/write_msr/rdpmc (high rate); full = all of these and more.
    """
    from collectors.host import Refusal
    from collectors.record import RecordOptions, describe, parse_cpus
    from collectors.record import record as do_record

    try:
        res = do_record(RecordOptions(out=out, backend=backend, events=events, cpus=parse_cpus(cpus),
                                      duration=duration, command=list(command) if command else None,
                                      samples=samples, raw_only=raw_only, buffer_kb=buffer_kb,
                                      progress=sys.stderr.isatty()))
    except (Refusal, ValueError) as e:
        print(f"vpmutrace record: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    typer.echo(describe(res))
    if res.interrupted:
        raise typer.Exit(130)


@app.command()
def selftest(out: Annotated[Path, typer.Option("-o", "--out", help="where to keep the captures")]
             = Path("vpmu-selftest"),
             backend: Annotated[list[str] | None, typer.Option(help="perf and/or tracefs (default: all "
                                                                    "available)")] = None) -> None:
    """Record the bundled KVM guest with each available backend and check the decoded events.

    Exit status 1 when a check fails.
    """
    from collectors.host import Refusal
    from collectors.selftest import render
    from collectors.selftest import selftest as run

    try:
        checks = run(out, backend)
    except Refusal as e:
        print(f"vpmutrace selftest: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    typer.echo(render(checks))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


ModelOpt = Annotated[str, typer.Option("--model", help="reference design to check against: mediated or emulated")]


def _analyze(traces: list[Path], model: str, only: list[str] | None, as_json: bool, out: Path | None,
             skid_window_us: float, switch_cost_ns: float | None) -> dict:
    from dataclasses import replace

    from vpmutrace.analyze import ANALYZERS, run
    from vpmutrace.analyze.base import Config
    from vpmutrace.readers import load_trace
    from vpmutrace.render import render

    if model not in ("mediated", "emulated"):
        raise InputError("--model", f"unknown model {model!r}: mediated or emulated")
    bad = [o for o in only or [] if o not in ANALYZERS and o != "what_if"]
    if bad:
        raise InputError("--only", f"unknown analyzer(s) {', '.join(bad)}: {', '.join(ANALYZERS)}")
    td = load_trace(list(traces))
    cfg = Config.for_trace(td, model=model, skid_window_ns=int(skid_window_us * 1000))
    if switch_cost_ns is not None:
        cfg.setup = replace(cfg.setup, switch_cost_ns=switch_cost_ns)
    doc, results = run(td, cfg, only)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for r in results.values():
            for name, df in r.rows.items():
                df.write_parquet(out / f"{name}.parquet")
        (out / "analysis.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
    else:
        typer.echo("\n\n".join(render(n, r, doc) for n, r in results.items()))
        if out is not None:
            typer.echo(f"\nrow-level results and analysis.json in {out}")
    return doc


@app.command()
def analyze(traces: Traces, model: ModelOpt = "mediated",
            only: Annotated[str | None, typer.Option(help="comma list: exits,pmu_msr,ownership,watchdog,skid,"
                                                           "silent,diff")] = None,
            as_json: Annotated[bool, typer.Option("--json", help="JSON with the stable top-level keys")] = False,
            out: Annotated[Path | None, typer.Option("-o", "--out", help="write row-level results as Parquet")]
            = None,
            skid_window_us: Annotated[float, typer.Option(help="skid window in microseconds")] = 10.0,
            switch_cost_ns: Annotated[float | None, typer.Option(help="PMU context-switch cost per exit "
                                                                        "(default 500 ns, reference §7)")] = None,
            fail_on_divergence: Annotated[bool, typer.Option(help="exit 1 when the trace diverges from the model")]
            = False) -> None:
    """Run the analyzers: exits, PMU MSR traffic, ownership, watchdog gaps, skid, silent errors, model diff."""
    doc = _analyze(traces, model, only.split(",") if only else None, as_json, out, skid_window_us, switch_cost_ns)
    if fail_on_divergence and (doc.get("diff") or {}).get("divergent_events"):
        raise typer.Exit(1)


def _one(name: str, key: str, doc: str) -> None:
    def cmd(traces: Traces, model: ModelOpt = "mediated",
            as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
            out: Annotated[Path | None, typer.Option("-o", "--out", help="row-level results as Parquet")] = None,
            skid_window_us: Annotated[float, typer.Option(help="skid window in microseconds")] = 10.0) -> None:
        _analyze(traces, model, [key] + (["what_if"] if key == "diff" else []), as_json, out, skid_window_us, None)

    cmd.__doc__ = doc
    app.command(name=name)(cmd)


for _name, _key, _doc in (
        ("exits", "exits", "VM exits per reason / vCPU / VM with handling-time statistics (perf kvm stat view)."),
        ("pmu-msr", "pmu_msr", "PMU MSR traffic by MSR and kind, and what the mediated design would trap."),
        ("ownership", "ownership", "PMU ownership windows per CPU, guest residency, context-switch cost."),
        ("watchdog", "watchdog", "NMI-watchdog coverage per CPU and blind gaps (with guest time in them)."),
        ("skid", "skid", "PMIs near VM transitions: correctly attributed, misattributed to host, ambiguous."),
        ("silent", "silent", "Silent vPMU backend errors: frozen counters, counter contention, reprogram storms."),
        ("diff", "diff", "Divergences of the trace from the reference model, and the what-if projection.")):
    _one(_name, _key, _doc)


@app.command()
def simulate(scenario: Annotated[str, typer.Option(help="scenario name (see --list)")] = "mediated-steady",
             isa: Annotated[str, typer.Option(help="vmx (Intel) or svm (AMD)")] = "vmx",
             seed: Annotated[int, typer.Option(help="random seed")] = 1,
             out: Annotated[Path, typer.Option("-o", "--out", help="output directory")] = Path("sim-out"),
             list_: Annotated[bool, typer.Option("--list", help="list the scenarios")] = False) -> None:
    """Generate a host trace from the reference model (report text + dataset) and its truth.json."""
    from vpmutrace.sim import SCENARIOS
    from vpmutrace.sim import simulate as sim

    if list_:
        for k, v in SCENARIOS.items():
            typer.echo(f"{k:<20} {v}")
        return
    if scenario not in SCENARIOS:
        raise InputError("--scenario", f"unknown scenario {scenario!r}: {', '.join(SCENARIOS)}")
    if isa not in ("vmx", "svm"):
        raise InputError("--isa", f"unknown isa {isa!r}: vmx or svm")
    t = sim(scenario, isa, seed, out)
    typer.echo(f"{scenario} ({isa}, seed {seed}, {t['scenario']['model']} design): {t['exits']['exits_total']} exits; "
               f"wrote {out}/report.txt, {out}/dataset, {out}/truth.json")


@app.command()
def report(traces: Traces, out: Annotated[Path, typer.Option("-o", "--out", help="HTML file to write")]
           = Path("vpmutrace-report.html"), model: ModelOpt = "mediated",
           window: Annotated[str | None, typer.Option(help="detail window START:END in seconds (trace clock)")]
           = None,
           max_points: Annotated[int, typer.Option(help="detail points cap (bounds the file size)")] = 60_000,
           title: Annotated[str | None, typer.Option(help="report title")] = None) -> None:
    """Self-contained interactive HTML report (works offline): findings, timeline, exits, MSRs, diff."""
    from vpmutrace.analyze import run
    from vpmutrace.analyze.base import Config
    from vpmutrace.readers import load_trace
    from vpmutrace.report.html import build

    win = None
    if window:
        try:
            a, b = (float(x) for x in window.split(":"))
        except ValueError:
            raise InputError("--window", f"expected START:END in seconds, got {window!r}") from None
        win = (int(a * 1e9), int(b * 1e9))
    td = load_trace(list(traces))
    doc, results = run(td, Config.for_trace(td, model=model))
    path = build(td, doc, results, out, max_points, win, title)
    typer.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")


def main() -> None:
    """Entry point: click handles usage errors (exit 2); input errors become one line, exit 2."""
    try:
        app()
    except InputError as e:
        print(f"vpmutrace: error: {e}", file=sys.stderr)
        sys.exit(2)
    except MemoryError as e:
        detail = f" ({e})" if str(e) else ""
        print(f"vpmutrace: error: out of memory{detail}; the tables of a trace take about the size of a "
              "perf.data (see README, Performance)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
