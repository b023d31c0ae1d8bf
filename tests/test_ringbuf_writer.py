"""Pages we pack read back to the same payloads and times (including long gaps and big records)."""

from __future__ import annotations

import numpy as np

from vpmutrace.readers.ringbuf import walk_pages
from vpmutrace.writers.ringbuf import pack_pages

HEADER = {"timestamp": (0, 8), "commit": (8, 8), "data": (16, 0)}


def test_round_trip() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    sizes = rng.integers(8, 200, n)
    payloads = [bytes(rng.integers(0, 256, int(s), dtype=np.uint8)) for s in sizes]
    gaps = rng.integers(0, 1 << 20, n)
    gaps[::97] = 1 << 40  # needs TIME_EXTEND
    ts = np.cumsum(gaps) + 10**12
    pages = pack_pages(payloads, ts)
    w = walk_pages(np.frombuffer(pages, dtype=np.uint8), 4096, HEADER)
    assert w.corrupt_pages == 0 and len(w.offsets) == n
    assert w.ts.tolist() == ts.tolist()
    buf = np.frombuffer(pages, dtype=np.uint8)
    for k in (0, 1, 96, 97, n - 1):
        got = buf[w.offsets[k]:w.offsets[k] + len(payloads[k])].tobytes()
        assert got == payloads[k] and w.lengths[k] >= len(payloads[k])
