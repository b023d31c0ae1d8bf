"""Fuzzing in CI, bounded: hypothesis-driven byte mutation of every reader's seeds (in process), and a
short coverage-guided atheris run per target (fuzz/run.py; skipped where atheris is not installed).
The long runs are one command each (docs/reliability.md)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.run import seeds_of
from fuzz.targets import TARGETS
from vpmutrace.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
# in process: the targets whose reads are quick (the others run in the matrix's worker processes)
QUICK = ("perf_file", "perf_pipe", "trace_dat", "text", "event_format")


def _damaged(seed: bytes, edits: list[tuple[int, int, int]], cut: int | None) -> bytes:
    b = bytearray(seed)
    for at, value, width in edits:
        at %= max(len(b), 1)
        b[at:at + width] = value.to_bytes(8, "little", signed=False)[:width]
    return bytes(b[:cut % (len(b) + 1)] if cut is not None else b)


@pytest.mark.parametrize("target", QUICK)
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_byte_mutations_give_a_result_or_an_input_error(target: str, data: st.DataObject) -> None:
    seeds = seeds_of(target)
    seed = seeds[data.draw(st.integers(0, len(seeds) - 1))][1]
    edits = data.draw(st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, (1 << 64) - 1),
                                         st.sampled_from([1, 2, 4, 8])), max_size=4))
    cut = data.draw(st.none() | st.integers(0, 1 << 30))
    with tempfile.TemporaryDirectory() as t:
        try:
            TARGETS[target].read(_damaged(seed, edits, cut), Path(t))
        except InputError as e:
            assert "\n" not in str(e).strip()


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed (pip install .[fuzz])")
@pytest.mark.parametrize("target", ["perf_pipe", "trace_dat", "text"])
def test_atheris_smoke(target: str, tmp_path: Path) -> None:
    """A few hundred coverage-guided inputs per target: any exception but InputError fails."""
    cmd = [sys.executable, "-m", "fuzz.run", "atheris", target, "-runs=300", "-max_total_time=60",
           f"-artifact_prefix={tmp_path}/"]
    # started by a shell in the background: a child of this process would start with this process's
    # peak RSS (ru_maxrss carries over fork and exec), about 2 GB late in the suite, which libFuzzer
    # reads as its own and stops at its 2 GB rss limit before any input runs
    r = subprocess.run(["sh", "-c", '"$@" & wait $!', "sh", *cmd], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
