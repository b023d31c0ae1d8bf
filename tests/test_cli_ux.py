"""The first hour of a user (issue 16): capture directories as inputs, capture coverage, progress on
stderr, one-line errors for every bad option value, foreign files named, help and error prefixes,
the output root, the demo table, relative times and per-vCPU/VM exit views."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

from vpmutrace.analyze import registry
from vpmutrace.readers import load_trace

PERF = FIXTURES / "microguest200.perf.data"
NESTED = FIXTURES / "lkml_krause_vmx_nested_6x_ftrace.txt"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "vpmutrace", *args], capture_output=True, text=True, check=False,
                          cwd=cwd, env=env)


def _one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("vpmutrace: error: "), r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated host with one VM (pid 999) of two vCPUs, its snapshot and dataset."""
    out = tmp_path_factory.mktemp("sim") / "pinned"
    r = _cli("simulate", "--scenario", "pinned-contention", "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


def _capture(tmp_path: Path, requested: list[str], dataset: bool = False) -> Path:
    """A capture directory laid out as `vpmutrace record` writes it, around a real perf.data."""
    from vpmutrace.capture import CAPTURE_FILE, DATASET_DIR, HOST_FILE, PERF_TRACE

    cap = tmp_path / "cap"
    cap.mkdir()
    shutil.copy(PERF, cap / PERF_TRACE)
    (cap / HOST_FILE).write_text(json.dumps({"kernel_release": "6.18.44-fc-v657", "cpus_online": 2,
                                             "kvm": {"kvm": {"enable_pmu": "Y"}}}))
    (cap / CAPTURE_FILE).write_text(json.dumps({"backend": "perf", "events_requested": requested,
                                                "events_missing": ["nmi:nmi_handler"]}))
    if dataset:
        load_trace([cap / PERF_TRACE]).save(cap / DATASET_DIR)
    return cap


# 1. a capture directory is an input everywhere

REQUESTED = ["kvm:kvm_exit", "kvm:kvm_entry", "kvm:kvm_msr", "nmi:nmi_handler", "kvm:kvm_pio"]


@pytest.mark.parametrize("dataset", [False, True])
def test_a_capture_directory_is_read_with_its_snapshot(tmp_path: Path, dataset: bool) -> None:
    cap = _capture(tmp_path, REQUESTED, dataset)
    r = _cli("info", "--json", str(cap))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["events"]["kvm:kvm_msr"] == 1600
    assert d["host_snapshot"] == str(cap / "host.json") and d["host"]["kvm"]["kvm"]["enable_pmu"] == "Y"
    assert d["inputs"][0]["path"] == str(cap / "trace.perf.data")  # the dataset keeps the trace's inputs
    r = _cli("analyze", "--json", "--only", "config-checks,exits", str(cap))  # command names work too
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["trace"]["host_snapshot"] is True and doc["config_checks"]["computable"] is True
    for cmd in ("show", "pmu-msr", "exits"):
        r = _cli(cmd, str(cap))
        assert r.returncode == 0 and "not a vpmutrace dataset" not in r.stderr, (cmd, r.stderr)
    r = _cli("ingest", str(cap), "-o", str(tmp_path / "ds"))
    assert r.returncode == 0 and "1600" not in r.stderr
    assert load_trace([tmp_path / "ds"]).meta["capture"]["events_requested"] == REQUESTED


def test_a_capture_directory_with_nothing_to_read(tmp_path: Path) -> None:
    (tmp_path / "cap").mkdir()
    (tmp_path / "cap" / "capture.json").write_text("{}")
    _one_line_error(_cli("info", str(tmp_path / "cap")), "capture directory without a trace file")


# 2. every requested event with its count; silent ones and what they leave not computable

def test_capture_coverage_lists_every_requested_event(tmp_path: Path) -> None:
    cap = _capture(tmp_path, REQUESTED)
    r = _cli("info", str(cap))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"kvm:kvm_msr\s+1600\n", out)
    assert re.search(r"kvm:kvm_exit\s+0  <- RECORDED NOTHING", out)
    assert re.search(r"nmi:nmi_handler\s+0  <- not on this kernel", out)
    assert re.search(r"kvm:kvm_pio\s+201\n", out)
    assert "WARNING: 3 requested events recorded nothing: kvm:kvm_exit, kvm:kvm_entry, nmi:nmi_handler" in out
    # from the analyzers' own declarations (requires / optional)
    reg = registry()
    for name, a in reg.items():
        if {"kvm_exit", "kvm_entry"} & set(a.requires):
            assert f"not computable: {name} (needs kvm:kvm_exit" in out, name
    assert "not computable: pmu_msr" not in out  # kvm_msr fired
    d = json.loads(_cli("info", "--json", str(cap)).stdout)["capture"]
    assert d["silent"] == ["kvm:kvm_exit", "kvm:kvm_entry", "nmi:nmi_handler"]
    assert d["not_computable"]["exits"] == ["kvm:kvm_exit", "kvm:kvm_entry"]
    assert d["partial"]["skid"] == ["kvm:kvm_exit", "kvm:kvm_entry", "nmi:nmi_handler"]


def test_record_summary_uses_the_same_coverage() -> None:
    from vpmutrace.collectors.record import RecordResult, describe

    res = RecordResult("perf", Path("cap/trace.perf.data"), ["kvm:kvm_exit", "kvm:kvm_msr"], [],
                       summary={"decoded_events": 5, "lost_events": 0, "lost_notices": 0, "unparsed": 0,
                                "events_by_kind": {"kvm:kvm_msr": 5}})
    text = describe(res)
    assert "kvm:kvm_exit" in text and "RECORDED NOTHING" in text
    assert "WARNING: 1 requested event recorded nothing: kvm:kvm_exit" in text
    assert "not computable: exits (needs kvm:kvm_exit)" in text


# 3. progress on stderr: on a terminal only, and not with -q

def _with_tty_stderr(*args: str) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; (status, what the terminal got)."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100", TERM="xterm")
    p = subprocess.Popen([sys.executable, "-m", "vpmutrace", *args], stdout=subprocess.DEVNULL, stderr=slave,
                         env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return p.wait(), b"".join(chunks).decode("utf-8", "replace")


def test_progress_is_shown_on_a_terminal_only() -> None:
    rc, tty = _with_tty_stderr("analyze", str(PERF))
    assert rc == 0
    assert f"reading {PERF}" in tty and "analysing: exits" in tty
    rc, tty = _with_tty_stderr("-q", "analyze", str(PERF))
    assert rc == 0 and tty == ""
    r = _cli("analyze", str(PERF))  # stderr is a pipe
    assert r.returncode == 0 and r.stderr == ""


# 4. every user error: one line, status 2

def test_ingest_onto_an_existing_file_or_foreign_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("mine")
    _one_line_error(_cli("ingest", str(PERF), "-o", str(f)), "exists and is not a directory")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.parquet").write_text("not ours")
    _one_line_error(_cli("ingest", str(PERF), "-o", str(other)), "other files in it")
    assert (other / "a.parquet").read_text() == "not ours"
    r = _cli("ingest", str(PERF), "-o", str(tmp_path / "ds"))
    assert r.returncode == 0
    assert _cli("ingest", str(PERF), "-o", str(tmp_path / "ds")).returncode == 0  # a dataset is replaced


@pytest.mark.parametrize("args,words", [
    (["report", "--window", "0:1"], ["--window", "lies outside the trace, which spans 1404.389"]),
    (["report", "--window", "1404.5:1404.4"], ["--window", "START must be before END"]),
    (["report", "--window", "a:b"], ["--window", "expected START:END"]),
    (["report", "--max-points", "-5"], ["--max-points", "> 0"]),
    (["report", "--max-points", "0"], ["--max-points", "> 0"]),
    (["report", "--guest-gp", "99"], ["--guest-gp", "0..32"]),
    (["show", "--limit", "-1"], ["--limit", ">= 0"]),
    (["analyze", "--skid-window-us", "-1"], ["--skid-window-us"]),
    (["analyze", "--switch-cost-ns", "9:1"], ["--switch-cost-ns"]),
    (["analyze", "--switch-cost-ns", "nan"], ["--switch-cost-ns"]),
    (["analyze", "--model", "hybrid"], ["--model", "unknown design"]),
    (["analyze", "--only", "nope"], ["--only", "unknown analyzer"]),
    (["exits", "--by", "cpu"], ["--by", "reason, vcpu, vm"]),
    (["exits", "--vcpu", "-1"], ["--vcpu"]),
    (["info", "--tsc-khz", "0"], ["--tsc-khz"]),
    (["info", "--tsc-khz", "inf"], ["--tsc-khz"]),
    (["info", "--limit", "3"], ["No such option: --limit", "(see vpmutrace info -h)"]),
    (["show", "--limit", "x"], ["--limit", "Invalid value"]),
])
def test_bad_option_values_are_one_line_errors(args: list[str], words: list[str]) -> None:
    cmd, *opts = args
    _one_line_error(_cli(cmd, str(NESTED), *opts), *words)


def test_output_paths_are_checked_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    _one_line_error(_cli("report", str(NESTED), "-o", str(missing / "x.html")), "does not exist")
    _one_line_error(_cli("analyze", str(NESTED), "-o", str(missing)), "does not exist")
    _one_line_error(_cli("ingest", str(NESTED), "-o", str(missing)), "does not exist")
    _one_line_error(_cli("simulate", "-o", str(missing)), "does not exist")
    _one_line_error(_cli("report", str(NESTED), "-o", str(tmp_path)), "is a directory")
    assert not (tmp_path / "nonexistent").exists()
    # a file the system refuses to create (procfs takes no new files, not even from root): one line too
    _one_line_error(_cli("report", str(NESTED), "-o", "/proc/x.html"), "/proc/x.html: ")


@pytest.mark.parametrize("args,words", [
    (["simulate", "--seed", "-1"], ["--seed"]),
    (["simulate", "--isa", "arm"], ["--isa", "vmx, svm"]),
    (["record", "--duration", "0"], ["--duration", "> 0"]),
    (["record", "--buffer-kb", "-4"], ["--buffer-kb"]),
    (["record", "--backend", "ebpf"], ["--backend", "perf, tracefs"]),
    (["record", "--events", "nope"], ["unknown event set"]),
    (["selftest", "--backend", "ebpf"], ["--backend"]),
    (["compare", "a", "b", "--model-a", "x"], ["--model-a"]),
])
def test_bad_values_of_other_commands(tmp_path: Path, args: list[str], words: list[str]) -> None:
    _one_line_error(_cli(*args, cwd=tmp_path), *words)


# 5. a file that is none of our formats is named by what it is

def test_a_png_named_perf_data(tmp_path: Path) -> None:
    f = tmp_path / "perf.data"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(100))
    _one_line_error(_cli("info", str(f)), "not a perf.data, trace.dat or text trace: magic 89 50 4e 47 0d 0a 1a 0a "
                                          "(a PNG image)", str(f))
    f.write_bytes(b"PAR1" + bytes(100))
    _one_line_error(_cli("analyze", str(f)), "a Parquet file")


# 6. help, error prefix, plurals, MSR hex, output root, instant --help

def _commands() -> list[str]:
    out = _cli("--help").stdout
    return re.findall(r"^  ([a-z-]+)\s", out.split("Commands:")[1], re.M)


def test_every_command_takes_dash_h() -> None:
    cmds = _commands()
    assert {"info", "record", "fleet"} <= set(cmds) and len(cmds) == len(set(cmds))
    assert {n.replace("_", "-") for n in registry()} <= set(cmds)
    for c in cmds:
        r = _cli(c, "-h")
        assert r.returncode == 0 and r.stdout.startswith(f"Usage: vpmutrace {c}"), (c, r.stderr)
    assert _cli("-h").returncode == 0


def test_options_only_on_the_commands_that_use_them() -> None:
    assert "--skid-window-us" in _cli("skid", "-h").stdout and "--skid-window-us" in _cli("analyze", "-h").stdout
    for c in ("exits", "pmu-msr", "what-if"):
        assert "--skid-window-us" not in _cli(c, "-h").stdout, c
    assert "--switch-cost-ns" in _cli("what-if", "-h").stdout and "--switch-cost-ns" not in _cli("exits", "-h").stdout
    assert "--vcpu" in _cli("exits", "-h").stdout and "--vcpu" not in _cli("pmi", "-h").stdout


def test_help_and_version_import_no_analyzer() -> None:
    """--help lists the analyzer commands from their records' source: no polars, no numpy."""
    for args in (["--help"], ["--version"], ["exits", "--help"][:1] + ["-h"]):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "vpmutrace", *args], capture_output=True,
                           text=True, check=False, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert r.returncode == 0
        mods = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time")}
        heavy = {"polars", "numpy", "pyarrow", "numba", "vpmutrace.analyze"} & mods
        assert args == ["exits", "-h"] or not heavy, (args, heavy)


def test_the_analyzer_index_agrees_with_the_registry() -> None:
    from vpmutrace.analyzer_index import analyzer_titles

    assert analyzer_titles() == {n: a.title for n, a in registry().items()}


def test_record_refusals_use_the_one_prefix(tmp_path: Path) -> None:
    r = _cli("record", "-o", str(tmp_path / "z"), "--", "/nonexistent/workload")
    _one_line_error(r, "command not found")


def test_plurals() -> None:
    from vpmutrace.analyze.base import Result
    from vpmutrace.analyze.diff import render

    one = {"model": "mediated", "design_source": "option", "rules_not_checked": [], "divergent_events": 1,
           "divergences": [{"section": "§1", "rule": "r", "certainty": "fact", "count": 1, "first_ts_ns": 5,
                            "explain": "x"}]}
    assert "1 rule diverges, 1 event" in render(Result("diff", summary=one))[0]
    two = dict(one, divergences=one["divergences"] * 2, divergent_events=2)
    assert "2 rules diverge, 2 events" in render(Result("diff", summary=two))[0]
    text = _cli("exits", str(FIXTURES / "lkml_shukla_svm_idle_hlt_6x.txt")).stdout
    assert "1 exit not timed: their next entry lies after lost events (0) or resumes elsewhere (1)" in text


def test_pmu_msr_text_shows_the_hex_index_json_keeps_integers() -> None:
    text = _cli("pmu-msr", str(PERF)).stdout
    assert re.search(r"^  0x186\s+IA32_PERFEVTSEL0\s+200", text, re.M)
    doc = json.loads(_cli("pmu-msr", "--json", str(PERF)).stdout)
    assert {r["msr"] for r in doc["pmu_msr"]["by_msr"]} >= {0x186, 0xC1} and \
        all(isinstance(r["msr"], int) for r in doc["pmu_msr"]["by_msr"])


def test_default_outputs_go_under_the_output_root(tmp_path: Path) -> None:
    r = _cli("simulate", "--scenario", "skid", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "vpmutrace-out" / "sim" / "truth.json").is_file()
    r = _cli("report", str(NESTED), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "vpmutrace-out" / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vpmutrace-out"]
    assert "/vpmutrace-out/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "vpmutrace-out/" in (ROOT / "README.md").read_text()


# 7. the demo table

def test_demo_table_says_na_with_the_need_and_shows_findings() -> None:
    from vpmutrace.analyze import Config, run
    from vpmutrace.demo import table_rows
    from vpmutrace.report.html import findings

    td = load_trace([PERF])
    doc, _ = run(td, Config.for_trace(td))
    rows = table_rows("microguest-perf", td.meta["events"], doc, findings(doc, td), "r.html")
    assert "n/a (needs kvm:kvm_exit, kvm:kvm_entry)" in rows[0] and rows[-1] == "    report: r.html"
    assert rows[0].endswith(" 1600")  # PMU MSR accesses, computed
    texts = [f["text"] for f in doc["findings"]]
    assert texts and any(texts[0] in line for line in rows[1:])


# 16. relative times in text output

def test_show_with_an_unknown_event_prints_only_the_error() -> None:
    r = _cli("show", "--event", "nope", str(NESTED))
    _one_line_error(r, "--event: no event 'nope' in the trace")
    assert r.stdout == ""


def test_show_prints_times_from_the_trace_start() -> None:
    rel = _cli("show", "--limit", "2", str(NESTED)).stdout.splitlines()
    assert rel[0] == "# times: from the trace's start, 1404.389366 s on its clock (unknown); --absolute-time " \
                     "prints the clock's own"
    assert "    0.000000: " in rel[1]
    ab = _cli("show", "--limit", "2", "--absolute-time", str(NESTED)).stdout.splitlines()
    assert " 1404.389366: " in ab[0] and ab[0].replace(" 1404.389366: ", "    0.000000: ") == rel[1]


def test_analyzer_text_times_are_relative(sim: Path) -> None:
    text = _cli("silent", str(sim / "dataset")).stdout
    assert text.startswith("times: from the trace's start, 0.000100 s on its clock")
    assert re.search(r"contention\s+1000\s+-\s+\+0\.004965 s\s+\+0\.014910 s", text)
    assert "(first at +0.004" in text
    ab = _cli("silent", "--absolute-time", str(sim / "dataset")).stdout
    assert ab.startswith("times: on the trace's clock") and "+0.004965 s" not in ab


# 18. exits per vCPU and per VM, as perf kvm stat

def test_exits_by_vcpu_and_vm(sim: Path) -> None:
    doc = json.loads(_cli("exits", "--json", str(sim / "dataset")).stdout)["exits"]
    by_vcpu = {r["vcpu_id"]: r["samples"] for r in doc["by_vcpu"]}
    assert by_vcpu == {0: 937, 1: 211} and sum(by_vcpu.values()) == doc["exits_total"]
    text = _cli("exits", "--by", "vcpu", str(sim / "dataset")).stdout
    assert re.search(r"^  999\s+1000\s+0\s+937\s", text, re.M) and re.search(r"^  999\s+1001\s+1\s+211\s", text, re.M)
    text = _cli("exits", "--by", "vm", str(sim / "dataset")).stdout
    assert re.search(r"^  999\s+1148\s+100\.00", text, re.M)
    one = json.loads(_cli("exits", "--json", "--vcpu", "1", str(sim / "dataset")).stdout)["exits"]
    assert one["exits_total"] == 211 and {r["vcpu_id"] for r in one["by_vcpu"]} == {1}
    assert "211 exits of VM 999, vCPU 1," in _cli("exits", "--vcpu", "1", "--vm", "999", str(sim / "dataset")).stdout
    _one_line_error(_cli("exits", "--vcpu", "7", str(sim / "dataset")), "no exits of vCPU 7; vCPUs: 0, 1")
    _one_line_error(_cli("exits", "--vm", "5", str(sim / "dataset")), "no exits of VM 5; VMs in the trace: 999")
    _one_line_error(_cli("exits", "--vm", "5", str(NESTED)), "does not say which VM")
