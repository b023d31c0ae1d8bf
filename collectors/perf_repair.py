"""Make the perf.data of a `perf record` that died mid-run readable.

perf writes the file header when it starts and rewrites it, with the data size and the feature
sections after the data, when it stops (tools/perf/builtin-record.c record__finish_output ->
perf_session__write_header). A perf killed before that (SIGKILL, a crash, the OOM killer) leaves
data size 0 and no feature sections, although the header's feature bits are already set: the
records are there but the tracepoint formats (HEADER_TRACING_DATA) that decode them are not.

On the host that recorded, the repair rebuilds what is needed: a torn last record is cut off, the
data size is set to the records that are complete, and the features TRACING_DATA (this kernel's
header_page, header_event and the recorded events' format files: the ids in the attrs are this
boot's), OSRELEASE and NRCPUS are appended; the other feature bits are cleared, and listed as lost
(bit numbers of tools/perf/util/header.h HEADER_*). When perf died because the disk filled up, the
last records are cut to make room for the features (counted in ``records_cut_for_room``).
Events perf had not yet copied out of its ring buffers when it died are lost with it and cannot be
counted; the repair says so.
"""

from __future__ import annotations

import os
import platform
import struct
from pathlib import Path
from typing import Any

import numpy as np

from vpmutrace.writers.perf_data import (
    FEAT_NRCPUS,
    FEAT_OSRELEASE,
    FEAT_TRACING_DATA,
    feature_sections,
    perf_string,
    tracing_data,
)

HEADER_SIZE = 104  # struct perf_file_header
DATA_SECTION = 40  # offset of perf_file_header.data (u64 offset, u64 size)
FLAGS = 72  # offset of perf_file_header.adds_features (256 bits)
SLACK = 16384  # kept free on a full disk: filesystems allocate in blocks


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path.parent)
    return st.f_bavail * st.f_frsize


def disk_full(path: Path) -> bool:
    """The filesystem holding ``path`` has (almost) no room left: less than SLACK bytes."""
    try:
        return _free_bytes(path) < SLACK
    except OSError:
        return False


def needs_repair(path: Path) -> bool:
    """A file-mode perf.data whose header says 0 bytes of data: perf did not finish it."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
    except OSError:
        return False
    if len(head) < HEADER_SIZE or head[:8] != b"PERFILE2":
        return False
    off, size = struct.unpack_from("<QQ", head, DATA_SECTION)
    return size == 0 and os.path.getsize(path) > off


def repair(path: Path, tracefs: Path, events: list[str]) -> dict[str, Any]:
    """Repair ``path`` in place (see the module docstring); returns what was done and what was lost."""
    from vpmutrace.readers.perf_data import walk

    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    data_off = struct.unpack_from("<Q", head, DATA_SECTION)[0]
    old_flags = struct.unpack_from("<4Q", head, FLAGS)
    size = os.path.getsize(path)
    texts: dict[str, bytes] = {}
    for e in events:
        system, _, name = e.partition(":")
        try:
            texts[e] = (tracefs / "events" / system / name / "format").read_bytes()
        except OSError:
            continue
    feats = {FEAT_OSRELEASE: perf_string(platform.release()),
             FEAT_NRCPUS: struct.pack("<II", os.cpu_count() or 1, len(os.sched_getaffinity(0)))}
    try:
        feats[FEAT_TRACING_DATA] = tracing_data((tracefs / "events" / "header_page").read_bytes(),
                                                (tracefs / "events" / "header_event").read_bytes(), texts,
                                                page_size=os.sysconf("SC_PAGE_SIZE"))
    except OSError:
        pass
    need = len(feature_sections(feats, 0)[0])
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    _o, types, _m, _s, stop, _e = walk(buf, data_off, size)
    end, records = int(stop), int(len(types))
    room = _free_bytes(path) + (size - end) - SLACK
    cut = 0
    if room < need:  # a full disk: records at the end make room for the formats that decode the rest
        _o, types, _m, _s, stop, _e = walk(buf, data_off, max(data_off, end - (need - room)))
        cut = records - int(len(types))
        end, records = int(stop), int(len(types))
    del buf
    tail, flags = feature_sections(feats, end)
    with open(path, "r+b") as f:
        f.truncate(end)
        f.seek(end)
        f.write(tail)
        f.seek(DATA_SECTION + 8)
        f.write(struct.pack("<Q", end - data_off))
        f.seek(FLAGS)
        f.write(struct.pack("<4Q", *flags))
    lost_bits = [b for b in range(256) if old_flags[b // 64] >> (b % 64) & 1 and b not in feats]
    return {"records": records, "data_size": end - data_off, "torn_bytes": size - end,
            "records_cut_for_room": cut,
            "features_written": sorted(feats), "features_lost": lost_bits,
            "unread": "events still in perf's ring buffers when it died are lost and cannot be counted"}
