"""Fuzz runs, one command each (docs/reliability.md):

    .venv/bin/python -m fuzz.run matrix [--targets perf_file,text] [--random 200] [--jobs 2] [--out FILE]
        the structure-aware damage of every seed of every target (fuzz/mutate.py) plus N random
        mutants per seed, each read in a forked child and classified (fuzz/harness.py); prints the
        outcome counts and every defect, writes the inputs of defects to fuzz/findings/.
    .venv/bin/python -m fuzz.run atheris TARGET [libFuzzer flags, e.g. -max_total_time=3600]
        coverage-guided fuzzing of one target with atheris (pip install '.[fuzz]'), corpus seeded
        from the fixtures in fuzz/corpus/TARGET; a crash is any exception but errors.InputError.
    nice -n 19 .venv/bin/python -m fuzz.run long --seconds 540 [--targets ...] [--out FILE]
        the long run: every target in turn (one at a time), each for --seconds of atheris; libFuzzer's
        final stats (inputs tried, inputs/s, coverage, corpus growth, peak RSS) and every crash kept,
        a target restarted after a crash for the rest of its time (at most --restarts times).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from fuzz import corpus, mutate
from fuzz.harness import DEFECTS, judge, run_many, shutdown
from fuzz.targets import TARGETS, dataset_bytes, dataset_files, dataset_seed, summary

HERE = Path(__file__).resolve().parent
WARM_TIMEOUT_S = 900.0


def _read_in_process(target: str, summarise: bool = False):  # type: ignore[no-untyped-def]
    def read(data: bytes) -> None:
        with tempfile.TemporaryDirectory() as t:
            td = TARGETS[target].read(data, Path(t))
            if summarise:
                summary(td)
    return read


def seeds_of(target: str) -> list[tuple[str, bytes]]:
    if target == "dataset":
        return [("uprobe.trace.dat dataset", dataset_seed())]
    if target == "event_format":
        c = corpus.trace_dat_content()
        texts = [t for ts in c.event_formats.values() for t in ts]
        return [(mutate_name(t), t) for t in texts[:6]] + [("header_page", c.header_page)]
    return corpus.seeds(target)


def mutate_name(text: bytes) -> str:
    from fuzz.targets import format_name

    return format_name(text).decode("utf-8", "replace")


def mutants(target: str, seed: bytes, n_random: int) -> Iterator[mutate.Mutant]:
    """Structure-aware damage of one seed, then ``n_random`` random mutants."""
    if target in ("perf_file", "perf_pipe"):
        yield from mutate.perf_mutants(seed, _read_in_process(target))
    elif target == "trace_dat":
        from vpmutrace.readers.trace_dat import open_trace_dat

        with tempfile.TemporaryDirectory() as t:
            p = Path(t) / "seed.dat"
            p.write_bytes(seed)
            td, _ = open_trace_dat(p)
        spans = [(cd.offset, cd.size) for b in td.buffers for cd in b.cpus if cd.size]
        yield from mutate.trace_dat_mutants(seed, _read_in_process(target), td.page_size, spans)
    elif target == "ringbuf":
        yield from mutate.ringbuf_mutants(seed, corpus.trace_dat_content().page_size)
    elif target == "event_format":
        if seed.lstrip().startswith(b"field: u64 timestamp"):
            for field_name in (b"commit", b"data", b"timestamp"):
                for rep in (b"size:0;", b"size:3;", b"size:1099511627776;", b"offset:4096;", b"offset:-8;"):
                    yield "damage", f"header_page {field_name.decode()} {rep.decode()}", \
                        _header_field(seed, field_name, rep)
        else:
            for label, text in mutate.format_mutants(seed):
                yield "damage", label, text
            yield "damage", "format deleted (missing format)", b"name: no_such_event_xyz\nID: 99999\nformat:\n"
    elif target == "text":
        yield from mutate.text_mutants(seed)
    elif target in ("text_zst", "text_gz", "text_xz"):
        yield from mutate.compressed_text_mutants(seed, target)
        if target == "text_zst":
            yield "damage", "zstd bomb: 2 GiB of newlines", mutate.zstd_bomb(2.0)
    elif target == "dataset":
        yield from dataset_mutants(seed)
    if target not in ("event_format", "dataset"):
        yield from mutate.random_mutants(seed, n_random, seed=int.from_bytes(hashlib.sha1(seed).digest()[:4], "little"))


def _header_field(text: bytes, name: bytes, rep: bytes) -> bytes:
    out = []
    for ln in text.split(b"\n"):
        if b" " + name + b";" in ln:
            key = rep.split(b":")[0] + b":"
            i = ln.find(key)
            j = ln.find(b";", i)
            ln = ln[:i] + rep[:-1] + ln[j:]
        out.append(ln)
    return b"\n".join(out)


def dataset_mutants(seed: bytes) -> Iterator[mutate.Mutant]:
    from vpmutrace.tracedata import META_FILE

    files = dataset_files(seed)
    meta = files[META_FILE]
    for name in sorted(files):
        if name.endswith(".parquet"):
            yield "damage", f"{name} missing", dataset_bytes({k: v for k, v in files.items() if k != name})
            for cut in (len(files[name]) // 2, len(files[name]) - 4):
                yield "damage", f"{name} cut at {cut}", dataset_bytes({**files, name: files[name][:cut]})
            yield "damage", f"{name} flipped", dataset_bytes({**files, name: mutate._flip(files[name],
                                                                                          len(files[name]) // 2, 8)})
    doc = json.loads(meta)
    for key in sorted(doc):
        for label, val in (("NaN", float("nan")), ("a string", "x"), ("null", None), ("a list", [1, "a"]),
                           ("nested 100000 deep", "DEEP")):
            d = dict(doc)
            d[key] = val
            text = json.dumps(d).encode()
            if val == "DEEP":
                text = text.replace(b'"DEEP"', b"[" * 100_000 + b"]" * 100_000)
            yield "damage", f"{META_FILE} {key} = {label}", dataset_bytes({**files, META_FILE: text})
    yield "damage", f"{META_FILE} cut", dataset_bytes({**files, META_FILE: meta[:len(meta) // 2]})
    yield "damage", f"{META_FILE} not an object", dataset_bytes({**files, META_FILE: b"[1, 2]"})


def _spread(items: list, limit: int | None) -> list:
    """At most ``limit`` of ``items``, spread evenly over them (every kind of damage keeps a share)."""
    if limit is None or len(items) <= limit:
        return items
    return [items[k * len(items) // limit] for k in range(limit)]


def matrix(targets: list[str], n_random: int, jobs: int, out: Path | None, findings: Path | None,
           limit: int | None = None, quiet: bool = False) -> dict:
    t0 = time.monotonic()
    report: dict = {"targets": {}, "defects": []}
    for target in targets:
        counts: Counter[str] = Counter()
        for seed_name, seed in seeds_of(target):
            # (the seed read once by every worker: imports and JIT-compiled kernels warm, whatever they take)
            base = run_many(target, [seed] * jobs, timeout=WARM_TIMEOUT_S, jobs=jobs)[0]
            if base.kind != "ok":
                print(f"{target}/{seed_name}: the undamaged seed does not read: {base.kind} {base.detail}",
                      file=sys.stderr)
                counts["seed_" + base.kind] += 1
                continue
            ms = _spread(list(mutants(target, seed, n_random)), limit)
            for k in range(0, len(ms), 64):
                batch = ms[k:k + 64]
                for (kind, label, data), got in zip(batch, run_many(target, [d for _, _, d in batch], jobs=jobs),
                                                    strict=True):
                    o = judge(kind, got, base.summary)  # type: ignore[arg-type]
                    counts[o.kind] += 1
                    if o.kind in DEFECTS:
                        digest = hashlib.sha1(data).hexdigest()[:12]
                        if findings is not None:
                            findings.mkdir(parents=True, exist_ok=True)
                            (findings / f"{target}-{digest}").write_bytes(data)
                        report["defects"].append({"target": target, "seed": seed_name, "mutation": label,
                                                  "kind": o.kind, "detail": o.detail, "input": f"{target}-{digest}",
                                                  "size": len(data)})
                        if not quiet:
                            print(f"DEFECT {target}/{seed_name}: {label}: {o.kind}: {o.detail}", flush=True)
        report["targets"][target] = dict(counts)
        if not quiet:
            print(f"{target}: {dict(counts)}", flush=True)
    report["seconds"] = round(time.monotonic() - t0, 1)
    report["mutants"] = sum(sum(c.values()) for c in report["targets"].values())
    report["defect_kinds"] = dict(Counter(d["kind"] for d in report["defects"]))
    by_sig: dict[str, int] = defaultdict(int)
    for d in report["defects"]:
        by_sig[f"{d['kind']}: {d['detail'][:90]}"] += 1
    report["defect_signatures"] = dict(sorted(by_sig.items(), key=lambda kv: -kv[1]))
    if not quiet:
        print(f"{report['mutants']} mutants in {report['seconds']} s; defects: {report['defect_kinds'] or 'none'}")
    if out:
        out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def atheris_main(target: str, argv: list[str]) -> None:
    try:
        import atheris
    except ImportError:
        sys.exit("fuzz: atheris is not installed: pip install '.[fuzz]'")
    from vpmutrace.errors import InputError

    cdir = seed_corpus(target)
    read = TARGETS[target].read
    tmp = Path(tempfile.mkdtemp(prefix="vpmuatheris"))

    def one(data: bytes) -> None:
        for p in tmp.rglob("*"):
            if p.is_file():
                p.unlink()
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.rmdir()
        try:
            read(data, tmp)
        except InputError as e:
            if "\n" in str(e).strip():
                raise AssertionError(f"multi-line input error: {e!r}") from None

    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *argv, str(cdir)], one)
    atheris.Fuzz()


def seed_corpus(target: str) -> Path:
    """fuzz/corpus/TARGET, written from the fixtures when absent."""
    cdir = HERE / "corpus" / target
    if not cdir.is_dir():
        cdir.mkdir(parents=True)
        for name, data in seeds_of(target):
            (cdir / name.replace("/", "_").replace(" ", "_")).write_bytes(data)
    return cdir


# libFuzzer's status lines ("#1234\tREDUCE cov: 812 ft: 2301 corp: 40/1200Kb ...") and -print_final_stats
_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/", re.M)
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_ARTIFACT = re.compile(r"(?:Test unit|artifact_prefix.*?;) written to (\S+)")


def libfuzzer_stats(log: str) -> dict:
    """What one atheris run's output says: inputs tried, coverage at start and end, the final stats."""
    status = _STATUS.findall(log)
    inited = next((s for s in status if s[1] == "INITED"), status[0] if status else None)
    last = status[-1] if status else None
    out: dict = {k: int(v) for k, v in _STAT.findall(log)}
    if inited:
        out["cov_start"], out["ft_start"], out["corp_start"] = int(inited[2]), int(inited[3]), int(inited[4])
    if last:
        out["cov_end"], out["ft_end"], out["corp_end"] = int(last[2]), int(last[3]), int(last[4])
        out.setdefault("number_of_executed_units", int(last[0]))
    out["artifacts"] = _ARTIFACT.findall(log)
    return out


def long_run(targets: list[str], seconds: int, restarts: int, out: Path, logs: Path) -> dict:
    """Every target in turn, ``seconds`` each, one at a time. A crash (any exception but InputError,
    a signal, a timeout of 30 s per input, 2 GB RSS) ends libFuzzer's run: its input is kept in
    fuzz/findings/ and the target restarted for what is left of its time."""
    logs.mkdir(parents=True, exist_ok=True)
    findings = HERE / "findings"
    findings.mkdir(exist_ok=True)
    report: dict = {"seconds_per_target": seconds, "targets": {}}
    for target in targets:
        cdir = seed_corpus(target)
        files_before = len(list(cdir.iterdir()))
        t0 = time.monotonic()
        runs: list[dict] = []
        while len(runs) <= restarts:
            left = int(seconds - (time.monotonic() - t0))
            if left < 10:
                break
            cmd = [sys.executable, "-m", "fuzz.run", "atheris", target, f"-max_total_time={left}",
                   "-print_final_stats=1", "-timeout=30", "-rss_limit_mb=2048",
                   f"-artifact_prefix={findings}/atheris-{target}-"]
            log_path = logs / f"{target}-{len(runs)}.log"
            started = time.monotonic()
            with log_path.open("w") as log:
                # started by a shell in the background: libFuzzer's RSS is then its own (tests/test_fuzz.py)
                rc = subprocess.run(["sh", "-c", '"$@" & wait $!', "sh", *cmd], cwd=HERE.parent,
                                    stdout=log, stderr=subprocess.STDOUT, check=False).returncode
            st = libfuzzer_stats(log_path.read_text(errors="replace"))
            st.update(rc=rc, wall_s=round(time.monotonic() - started, 1), log=str(log_path))
            runs.append(st)
            print(f"{target} run {len(runs)}: rc {rc}, {st.get('number_of_executed_units', 0)} inputs in "
                  f"{st['wall_s']} s, cov {st.get('cov_start')} -> {st.get('cov_end')}, "
                  f"artifacts {st['artifacts']}", flush=True)
            if rc == 0:
                break
        report["targets"][target] = {
            "runs": runs,
            "inputs": sum(r.get("number_of_executed_units", 0) for r in runs),
            "wall_s": round(time.monotonic() - t0, 1),
            "corpus_before": files_before,
            "corpus_after": len(list(cdir.iterdir())),
            "crashes": [a for r in runs for a in r["artifacts"]],
        }
        out.write_text(json.dumps(report, indent=1) + "\n")
    report["inputs"] = sum(t["inputs"] for t in report["targets"].values())
    report["wall_s"] = round(sum(t["wall_s"] for t in report["targets"].values()), 1)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("matrix", help="structure-aware damage + random mutants, classified")
    m.add_argument("--targets", default=",".join(TARGETS))
    m.add_argument("--random", type=int, default=100, help="random mutants per seed")
    m.add_argument("--jobs", type=int, default=2)
    m.add_argument("--limit", type=int, default=None, help="at most N mutants per seed (spread over all kinds)")
    m.add_argument("--out", type=Path, default=None)
    m.add_argument("--findings", type=Path, default=HERE / "findings")
    a = sub.add_parser("atheris", help="coverage-guided fuzzing of one target")
    a.add_argument("target", choices=sorted(TARGETS))
    lg = sub.add_parser("long", help="every target in turn under atheris, stats and crashes kept")
    lg.add_argument("--targets", default=",".join(TARGETS))
    lg.add_argument("--seconds", type=int, default=540, help="atheris time per target")
    lg.add_argument("--restarts", type=int, default=3, help="restarts of a target after crashes")
    lg.add_argument("--out", type=Path, default=Path("fuzz-long.json"))
    lg.add_argument("--logs", type=Path, default=Path("fuzz-long-logs"))
    args, rest = ap.parse_known_args()
    if args.cmd == "long":
        rep = long_run(args.targets.split(","), args.seconds, args.restarts, args.out, args.logs)
        sys.exit(1 if any(t["crashes"] for t in rep["targets"].values()) else 0)
    if args.cmd == "matrix":
        try:
            rep = matrix(args.targets.split(","), args.random, args.jobs, args.out, args.findings, args.limit)
        finally:
            shutdown()
        sys.exit(1 if rep["defects"] else 0)
    atheris_main(args.target, rest)


if __name__ == "__main__":
    main()
