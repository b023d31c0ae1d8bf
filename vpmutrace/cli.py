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


def main() -> None:
    """Entry point: click handles usage errors (exit 2); input errors become one line, exit 2."""
    try:
        app()
    except InputError as e:
        print(f"vpmutrace: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
