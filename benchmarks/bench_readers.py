"""Reader speed and memory against perf script and trace-cmd report, on the same files, in one run.

    benchmarks/record_mixed.sh benchmarks/data 30000   # once, on a KVM host: the mixed capture
    benchmarks/make_capture.sh                          # once: the scalar-only capture
    .venv/bin/python benchmarks/bench_readers.py [--runs N]

Prints the README's performance tables (markdown), then every run's time. For each capture
(the mixed one first: all of 'kvm:*', sched_switch, sched_wakeup, local_timer_entry, with
strings, arrays and dynamic fields; then the scalar-only one, the favourable case) and each
binary file (perf.data, and its trace.dat: for the mixed capture the tracefs backend's own
recording of the same workload, for the scalar one the same payloads packed into ring-buffer
pages), it times:

- the tool that prints it: ``perf script`` / ``trace-cmd report`` > /dev/null;
- whole-process, as a user runs it (interpreter start and imports included): a process that
  reads the file into Arrow tables, and ``vpmutrace ingest FILE -o DIR`` (Parquet);
- in-process: in a process that has imported vpmutrace and read a small trace, reading the
  file into Arrow, and reading then writing the Parquet dataset.

Each reader runs once uncounted, then ``--runs`` times (default 5), every run a fresh process;
the tables give best and median and the ratio tool / ours for each (best vs best, median vs
median), and peak RSS (the highest of the runs) against the file size. For a trace.dat, whose
ring-buffer pages are compressed, the memory is also given against what the same events take in
a perf.data. The text readers (the kernel's text, trace-cmd report, perf script of the mixed
capture) are timed in-process in lines per second, against reading the same events from binary.
Before each file's runs the file is dropped from the page cache and read back once, so that all
readers start from the same page cache.
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
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
PY = sys.executable
VPMUTRACE = str(Path(PY).with_name("vpmutrace"))
WARM = ",".join(str(HERE.parent / "fixtures" / f) for f in ("mixed.perf.data", "mixed.trace.dat"))

IN_PROCESS = r"""
import json, resource, sys, time
from vpmutrace.readers import load_trace
for warm in sys.argv[3].split(","):  # imports and compiled kernels loaded outside the timing
    load_trace([warm])
t = time.perf_counter()
td = load_trace([sys.argv[1]])
mid = time.perf_counter()
if sys.argv[2] == "parquet":
    td.save(sys.argv[4])
end = time.perf_counter()
print(json.dumps({"events": sum(td.meta["events"].values()), "arrow_s": mid - t, "parquet_s": end - t,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
TO_ARROW = "import sys; from vpmutrace.readers import load_trace; load_trace([sys.argv[1]])"


@dataclass
class Runs:
    label: str
    secs: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.secs)

    @property
    def median(self) -> float:
        return statistics.median(self.secs)


def timed(cmd: list[str], out: Path | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KB) of one whole process, stdout to ``out`` or /dev/null."""
    t = time.perf_counter()
    with open(out or os.devnull, "wb") as sink:
        r = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], stdout=sink, stderr=subprocess.PIPE, check=False)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {r.stderr.decode()[-500:]}")
    return dt, int(r.stderr.decode().strip().splitlines()[-1])


def whole(label: str, cmd: list[str], runs: int) -> Runs:
    res = Runs(label)
    for k in range(runs + 1):
        dt, rss = timed(cmd)
        if k:  # the first run is not counted
            res.secs.append(dt)
            res.rss_kb.append(rss)
    return res


def in_process(path: Path, runs: int) -> tuple[Runs, Runs, int]:
    arrow, parquet = Runs("in-process -> Arrow"), Runs("in-process -> Parquet")
    events = 0
    out = DATA / "in-process.json"
    for k in range(runs + 1):
        # peak RSS from /usr/bin/time, not the child's own getrusage: a child's ru_maxrss starts at its
        # parent's resident size when it was forked
        _, rss = timed([PY, "-c", IN_PROCESS, str(path), "parquet", WARM, str(DATA / "out.parquet")], out)
        d = json.loads(out.read_text().strip().splitlines()[-1])
        if k:
            arrow.secs.append(d["arrow_s"])
            parquet.secs.append(d["parquet_s"])
            arrow.rss_kb.append(rss)
            parquet.rss_kb.append(rss)
        events = d["events"]
    return arrow, parquet, events


def settle_page_cache(path: Path) -> None:
    """Drop the file's cached pages and read it once, so that every reader starts from the same
    page cache (the page cache holds a file in pieces the size of the writes that made it)."""
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        chunk = bytearray(8 << 20)
        while f.readinto(chunk):
            pass


@dataclass
class FileResult:
    name: str
    size: int
    events: int
    tool: Runs
    whole_arrow: Runs
    whole_parquet: Runs
    arrow: Runs
    parquet: Runs
    perf_bytes_per_event: float | None = None  # for a trace.dat: what the same events take in perf.data


def bench_file(path: Path, tool_cmd: list[str], runs: int) -> FileResult:
    print(f"  {path.name}: {' '.join(tool_cmd[:2])} ...", file=sys.stderr, flush=True)
    settle_page_cache(path)
    tool = whole(" ".join(tool_cmd[:2]), tool_cmd, runs)
    print(f"  {path.name}: vpmutrace ...", file=sys.stderr, flush=True)
    w_arrow = whole("whole-process -> Arrow", [PY, "-c", TO_ARROW, str(path)], runs)
    w_parquet = whole("vpmutrace ingest (Parquet)", [VPMUTRACE, "ingest", str(path), "-o", str(DATA / "out.ds")], runs)
    arrow, parquet, events = in_process(path, runs)
    return FileResult(path.name, path.stat().st_size, events, tool, w_arrow, w_parquet, arrow, parquet)


def _mb(kb: int) -> str:
    return f"{kb / 1024:.0f} MB"


def table(title: str, results: list[FileResult]) -> list[str]:
    out = [f"**{title}**", "",
           "| file | reader | whole process: best / median | vs tool | in-process: best / median | vs tool "
           "| peak RSS |", "|---|---|---|---|---|---|---|"]
    for r in results:
        t = r.tool
        desc = f"{r.name} ({r.size / 2**20:.0f} MB, {r.events / 1e6:.2f} M events)"
        rss = max(t.rss_kb)
        out.append(f"| {desc} | {t.label} | {t.best:.2f} / {t.median:.2f} s | 1.0x | | | {_mb(rss)} "
                   f"({rss * 1024 / r.size:.2f}x file) |")
        for w, p in ((r.whole_arrow, r.arrow), (r.whole_parquet, r.parquet)):
            # (the in-process runs write Parquet: their peak counts for the Parquet row only)
            rss = max(w.rss_kb + (p.rss_kb if w is r.whole_parquet else []))
            per = f"{rss * 1024 / r.size:.2f}x file"
            if r.perf_bytes_per_event:
                per += f", {rss * 1024 / (r.perf_bytes_per_event * r.events):.2f}x the events' perf.data"
            to = "Arrow" if w is r.whole_arrow else "Parquet"
            out.append(f"| | vpmutrace -> {to} | {w.best:.2f} / {w.median:.2f} s | {t.best / w.best:.1f}x / "
                       f"{t.median / w.median:.1f}x | {p.best:.2f} / {p.median:.2f} s | {t.best / p.best:.1f}x / "
                       f"{t.median / p.median:.1f}x | {_mb(rss)} ({per}) |")
    return out + [""]


def text_readers(runs: int, texts: list[tuple[Path, Path]]) -> list[str]:
    out = ["**Text readers** (in-process, the mixed capture's texts; the binary: the file the text was "
           "printed from)", "",
           "| text | MB | lines | best / median | lines/s | the binary file, same events | events/s | text / binary |",
           "|---|---|---|---|---|---|---|---|"]
    for text, binary in texts:
        if not text.exists():
            continue
        print(f"  {text.name} ...", file=sys.stderr, flush=True)
        settle_page_cache(text)
        t_arrow, _, events = in_process(text, max(1, runs // 2))
        b_arrow, _, b_events = in_process(binary, max(1, runs // 2))
        lines = sum(1 for _ in open(text, "rb"))
        out.append(f"| {text.name} | {text.stat().st_size / 2**20:.0f} | {lines / 1e6:.2f} M | "
                   f"{t_arrow.best:.2f} / {t_arrow.median:.2f} s | {lines / t_arrow.best / 1e6:.2f} M | "
                   f"{binary.name}: {b_arrow.best:.2f} s | {b_events / b_arrow.best / 1e6:.1f} M | "
                   f"{t_arrow.best / b_arrow.best:.0f}x slower |")
    return out + [""]


FRESH_MEMORY = "import numpy as np, time; t = time.perf_counter(); a = np.ones(300 << 20, np.uint8); " \
    "print(time.perf_counter() - t)"


def fresh_memory(runs: int) -> list[float]:
    """Seconds a fresh process takes to write 300 MB of new memory (on a VM whose free memory goes
    back to the hypervisor, touching it again costs host faults: this moves single runs)."""
    return [float(subprocess.run([PY, "-c", FRESH_MEMORY], capture_output=True, check=True, text=True).stdout)
            for _ in range(runs)]


def _perf_data_bounds(buf) -> tuple[int, int]:
    hsize = int(buf[8:16].view("<u8")[0])
    if hsize == 16:
        return 16, len(buf)
    off, size = int(buf[40:48].view("<u8")[0]), int(buf[48:56].view("<u8")[0])
    return off, off + size


def make_trace_dat(perf_data: Path, out: Path) -> None:
    """The perf.data's tracepoint payloads as trace.dat CPU pages (same events, same formats)."""
    import numpy as np

    from vpmutrace.readers.perf_data import REC_SAMPLE, read_perf_data, walk
    from vpmutrace.readers.perf_samples import sample_fields
    from vpmutrace.tracedata import TraceBuilder
    from vpmutrace.writers.ringbuf import pack_pages
    from vpmutrace.writers.trace_dat import BufferData, TraceDatContent, write_trace_dat

    pf = read_perf_data(perf_data, TraceBuilder())
    buf = np.memmap(perf_data, dtype=np.uint8, mode="r")
    offs, types, _m, sizes, _s, _e = walk(buf, *_perf_data_bounds(buf))
    sel = types == REC_SAMPLE
    o = sample_fields(pf.attrs, pf.path, buf, offs[sel], sizes[sel])
    cpus: dict[int, bytes] = {}
    for cpu in np.unique(o["cpu"]).tolist():
        rows = np.nonzero(o["cpu"] == cpu)[0]
        rows = rows[np.argsort(o["time"][rows], kind="stable")]
        payloads = [buf[a:a + b].tobytes() for a, b in zip(o["raw_off"][rows].tolist(),
                                                           o["raw_len"][rows].tolist(), strict=True)]
        cpus[int(cpu)] = pack_pages(payloads, o["time"][rows])
    r = pf.tracing.raw
    content = TraceDatContent(page_size=4096, header_page=r["header_page"], header_event=r["header_event"],
                              ftrace_formats=list(r["ftrace"]), event_formats=dict(r["events"]),
                              cmdlines=r.get("cmdlines", b""), buffers=[BufferData("", "perf", cpus)],
                              uname=f"Linux bench {pf.features.get('os_release', '')} x86_64",
                              trace_clock="local global counter uptime [perf] mono mono_raw boot",
                              cpucount=max(cpus) + 1)
    write_trace_dat(out, content, 7, "zstd")


def _text_of(cmd: list[str], out: Path) -> Path:
    """A tool's text of a file, written once (the text readers' inputs)."""
    if not out.exists():
        print(f"  writing {out.name} ...", file=sys.stderr, flush=True)
        subprocess.run(cmd, stdout=open(out, "wb"), stderr=subprocess.DEVNULL, check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="counted runs per reader (default 5)")
    ap.add_argument("--make-trace-dat", nargs=2, metavar=("PERF_DATA", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.make_trace_dat:
        make_trace_dat(Path(a.make_trace_dat[0]), Path(a.make_trace_dat[1]))
        return
    mixed_perf, mixed_dat, scalar_perf = DATA / "mixed.perf.data", DATA / "mixed.trace.dat", DATA / "scalar.perf.data"
    for f, how in ((mixed_perf, "benchmarks/record_mixed.sh benchmarks/data 30000"),
                   (scalar_perf, "benchmarks/make_capture.sh")):
        if not f.exists():
            sys.exit(f"{f} missing: run `{how}` on a KVM host first")
    scalar_dat = DATA / "scalar.trace.dat"
    if not scalar_dat.exists():  # (in a process of its own: this one's memory stays small)
        print(f"building {scalar_dat.name} from the same payloads ...", file=sys.stderr, flush=True)
        subprocess.run([PY, __file__, "--make-trace-dat", str(scalar_perf), str(scalar_dat)], check=True)
    have = {t: shutil.which(t) is not None for t in ("perf", "trace-cmd")}
    if not all(have.values()):
        sys.exit(f"needs perf and trace-cmd: {have}")

    print("mixed capture", file=sys.stderr)
    mixed = [bench_file(mixed_perf, ["perf", "script", "-i", str(mixed_perf)], a.runs),
             bench_file(mixed_dat, ["trace-cmd", "report", "-i", str(mixed_dat)], a.runs)]
    print("scalar-only capture", file=sys.stderr)
    scalar = [bench_file(scalar_perf, ["perf", "script", "-i", str(scalar_perf)], a.runs),
              bench_file(scalar_dat, ["trace-cmd", "report", "-i", str(scalar_dat)], a.runs)]
    for results in (mixed, scalar):
        per_event = results[0].size / results[0].events
        results[1].perf_bytes_per_event = per_event
    print("text readers", file=sys.stderr)
    texts = [(DATA / "mixed.ftrace.txt", mixed_dat),
             (_text_of(["trace-cmd", "report", "-i", str(mixed_dat)], DATA / "mixed.report.txt"), mixed_dat),
             (_text_of(["perf", "script", "-i", str(mixed_perf)], DATA / "mixed.perf-script.txt"), mixed_perf)]
    text_lines = text_readers(a.runs, texts)

    print("\n".join(table("Mixed capture (what a KVM engineer records)", mixed)
                    + table("Scalar-only capture (kvm_msr, kvm_pio, kvm_cpuid, kvm_inj_exception, "
                            "kvm_userspace_exit: every field a scalar, the favourable case)", scalar)
                    + text_lines))
    print(f"best / median of {a.runs} runs after 1 uncounted; every run a fresh process; vs tool = tool seconds / "
          f"our seconds on the same file. {os.cpu_count()} CPUs. Peak RSS: the highest of the runs (for Parquet, "
          f"of the whole-process and in-process runs).")
    fresh = fresh_memory(a.runs)
    print(f"a fresh process writing 300 MB of new memory: best {min(fresh):.3f} s, worst {max(fresh):.3f} s")
    for r in mixed + scalar:
        for x in (r.tool, r.whole_arrow, r.whole_parquet, r.arrow, r.parquet):
            print(f"{r.name} {x.label}: " + " ".join(f"{s:.2f}" for s in x.secs))


if __name__ == "__main__":
    main()
