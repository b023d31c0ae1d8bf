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


def main() -> None:
    """Entry point: click handles usage errors (exit 2); input errors become one line, exit 2."""
    try:
        app()
    except InputError as e:
        print(f"vpmutrace: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
