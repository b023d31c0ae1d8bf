"""Command-line interface (thin: parse arguments, call the library, print)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from vpmutrace import __version__
from vpmutrace.errors import InputError
from vpmutrace.report.text import info_dict, render_info

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Trace analysis for KVM virtual PMUs (emulated and mediated passthrough vPMU).\n\n"
                       "Exit codes: 0 success, 1 findings-level failure where a command documents it, "
                       "2 usage or input error.")

Traces = Annotated[list[Path], typer.Argument(help="trace files (perf.data, trace.dat, ftrace / trace-cmd "
                                                   "report / perf script text) or one ingested dataset dir")]


TscKhz = Annotated[float | None, typer.Option("--tsc-khz", help="TSC frequency in kHz, for traces whose clock counts "
                                                                "TSC ticks (x86-tsc without TSC2NSEC; integer "
                                                                "timestamps): converts them to ns")]
ClockOpt = Annotated[str | None, typer.Option("--clock", help="the traces' clock when a file records it wrongly "
                                                              "(e.g. x86-tsc: trace-cmd extract of an instance "
                                                              "records the top-level clock)")]


def _load(traces: list[Path], tsc_khz: float | None = None, snapshot: Path | None = None,
          clock: str | None = None) -> object:
    from vpmutrace.readers import LoadOptions, load_trace

    return load_trace(list(traces), LoadOptions(tsc_khz=tsc_khz, snapshot=snapshot, clock=clock))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vpmutrace {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    pass


SnapshotOpt = Annotated[Path | None, typer.Option("--snapshot", help="host snapshot (host.json of vpmutrace "
                                                                    "record) of the recording host: its tsc_khz "
                                                                    "converts TSC ticks, its kallsyms names perf "
                                                                    "samples' kernel IPs (default: <trace>.host.json "
                                                                    "or host.json next to the first trace)")]


@app.command()
def info(traces: Traces,
         as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
         tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None, clock: ClockOpt = None) -> None:
    """Format, tool/kernel, clock and time unit, time span, CPUs, events per kind, lost and unparsed counts, where
    perf samples' symbols came from."""
    td = _load(traces, tsc_khz, snapshot, clock)
    d = info_dict(td)
    typer.echo(json.dumps(d, indent=2, sort_keys=True) if as_json else render_info(d))


@app.command()
def ingest(traces: Traces,
           out: Annotated[Path, typer.Option("-o", "--out", help="output dataset directory")],
           tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None, clock: ClockOpt = None) -> None:
    """Decode traces into a Parquet dataset (one file per table + _trace_meta.json)."""
    td = _load(traces, tsc_khz, snapshot, clock)
    path = td.save(out)
    d = info_dict(td)
    typer.echo(f"wrote {path}: {sum(d['events'].values())} events in {len(td.tables)} tables; "
               f"lost {d['lost_events']}, unparsed {d['unparsed']}")


@app.command()
def show(traces: Traces,
         event: Annotated[str | None, typer.Option(help="only this event: system:name, name, or a table")] = None,
         limit: Annotated[int, typer.Option(help="at most N lines, the first in time (0: all)")] = 0,
         as_json: Annotated[bool, typer.Option("--json", help="print {lines, fallbacks} as JSON")] = False,
         tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None, clock: ClockOpt = None) -> None:
    """Events as text lines, as trace-cmd report -N prints them (computed for the lines shown only).

    Rows printed without their print fmt (it does not parse, or fails on the row's values) are
    counted per event; the counts end the output (on stderr, or in the JSON's fallbacks)."""
    from vpmutrace.show import lines, text_fallbacks

    td = _load(traces, tsc_khz, snapshot, clock)
    if as_json:
        doc = {"lines": list(lines(td, event, limit or None))}
        doc["fallbacks"] = text_fallbacks(td)
        typer.echo(json.dumps(doc, indent=1))
        return
    out = sys.stdout
    try:
        for line in lines(td, event, limit or None):
            out.write(line + "\n")
        out.flush()
    except BrokenPipeError:  # (| head)
        sys.stdout = None  # type: ignore[assignment]
        return
    for f in text_fallbacks(td):
        print(f"vpmutrace show: {f['count']} {f['event']} row(s) {f['category']} ({f['meaning']}); first: "
              f"{f['examples'][0] if f['examples'] else '-'}", file=sys.stderr)


@app.command()
def demo(out: Annotated[Path, typer.Option("-o", "--out", help="where to write the results")] = Path("out/demo"),
         fixtures: Annotated[Path | None, typer.Option(help="bundled traces directory (default: the checkout's "
                                                            "fixtures/, else the package's copies)")] = None) -> None:
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
    cleanup: Annotated[bool, typer.Option("--cleanup", help="only salvage and remove what killed recorders "
                                                             "left (tracefs instances, probes, spools) and exit")]
    = False,
) -> None:
    """Record a KVM host (kvm tracepoints, NMIs, scheduling) with a host snapshot, then ingest it.

    Event sets: exits = kvm_exit/kvm_entry; vpmu = exits + kvm_msr, kvm_inj_virq, kvm_apic_accept_irq,
    kvm_inj_exception, kvm_cpuid, kvm_pio, kvm_userspace_exit, nmi_handler, sched_switch,
    local_timer_entry; host-msr = msr:read_msr/write_msr/rdpmc (high rate); full = all of these and more.
    """
    from vpmutrace.collectors.host import Refusal
    from vpmutrace.collectors.record import RecordOptions, describe, parse_cpus
    from vpmutrace.collectors.record import record as do_record

    if cleanup:
        from vpmutrace.collectors.record import cleanup as do_cleanup

        done = do_cleanup()
        typer.echo("\n".join(done) if done else "nothing left behind by earlier captures")
        return
    try:
        res = do_record(RecordOptions(out=out, backend=backend, events=events, cpus=parse_cpus(cpus),
                                      duration=duration, command=list(command) if command else None,
                                      samples=samples, raw_only=raw_only, buffer_kb=buffer_kb,
                                      progress=sys.stderr.isatty()))
    except (Refusal, ValueError) as e:
        print(f"vpmutrace record: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    typer.echo(describe(res))
    if res.fault:
        print(f"vpmutrace record: {res.fault}; what was captured so far is kept in {res.trace_file}", file=sys.stderr)
        raise typer.Exit(1)
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
    from vpmutrace.collectors.host import Refusal
    from vpmutrace.collectors.selftest import render
    from vpmutrace.collectors.selftest import selftest as run

    try:
        checks = run(out, backend)
    except Refusal as e:
        print(f"vpmutrace selftest: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    typer.echo(render(checks))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


ModelOpt = Annotated[str | None, typer.Option("--model", help="vPMU design to check against: mediated, emulated or "
                                                                "none (default: from the host snapshot, else the "
                                                                "trace's signatures, else unknown)")]
GuestGp = Annotated[int | None, typer.Option("--guest-gp", help="guest GP counters, when the trace has no guest "
                                                                "CPUID leaf 0xA / 0x80000022")]
GuestFixed = Annotated[int | None, typer.Option("--guest-fixed", help="guest fixed counters (Intel)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON with the stable top-level keys (docs/analyze.md)")]
OutOpt = Annotated[Path | None, typer.Option("-o", "--out", help="write row-level results as Parquet and "
                                                                 "analysis.json into this directory")]


def _cost_range(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        parts = [float(x) for x in value.split(":")]
    except ValueError:
        raise InputError("--switch-cost-ns", f"expected NS or LOW:HIGH, got {value!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 0 or parts[0] > parts[-1]:
        raise InputError("--switch-cost-ns", f"expected NS or LOW:HIGH with LOW <= HIGH, got {value!r}")
    return parts[0], parts[-1]


def _config(td: object, model: str | None, guest_gp: int | None, guest_fixed: int | None, **options: object) -> object:
    from vpmutrace.analyze.context import Config
    from vpmutrace.model.design import EMULATED, MEDIATED, NO_VPMU

    if model is not None and model not in (MEDIATED, EMULATED, NO_VPMU):
        raise InputError("--model", f"unknown design {model!r}: mediated, emulated or none")
    for name, v in (("--guest-gp", guest_gp), ("--guest-fixed", guest_fixed)):
        if v is not None and not 0 <= v <= 32:
            raise InputError(name, f"expected 0..32 counters, got {v}")
    return Config.for_trace(td, model=model, guest_gp=guest_gp, guest_fixed=guest_fixed, **options)  # type: ignore


def _analyze(traces: list[Path], model: str | None, only: list[str] | None, as_json: bool, out: Path | None,
             guest_gp: int | None = None, guest_fixed: int | None = None, load: dict | None = None,
             **options: object) -> dict:
    from vpmutrace.analyze import registry, render_text, run

    reg = registry()
    bad = [o for o in only or [] if o not in reg]
    if bad:
        raise InputError("--only", f"unknown analyzer(s) {', '.join(bad)}: {', '.join(reg)}")
    td = _load(traces, **(load or {}))
    cfg = _config(td, model, guest_gp, guest_fixed, **options)
    doc, results = run(td, cfg, only)  # type: ignore[arg-type]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for r in results.values():
            for name, df in r.rows.items():
                df.write_parquet(out / f"{name}.parquet")
        (out / "analysis.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
    else:
        typer.echo(render_text(results, doc))
        if out is not None:
            typer.echo(f"\nrow-level results and analysis.json in {out}")
    return doc


@app.command()
def analyze(traces: Traces, model: ModelOpt = None,
            only: Annotated[str | None, typer.Option(help="comma list of analyzers (names as in the JSON keys)")]
            = None,
            as_json: JsonOpt = False, out: OutOpt = None, guest_gp: GuestGp = None, guest_fixed: GuestFixed = None,
            skid_window_us: Annotated[float, typer.Option(help="skid window in microseconds")] = 10.0,
            switch_cost_ns: Annotated[str | None, typer.Option(help="PMU put+load cost per slow-path exit for the "
                                                                    "what-if: NS or LOW:HIGH (default: per-vendor "
                                                                    "published range)")] = None,
            calibrate_with: Annotated[Path | None, typer.Option(help="a mediated-design trace of the same workload: "
                                                                     "calibrates the what-if's switch cost")] = None,
            fail_on_divergence: Annotated[bool, typer.Option(help="exit 1 when the trace diverges from its design")]
            = False, tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None, clock: ClockOpt = None) -> None:
    """Run the analyzers (see docs/analyze.md); findings last, most severe first."""
    calibration = None
    if calibrate_with is not None:
        from vpmutrace.compare import calibrate_pair

        calibration = calibrate_pair(traces, [calibrate_with])
    if skid_window_us < 0:
        raise InputError("--skid-window-us", f"must be >= 0, got {skid_window_us}")
    doc = _analyze(traces, model, only.split(",") if only else None, as_json, out, guest_gp, guest_fixed,
                   {"tsc_khz": tsc_khz, "snapshot": snapshot, "clock": clock},
                   skid_window_ns=int(skid_window_us * 1000), switch_cost_ns=_cost_range(switch_cost_ns),
                   calibration=calibration)
    if fail_on_divergence and (doc.get("diff") or {}).get("divergent_events"):
        raise typer.Exit(1)


def _one(name: str, title: str) -> None:
    def cmd(traces: Traces, model: ModelOpt = None, as_json: JsonOpt = False, out: OutOpt = None,
            guest_gp: GuestGp = None, guest_fixed: GuestFixed = None, tsc_khz: TscKhz = None,
            snapshot: SnapshotOpt = None, clock: ClockOpt = None) -> None:
        _analyze(traces, model, [name], as_json, out, guest_gp, guest_fixed,
                 {"tsc_khz": tsc_khz, "snapshot": snapshot, "clock": clock})

    cmd.__doc__ = title[0].upper() + title[1:] + "."
    app.command(name=name.replace("_", "-"))(cmd)


def _register_analyzers() -> None:
    """One command per analyzer of the registry (imported only when a command needs it)."""
    from vpmutrace.analyze import registry

    for name, a in registry().items():
        _one(name, a.title)


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

    for name, m in (("--model-a", model_a), ("--model-b", model_b)):
        if m is not None and m not in ("mediated", "emulated", "none"):
            raise InputError(name, f"unknown design {m!r}: mediated, emulated or none")
    doc = run_compare([a], [b], model_a, model_b)
    typer.echo(json.dumps(doc, indent=2, default=str) if as_json else render(doc))


@app.command()
def simulate(scenario: Annotated[str, typer.Option(help="scenario name (see --list)")] = "mediated-steady",
             isa: Annotated[str, typer.Option(help="vmx (Intel) or svm (AMD)")] = "vmx",
             seed: Annotated[int, typer.Option(help="random seed")] = 1,
             out: Annotated[Path, typer.Option("-o", "--out", help="output directory")] = Path("sim-out"),
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
    if scenario not in SCENARIOS:
        raise InputError("--scenario", f"unknown scenario {scenario!r}: {', '.join(SCENARIOS)}")
    if isa not in ("vmx", "svm"):
        raise InputError("--isa", f"unknown isa {isa!r}: vmx or svm")
    if release_version(kernel) is None:
        raise InputError("--kernel", f"expected a release such as 6.1 or 6.18, got {kernel!r}")
    if guest_os not in ("linux", "windows"):
        raise InputError("--guest-os", f"unknown guest {guest_os!r}: linux or windows")
    t = sim(scenario, isa, seed, out, kernel=kernel, guest_os=guest_os)
    n = (t.get("exits") or {}).get("exits_total", 0)
    typer.echo(f"{scenario} ({isa}, kernel {kernel}, seed {seed}, {t['scenario']['model']} design): {n} exits; "
               f"wrote {out}/report.txt, {out}/trace.perf.data, {out}/host.json, {out}/dataset, {out}/truth.json")


@app.command()
def report(traces: Traces, out: Annotated[Path, typer.Option("-o", "--out", help="HTML file to write")]
           = Path("vpmutrace-report.html"), model: ModelOpt = None, guest_gp: GuestGp = None,
           guest_fixed: GuestFixed = None,
           window: Annotated[str | None, typer.Option(help="detail window START:END in seconds (trace clock; "
                                                            "ticks when the trace's clock stayed in ticks)")]
           = None,
           max_points: Annotated[int, typer.Option(help="detail points cap (bounds the file size)")] = 60_000,
           title: Annotated[str | None, typer.Option(help="report title")] = None,
           tsc_khz: TscKhz = None, snapshot: SnapshotOpt = None, clock: ClockOpt = None) -> None:
    """Self-contained interactive HTML report (works offline): findings, timeline, exits, MSRs, diff."""
    from vpmutrace.analyze import run
    from vpmutrace.report.html import build, time_axis

    td = _load(traces, tsc_khz, snapshot, clock)
    win = None
    if window:
        try:
            a, b = (float(x) for x in window.split(":"))
        except ValueError:
            raise InputError("--window", f"expected START:END in seconds, got {window!r}") from None
        div = time_axis(td)[0]  # (seconds; ticks on a trace whose clock stayed in ticks)
        win = (int(a * div), int(b * div))
    doc, results = run(td, _config(td, model, guest_gp, guest_fixed))  # type: ignore[arg-type]
    path = build(td, doc, results, out, max_points, win, title)
    typer.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")


def _fleet() -> None:
    from vpmutrace.fleet.cli import app as fleet_app

    app.add_typer(fleet_app, name="fleet")


_fleet()

STATIC_COMMANDS = {"info", "ingest", "demo", "record", "selftest", "compare", "simulate", "report", "analyze",
                   "show", "fleet", "--version"}


def main() -> None:
    """Entry point: click handles usage errors (exit 2); input errors become one line, exit 2."""
    if len(sys.argv) < 2 or sys.argv[1] not in STATIC_COMMANDS:
        _register_analyzers()
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
