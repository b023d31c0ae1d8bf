"""Ingest cost and memory of a trace.dat against the number of events: files of 10^5, 10^6, 10^7
(and, asked for, more) events made of a real capture's ring-buffer pages
(benchmarks/scale_input_tracedat.py: the KVM host's mixed trace.dat in fixtures/, its pages
repeated with their times shifted; version 6, uncompressed).

    .venv/bin/python benchmarks/bench_scale_tracedat.py [--sizes 1e5,1e6,1e7] [--runs 3] [--max-memory 1G]

For each size it times, each run a fresh process (wall time and peak RSS, as bench_scale.py):
``trace-cmd report`` > /dev/null (up to --tool-max events), ``vpmutrace ingest`` in memory (up to
--memory-max events) and ``vpmutrace ingest --max-memory``; then prints the same table and fits
as bench_scale.py (s per million events, exponent, throughput at the largest size against 10^6).
The inputs are kept in --data (default benchmarks/data/scale) and made again only when missing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_scale import VPMUTRACE  # noqa: E402
from scale_table import measure, report  # noqa: E402


def main() -> None:
    from scale_input_tracedat import make

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e5,1e6,1e7")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-memory", default="1G")
    ap.add_argument("--tool-max", type=float, default=1e7, help="trace-cmd report only up to this many events")
    ap.add_argument("--memory-max", type=float, default=1e7, help="in-memory ingest only up to this many events")
    ap.add_argument("--data", type=Path, default=HERE / "data" / "scale")
    a = ap.parse_args()
    a.data.mkdir(parents=True, exist_ok=True)
    tool = shutil.which("trace-cmd")
    rows = []
    for size in [float(s) for s in a.sizes.split(",")]:
        src = a.data / f"scale-{size:.0e}.trace.dat"
        count = src.with_name(src.name + ".events")
        if not src.exists() or not count.exists():
            t = time.perf_counter()
            n = make(HERE.parent / "fixtures" / "mixed.trace.dat", src, int(size))
            count.write_text(f"{n}\n")
            print(f"made {src} ({n} events, {src.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s",
                  file=sys.stderr)
        out = a.data / "out.ds"
        modes = {}
        if tool and size <= a.tool_max:
            modes["trace-cmd report"] = [tool, "report", "-i", str(src)]
        if size <= a.memory_max:
            modes["ingest (in memory)"] = [VPMUTRACE, "ingest", str(src), "-o", str(out)]
        modes[f"ingest --max-memory {a.max_memory}"] = [VPMUTRACE, "ingest", str(src), "-o", str(out),
                                                        "--max-memory", a.max_memory]
        rows += measure(src, size, int(count.read_text()), modes, a.runs, out)
    report(rows, "trace-cmd report")


if __name__ == "__main__":
    main()
