"""A trace.dat of N events made of a real capture's ring-buffer pages, repeated with their times shifted.

The seed (default fixtures/mixed.trace.dat, recorded on a KVM host through a tracefs instance:
every 'kvm:*' event, sched_switch, sched_wakeup, local_timer_entry) keeps its formats, cmdlines,
kallsyms and options; each CPU's pages are written once as they are, then again and again, each
copy's page header times (and only those: the events' times are deltas from them,
include/linux/ring_buffer.h) moved past the previous copy's, until the file holds N events. Written
as a version 6 file, uncompressed (trace-cmd.dat.v6(5): the per-CPU offset/size table after the
"flyrecord" tag), so that its size is what the ring buffer held; the file is written copy by copy,
never held in memory.

    .venv/bin/python benchmarks/scale_input_tracedat.py OUT.trace.dat N [--seed FILE]

benchmarks/bench_scale.py --input trace.dat times ingest of these files against trace-cmd report.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vpmutrace.readers import load_trace  # noqa: E402
from vpmutrace.readers.trace_dat import content_of  # noqa: E402
from vpmutrace.writers.trace_dat import BufferData, write_trace_dat  # noqa: E402

FLYRECORD = b"flyrecord\0"
COPIES_PER_WRITE = 64


def make(seed: Path, out: Path, n: int) -> int:
    """Write ``out`` with at least ``n`` events (whole copies of the seed's); returns the count."""
    c = content_of(seed)
    data = next(b for b in c.buffers if b.cpus)  # the buffer that holds the events, as the top one
    c.buffers = [BufferData("", data.clock, data.cpus)]
    page = c.page_size
    td = load_trace([seed])
    per_copy = sum(td.event_counts().values())
    last_event = td.meta["time_span_ns"][1]  # (the last page's events run past its header time)
    copies = max(1, -(-n // per_copy))
    pages = {cpu: np.frombuffer(b, np.uint8).reshape(-1, page).copy() for cpu, b in data.cpus.items()}
    heads = [p[:, :8].copy().view("<i8").ravel() for p in pages.values() if len(p)]
    period = int(last_event - min(h.min() for h in heads)) + 1_000_000  # + 1 ms: each CPU's times never go back
    # the layout of a one-copy file: its per-CPU table moved to hold ``copies`` copies
    one = out.with_suffix(".one")
    write_trace_dat(one, c, version=6, compression="none")
    head = bytearray(one.read_bytes())
    one.unlink()
    table = head.rindex(FLYRECORD) + len(FLYRECORD)
    ncpu = max([c.cpucount, max(pages) + 1])  # (the writer's table: one row per CPU up to the highest)
    at = table + 16 * ncpu
    del head[at:]
    layout = []
    for cpu in range(ncpu):
        at += (-at) % page
        size = len(pages.get(cpu, ())) * page * copies
        layout.append((at if size else 0, size))
        at += size
    for cpu, (off, size) in enumerate(layout):
        struct.pack_into("<QQ", head, table + 16 * cpu, off, size)
    with open(out, "wb") as f:
        f.write(head)
        pos = len(head)
        for cpu, (off, size) in enumerate(layout):
            if not size:
                continue
            f.write(bytes(off - pos))
            p = pages[cpu]
            base = p[:, :8].copy().view("<i8").ravel()
            for j0 in range(0, copies, COPIES_PER_WRITE):
                j1 = min(copies, j0 + COPIES_PER_WRITE)
                block = np.tile(p, (j1 - j0, 1))
                shift = np.repeat(np.arange(j0, j1, dtype=np.int64) * period, len(p))
                block[:, :8] = (np.tile(base, j1 - j0) + shift)[:, None].view(np.uint8)
                f.write(block.tobytes())
            pos = off + size
    return per_copy * copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("n", type=float)
    ap.add_argument("--seed", type=Path, default=ROOT / "fixtures" / "mixed.trace.dat")
    a = ap.parse_args()
    print(make(a.seed, a.out, int(a.n)))


if __name__ == "__main__":
    main()
