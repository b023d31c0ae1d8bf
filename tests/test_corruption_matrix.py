"""The corruption matrix (fuzz/mutate.py) in CI: damaged copies of the fixtures of every reader, each
read in a worker process (fuzz/harness.py) and classified. Every copy must give a one-line
InputError, or a result whose loss is counted (stats data_loss / error) with the rows of a
truncated copy all rows of the undamaged file; never a traceback, a crash, a hang, memory past
the bound (harness.RSS_FIXED_MB + RSS_PER_BYTE x the input) or invalid ``info --json``.

Bounded for CI: at most PER_SEED copies of each seed, spread over every kind of damage, plus a few
random ones; the long run is ``python -m fuzz.run matrix`` (docs/reliability.md).
"""

from __future__ import annotations

import pytest

from fuzz.harness import shutdown
from fuzz.run import matrix
from fuzz.targets import TARGETS

PER_SEED, RANDOM = 40, 4


@pytest.fixture(scope="module", autouse=True)
def _workers():
    yield
    shutdown()


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_damaged_inputs_fail_cleanly_or_count_their_loss(target: str) -> None:
    rep = matrix([target], RANDOM, jobs=2, out=None, findings=None, limit=PER_SEED, quiet=True)
    counts = rep["targets"][target]
    assert not any(k.startswith("seed_") for k in counts), f"an undamaged seed does not read: {counts}"
    assert counts.get("ok", 0) + counts.get("error", 0) == rep["mutants"] > 0, \
        "\n".join(f"{d['seed']}: {d['mutation']}: {d['kind']}: {d['detail']}" for d in rep["defects"])
