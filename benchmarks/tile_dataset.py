"""Make a large dataset from a small one: its event tables repeated N times, each copy shifted in time
by the source's span (threads, CPUs and payloads kept), written row group by row group so the output
can be larger than memory. For measuring ``analyze`` of a large dataset (lazy scans vs in memory):

    python benchmarks/tile_dataset.py SRC_DATASET N -o OUT_DATASET
    /usr/bin/time -v vpmutrace analyze --json OUT_DATASET > /dev/null

The copies are real records (a real capture's or the simulator's), not new behaviour: every
per-thread sequence stays in order because each copy starts after the previous one ends.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vpmutrace.parquet_pages import FOOTERS_KEY
from vpmutrace.tracedata import META_FILE, parquet_writer, write_meta, write_parquet


def tile(src: Path, n: int, out: Path) -> dict[str, int]:
    meta = json.loads((src / META_FILE).read_text())
    lo, hi = meta["time_span_ns"]
    step = hi - lo + 1
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for f in sorted(src.glob("*.parquet")):
        t = pq.read_table(f)
        if f.stem in ("stats", "lost"):
            write_parquet(t, out / f.name)
            continue
        seq_step = int(pc.max(t["seq"]).as_py() or 0) + 1
        with parquet_writer(t.schema, out / f.name) as w:  # (the dataset's settings, page checksums too)
            for k in range(n):
                c = t.set_column(t.schema.get_field_index("ts_ns"), t.schema.field("ts_ns"),
                                 pc.add(t["ts_ns"], pa.scalar(k * step, pa.int64())))
                c = c.set_column(c.schema.get_field_index("seq"), c.schema.field("seq"),
                                 pc.add(c["seq"], pa.scalar(k * seq_step, pa.int64())))
                w.write_table(c, row_group_size=1 << 20)
        rows[f.stem] = t.num_rows * n
    meta["events"] = {e: c * n for e, c in meta["events"].items()}
    meta["time_span_ns"] = [lo, lo + n * step - 1]
    meta["tiled"] = {"source": str(src), "copies": n}
    meta.pop(FOOTERS_KEY, None)
    write_meta(out, meta)  # (with the new files' footer checksums)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("copies", type=int)
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    rows = tile(a.src, a.copies, a.out)
    print(f"wrote {a.out}: {sum(rows.values())} rows ({', '.join(f'{k} {v}' for k, v in sorted(rows.items()))})")


if __name__ == "__main__":
    main()
