"""The compiled kernels: built ahead of time at install, the same source compiled by numba's JIT
where that build is missing or stale; both give the same tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES

from vpmutrace import kernels
from vpmutrace.kernels.registry import KERNELS

DUMP = r"""
import json, sys
from vpmutrace import kernels
from vpmutrace.readers import load_trace
td = load_trace([sys.argv[1]])
print(json.dumps({"mode": kernels.MODE, "tables": {n: t.to_pydict() for n, t in sorted(td.tables.items())}},
                 default=repr))
"""


def _dump(path: str, env: dict[str, str]) -> dict:
    r = subprocess.run([sys.executable, "-c", DUMP, path], capture_output=True, text=True, check=True,
                       env={**os.environ, **env})
    return json.loads(r.stdout)


def test_installed_kernels_are_the_ahead_of_time_build() -> None:
    """An install (scripts/setup, pip) builds them: a process loads them without numba."""
    r = subprocess.run([sys.executable, "-c", "import sys; from vpmutrace.readers import load_trace; "
                        f"load_trace([{str(FIXTURES / 'mixed.perf.data')!r}]); "
                        "from vpmutrace import kernels; print(kernels.MODE, 'numba' in sys.modules)"],
                       capture_output=True, text=True, check=True)
    if r.stdout.split()[0] != "aot":
        pytest.skip("no ahead-of-time build here (no C compiler at install, or sources edited since)")
    assert r.stdout.split() == ["aot", "False"]


def test_jit_fallback_gives_the_same_tables() -> None:
    """VPMUTRACE_KERNELS=jit: the same sources through numba's JIT (cached), the same tables."""
    path = str(FIXTURES / "mixed.perf.data")
    jit, default = _dump(path, {"VPMUTRACE_KERNELS": "jit"}), _dump(path, {})
    assert jit["mode"] == "jit"
    assert jit["tables"] == default["tables"]


def test_kernel_arguments_are_checked() -> None:
    """A wrong dtype or layout is a TypeError naming the kernel, never a misread buffer."""
    counts = np.zeros(2, np.int64)
    with pytest.raises(TypeError, match="count_lines: no compiled variant"):
        kernels.count_lines(np.zeros(8, np.uint8), np.array([0, 4, 8], np.int32), counts, 0, 2)
    with pytest.raises(TypeError, match="count_lines: no compiled variant"):
        kernels.count_lines(np.zeros(16, np.uint8)[::2], np.array([0, 4, 8], np.int64), counts, 0, 2)
    kernels.count_lines(np.frombuffer(b"a\nb\nc\n\n", np.uint8), np.array([0, 4, 8], np.int64), counts, 0, 2)
    assert counts.tolist() == [2, 2]


def test_every_kernel_is_declared_once() -> None:
    import importlib

    for name, k in KERNELS.items():
        assert callable(getattr(importlib.import_module(f"vpmutrace.kernels.{k.module}"), name)), name
