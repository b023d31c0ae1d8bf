"""Mutation testing (mutmut 3) of readers/, formats/ or analyze/, bounded in time: a benchmark, not a test.

mutmut copies the sources into ``mutants/`` and runs, per mutant, the tests that call the mutated
function. It runs in a scratch copy of the committed HEAD (``--work``, default a temporary
directory), never in the checkout, with ``VPMUTRACE_SHARED`` pointing at the real shared traces. Each
package has a fast test subset (``PACKAGES``): the tests that read real files through that package.
mutmut does not mutate decorated functions, so the numba kernels (vpmutrace/kernels, all
``@njit``) are out of its reach; benchmarks/mutants/planted.py plants the kernels' realistic bugs.

    .venv/bin/python benchmarks/mutants/run_mutmut.py analyze --minutes 20 [--only vpmutrace/analyze/exits.py]
        [--tests tests/test_x.py ...] [--sample 120 --seed 15 --chunk 15]

The run stops after ``--minutes`` (what was checked so far is kept: run again with the same
``--work`` to continue). mutmut runs the mutants it is given fastest first (by the time of the tests
that call them), so a sample cut short by the clock is not uniform any more: ``--chunk K`` runs the
sample in the drawn (random) order, K mutants per ``mutmut run``, so that what is tried when time is up
is the complete chunks (each a uniform draw) and part of the last. It prints mutants tried, killed,
survived, timeouts and the score (killed + timeout) / tried, and writes the survivors' names to
``survivors.txt`` in the work dir (``mutmut show NAME`` there shows one) and the sample to ``sample.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    # test_symbols.py: samples' symbols (perf_maps, symbols, symtab, elf: ~29 % of readers' mutants)
    # against perf script
    "readers": ["tests/test_defects.py", "tests/test_trace_dat.py", "tests/test_perf_data.py",
                "tests/test_text_readers.py", "tests/test_every_field.py", "tests/test_text_binary_agree.py",
                "tests/test_malformed.py", "tests/test_ringbuf_writer.py", "tests/test_mutants_ringbuf.py",
                "tests/test_mutants_perf_samples.py", "tests/test_symbols.py"],
    # + test_printeval.py (the print fmt rules checked against libtraceevent, one by one) and
    # test_exact_text.py (every event type of a real 6.18 capture printed as trace-cmd report prints it):
    # the only tests that run printfmt, printeval, cprint, bprint and kernel_maps on their own
    "formats": ["tests/test_formats.py", "tests/test_every_field.py", "tests/test_perf_names.py",
                "tests/test_text_readers.py", "tests/test_mutants_event_format.py", "tests/test_printeval.py",
                "tests/test_exact_text.py"],
    # + test_window_overlap.py (windows.Overlap against overlap_ns) and test_probes.py (the analyses of
    # probe events in real kprobe/fprobe layouts): the only tests of those paths
    "analyze": ["tests/test_defects.py", "tests/test_perf_kvm_stat.py", "tests/test_analyzers.py",
                "tests/test_real_shapes.py", "tests/test_mutants_exits.py", "tests/test_window_overlap.py",
                "tests/test_probes.py"],
}
# fuzz/: test_malformed.py builds its damaged inputs with fuzz.corpus / fuzz.mutate (without it mutmut's
# stats run failed and no mutant of the readers' subset was tried)
COPY = ("vpmutrace", "collectors", "tests", "fixtures", "docs", "fuzz", "README.md", "pyproject.toml", "setup.py")
TIMEOUT_S = 120  # seconds a mutant's test run may take beyond 15 x the clean run's
KILLED = ("killed", "timeout", "caught by type check", "segfault")


def prepare(work: Path, package: str, only: list[str], tests: list[str]) -> None:
    """A scratch copy of the repository with a [tool.mutmut] section for ``package``."""
    tar = subprocess.run(["git", "archive", "--format=tar", "HEAD", *COPY], cwd=ROOT, capture_output=True,
                         check=True)
    subprocess.run(["tar", "-x", "-C", str(work)], input=tar.stdout, check=True)
    # the kernels' ahead-of-time build is not committed: without it every mutant's test run would
    # compile the kernels with the JIT (minutes each). Kernel sources are never mutated here, so the
    # checkout's build (its source stamp checked on import) serves the copy.
    for so in (ROOT / "vpmutrace" / "kernels").glob("_compiled*.so"):
        shutil.copy2(so, work / "vpmutrace" / "kernels" / so.name)
    conf = (ROOT / "pyproject.toml").read_text()
    lines = ["", "[tool.mutmut]", 'source_paths = ["vpmutrace"]',
             f"only_mutate = {only or [f'vpmutrace/{package}/*']!r}".replace("'", '"'),
             f"pytest_add_cli_args_test_selection = {tests or PACKAGES[package]!r}".replace("'", '"'),
             'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]',
             # workers forked from a process that ran polars deadlock in the child (polars' thread pool):
             # a fork server that has imported nothing forks them
             'process_isolation = "forkserver"', 'forkserver_warmup = "none"',
             # a mutant's worker imports pytest, numpy, polars and the kernels before its first test
             # (seconds on a loaded host): mutmut's default budget (15 x the tests' own time + 1 s)
             # called mutants that fail at once "timeout"; a real hang still ends at this bound
             f"timeout_constant = {TIMEOUT_S}",
             'also_copy = ["collectors", "fixtures", "docs", "fuzz", "README.md", "setup.py"]']
    (work / "pyproject.toml").write_text(conf + "\n".join(lines) + "\n")


GENERATE = """
from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants, setup_source_paths
copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)
"""


def sample_names(work: Path, env: dict[str, str], size: int, seed: int) -> list[str]:
    """``size`` mutant names drawn uniformly (random.Random(seed).sample over the sorted names) from
    every mutant of the mutated files: mutmut's own generation step is run first to name them."""
    subprocess.run([sys.executable, "-c", GENERATE], cwd=work, env=env, capture_output=True, check=True)
    names = sorted(k for meta in (work / "mutants").rglob("*.py.meta")
                   for k in json.loads(meta.read_text())["exit_code_by_key"])
    return random.Random(seed).sample(names, min(size, len(names)))  # in the drawn order (see --chunk)


def results(work: Path, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                         capture_output=True, text=True, check=False).stdout
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s*(\S+): (.+)$", out, re.M)}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n (95 % for the default z): the package's score is
    estimated from a uniform sample of its mutants, so it is given with its interval."""
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / d
    return max(0.0, mid - half), min(1.0, mid + half)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", choices=sorted(PACKAGES))
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--work", type=Path, help="scratch directory (kept: run again to continue)")
    ap.add_argument("--only", nargs="*", default=[], help="source files (globs) to mutate, default the package")
    ap.add_argument("--max-children", type=int, default=1)
    ap.add_argument("--sample", type=int, default=0, help="run only this many mutants, drawn at random")
    ap.add_argument("--seed", type=int, default=15, help="seed of --sample's draw")
    ap.add_argument("--names", nargs="*", default=[], help="run only these mutants (e.g. an earlier run's survivors)")
    ap.add_argument("--chunk", type=int, default=0, help="run the mutants K at a time, in the drawn order")
    ap.add_argument("--tests", nargs="*", default=[], help="test files to run (default: the package's subset)")
    a = ap.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix=f"vpmutrace-mutmut-{a.package}-"))
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, a.package, a.only, a.tests)
    env = dict(os.environ, VPMUTRACE_SHARED=str(Path(os.environ.get("VPMUTRACE_SHARED", ROOT.parent / "shared"))))
    names = a.names or (sample_names(work, env, a.sample, a.seed) if a.sample else [])
    (work / "sample.txt").write_text("".join(n + "\n" for n in names))
    chunks = [names[i:i + a.chunk] for i in range(0, len(names), a.chunk)] if a.chunk and names else [names]
    t0 = time.monotonic()
    stopped = "finished"
    for chunk in chunks:
        left = a.minutes * 60 - (time.monotonic() - t0)
        try:
            if left <= 0:
                raise subprocess.TimeoutExpired("mutmut", 0)
            with open(work / "mutmut.log", "ab") as log:  # mutmut's own output, for when a run ends early
                subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(a.max_children),
                                *chunk], cwd=work, env=env, timeout=left, stdout=log, stderr=subprocess.STDOUT,
                               check=False)
        except subprocess.TimeoutExpired:
            stopped = f"stopped after {a.minutes:g} min"
            break
    res = results(work, env)
    if names:
        res = {k: v for k, v in res.items() if k in set(names)}
    tried = {k: v for k, v in res.items() if v not in ("not checked", "no tests", "skipped")}
    killed = sum(v in KILLED for v in tried.values())
    survivors = sorted(k for k, v in tried.items() if v == "survived")
    (work / "survivors.txt").write_text("".join(s + "\n" for s in survivors))
    no_tests = sum(v == "no tests" for v in res.values())
    print(f"{a.package}: {stopped} ({time.monotonic() - t0:.0f} s) in {work}")
    print(f"  mutants {len(res)}, tried {len(tried)}, killed {killed}, survived {len(survivors)}, "
          f"not reached by the subset {no_tests}, not checked {len(res) - len(tried) - no_tests}")
    if tried:
        lo, hi = wilson(killed, len(tried))
        print(f"  score {100 * killed / len(tried):.1f} % of tried (95 % Wilson interval {100 * lo:.1f} to "
              f"{100 * hi:.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
