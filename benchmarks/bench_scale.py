"""Ingest and analysis cost and memory against the number of events: perf.data files of 10^5, 10^6,
10^7 (and, asked for, 10^8) events made of a real capture's records (benchmarks/scale_input.py: the
KVM host's mixed capture in fixtures/, its records repeated with their times shifted), or with
``--input trace.dat`` trace.dat files made of its trace.dat's ring-buffer pages
(benchmarks/scale_input_tracedat.py, version 6 uncompressed), timed against ``trace-cmd report``.

    .venv/bin/python benchmarks/bench_scale.py [--input perf.data|trace.dat] [--sizes 1e5,1e6,1e7]
        [--runs 3 | --runs 3,3,3,1] [--max-memory 1G] [--tool-max 1e7] [--memory-max 1e7] [--no-analyze]

For each size it times, each run a fresh process (wall time and peak RSS of that process, from
GNU time): ``perf script`` (``trace-cmd report``) > /dev/null (up to --tool-max events: it takes
minutes beyond), ``vpmutrace
ingest`` in memory (up to --memory-max events: its peak grows with the file), ``vpmutrace ingest
--max-memory``, and then, on the dataset that last ingest wrote, ``vpmutrace analyze DATASET`` >
/dev/null and ``vpmutrace report DATASET -o FILE.html`` (the lazy Parquet scans of
vpmutrace/scanned.py; --no-analyze skips them). --runs is one count for every size or one per size.
It prints a markdown table of the readers (best / median, events per second, peak RSS, ratio perf
script / ours, median CPU seconds user + system), one of the analysis of each size's dataset (its
Parquet bytes and rows, best / median, CPU seconds and peak RSS of analyze and of report), the runs
as JSON (with the 1-minute load average at the end of each), and per mode the slope of a
least-squares line of median time against events (s per million events), the exponent of time
against events on a log-log fit (1.0: linear) and the throughput at the largest size against that
at 10^6, by wall time and by CPU time (on a shared host the CPU time moves less with the load).
The inputs are kept in --data (default benchmarks/data/scale) and made again only when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PY = sys.executable
VPMUTRACE = str(Path(PY).with_name("vpmutrace"))


def run(cmd: list[str]) -> tuple[float, int, float]:
    """(wall seconds, peak RSS bytes, CPU seconds user + system) of one process, its peak and CPU time
    measured by GNU time (a child forked from this process would count this process's memory up to
    its exec). On a shared host the CPU time moves less with the load than the wall time does."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, check=False)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    rss, user, sys_ = p.stderr.strip().splitlines()[-1].split()
    return wall, int(rss) * 1024, float(user) + float(sys_)


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope of y on x, exponent of y on x in log-log) by least squares."""
    import numpy as np

    slope = float(np.polyfit(xs, ys, 1)[0])
    expo = float(np.polyfit(np.log(xs), np.log(ys), 1)[0]) if len(xs) > 1 else float("nan")
    return slope, expo


def dataset_size(path: Path) -> tuple[int, int]:
    """(Parquet bytes, rows) of a saved dataset, the rows from the Parquet footers."""
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet"))
    return sum(f.stat().st_size for f in files), sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def per_size(spec: str, sizes: list[float]) -> list[int]:
    """--runs: one count for every size, or one per size."""
    counts = [int(x) for x in spec.split(",")]
    if len(counts) == 1:
        return counts * len(sizes)
    if len(counts) != len(sizes):
        raise SystemExit(f"--runs {spec}: give one count, or one per size ({len(sizes)})")
    return counts


TOOLS = {"perf.data": "perf script", "trace.dat": "trace-cmd report"}  # the reference each input is timed against


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e5,1e6,1e7")
    ap.add_argument("--runs", default="3", help="runs per mode: one count, or one per size (e.g. 3,3,3,1)")
    ap.add_argument("--max-memory", default="1G")
    ap.add_argument("--tool-max", type=float, default=1e7, help="the tool only up to this many events")
    ap.add_argument("--memory-max", type=float, default=1e7, help="in-memory ingest only up to this many events")
    ap.add_argument("--no-analyze", action="store_true", help="skip analyze and report of each size's dataset")
    ap.add_argument("--input", choices=sorted(TOOLS), default="perf.data",
                    help="perf.data (scale_input.py) or trace.dat (scale_input_tracedat.py) inputs")
    ap.add_argument("--data", type=Path, default=HERE / "data" / "scale")
    a = ap.parse_args()
    a.data.mkdir(parents=True, exist_ok=True)
    if a.input == "trace.dat":
        from scale_input_tracedat import make
    else:
        from scale_input import make
    tool_name = TOOLS[a.input]
    tool = shutil.which(tool_name.split()[0])
    sizes = [float(s) for s in a.sizes.split(",")]
    rows, raw, datasets = [], [], {}
    for size, n_runs in zip(sizes, per_size(a.runs, sizes), strict=True):
        src = a.data / f"scale-{size:.0e}.{a.input}"
        count = src.with_name(src.name + ".events")  # (events written)
        if not src.exists() or not count.exists():
            t = time.perf_counter()
            n = make(HERE.parent / "fixtures" / f"mixed.{a.input}", src, int(size))
            count.write_text(f"{n}\n")
            print(f"made {src} ({n} events, {src.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s",
                  file=sys.stderr)
        n_events = int(count.read_text())
        out = a.data / "out.ds"
        modes = {}
        if tool and size <= a.tool_max:
            modes[tool_name] = [tool, tool_name.split()[1], "-i", str(src)]
        if size <= a.memory_max:
            modes["ingest (in memory)"] = [VPMUTRACE, "ingest", str(src), "-o", str(out)]
        modes[f"ingest --max-memory {a.max_memory}"] = [VPMUTRACE, "ingest", str(src), "-o", str(out),
                                                        "--max-memory", a.max_memory]
        analysis = {} if a.no_analyze else {  # of the dataset the last ingest wrote
            "analyze": [VPMUTRACE, "analyze", str(out)],
            "report": [VPMUTRACE, "report", str(out), "-o", str(a.data / "out.html")]}
        warm(src)
        for mode, cmd in {**modes, **analysis}.items():
            runs = []
            for _ in range(n_runs):
                if mode in modes:
                    shutil.rmtree(out, ignore_errors=True)
                runs.append(run(cmd))
                raw.append({"size": size, "mode": mode, "wall_s": round(runs[-1][0], 3), "rss": runs[-1][1],
                            "cpu_s": round(runs[-1][2], 2), "load": round(os.getloadavg()[0], 1)})
                print(json.dumps(raw[-1]), file=sys.stderr)
            if mode == next(reversed(modes)) and analysis:
                datasets[size] = dataset_size(out)
            walls = [w for w, _, _ in runs]
            rows.append({"size": size, "events": n_events, "mb": src.stat().st_size / 1e6, "mode": mode,
                         "runs": n_runs, "best": min(walls), "median": statistics.median(walls),
                         "cpu": statistics.median(c for _, _, c in runs), "rss": max(r for _, r, _ in runs)})
        shutil.rmtree(out, ignore_errors=True)
        (a.data / "out.html").unlink(missing_ok=True)
    print(f"| events | file | reader | best / median | events/s (median) | vs {tool_name} (best / median) "
          "| CPU s (median) | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["mode"] in ("analyze", "report"):
            continue
        ref = next((t for t in rows if t["size"] == r["size"] and t["mode"] == tool_name), None)
        vs = f"{ref['best'] / r['best']:.1f}x / {ref['median'] / r['median']:.1f}x" if ref else "(not run)"
        print(f"| {r['events'] / 1e6:.2f} M | {r['mb']:.0f} MB | {r['mode']}{runs_note(r)} | {r['best']:.2f} / "
              f"{r['median']:.2f} s | {r['events'] / r['median'] / 1e6:.2f} M | {vs} | {r['cpu']:.2f} | "
              f"{r['rss'] / 2**20:.0f} MB |")
    if datasets:
        print()
        print("| events | dataset (Parquet, rows) | analyze: best / median | CPU s | peak RSS "
              "| report: best / median | CPU s | peak RSS |")
        print("|---|---|---|---|---|---|---|---|")
        for size, (nbytes, nrows) in datasets.items():
            an, rep = (next(r for r in rows if r["size"] == size and r["mode"] == m) for m in ("analyze", "report"))
            print(f"| {an['events'] / 1e6:.2f} M | {nbytes / 1e6:.0f} MB, {nrows / 1e6:.2f} M rows | "
                  f"{an['best']:.2f} / {an['median']:.2f} s{runs_note(an)} | {an['cpu']:.2f} | "
                  f"{an['rss'] / 2**20:.0f} MB | {rep['best']:.2f} / {rep['median']:.2f} s{runs_note(rep)} | "
                  f"{rep['cpu']:.2f} | {rep['rss'] / 2**20:.0f} MB |")
    print()
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sel = [r for r in rows if r["mode"] == mode]
        if len(sel) < 2:
            continue
        slope, expo = fit([r["events"] for r in sel], [r["median"] for r in sel])
        at6 = next((r for r in sel if r["size"] == 1e6), None)
        big = sel[-1]
        rel = ""
        if at6 and big is not at6:
            change = big["events"] / big["median"] / (at6["events"] / at6["median"]) * 100 - 100
            cpu = big["events"] / big["cpu"] / (at6["events"] / at6["cpu"]) * 100 - 100
            rel = (f"; throughput at {big['events'] / 1e6:.0f} M events {change:+.0f}% vs 1 M "
                   f"(per CPU second {cpu:+.0f}%)")
        print(f"- {mode}: {slope * 1e6:.2f} s per M events, time ~ events^{expo:.2f}{rel}")


def runs_note(r: dict) -> str:
    return f" ({r['runs']} run{'s' if r['runs'] != 1 else ''})" if r["runs"] != 3 else ""


if __name__ == "__main__":
    main()
