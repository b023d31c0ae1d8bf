"""perf's name for an event attr, for perf.data files whose HEADER_EVENT_DESC is missing.

perf names an event by the name recorded in HEADER_EVENT_DESC when there is one
(tools/perf/util/header.c process_event_desc → evlist__set_event_name, matched to the attrs
by position). Without it, tools/perf/util/evsel.c ``evsel__name`` computes one from the attr:

- PERF_TYPE_HARDWARE (0): ``evsel__hw_names[config]`` (cycles, instructions, ...), else
  "unknown-hardware"; on hybrid machines the PMU type sits in config bits 32..63 and the name is
  ``<pmu>/<name>/`` (arch_evsel__hw_name);
- PERF_TYPE_SOFTWARE (1): ``evsel__sw_names[config]`` (cpu-clock ... dummy), else
  "unknown-software";
- PERF_TYPE_TRACEPOINT (2): "system:name" from the tracing data, else "unknown tracepoint"
  (neither with modifiers);
- PERF_TYPE_HW_CACHE (3): ``<cache>-<op>-misses`` or ``<cache>-<ops>`` (evsel__hw_cache_name);
- PERF_TYPE_RAW (4): ``raw 0x<config>``;
- PERF_TYPE_BREAKPOINT (5): ``mem:0x<addr>:<rwx>``;
- any other type: a dynamic PMU. perf prints "unknown attr type: N"; we print
  ``<pmu>/config=0x<config>/`` when HEADER_PMU_MAPPINGS names the type (the spelling perf's own
  event parser accepts), else perf's text.

Modifiers follow evsel__add_modifiers of current perf (since "perf tools: Simplify
evsel__add_modifier()", v6.13): the included privilege levels k/u/h when any is excluded,
``p`` per precise_ip level, and H/G for the included host/guest side when exclude_host or
exclude_guest is set; the first letter is preceded by ':'. Older perf (≤ 6.12, e.g. perf 6.1)
also printed ``:HG`` when neither was excluded and no precise/level modifier was given.
"""

from __future__ import annotations

HW_NAMES = ("cycles", "instructions", "cache-references", "cache-misses", "branches", "branch-misses",
            "bus-cycles", "stalled-cycles-frontend", "stalled-cycles-backend", "ref-cycles")
SW_NAMES = ("cpu-clock", "task-clock", "page-faults", "context-switches", "cpu-migrations", "minor-faults",
            "major-faults", "alignment-faults", "emulation-faults", "dummy")
CACHE_TYPES = ("L1-dcache", "L1-icache", "LLC", "dTLB", "iTLB", "branch", "node")
CACHE_OPS_MISS = ("load", "store", "prefetch")  # with result 'misses'
CACHE_OPS_ACCESS = ("loads", "stores", "prefetches")
# which ops each cache type supports (evsel__hw_cache_stat): L1I reads and prefetches, ITLB and BPU reads only
CACHE_READ, CACHE_WRITE, CACHE_PREFETCH = 1, 2, 4
CACHE_OPS_OK = {0: 7, 1: CACHE_READ | CACHE_PREFETCH, 2: 7, 3: 7, 4: CACHE_READ, 5: CACHE_READ, 6: 7}

TYPE_HARDWARE, TYPE_SOFTWARE, TYPE_TRACEPOINT, TYPE_HW_CACHE, TYPE_RAW, TYPE_BREAKPOINT = range(6)
PMU_TYPE_SHIFT = 32  # hybrid: the PMU type in config bits 32..63 of hardware/cache events

# attr.flags bits (include/uapi/linux/perf_event.h, struct perf_event_attr bitfield order)
EXCLUDE_USER, EXCLUDE_KERNEL, EXCLUDE_HV = 1 << 4, 1 << 5, 1 << 6
PRECISE_SHIFT = 15
EXCLUDE_HOST, EXCLUDE_GUEST = 1 << 19, 1 << 20

BP_R, BP_W, BP_X = 1, 2, 4  # HW_BREAKPOINT_R/W/X (include/uapi/linux/hw_breakpoint.h)


def modifiers(flags: int) -> str:
    """The ``:kuhpppHG`` suffix of an event with these attr flags (empty when nothing is printed)."""
    out = ""
    if flags & (EXCLUDE_USER | EXCLUDE_KERNEL | EXCLUDE_HV):
        out += "" if flags & EXCLUDE_KERNEL else "k"
        out += "" if flags & EXCLUDE_USER else "u"
        out += "" if flags & EXCLUDE_HV else "h"
    out += "p" * (flags >> PRECISE_SHIFT & 3)
    if flags & (EXCLUDE_HOST | EXCLUDE_GUEST):
        out += "" if flags & EXCLUDE_HOST else "H"
        out += "" if flags & EXCLUDE_GUEST else "G"
    return ":" + out if out else ""


def _cache_name(config: int) -> str:
    typ, op, result = config & 0xFF, config >> 8 & 0xFF, config >> 16 & 0xFF
    if typ >= len(CACHE_TYPES):
        return "unknown-ext-hardware-cache-type"
    if op >= len(CACHE_OPS_MISS):
        return "unknown-ext-hardware-cache-op"
    if result > 1:
        return "unknown-ext-hardware-cache-result"
    if not CACHE_OPS_OK[typ] & (1 << op):
        return "invalid-cache"
    if result:
        return f"{CACHE_TYPES[typ]}-{CACHE_OPS_MISS[op]}-misses"
    return f"{CACHE_TYPES[typ]}-{CACHE_OPS_ACCESS[op]}"


def event_name(type_: int, config: int, flags: int, bp_type: int = 0, bp_addr: int = 0,
               pmus: dict[int, str] | None = None, tracepoint: str | None = None) -> str:
    """perf's name of an event without a recorded name (see the module docstring)."""
    pmus = pmus or {}
    mods = modifiers(flags)
    if type_ in (TYPE_HARDWARE, TYPE_HW_CACHE):
        base_cfg, pmu_type = config & 0xFFFFFFFF, config >> PMU_TYPE_SHIFT
        if type_ == TYPE_HARDWARE:
            name = HW_NAMES[base_cfg] if base_cfg < len(HW_NAMES) else "unknown-hardware"
        else:
            name = _cache_name(base_cfg)
        if pmu_type:
            name = f"{pmus.get(pmu_type, 'cpu')}/{name}/"
        return name + mods
    if type_ == TYPE_SOFTWARE:
        return (SW_NAMES[config] if config < len(SW_NAMES) else "unknown-software") + mods
    if type_ == TYPE_TRACEPOINT:  # (no modifiers: evsel__prepare_tracepoint_event names it "sys:name")
        return tracepoint or "unknown tracepoint"
    if type_ == TYPE_RAW:
        return f"raw 0x{config:x}" + mods
    if type_ == TYPE_BREAKPOINT:
        rwx = "".join(c for bit, c in ((BP_R, "r"), (BP_W, "w"), (BP_X, "x")) if bp_type & bit)
        return f"mem:0x{bp_addr:x}:{rwx}" + mods
    if type_ in pmus:
        return f"{pmus[type_]}/config=0x{config:x}/" + mods
    return f"unknown attr type: {type_}"
