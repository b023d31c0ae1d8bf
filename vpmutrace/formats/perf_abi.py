"""perf.data constants, declared once for the reader (``readers/perf_*.py``) and its compiled
loops (``kernels/perf_walk.py``).

Sources: include/uapi/linux/perf_event.h (sample_type and read_format bits, record types
1..22), tools/lib/perf/include/perf/event.h (user record types 64..83).
"""

from __future__ import annotations

# PERF_SAMPLE_* (attr.sample_type): the order of the bits is the order of a sample's fields
S_IP, S_TID, S_TIME, S_ADDR, S_READ, S_CALLCHAIN, S_ID, S_CPU = 1, 2, 4, 8, 16, 32, 64, 128
S_PERIOD, S_STREAM_ID, S_RAW, S_BRANCH_STACK, S_REGS_USER, S_STACK_USER = 256, 512, 1024, 2048, 4096, 8192
S_WEIGHT, S_DATA_SRC, S_IDENTIFIER, S_TRANSACTION, S_REGS_INTR, S_PHYS_ADDR = 1 << 14, 1 << 15, 1 << 16, 1 << 17, \
    1 << 18, 1 << 19
S_AUX, S_CGROUP, S_DATA_PAGE_SIZE, S_CODE_PAGE_SIZE, S_WEIGHT_STRUCT = 1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24

# PERF_FORMAT_* (attr.read_format)
F_TOTAL_TIME_ENABLED, F_TOTAL_TIME_RUNNING, F_ID, F_GROUP, F_LOST = 1, 2, 4, 8, 16

# record types
REC_MMAP, REC_LOST, REC_COMM, REC_EXIT, REC_THROTTLE, REC_UNTHROTTLE, REC_FORK = 1, 2, 3, 4, 5, 6, 7
REC_SAMPLE, REC_MMAP2, REC_LOST_SAMPLES, REC_KSYMBOL = 9, 10, 13, 17
REC_HEADER_ATTR, REC_HEADER_EVENT_TYPE, REC_HEADER_TRACING_DATA, REC_HEADER_BUILD_ID = 64, 65, 66, 67
REC_FINISHED_ROUND, REC_ID_INDEX, REC_AUXTRACE = 68, 69, 71
REC_HEADER_FEATURE, REC_COMPRESSED, REC_COMPRESSED2 = 80, 81, 83
# the smallest header.size of the records the reader takes fields from (the fixed part of each
# struct in perf_event.h / event.h, before strings and the sample_id trailer)
MIN_RECORD_SIZE = {REC_MMAP: 40, REC_LOST: 24, REC_COMM: 16, REC_EXIT: 32, REC_THROTTLE: 32, REC_UNTHROTTLE: 32,
                   REC_FORK: 32, REC_LOST_SAMPLES: 16, REC_MMAP2: 72, REC_KSYMBOL: 24,
                   REC_HEADER_ATTR: 8 + 64, REC_HEADER_TRACING_DATA: 12, REC_HEADER_FEATURE: 16,
                   REC_COMPRESSED2: 16}
# header.misc: the cpumode (PERF_RECORD_MISC_CPUMODE_MASK) and the MMAP/MMAP2 bits
MISC_CPUMODE_MASK = 7
MISC_KERNEL, MISC_USER, MISC_GUEST_KERNEL, MISC_GUEST_USER = 1, 2, 4, 5
MISC_MMAP_DATA = 1 << 13  # an MMAP of data (not executable)
MISC_MMAP_BUILD_ID = 1 << 14  # MMAP2 carries a build-id instead of maj/min/ino
MISC_BUILD_ID_SIZE = 1 << 15  # a HEADER_BUILD_ID entry gives its build-id size
KERNEL_RECORD_TYPES = (1, 22)  # the kernel's record types are 1..22, perf's own 64..83
USER_RECORD_TYPES = (64, 83)

# sample keys and groups of the compiled sample walks (kernels/perf_walk.py)
NO_RAW = 65536  # group slot of an attr's samples that carry no tracepoint payload
KEY_UNKNOWN_ID, KEY_BROKEN = -1, -2
A_ST, A_RF, A_FIXED_END, A_TIME, A_TID = range(5)  # rows of the per-attr table (attr_tab[row, attr])
SYNC_RECORDS = 32  # consecutive plausible records that mark a record boundary inside a chunk
