"""Command-line interface (thin: parse arguments, call the library, print).

Every user error, whether a bad file, a bad option value or a usage mistake, is one line
``vpmutrace: error: ...`` on stderr and exit status 2 (``errors.UserError``). Progress of long
operations goes to stderr when it is a terminal (``vpmutrace.progress``; ``-q`` silences it).
``--help`` and ``--version`` import neither polars nor the analyzers: the analyzer commands are
listed from their registry records' source (``vpmutrace.analyzer_index``) and built when run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

try:  # recent typer carries its own copy of click
    from typer import _click as click
    from typer.exceptions import Abort
except ImportError:  # pragma: no cover - typer that depends on click
    import click  # type: ignore[no-redef]
    from click.exceptions import Abort  # type: ignore[no-redef,assignment]

import vpmutrace.cli_env  # noqa: F401  (before numpy is imported)
from vpmutrace import __version__, progress
from vpmutrace.errors import InputError, UserError, error_line, warning_line
from vpmutrace.options import (
    EXIT_GROUPINGS,
    check_choice,
    check_counters,
    check_design,
    check_positive,
    cost_range,
)
from vpmutrace.outputs import ANALYSIS_FILE, default_output, output_dir, output_file

CONTEXT = {"help_option_names": ["-h", "--help"]}


class _Commands(TyperGroup):
    """The static commands plus one per analyzer, listed without importing the analyzers."""

    listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        from vpmutrace.analyzer_index import analyzer_titles

        return [*super().list_commands(ctx), *(n.replace("_", "-") for n in analyzer_titles())]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            return cmd
        from vpmutrace.analyzer_index import analyzer_titles

        titles = {n.replace("_", "-"): (n, t) for n, t in analyzer_titles().items()}
        if cmd_name not in titles:
            return None
        name, title = titles[cmd_name]
        if self.listing:  # the help's command list needs only the title
            return TyperCommand(name=cmd_name, help=title)
        return _analyzer_command(name, title)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self.listing = False


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings=CONTEXT,
                  help="Trace analysis for KVM virtual PMUs (emulated and mediated passthrough vPMU).\n\n"
                       "Exit codes: 0 success, 1 findings-level failure where a command documents it, "
                       "2 usage or input error. Default outputs go under ./vpmutrace-out/.")

Traces = Annotated[list[Path], typer.Argument(help="trace files (perf.data, trace.dat, ftrace / trace-cmd "
                                                   "report / perf script text), one ingested dataset dir, or "
                                                   "a capture directory of vpmutrace record")]
TscKhz = Annotated[float | None, typer.Option("--tsc-khz", help="TSC frequency in kHz, for traces whose clock counts "
                                                                "TSC ticks (x86-tsc without TSC2NSEC; integer "
                                                                "timestamps): converts them to ns")]
ClockOpt = Annotated[str | None, typer.Option("--clock", help="the traces' clock when a file records it wrongly "
                                                              "(e.g. x86-tsc: trace-cmd extract of an instance "
                                                              "records the top-level clock)")]
SnapshotOpt = Annotated[Path | None, typer.Option("--snapshot", help="host snapshot (host.json of vpmutrace "
                                                                    "record) of the recording host: its tsc_khz "
                                                                    "converts TSC ticks, its kallsyms names perf "
                                                                    "samples' kernel IPs (default: <trace>.host.json "
                                                                    "or host.json next to the first trace)")]
AbsoluteOpt = Annotated[bool, typer.Option("--absolute-time", help="print timestamps on the trace's clock instead "
                                                                   "of from the trace's start")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="vPMU design to check against: mediated, emulated or "
                                                                "none (default: from the host snapshot, else the "
                                                                "trace's signatures, else unknown)")]
GuestGp = Annotated[int | None, typer.Option("--guest-gp", help="guest GP counters, when the trace has no guest "
                                                                "CPUID leaf 0xA / 0x80000022")]
GuestFixed = Annotated[int | None, typer.Option("--guest-fixed", help="guest fixed counters (Intel)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON with the stable top-level keys (docs/analyze.md)")]
OutOpt = Annotated[Path | None, typer.Option("-o", "--out", help="write row-level results as Parquet and "
                                                                 "analysis.json into this directory")]
SkidOpt = Annotated[float, typer.Option("--skid-window-us", help="skid window in microseconds")]
CostOpt = Annotated[str | None, typer.Option("--switch-cost-ns", help="PMU put+load cost per slow-path exit for the "
                                                                      "what-if: NS or LOW:HIGH (default: per-vendor "
                                                                      "published range)")]
CalibrateOpt = Annotated[Path | None, typer.Option("--calibrate-with", help="a mediated-design trace of the same "
                                                                            "workload: calibrates the what-if's "
                                                                            "switch cost")]
ByOpt = Annotated[str, typer.Option("--by", help="group exits by reason (perf kvm stat's default), vcpu or vm "
                                                 "(the VMM process of each vCPU thread)")]
VcpuOpt = Annotated[int | None, typer.Option("--vcpu", help="only this vCPU (kvm_exit's vcpu_id), as perf kvm stat "
                                                            "--vcpu")]
VmOpt = Annotated[int | None, typer.Option("--vm", help="only this VM: the pid of its VMM process")]


def _load(traces: list[Path], tsc_khz: float | None = None, snapshot: Path | None = None,
          clock: str | None = None, early: Any = None) -> Any:
    from vpmutrace.readers import LoadOptions, load_trace

    check_positive("--tsc-khz", tsc_khz)
    return load_trace(list(traces), LoadOptions(tsc_khz=tsc_khz, snapshot=snapshot, clock=clock, early=early))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vpmutrace {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False,
          quiet: Annotated[bool, typer.Option("-q", "--quiet", help="no progress display on stderr (it is "
                                                                    "shown only on a terminal anyway)")]
          = False) -> None:
    progress.enable(quiet)


@app.command()
def info(traces: Traces,
         as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
         tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None, clock: ClockOpt = None,
         check: Annotated[bool, typer.Option("--check", help="a dataset: check every page of every table against "
                                                            "its checksum and the footer (other commands check the "
                                                            "pages they read)")] = False) -> None:
    """Format, tool/kernel, clock and time unit, time span, CPUs, events per kind, lost and unparsed counts, where
    perf samples' symbols came from; for a capture directory, every requested event and what a silent one costs."""
    from vpmutrace.report.text import info_dict, render_info

    td = _load(traces, tsc_khz, snapshot, clock)
    note = td.check_pages() if check and hasattr(td, "check_pages") else None
    if note:
        typer.echo(warning_line(note), err=True)
    d = info_dict(td)
    typer.echo(json.dumps(d, indent=2, sort_keys=True) if as_json else render_info(d))


@app.command()
def ingest(traces: Traces,
           out: Annotated[Path, typer.Option("-o", "--out", help="output dataset directory (new, empty, or a "
                                                                 "dataset to replace)")],
           tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None, clock: ClockOpt = None,
           max_memory: Annotated[str | None, typer.Option(
               "--max-memory", help="read a perf.data or trace.dat in pieces so that the peak memory stays "
                                    "under SIZE (e.g. 2G); a file over 4G is read so under 2G without it")]
           = None) -> None:
    """Decode traces into a Parquet dataset (one file per table + _trace_meta.json)."""
    from vpmutrace import ingest_stream as ist
    from vpmutrace.report.text import info_dict
    from vpmutrace.tracedata import LEGACY_META_FILE, META_FILE, EarlyWrites

    out = output_dir(out, "ingest", owns=(META_FILE, LEGACY_META_FILE))
    budget, why = ist.streamable(traces, ist.parse_size(max_memory) if max_memory else None,
                                 tsc_khz is not None or clock is not None)
    if budget is not None:
        got = ist.ingest_file_stream(traces[0], out, budget, snapshot)
        if not isinstance(got, str):
            from vpmutrace.tracedata import load_dataset

            td = load_dataset(out)
            d = info_dict(td)
            typer.echo(f"wrote {out} in pieces: {sum(d['events'].values())} events in {len(td.tables)} tables; "
                       f"lost {d['lost_events']}, unparsed {d['unparsed']}")
            return
        why = f"read in memory: {got}"
    if why:
        typer.echo(f"{traces[0]}: {why}", err=True)
    with EarlyWrites(out) as early:  # tables written to Parquet while the next are decoded
        td = _load(traces, tsc_khz, snapshot, clock, early)
        path = td.save(out, early)
    d = info_dict(td)
    typer.echo(f"wrote {path}: {sum(d['events'].values())} events in {len(td.tables)} tables; "
               f"lost {d['lost_events']}, unparsed {d['unparsed']}")


@app.command()
def show(traces: Traces,
         event: Annotated[str | None, typer.Option(help="only this event: system:name, name, or a table")] = None,
         limit: Annotated[int, typer.Option(help="at most N lines, the first in time (0: all)")] = 0,
         as_json: Annotated[bool, typer.Option("--json", help="print {lines, fallbacks, time_origin_ns} as JSON")]
         = False, absolute_time: AbsoluteOpt = False,
         tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None, clock: ClockOpt = None) -> None:
    """Events as text lines, as trace-cmd report -N prints them (computed for the lines shown only).

    Times are from the trace's start (the first line, a comment, gives the start on the trace's clock)
    unless --absolute-time, which prints them as trace-cmd does. Rows printed without their print fmt
    (it does not parse, or fails on the row's values) are counted per event; the counts end the output
    (on stderr, or in the JSON's fallbacks)."""
    from vpmutrace.show import lines, origin_comment, text_fallbacks

    check_positive("--limit", limit, allow_zero=True)
    td = _load(traces, tsc_khz, snapshot, clock)
    origin = 0 if absolute_time else int((td.meta.get("time_span_ns") or [0])[0])
    shown = lines(td, event, limit or None, origin=origin)
    first = next(shown, None)  # a bad --event is an error before anything is printed
    if as_json:
        doc = {"lines": ([first] if first is not None else []) + list(shown), "time_origin_ns": origin,
               "fallbacks": text_fallbacks(td)}
        typer.echo(json.dumps(doc, indent=1))
        return
    out = sys.stdout
    try:
        if not absolute_time:
            out.write(origin_comment(td) + "\n")
        for line in ([first] if first is not None else []):
            out.write(line + "\n")
        for line in shown:
            out.write(line + "\n")
        out.flush()
    except BrokenPipeError:  # (| head)
        sys.stdout = None  # type: ignore[assignment]
        return
    for f in text_fallbacks(td):
        print(f"vpmutrace show: {f['count']} {f['event']} row(s) {f['category']} ({f['meaning']}); first: "
              f"{f['examples'][0] if f['examples'] else '-'}", file=sys.stderr)


@app.command()
def demo(out: Annotated[Path | None, typer.Option("-o", "--out", help="where to write the results "
                                                                      "(default vpmutrace-out/demo)")] = None,
         fixtures: Annotated[Path | None, typer.Option(help="bundled traces directory (default: the checkout's "
                                                            "fixtures/, else the package's copies)")] = None) -> None:
    """The main job on the bundled real traces: ingest each, summarise it, write its dataset."""
    from vpmutrace.demo import run_demo

    run_demo(output_dir(out, "demo"), fixtures)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def record(
    command: Annotated[list[str] | None, typer.Argument(help="workload to run and record: put it after --")] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="output directory (default "
                                                                 "vpmutrace-out/capture)")] = None,
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
    cleanup: Annotated[bool, typer.Option("--cleanup", help="only salvage and remove what killed recorders "
                                                             "left (tracefs instances, probes, spools) and exit")]
    = False,
) -> None:
    """Record a KVM host (kvm tracepoints, NMIs, scheduling) with a host snapshot, then ingest it.

    Event sets: exits = kvm_exit/kvm_entry; vpmu = exits + kvm_msr, kvm_inj_virq, kvm_apic_accept_irq,
    kvm_inj_exception, kvm_cpuid, kvm_pio, kvm_userspace_exit, nmi_handler, sched_switch,
    local_timer_entry; host-msr = msr:read_msr/write_msr/rdpmc (high rate); full = all of these and more.
    The summary lists every requested event with its count and the analyses a silent one leaves not computable.
    """
    from vpmutrace.collectors.record import RecordOptions, describe, parse_cpus
    from vpmutrace.collectors.record import record as do_record

    if cleanup:
        from vpmutrace.collectors.record import cleanup as do_cleanup

        done = do_cleanup()
        typer.echo("\n".join(done) if done else "nothing left behind by earlier captures")
        return
    check_positive("--duration", duration)
    check_positive("--buffer-kb", buffer_kb)
    check_choice("--backend", backend, ("perf", "tracefs"))
    res = do_record(RecordOptions(out=out or default_output("record"), backend=backend,
                                  events=events, cpus=parse_cpus(cpus), duration=duration,
                                  command=list(command) if command else None, samples=samples,
                                  raw_only=raw_only, buffer_kb=buffer_kb, progress=progress.enabled()))
    typer.echo(describe(res))
    if res.fault:
        print(error_line(f"{res.fault}; what was captured so far is kept in {res.trace_file}"), file=sys.stderr)
        raise typer.Exit(1)
    if res.interrupted:
        raise typer.Exit(130)


@app.command()
def selftest(out: Annotated[Path | None, typer.Option("-o", "--out", help="where to keep the captures (default "
                                                                          "vpmutrace-out/selftest)")] = None,
             backend: Annotated[list[str] | None, typer.Option(help="perf and/or tracefs (default: all "
                                                                    "available)")] = None) -> None:
    """Record the bundled KVM guest with each available backend and check the decoded events.

    Exit status 1 when a check fails.
    """
    from vpmutrace.collectors.selftest import render
    from vpmutrace.collectors.selftest import selftest as run

    for b in backend or []:
        check_choice("--backend", b, ("perf", "tracefs"))
    checks = run(output_dir(out, "selftest"), backend)
    typer.echo(render(checks))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


def _config(td: Any, model: str | None, guest_gp: int | None, guest_fixed: int | None, **options: Any) -> Any:
    from vpmutrace.analyze.context import Config

    return Config.for_trace(td, model=model, guest_gp=guest_gp, guest_fixed=guest_fixed, **options)


def _check_common(model: str | None, guest_gp: int | None, guest_fixed: int | None, out: Path | None) -> Path | None:
    """The options every analysis command shares, checked before any file is read."""
    check_design("--model", model)
    check_counters("--guest-gp", guest_gp)
    check_counters("--guest-fixed", guest_fixed)
    return output_dir(out, "analyze", owns=(ANALYSIS_FILE,)) if out is not None else None


def _analyze(traces: list[Path], model: str | None, only: list[str] | None, as_json: bool, out: Path | None,
             guest_gp: int | None = None, guest_fixed: int | None = None, load: dict | None = None,
             absolute_time: bool = False, **options: Any) -> dict:
    from vpmutrace.analyze import registry, render_text, run, write_rows

    reg = registry()
    bad = [o for o in only or [] if o not in reg]
    if bad:
        raise InputError("--only", f"unknown analyzer(s) {', '.join(bad)}: {', '.join(reg)}")
    out = _check_common(model, guest_gp, guest_fixed, out)
    td = _load(traces, **(load or {}))
    # without -o nothing reads the row tables: analyzers keep summaries only (memory)
    cfg = _config(td, model, guest_gp, guest_fixed, row_tables=out is not None, **options)
    doc, results = run(td, cfg, only, absolute=absolute_time)
    if out is not None:
        write_rows(doc, results, out)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
    else:
        typer.echo(render_text(results, doc, absolute=absolute_time))
        if out is not None:
            typer.echo(f"\nrow-level results and analysis.json in {out}")
    return doc


def _calibration(traces: list[Path], calibrate_with: Path | None) -> dict | None:
    if calibrate_with is None:
        return None
    from vpmutrace.compare import calibrate_pair

    return calibrate_pair(traces, [calibrate_with])


@app.command()
def analyze(traces: Traces, model: ModelOpt = None,
            only: Annotated[str | None, typer.Option(help="comma list of analyzers (their JSON keys or command "
                                                          "names, e.g. pmu_msr or pmu-msr)")]
            = None,
            as_json: JsonOpt = False, out: OutOpt = None, guest_gp: GuestGp = None, guest_fixed: GuestFixed = None,
            skid_window_us: SkidOpt = 10.0, switch_cost_ns: CostOpt = None, calibrate_with: CalibrateOpt = None,
            fail_on_divergence: Annotated[bool, typer.Option(help="exit 1 when the trace diverges from its design")]
            = False, absolute_time: AbsoluteOpt = False, tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None,
            clock: ClockOpt = None) -> None:
    """Run the analyzers (see docs/analyze.md); findings last, most severe first."""
    check_positive("--skid-window-us", skid_window_us, allow_zero=True)
    cost = cost_range(switch_cost_ns)
    names = [o.strip().replace("-", "_") for o in only.split(",")] if only else None  # pmu-msr or pmu_msr
    doc = _analyze(traces, model, names, as_json, out, guest_gp, guest_fixed,
                   {"tsc_khz": tsc_khz, "snapshot": snapshot, "clock": clock}, absolute_time,
                   skid_window_ns=int(skid_window_us * 1000), switch_cost_ns=cost,
                   calibration=_calibration(traces, calibrate_with))
    if fail_on_divergence and (doc.get("diff") or {}).get("divergent_events"):
        raise typer.Exit(1)


def _analyzer_command(name: str, title: str) -> click.Command:
    """The command of one analyzer, with the options every analysis takes and those only it uses."""

    def generic(traces: Traces, model: ModelOpt = None, as_json: JsonOpt = False, out: OutOpt = None,
                guest_gp: GuestGp = None, guest_fixed: GuestFixed = None, absolute_time: AbsoluteOpt = False,
                tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None, clock: ClockOpt = None) -> None:
        _analyze(traces, model, [name], as_json, out, guest_gp, guest_fixed,
                 {"tsc_khz": tsc_khz, "snapshot": snapshot, "clock": clock}, absolute_time)

    def skid(traces: Traces, model: ModelOpt = None, as_json: JsonOpt = False, out: OutOpt = None,
             guest_gp: GuestGp = None, guest_fixed: GuestFixed = None, skid_window_us: SkidOpt = 10.0,
             absolute_time: AbsoluteOpt = False, tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None,
             clock: ClockOpt = None) -> None:
        check_positive("--skid-window-us", skid_window_us, allow_zero=True)
        _analyze(traces, model, [name], as_json, out, guest_gp, guest_fixed,
                 {"tsc_khz": tsc_khz, "snapshot": snapshot, "clock": clock}, absolute_time,
                 skid_window_ns=int(skid_window_us * 1000))

    def what_if(traces: Traces, model: ModelOpt = None, as_json: JsonOpt = False, out: OutOpt = None,
                guest_gp: GuestGp = None, guest_fixed: GuestFixed = None, switch_cost_ns: CostOpt = None,
                calibrate_with: CalibrateOpt = None, absolute_time: AbsoluteOpt = False, tsc_khz: TscKhz = None,
                snapshot: SnapshotOpt = None, clock: ClockOpt = None) -> None:
        cost = cost_range(switch_cost_ns)
        _analyze(traces, model, [name], as_json, out, guest_gp, guest_fixed,
                 {"tsc_khz": tsc_khz, "snapshot": snapshot, "clock": clock}, absolute_time,
                 switch_cost_ns=cost, calibration=_calibration(traces, calibrate_with))

    def exits(traces: Traces, by: ByOpt = "reason", vcpu: VcpuOpt = None, vm: VmOpt = None, model: ModelOpt = None,
              as_json: JsonOpt = False, out: OutOpt = None, guest_gp: GuestGp = None,
              guest_fixed: GuestFixed = None, absolute_time: AbsoluteOpt = False, tsc_khz: TscKhz = None,
              snapshot: SnapshotOpt = None, clock: ClockOpt = None) -> None:
        check_choice("--by", by, EXIT_GROUPINGS)
        check_positive("--vcpu", vcpu, allow_zero=True)
        check_positive("--vm", vm)
        _analyze(traces, model, [name], as_json, out, guest_gp, guest_fixed,
                 {"tsc_khz": tsc_khz, "snapshot": snapshot, "clock": clock}, absolute_time,
                 exits_by=by, vcpu=vcpu, vm=vm)

    cmd = {"skid": skid, "what_if": what_if, "exits": exits}.get(name, generic)
    cmd.__doc__ = title[0].upper() + title[1:] + "."
    one = typer.Typer(add_completion=False, rich_markup_mode=None, context_settings=CONTEXT)
    one.command(name=name.replace("_", "-"))(cmd)
    return typer.main.get_command(one)


@app.command()
def compare(a: Annotated[Path, typer.Argument(help="first trace (e.g. the emulated-vPMU run)")],
            b: Annotated[Path, typer.Argument(help="second trace (e.g. the mediated-vPMU run of the same workload)")],
            model_a: Annotated[str | None, typer.Option("--model-a", help="design of A when it has no snapshot or "
                                                                          "signature: mediated, emulated, none")]
            = None,
            model_b: Annotated[str | None, typer.Option("--model-b", help="design of B (likewise)")] = None,
            as_json: JsonOpt = False) -> None:
    """Two traces side by side: design, exit latency by reason, PMU MSR exits, calibrated switch cost."""
    from vpmutrace.compare import compare as run_compare
    from vpmutrace.compare import render

    check_design("--model-a", model_a)
    check_design("--model-b", model_b)
    doc = run_compare([a], [b], model_a, model_b)
    typer.echo(json.dumps(doc, indent=2, default=str) if as_json else render(doc))


@app.command()
def simulate(scenario: Annotated[str, typer.Option(help="scenario name (see --list)")] = "mediated-steady",
             isa: Annotated[str, typer.Option(help="vmx (Intel) or svm (AMD)")] = "vmx",
             seed: Annotated[int, typer.Option(help="random seed (>= 0)")] = 1,
             out: Annotated[Path | None, typer.Option("-o", "--out", help="output directory (default "
                                                                          "vpmutrace-out/sim)")] = None,
             kernel: Annotated[str, typer.Option(help="kernel release the simulated host runs: decides the NMI "
                                                      "event order, tracepoint fields and fastpath exits")] = "6.18",
             guest_os: Annotated[str, typer.Option(help="linux (LVTPC in NMI mode) or windows (fixed vector)")]
             = "linux",
             list_: Annotated[bool, typer.Option("--list", help="list the scenarios")] = False) -> None:
    """Generate a host trace from the reference model (report text, perf.data, host.json, dataset) and its
    truth.json."""
    from vpmutrace.model.kernel import release_version
    from vpmutrace.sim import SCENARIOS
    from vpmutrace.sim import simulate as sim

    if list_:
        for k, v in SCENARIOS.items():
            typer.echo(f"{k:<20} {v}")
        return
    check_choice("--scenario", scenario, tuple(SCENARIOS))
    check_choice("--isa", isa, ("vmx", "svm"))
    check_choice("--guest-os", guest_os, ("linux", "windows"))
    check_positive("--seed", seed, allow_zero=True)
    if release_version(kernel) is None:
        raise InputError("--kernel", f"expected a release such as 6.1 or 6.18, got {kernel!r}")
    out = output_dir(out, "simulate", owns=("truth.json",))
    t = sim(scenario, isa, seed, out, kernel=kernel, guest_os=guest_os)
    n = (t.get("exits") or {}).get("exits_total", 0)
    typer.echo(f"{scenario} ({isa}, kernel {kernel}, seed {seed}, {t['scenario']['model']} design): {n} exits; "
               f"wrote {out}/report.txt, {out}/trace.perf.data, {out}/host.json, {out}/dataset, {out}/truth.json")


@app.command()
def report(traces: Traces, out: Annotated[Path | None, typer.Option("-o", "--out", help="HTML file to write "
                                                                                        "(default vpmutrace-out/"
                                                                                        "report.html)")] = None,
           model: ModelOpt = None, guest_gp: GuestGp = None, guest_fixed: GuestFixed = None,
           window: Annotated[str | None, typer.Option(help="detail window START:END in seconds (trace clock; "
                                                            "ticks when the trace's clock stayed in ticks)")]
           = None,
           max_points: Annotated[int, typer.Option(help="detail points cap (bounds the file size)")] = 60_000,
           title: Annotated[str | None, typer.Option(help="report title")] = None,
           tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None, clock: ClockOpt = None) -> None:
    """Self-contained interactive HTML report (works offline): findings, timeline, exits, MSRs, diff."""
    from vpmutrace.analyze import run
    from vpmutrace.options import window as parse_window
    from vpmutrace.report.html import build, time_axis

    check_positive("--max-points", max_points)
    _check_common(model, guest_gp, guest_fixed, None)
    path = output_file(out, "report")
    td = _load(traces, tsc_khz, snapshot, clock)
    div, unit = time_axis(td)
    win = parse_window(window, td.meta.get("time_span_ns"), div, unit)
    doc, results = run(td, _config(td, model, guest_gp, guest_fixed))
    with progress.stage(f"writing {path}"):
        path = build(td, doc, results, path, max_points, win, title)
    typer.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")


def _fleet() -> None:
    from vpmutrace.fleet.cli import app as fleet_app

    app.add_typer(fleet_app, name="fleet")


_fleet()


def _usage_line(e: click.ClickException) -> str:
    ctx = getattr(e, "ctx", None)
    hint = f" (see {ctx.command_path} -h)" if ctx is not None else ""
    return error_line(e.format_message() + hint)


# control characters (C0 but tab and newline, DEL, C1) shown escaped: a task name, exit reason or file
# name in a trace must not move the cursor or retitle the terminal (ECMA-48 escape sequences)
_INERT = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))}


class _InertText:
    """A text stream that writes what it is given with control characters escaped (_INERT)."""

    def __init__(self, stream: object) -> None:
        self._stream = stream

    def write(self, s: str) -> int:
        return self._stream.write(s.translate(_INERT))  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        if name == "buffer":  # (click writes bytes to a text stream's buffer when it has one: not past us)
            raise AttributeError(name)
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage and input errors are one line ``vpmutrace: error: ...``, exit 2. What is
    printed has control characters escaped (JSON escapes them itself)."""
    sys.stdout = _InertText(sys.stdout)  # type: ignore[assignment]
    try:
        rc = typer.main.get_command(app).main(args=argv, prog_name="vpmutrace", standalone_mode=False)
    except click.exceptions.ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `vpmutrace` alone: the help
            print(e.format_message(), file=sys.stderr)
        else:
            print(_usage_line(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except Abort:
        print(error_line("aborted"), file=sys.stderr)
        sys.exit(130)
    except UserError as e:  # InputError, BadFormat, Refusal
        print(error_line(str(e).translate(_INERT)), file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # (| head) the reader went away: nothing more to say
        sys.stderr.close()
        sys.exit(1)
    except OSError as e:  # the machine refused a file operation (permissions, disk full): one line too
        print(error_line(f"{e.filename}: {e.strerror}" if e.filename else e), file=sys.stderr)
        sys.exit(2)
    except MemoryError as e:
        detail = f" ({e})" if str(e) else ""
        print(error_line(f"out of memory{detail}; the tables of a trace take about the size of a perf.data "
                         "(see README, Performance)"), file=sys.stderr)
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
