"""``vpmutrace fleet ingest|analyze`` (thin: parse, call ``fleet.run``, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Many hosts' captures in a hive-partitioned tree (ROOT/host=NAME/capture=NAME/), as tasks "
                       "on Dask (optional extra: pip install 'vpmutrace[fleet]').")

Scheduler = Annotated[str | None, typer.Option(help="address of a running Dask scheduler (tcp://HOST:8786); "
                                                    "default: a local cluster started for the run")]
Workers = Annotated[int | None, typer.Option(help="local cluster: worker processes (default: one per CPU)")]


@app.command()
def ingest(src: Annotated[Path, typer.Argument(help="tree of raw captures: SRC/host=H/capture=C/<trace files> "
                                                    "[+ host.json]")],
           out: Annotated[Path, typer.Option("-o", "--out", help="fleet root to write the datasets into")],
           scheduler: Scheduler = None, workers: Workers = None) -> None:
    """Ingest every capture into OUT/host=H/capture=C/ (a dataset each), one task per capture."""
    from vpmutrace.fleet.run import ingest as run_ingest

    res = run_ingest(src, out, scheduler, workers)
    failed = [(c, r["error"]) for c, r in res if "error" in r]
    for c, r in res:
        if "error" not in r:
            typer.echo(f"{c.host:<24} {c.capture:<16} {r['events']:>10} events  lost {r['lost_events']}, "
                       f"unparsed {r['unparsed']}")
    for c, e in failed:
        typer.echo(f"{c.host:<24} {c.capture:<16} failed: {e}", err=True)
    typer.echo(f"{len(res) - len(failed)} of {len(res)} captures ingested into {out}")
    if failed:
        raise typer.Exit(2)


@app.command()
def analyze(root: Annotated[Path, typer.Argument(help="fleet root of datasets (after fleet ingest)")],
            out: Annotated[Path | None, typer.Option("-o", "--out", help="output directory (default ROOT/_fleet)")]
            = None,
            scheduler: Scheduler = None, workers: Workers = None,
            reports: Annotated[bool, typer.Option(help="write each capture's HTML report (drill-down)")] = True) \
        -> None:
    """Analyse every capture (one task each); write fleet tables (captures, hosts, exits, findings as Parquet)
    and the fleet report (hosts ranked by findings, links to each capture's report). Exit 2 if a capture failed."""
    from vpmutrace.fleet.run import analyze as run_analyze

    path, tables = run_analyze(root, out, scheduler, workers, reports)
    h, caps = tables["hosts"], tables["captures"]
    typer.echo(f"{'rank':>4} {'host':<24} {'high':>5} {'medium':>6} {'low':>5} {'info':>5} {'exits':>9}  designs")
    for r in h.iter_rows(named=True):
        typer.echo(f"{r['rank']:>4} {r['host']:<24} {r['findings_high']:>5} {r['findings_medium']:>6} "
                   f"{r['findings_low']:>5} {r['findings_info']:>5} {r['exits']:>9}  {r['designs']}")
    failed = caps.filter(caps["error"].is_not_null())
    for r in failed.iter_rows(named=True):
        typer.echo(f"{r['host']} {r['capture']}: failed: {r['error']}", err=True)
    typer.echo(f"\nfleet report {path}; tables {path.parent}/{{captures,hosts,exits,findings}}.parquet")
    if failed.height:
        raise typer.Exit(2)
