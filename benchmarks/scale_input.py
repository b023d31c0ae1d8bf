"""A perf.data of N events made of a real capture's records, repeated with their times shifted.

The seed (default fixtures/mixed.perf.data, recorded on a KVM host: every 'kvm:*' event,
sched_switch, sched_wakeup, local_timer_entry) keeps its header, attrs, tracing data and
features; its data section is written once as it is, then its SAMPLE and FINISHED_ROUND records
again and again, each copy's sample times (and only those) moved past the previous copy's, until
the file holds N samples. The header's data size and the feature section's offsets
(tools/perf/Documentation/perf.data-file-format.txt) are moved by the bytes added.

    .venv/bin/python benchmarks/scale_input.py OUT.perf.data N [--seed FILE]
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vpmutrace.formats import perf_abi as abi  # noqa: E402
from vpmutrace.readers import perf_samples as ps  # noqa: E402
from vpmutrace.readers.perf_data import open_perf_data  # noqa: E402

HEADER_DATA_SIZE = 48  # perf_file_header: magic, size, attr_size, attrs {offset, size}, data {offset, size}
COPIES_PER_WRITE = 256


def make(seed: Path, out: Path, n: int) -> int:
    """Write ``out`` with at least ``n`` samples (whole copies of the seed's); returns the count."""
    pf, buf, start, end = open_perf_data(seed)
    if pf.pipe:
        raise SystemExit(f"{seed}: a pipe-mode seed has no header to patch")
    recs = ps.split_records(buf, start, end)
    s_off = recs.s_off.astype(np.int64)
    sizes = (buf[s_off[:, None] + np.arange(6, 8)].copy().view("<u2").reshape(-1)).astype(np.int64)
    fields = ps.sample_fields(pf.attrs, pf.path, buf, s_off, sizes.astype(np.int32))
    tpos_attr = np.array([8 + ps.field_pos(a.sample_type, abi.S_TIME) for a in pf.attrs])
    if (tpos_attr < 8).any():
        raise SystemExit(f"{seed}: samples without PERF_SAMPLE_TIME")
    rounds = recs.r_off[recs.r_type == abi.REC_FINISHED_ROUND].astype(np.int64)
    offs = np.concatenate([s_off, rounds])
    lens = np.concatenate([sizes, np.full(len(rounds), 8, np.int64)])
    is_sample = np.concatenate([np.ones(len(s_off), bool), np.zeros(len(rounds), bool)])
    order = np.argsort(offs, kind="stable")
    offs, lens, is_sample = offs[order], lens[order], is_sample[order]
    block = np.concatenate([buf[o:o + k] for o, k in zip(offs.tolist(), lens.tolist(), strict=True)])
    at = np.concatenate([[0], np.cumsum(lens)[:-1]])  # each record's place in the block
    attr_of = np.zeros(len(offs), np.int64)
    attr_of[np.argsort(order)[:len(s_off)]] = fields["attr"]
    tpos = (at + tpos_attr[attr_of])[is_sample]
    times = fields["time"][np.argsort(s_off)]
    span = int(times.max() - times.min()) + 1_000_000
    # COPIES_PER_WRITE copies side by side, written with their times moved at each write
    reps = COPIES_PER_WRITE
    big = np.tile(block, reps)
    big_tpos = (tpos[None, :] + len(block) * np.arange(reps)[:, None]).reshape(-1)
    big_t = (times[None, :] + span * np.arange(1, reps + 1)[:, None]).reshape(-1).astype(np.int64)
    idx = big_tpos[:, None] + np.arange(8)
    copies = max(0, -(-(n - len(s_off)) // len(s_off)))
    head = bytes(buf[:start])
    with open(out, "wb") as f:
        f.write(head)
        f.write(bytes(buf[start:end]))
        done = 0
        while done < copies:
            k = min(reps, copies - done)
            big[idx[:k * len(tpos)]] = (big_t[:k * len(tpos)] + done * span).astype("<i8").view(np.uint8) \
                .reshape(-1, 8)
            f.write(big[:k * len(block)].tobytes())
            done += k
        added = copies * len(block)
        feat = bytearray(buf[end:])
        nfeat = sum(bin(int.from_bytes(bytes(buf[72 + 8 * i:80 + 8 * i]), "little")).count("1") for i in range(4))
        for i in range(nfeat):  # the feature section's {offset, size} table, right after the data
            off, size = struct.unpack_from("<QQ", feat, 16 * i)
            struct.pack_into("<QQ", feat, 16 * i, off + added, size)
        f.write(feat)
        f.seek(HEADER_DATA_SIZE)
        f.write(struct.pack("<Q", end - start + added))
    return len(s_off) * (copies + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("events", type=float)
    ap.add_argument("--seed", type=Path, default=ROOT / "fixtures" / "mixed.perf.data")
    a = ap.parse_args()
    print(make(a.seed, a.out, int(a.events)))


if __name__ == "__main__":
    main()
