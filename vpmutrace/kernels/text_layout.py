"""What the compiled text-line parser (kernels/text.py) returns: one row per line, these columns.

Declared apart from the kernel so that the reader uses them without importing numba.
"""

from __future__ import annotations

LINE_EVENT, LINE_BLANK, LINE_COMMENT, LINE_OTHER = 0, 1, 2, 3
FLAVOR_FTRACE, FLAVOR_PERF = 0, 1
NONE = -(1 << 62)  # an absent number

# columns of parse_lines' output: spans (byte offsets) and numbers
(H_COMM_S, H_COMM_E, H_PID, H_TGID, H_CPU, H_TS, H_EVENT_S, H_EVENT_E, H_FLAGS_S, H_FLAGS_E, H_BODY_S, H_SRC_S,
 H_SRC_E, H_KIND, H_PERIOD, H_LINE_S, H_LINE_E) = range(17)
H_COLUMNS = 17
