"""Pack tracepoint payloads into ftrace ring-buffer pages (the inverse of readers/ringbuf.py).

Used to turn decoded or generated events into trace.dat CPU data: each page is
``u64 timestamp, u64 commit, data``; each event a u32 header (type_len 1..28 for
payloads up to 112 bytes, else 0 with the length in array[0]) with a 27-bit time
delta, preceded by a TIME_EXTEND record when the delta does not fit.
"""

from __future__ import annotations

import struct

import numpy as np

from vpmutrace.formats.ringbuf_abi import DELTA_MAX, TS_SHIFT, TYPE_DATA_MAX, TYPE_TIME_EXTEND


def pack_pages(payloads: list[bytes], ts: np.ndarray, page_size: int = 4096) -> bytes:
    """Pages holding ``payloads`` (time-ordered) with timestamps ``ts`` (trace clock units)."""
    pages: list[bytes] = []
    data = bytearray()
    page_ts = 0
    last = 0
    cap = page_size - 16

    def flush() -> None:
        if data:
            pages.append(struct.pack("<QQ", page_ts, len(data)) + bytes(data) + bytes(cap - len(data)))

    for payload, t in zip(payloads, ts.tolist(), strict=True):
        plen = (len(payload) + 3) & ~3
        body = payload + bytes(plen - len(payload))
        if plen <= TYPE_DATA_MAX * 4:
            need = 4 + plen
        else:
            need = 8 + plen
        if not data or len(data) + need + 8 > cap:
            flush()
            data = bytearray()
            page_ts = t
            last = t
        delta = t - last
        if delta > DELTA_MAX:
            data += struct.pack("<II", TYPE_TIME_EXTEND | ((delta & DELTA_MAX) << 5), delta >> TS_SHIFT)
            delta = 0
        if plen <= TYPE_DATA_MAX * 4:
            data += struct.pack("<I", (plen // 4) | (delta << 5)) + body
        else:
            data += struct.pack("<II", delta << 5, plen + 4) + body
        last = t
    flush()
    return b"".join(pages)
