"""Compiled factorization: codes of distinct integer keys in order of first appearance, and the
first row of each (formats/decode.py: factorize_rows)."""

from __future__ import annotations

import numba
import numpy as np


def factorize_hash(keys, codes, first):  # pragma: no cover - compiled
    """codes[i]: code of the int64 key i in order of first appearance (a hash table); first[c]: the
    first row with code c. Returns the number of codes, or -1 when ``first`` is too small."""
    seen = numba.typed.Dict.empty(key_type=numba.types.int64, value_type=numba.types.int64)
    nc = 0
    last_k = np.int64(0)
    last_c = np.int64(-1)
    for i in range(len(keys)):
        k = keys[i]
        if k != last_k or last_c < 0:  # runs of equal keys are common (one exception, one exit reason)
            if k in seen:
                c = seen[k]
            else:
                if nc == len(first):
                    return -1
                c = np.int64(nc)
                seen[k] = c
                first[nc] = i
                nc += 1
            last_k = k
            last_c = c
        codes[i] = last_c
    return nc


def factorize_dense(keys, lo, table, codes, first):  # pragma: no cover - compiled
    """As factorize_hash for keys in lo..lo + len(table) - 1: ``table`` (all -1) maps them directly
    (keys of any integer width up to 32 bits, or int64: no widened copy of a column to make)."""
    nc = 0
    for i in range(len(keys)):
        k = np.int64(keys[i]) - lo
        c = table[k]
        if c < 0:
            if nc == len(first):
                return -1
            c = nc
            table[k] = c
            first[nc] = i
            nc += 1
        codes[i] = c
    return nc


def lookup_codes(keys, table, out, lo, hi):  # pragma: no cover - compiled
    """out[i] = table[keys[i]] for i in lo..hi; keys outside the table (negative, or past its end)
    take its last entry."""
    last = len(table) - 1
    for i in range(lo, hi):
        k = keys[i]
        out[i] = table[k] if 0 <= k < last else table[last]
