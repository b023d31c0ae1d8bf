"""Plant realistic one-line bugs in the readers and analyzers, one at a time, and run the tests on each.

Each bug below is one a careful reader of the format could make (issue 15, item 7). A bug is
*killed* when the test run fails with it planted, *survived* otherwise. The run happens in a scratch
copy of the committed HEAD (``--work``, kept between runs so numba's cache is reused), never in the
checkout; the planted file is restored after each bug. ``VPMUTRACE_SHARED`` points the copy's tests at
the real shared traces. Usage:

    .venv/bin/python benchmarks/mutants/planted.py                 # the whole suite, per bug (-x)
    .venv/bin/python benchmarks/mutants/planted.py --tests tests/test_trace_dat.py --only time_extend

Prints one line per bug (killed by which test, or SURVIVED) and exits 1 if any survived; the pytest
output of each is kept in $TMPDIR/vpmutrace-planted/<bug>.log.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOGS = Path(tempfile.gettempdir()) / "vpmutrace-planted"  # each run's pytest output, per bug


@dataclass(frozen=True)
class Plant:
    name: str
    file: str
    old: str
    new: str
    what: str


PLANTS = (
    Plant("time_extend_low_bits", "vpmutrace/kernels/ringbuf.py",
          "ts += (a0 << TS_SHIFT) | delta", "ts += a0 << TS_SHIFT",
          "ring-buffer TIME_EXTEND loses its low 27 bits (the header's time_delta)"),
    Plant("abs_timestamp_as_delta", "vpmutrace/kernels/ringbuf.py",
          "ts = (ts & ts_msb) | (a0 << TS_SHIFT) | delta", "ts += (a0 << TS_SHIFT) | delta",
          "an absolute TIME_STAMP event added to the running time as if it were a delta"),
    Plant("lost_wrong_field", "vpmutrace/readers/perf_data.py",
          'n = int(buf[o + 16:o + 24].view("<u8")[0])', 'n = int(buf[o + 8:o + 16].view("<u8")[0])',
          "PERF_RECORD_LOST's count read from the id field"),
    Plant("rel_loc_base", "vpmutrace/kernels/fields.py",
          "at = (w & 0xFFFF) + (field_off + 4 if rel else 0)", "at = (w & 0xFFFF) + (field_off if rel else 0)",
          "__rel_loc offsets taken from the field's start instead of the end of its u32 word"),
    Plant("stream_id_not_skipped", "vpmutrace/kernels/perf_walk.py",
          "if st & np.uint64(S_STREAM_ID):\n            p += 8\n",
          "if st & np.uint64(S_STREAM_ID):\n            p += 0\n",
          "PERF_SAMPLE_STREAM_ID not skipped in a sample's body (the walk of non-tracepoint samples)"),
    Plant("stream_id_not_in_layout", "vpmutrace/readers/perf_samples.py",
          "abi.S_ID, abi.S_STREAM_ID, abi.S_CPU,", "abi.S_ID, abi.S_CPU,",
          "PERF_SAMPLE_STREAM_ID left out of the sample layout (tracepoint samples' field positions)"),
    Plant("pair_per_cpu", "vpmutrace/analyze/windows.py",
          'KEY = ["source", "pid"]', 'KEY = ["source", "cpu"]',
          "exit/entry paired per CPU instead of per vCPU thread"),
    Plant("pair_any_next_event", "vpmutrace/analyze/windows.py",
          'ex.with_columns(pl.when(pl.col("next_kind") == "entry")',
          'ex.with_columns(pl.when(pl.col("next_kind").is_not_null())',
          "an exit paired with the thread's next event of any kind (another exit included)"),
    Plant("p99_as_p95", "vpmutrace/analyze/exits.py",
          'h.quantile(0.99, "nearest").alias("p99_ns")', 'h.quantile(0.95, "nearest").alias("p99_ns")',
          "p99 computed as p95"),
)


def checkout(work: Path, rev: str = "HEAD") -> None:
    """The committed ``rev``, in ``work`` (files already there are overwritten)."""
    work.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(work)], input=tar.stdout, check=True)
    # collectors/ installs as vpmutrace.collectors (setup.py package_dir): the copy imports its own
    link = work / "vpmutrace" / "collectors"
    if (work / "collectors").is_dir() and not link.exists():
        link.symlink_to(Path("..") / "collectors")


def _pytest(work: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VPMUTRACE_SHARED=os.environ.get("VPMUTRACE_SHARED", str(ROOT.parent / "shared")))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=work,
                          capture_output=True, text=True, timeout=timeout, check=False, env=env)


def run_one(work: Path, p: Plant, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """(killed|survived|error, detail, seconds) for one planted bug.

    The suite runs with -x; the test that fails is run again with the bug still planted and then
    without it, and counts as the killer only if it fails again with the bug and passes without it (a
    test that fails only under load, or fails in the copy anyway, is deselected and the suite goes on,
    at most 3 times)."""
    path = work / p.file
    src = path.read_text()
    if src.count(p.old) != 1:
        return "error", f"the line to change occurs {src.count(p.old)} times in {p.file}", 0.0
    t0 = time.monotonic()
    LOGS.mkdir(parents=True, exist_ok=True)
    flaky: list[str] = []
    try:
        path.write_text(src.replace(p.old, p.new))
        while True:
            r = _pytest(work, ["-x", *[f"--deselect={t}" for t in flaky], *tests], timeout)
            (LOGS / f"{p.name}.log").write_text(r.stdout[-20000:] + r.stderr[-5000:])
            if r.returncode == 0:
                return "survived", f"flaky, deselected: {flaky}" if flaky else "", time.monotonic() - t0
            failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", r.stdout, re.M)
            if not failed:
                return "killed", f"pytest exit {r.returncode}", time.monotonic() - t0
            if _pytest(work, [failed[0]], timeout).returncode != 0:
                path.write_text(src)
                clean = _pytest(work, [failed[0]], timeout).returncode
                path.write_text(src.replace(p.old, p.new))
                if clean == 0:
                    return "killed", failed[0], time.monotonic() - t0
            flaky.append(failed[0])  # fails only under load, or without the bug too: not a kill
            if len(flaky) > 4:
                return "error", f"too many tests failing only once: {flaky}", time.monotonic() - t0
    except subprocess.TimeoutExpired:
        return "killed", f"timeout after {timeout:g} s", time.monotonic() - t0
    finally:
        path.write_text(src)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", nargs="*", default=[], help="pytest arguments (default: the whole suite)")
    ap.add_argument("--only", nargs="*", default=[], help="names of the bugs to plant (default: all)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vpmutrace-planted-work")
    ap.add_argument("--rev", default="HEAD", help="the commit whose code and tests are used (e.g. main: before)")
    a, extra = ap.parse_known_args(argv)  # other options (--ignore=..., -k ...) go to pytest
    a.tests += extra
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the planted file is restored
    plants = [p for p in PLANTS if not a.only or p.name in a.only]
    checkout(a.work, a.rev)
    survived = 0
    for p in plants:
        verdict, detail, dt = run_one(a.work, p, a.tests, a.timeout)
        survived += verdict != "killed"
        print(f"{p.name:<24} {verdict.upper() if verdict != 'killed' else verdict:<9} {dt:6.0f} s  {detail}"
              f"{'  (' + p.what + ')' if verdict != 'killed' else ''}", flush=True)
    print(f"{len(plants) - survived} of {len(plants)} planted bugs killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
