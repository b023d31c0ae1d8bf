"""Option values the CLI takes as text or numbers, checked: each bad value is one InputError naming the
option, what it got and what it expects (the CLI prints it as one line, exit status 2).

Ranges are the commands' own: a report's detail window must lie in the trace and start before it
ends; counts and caps are positive; a design is one of the model's; a PMU has 0..32 counters of a
kind (the architectural limit of CPUID 0xA's 8-bit count is far larger, but KVM's
KVM_MAX_NR_GP_COUNTERS/KVM_MAX_NR_FIXED_COUNTERS are 8 and 3: 32 is a loose bound that catches
typos without refusing a future kernel).
"""

from __future__ import annotations

import math
from typing import Any

from vpmutrace.errors import InputError

DESIGNS = ("mediated", "emulated", "none")
MAX_COUNTERS = 32
EXIT_GROUPINGS = ("reason", "vcpu", "vm")


def check_design(option: str, value: str | None) -> str | None:
    if value is not None and value not in DESIGNS:
        raise InputError(option, f"unknown design {value!r}: {', '.join(DESIGNS)}")
    return value


def check_counters(option: str, value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_COUNTERS:
        raise InputError(option, f"expected 0..{MAX_COUNTERS} counters, got {value}")
    return value


def check_positive(option: str, value: float | None, allow_zero: bool = False) -> Any:
    """A count, cap, size or duration: > 0 (>= 0 with ``allow_zero``), finite."""
    if value is None:
        return None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise InputError(option, f"expected a number {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InputError(option, f"unknown value {value!r}: {', '.join(choices)}")
    return value


def cost_range(value: str | None) -> tuple[float, float] | None:
    """``--switch-cost-ns``: NS or LOW:HIGH, non-negative, LOW <= HIGH."""
    if value is None:
        return None
    try:
        parts = [float(x) for x in value.split(":")]
    except ValueError:
        raise InputError("--switch-cost-ns", f"expected NS or LOW:HIGH, got {value!r}") from None
    if len(parts) not in (1, 2) or not all(math.isfinite(p) for p in parts) or min(parts) < 0 \
            or parts[0] > parts[-1]:
        raise InputError("--switch-cost-ns", f"expected NS or LOW:HIGH with 0 <= LOW <= HIGH, got {value!r}")
    return parts[0], parts[-1]


def window(value: str | None, span: tuple[int, int] | None, div: float, unit: str) -> tuple[int, int] | None:
    """``--window START:END`` in the trace's clock (seconds, or ticks: ``div`` per unit), as (start, end)
    in trace time. START < END, and the window must overlap the trace's span."""
    if not value:
        return None
    try:
        a, b = (float(x) for x in value.split(":"))
    except ValueError:
        raise InputError("--window", f"expected START:END in {unit}, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise InputError("--window", f"expected finite START:END, got {value!r}")
    if a >= b:
        raise InputError("--window", f"START must be before END, got {value!r}")
    lo, hi = int(a * div), int(b * div)
    if span is not None and (hi < span[0] or lo > span[1]):
        raise InputError("--window", f"{value} lies outside the trace, which spans {span[0] / div:.6f}:"
                                     f"{span[1] / div:.6f} {unit}")
    return lo, hi
