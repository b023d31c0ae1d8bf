"""Compiled parsing of text trace lines: where the lines are, and each line's header.

The header grammars (readers/text.py says which tools print which):

- ftrace / trace-cmd report: ``[src: ] [comm-pid [(tgid)] [cpu] [flags]] secs.frac: event: body``
  (the task columns may be absent; the task name may hold spaces and dashes: the pid is after
  its last dash);
- perf script: ``comm pid[/tid] [[cpu]] secs.frac: [period] event: body``, the event being
  everything up to the first colon followed by a blank.

The timestamp is the first ``digits.digits:`` (or ``digits:``, from clocks in ticks) at the start of
a word that is followed by blanks and an event name and a colon. Spans are byte offsets into the text;
-1 where a part is absent.
"""

from __future__ import annotations

import numba
import numpy as np

from vpmutrace.kernels.text_layout import (
    FLAVOR_PERF,
    H_BODY_S,
    H_COLUMNS,
    H_COMM_E,
    H_COMM_S,
    H_CPU,
    H_EVENT_E,
    H_EVENT_S,
    H_FLAGS_E,
    H_FLAGS_S,
    H_KIND,
    H_LINE_E,
    H_LINE_S,
    H_PERIOD,
    H_PID,
    H_SRC_E,
    H_SRC_S,
    H_TGID,
    H_TS,
    LINE_BLANK,
    LINE_COMMENT,
    LINE_EVENT,
    LINE_OTHER,
    NONE,
)


def count_lines(buf, bounds, counts, lo, hi):  # pragma: no cover - compiled
    """counts[c]: newlines in buf[bounds[c]:bounds[c + 1]] for chunks lo..hi."""
    for c in range(lo, hi):
        n = 0
        for i in range(bounds[c], bounds[c + 1]):
            if buf[i] == 10:
                n += 1
        counts[c] = n


def line_starts(buf, bounds, first_line, starts, lo, hi):  # pragma: no cover - compiled
    """starts[k + 1] = the byte after the k-th newline, numbering from first_line[c] in chunk c."""
    for c in range(lo, hi):
        k = first_line[c]
        for i in range(bounds[c], bounds[c + 1]):
            if buf[i] == 10:
                k += 1
                starts[k] = i + 1


@numba.njit(inline="always")
def _space(b):  # pragma: no cover - compiled
    return b == 32 or b == 9 or b == 13


@numba.njit(inline="always")
def _digit(b):  # pragma: no cover - compiled
    return 48 <= b <= 57


@numba.njit(inline="always")
def _word(b):  # pragma: no cover - compiled
    return _digit(b) or 65 <= b <= 90 or 97 <= b <= 122 or b == 95


@numba.njit
def _timestamp(buf, p, e, perf):  # pragma: no cover - compiled
    """(start, end of its ':', event start, event end, body start) of the first ``digits.digits:`` or
    ``digits:`` (a clock counting in ticks, e.g. x86-tsc, prints integers) at a word start from p
    that is followed by blanks and an event; (-1, ...) when there is none."""
    q = p
    while q < e:
        # (trace-cmd prints integer timestamps with "%12llu:" right after the "]" of the CPU column)
        if _digit(buf[q]) and (q == p or _space(buf[q - 1]) or buf[q - 1] == 93):
            r = q
            while r < e and _digit(buf[r]):
                r += 1
            dotted = r < e and buf[r] == 46  # '.'
            f0 = r + 1
            if dotted:
                r += 1
                while r < e and _digit(buf[r]):
                    r += 1
            if (r > f0 or not dotted) and r < e and buf[r] == 58 and r + 1 < e and _space(buf[r + 1]):
                colon = r
                r += 1
                while r < e and _space(buf[r]):
                    r += 1
                if perf:  # optional period, then the event up to a colon followed by a blank or the end
                    k = r
                    while k < e and _digit(buf[k]):
                        k += 1
                    if k > r and k < e and _space(buf[k]):
                        r = _lstrip(buf, k, e)
                    ev = r
                    while r < e and not _space(buf[r]) and not (buf[r] == 58 and (r + 1 == e
                                                                                  or _space(buf[r + 1]))):
                        r += 1
                else:
                    ev = r
                    while r < e and _word(buf[r]):
                        r += 1
                if r > ev and r < e and buf[r] == 58:
                    return q, colon, ev, r, _lstrip(buf, r + 1, e)
        q += 1
    return -1, -1, -1, -1, -1


@numba.njit
def _number(buf, s, e):  # pragma: no cover - compiled
    """The integer in buf[s:e] (optional '-'), or NONE when it is not one."""
    if s >= e:
        return NONE
    neg = buf[s] == 45
    if neg:
        s += 1
    if s >= e:
        return NONE
    if e - s > 18:  # (could overflow int64)
        return NONE
    v = np.int64(0)
    for i in range(s, e):
        if not _digit(buf[i]):
            return NONE
        v = v * 10 + (buf[i] - 48)
    return -v if neg else v


@numba.njit
def _ts_ns(buf, s, colon):  # pragma: no cover - compiled
    """secs.frac -> ns; an integer (a clock in ticks) -> as it is; NONE when it does not fit in int64."""
    sec = np.int64(0)
    i = s
    while i < colon and buf[i] != 46:
        if i - s >= 18:
            return NONE
        sec = sec * 10 + (buf[i] - 48)
        i += 1
    if i == colon:
        return sec
    i += 1
    frac = np.int64(0)
    digits = 0
    while i < colon:
        if digits < 9:
            frac = frac * 10 + (buf[i] - 48)
            digits += 1
        i += 1
    while digits < 9:
        frac *= 10
        digits += 1
    if sec > MAX_SECONDS or (sec == MAX_SECONDS and frac > MAX_SECONDS_FRAC):
        return NONE
    return sec * 1_000_000_000 + frac


MAX_SECONDS, MAX_SECONDS_FRAC = divmod((1 << 63) - 1, 1_000_000_000)  # the latest time int64 ns hold
INT32_MAX = (1 << 31) - 1


@numba.njit
def _rstrip(buf, s, e):  # pragma: no cover - compiled
    while e > s and _space(buf[e - 1]):
        e -= 1
    return e


@numba.njit
def _lstrip(buf, s, e):  # pragma: no cover - compiled
    while s < e and _space(buf[s]):
        s += 1
    return s


@numba.njit
def _ftrace_task(buf, s, e, out, i):  # pragma: no cover - compiled
    """Parse ``comm-pid [(tgid)] [cpu] [flags]`` in buf[s:e] into row i of out; False if it is not one."""
    e = _rstrip(buf, s, e)
    # flags (4..6 of [\w.]) after the cpu
    k = e
    while k > s and (_word(buf[k - 1]) or buf[k - 1] == 46):
        k -= 1
    if 4 <= e - k <= 6 and k > s and _space(buf[k - 1]):
        out[H_FLAGS_S, i] = k
        out[H_FLAGS_E, i] = e
        e = _rstrip(buf, s, k)
    if e <= s or buf[e - 1] != 93:  # ']'
        return False
    k = e - 1
    while k > s and _digit(buf[k - 1]):
        k -= 1
    if k == e - 1 or k == s or buf[k - 1] != 91:  # '['
        return False
    out[H_CPU, i] = _number(buf, k, e - 1)
    if out[H_CPU, i] == NONE:  # (too many digits)
        return False
    e = _rstrip(buf, s, k - 1)
    if e > s and buf[e - 1] == 41:  # ')': (tgid)
        k = e - 1
        while k > s and buf[k - 1] != 40:
            k -= 1
        if k == s:
            return False
        t0 = _lstrip(buf, k, e - 1)
        out[H_TGID, i] = _number(buf, t0, e - 1)
        e = _rstrip(buf, s, k - 1)
    k = e
    while k > s and _digit(buf[k - 1]):
        k -= 1
    if k == e or k - 1 <= s or buf[k - 1] != 45:  # '-' before the pid, and a name before it
        return False
    out[H_PID, i] = _number(buf, k, e)
    if out[H_PID, i] == NONE:
        return False
    c0 = _lstrip(buf, s, k - 1)
    if c0 >= k - 1:
        return False
    out[H_COMM_S, i] = c0
    out[H_COMM_E, i] = k - 1
    return True


@numba.njit
def _perf_task(buf, s, e, out, i):  # pragma: no cover - compiled
    """Parse ``comm pid[/tid] [[cpu]]`` in buf[s:e] into row i of out; False if it is not one."""
    e = _rstrip(buf, s, e)
    if e > s and buf[e - 1] == 93:  # [cpu]
        k = e - 1
        while k > s and _digit(buf[k - 1]):
            k -= 1
        if k == e - 1 or k == s or buf[k - 1] != 91:
            return False
        out[H_CPU, i] = _number(buf, k, e - 1)
        if out[H_CPU, i] == NONE:
            return False
        e = _rstrip(buf, s, k - 1)
    k = e
    while k > s and not _space(buf[k - 1]):
        k -= 1
    slash = -1
    for j in range(k, e):
        if buf[j] == 47:
            slash = j
    if slash >= 0:
        pid = _number(buf, k, slash)
        tid = _number(buf, slash + 1, e)
        if pid == NONE or tid == NONE:
            return False
        out[H_PID, i] = tid
        out[H_TGID, i] = pid
    else:
        pid = _number(buf, k, e)
        if pid == NONE:
            return False
        out[H_PID, i] = pid
    c1 = _rstrip(buf, s, k)
    c0 = _lstrip(buf, s, c1)
    if c1 <= c0:
        return False
    out[H_COMM_S, i] = c0
    out[H_COMM_E, i] = c1
    return True




@numba.njit
def _ids_fit(out, i):  # pragma: no cover - compiled
    """cpu, pid and tgid of row i fit the tables' int32 columns (or are absent)."""
    for c in (H_CPU, H_PID, H_TGID):
        v = out[c, i]
        if v != NONE and (v > INT32_MAX or v < -INT32_MAX - 1):
            return False
    return True


def parse_lines(buf, starts, flavor, out, lo, hi):  # pragma: no cover - compiled
    """Header of lines lo..hi (line k: buf[starts[k]:starts[k + 1]], newline excluded) into out[:, k]
    (one row per H_* column)."""
    perf = flavor == FLAVOR_PERF
    for i in range(lo, hi):
        s = starts[i]
        e = starts[i + 1]
        if e > s and buf[e - 1] == 10:
            e -= 1
        if e > s and buf[e - 1] == 13:
            e -= 1
        for c in range(H_COLUMNS):
            out[c, i] = -1
        out[H_PID, i] = NONE
        out[H_TGID, i] = NONE
        out[H_PERIOD, i] = NONE
        out[H_LINE_S, i] = s
        out[H_LINE_E, i] = e
        p = _lstrip(buf, s, e)
        if p == e:
            out[H_KIND, i] = LINE_BLANK
            continue
        if buf[p] == 35:  # '#'
            out[H_KIND, i] = LINE_COMMENT
            continue
        out[H_KIND, i] = LINE_OTHER
        t0, colon, ev0, ev1, body = _timestamp(buf, p, e, perf)
        if t0 < 0:
            continue
        out[H_TS, i] = _ts_ns(buf, t0, colon)
        if out[H_TS, i] == NONE:  # a time past 2**63 ns: not an event (counted with the other lines)
            continue
        out[H_EVENT_S, i] = ev0
        out[H_EVENT_E, i] = ev1
        out[H_BODY_S, i] = body
        if perf:
            k = colon + 1
            while k < ev0 and _space(buf[k]):
                k += 1
            if k < ev0:
                out[H_PERIOD, i] = _number(buf, k, _rstrip(buf, k, ev0))
            if _perf_task(buf, p, t0, out, i) and _ids_fit(out, i):
                out[H_KIND, i] = LINE_EVENT
            continue
        if _rstrip(buf, p, t0) == p:  # no task columns
            out[H_KIND, i] = LINE_EVENT
            continue
        # an instance / file prefix "name: " (no blank or colon in the name, a blank after)
        q = p
        while q < t0 and not _space(buf[q]) and buf[q] != 58:
            q += 1
        if q > p and q + 1 < t0 and buf[q] == 58 and _space(buf[q + 1]):
            if _rstrip(buf, q + 1, t0) == q + 1 or (_ftrace_task(buf, q + 1, t0, out, i) and _ids_fit(out, i)):
                out[H_SRC_S, i] = p
                out[H_SRC_E, i] = q
                out[H_KIND, i] = LINE_EVENT
                continue
            for c in (H_COMM_S, H_COMM_E, H_CPU, H_FLAGS_S, H_FLAGS_E):
                out[c, i] = -1
            out[H_PID, i] = NONE
            out[H_TGID, i] = NONE
        if _ftrace_task(buf, p, t0, out, i) and _ids_fit(out, i):
            out[H_KIND, i] = LINE_EVENT
