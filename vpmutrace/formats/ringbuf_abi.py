"""ftrace ring-buffer page constants (include/linux/ring_buffer.h, kernel/trace/ring_buffer.c),
declared once for the reader (``readers/ringbuf.py``), its compiled walk (``kernels/ringbuf.py``)
and the writer (``writers/ringbuf.py``)."""

from __future__ import annotations

COMMIT_MASK = (1 << 27) - 1  # bytes of data on the page
MISSING_EVENTS = 1 << 31  # events were lost before this page
MISSING_STORED = 1 << 30  # ... and their count is stored after the page's data
TYPE_PADDING, TYPE_TIME_EXTEND, TYPE_TIME_STAMP = 29, 30, 31  # type_len values of non-data events
TYPE_DATA_MAX = 28  # type_len 1..28: data of type_len * 4 bytes; 0: length in array[0]
TS_SHIFT = 27  # time extend / absolute stamps: array[0] << 27 | time_delta
DELTA_MAX = (1 << TS_SHIFT) - 1
