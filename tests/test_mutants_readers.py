"""readers/ behaviours that a uniform sample of the package's mutants showed no test looked at
(docs/reliability.md, Mutation testing): what kind of input a path is, the clock perf recorded its
sample times on (``perf record -k``), a COMPRESSED record that does not decompress, and the name of a
thread sampled before its first COMM record. Each is checked on real files and, where perf is here,
against what perf itself prints for the same file.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import polars as pl
import pytest
from conftest import FIXTURES, shared

from vpmutrace.formats.perf_abi import REC_COMPRESSED
from vpmutrace.readers import load_trace, sniff


def test_sniff_names_each_kind_of_input(tmp_path: Path) -> None:
    """sniff's answer is what ingest_stream and the readers dispatch on (its docstring: 'dataset',
    'perf.data', 'trace.dat' or 'text')."""
    assert sniff(FIXTURES / "microguest200.perf.data") == "perf.data"
    assert sniff(FIXTURES / "microguest200.trace.dat") == "trace.dat"
    assert sniff(FIXTURES / "microguest200.ftrace.txt") == "text"
    assert sniff(FIXTURES / "microguest200.perf-script.txt") == "text"


def _perf_header_clockid(path: Path) -> str | None:
    out = subprocess.run(["perf", "report", "--header-only", "-i", str(path)], capture_output=True, text=True,
                         check=False).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("# clockid:")), None)


@pytest.mark.parametrize(("name", "clock", "why"), [
    ("clockid-mono.perf.data", "monotonic", "(perf record -k)"),  # attr.use_clockid, clockid 1
    ("microguest200.perf.data", "perf", "(local_clock())"),  # perf's default clock
])
def test_the_clock_perf_recorded_sample_times_on(name: str, clock: str, why: str) -> None:
    """attr.clockid (s32 at byte 92 of perf_event_attr, include/uapi/linux/perf_event.h) names the
    clock when attr.use_clockid is set; perf report --header-only prints the same."""
    path = FIXTURES / name
    inp = load_trace([path]).meta["inputs"][0]
    assert inp["clock"] == clock
    assert inp["time_source"] == f"perf records sample times in ns of the {clock} clock {why}"
    if shutil.which("perf"):
        assert _perf_header_clockid(path) == ("monotonic (1)" if clock == "monotonic" else None)


def test_a_compressed_record_that_does_not_decompress_ends_the_data_counted(tmp_path: Path) -> None:
    """perf record -z: bytes of the middle COMPRESSED record's zstd frame overwritten. The records
    before it are read as in the undamaged file, the rest is counted as partial, not a traceback."""
    from fuzz.mutate import perf_records

    src = FIXTURES / "microguest300-zstd.perf.data"
    data = bytearray(src.read_bytes())
    d_off, d_size = struct.unpack_from("<QQ", data, 40)
    comp = [(o, s) for o, t, s in perf_records(bytes(data), d_off, d_off + d_size) if t == REC_COMPRESSED]
    assert len(comp) >= 3
    o, s = comp[len(comp) // 2]
    data[o + 8:o + s] = b"\xff" * (s - 8)  # no zstd frame
    bad = tmp_path / "damaged.perf.data"
    bad.write_bytes(bytes(data))
    got, whole = load_trace([bad]), load_trace([src])
    partial = [e for e in got.stats.entries() if e.category == "partial"]
    assert len(partial) == 1 and any(f"offset {o}" in x for x in partial[0].examples), partial
    a, b = got.df("kvm_msr"), whole.df("kvm_msr")
    assert 0 < a.height < b.height
    assert a.equals(b.head(a.height))


def test_a_thread_sampled_before_its_first_comm_is_named_by_it(tmp_path: Path) -> None:
    """A thread with no name before its first COMM record (no synthesized name, no FORK): perf
    script has no name for its earlier samples (it prints its placeholder ":tid", thread__new), and
    neither do we (null, as for a thread with no COMM at all); later samples carry the name of the
    COMM before them. Before the fix the earlier samples took the later name."""
    from vpmutrace.formats.known import reference_format_texts, reference_formats, reference_ring_headers
    from vpmutrace.writers.perf_data import PerfDataContent, pack_payload, write_perf_data

    fmt = reference_formats()["kvm:kvm_msr"]
    hp, he = reference_ring_headers()
    pc = PerfDataContent(formats={"kvm:kvm_msr": fmt}, format_texts={"kvm:kvm_msr": reference_format_texts()[
        "kvm:kvm_msr"]}, header_page=hp, header_event=he, comms={200: "other"},
        renames=[(2_000, 100, "late"), (3_000, 100, "later")])
    for ts, tid in ((1_000, 100), (1_500, 200), (2_500, 100), (3_500, 100)):
        pc.samples.append((ts, 0, tid, "kvm:kvm_msr", pack_payload(fmt, {"write": 1, "ecx": 0x38f, "data": ts,
                                                                         "exception": 0}, tid)))
    path = write_perf_data(tmp_path / "late-comm.perf.data", pc)
    df = load_trace([path]).df("kvm_msr")
    got = list(zip(df["pid"].to_list(), df["comm"].cast(pl.String).to_list(), strict=True))
    assert got == [(100, None), (200, "other"), (100, "late"), (100, "later")]
    if shutil.which("perf"):
        out = subprocess.run(["perf", "script", "-F", "comm,tid", "-i", str(path)], capture_output=True, text=True,
                             check=False).stdout
        assert [tuple(line.split()) for line in out.splitlines() if line.strip()] == \
            [(c or f":{t}", str(t)) for t, c in got]


def test_traces_of_two_machines_are_not_one_time_line() -> None:
    """Two trace.dat files merged: the fixture recorded on this project's host ("vm" in its uname
    option) and a public one recorded on "pamhal": the merge says the clocks are of two machines."""
    other = shared("public-github/hip24_host_kvm_2vcpu.dat")
    td = load_trace([FIXTURES / "microguest200.trace.dat", other])
    unames = [i["uname"].split()[1] for i in td.meta["inputs"]]
    assert unames == ["vm", "pamhal"]
    why = [x for e in td.stats.entries() if e.category == "clock_mismatch" for x in e.examples]
    assert f"recorded on pamhal, {FIXTURES / 'microguest200.trace.dat'} on vm: clocks of two machines are not one " \
           "time line" in why, why
