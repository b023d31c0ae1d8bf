"""Record with `perf record -a`: tracepoints, plus an optional sampling event.

The sampling event is `cycles:HG` (host and guest, so cpumode tells guest from host
samples) where a hardware PMU exists, software `cpu-clock` otherwise. perf is stopped
with SIGINT (it then finishes writing a complete file) on duration end, on the
workload's exit, and when we are interrupted.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PerfCapture:
    perf: str
    events: list[str]
    out_file: Path
    cpus: list[int] | None = None
    sample_event: str | None = None
    mmap_pages: str = "16M"
    proc: subprocess.Popen | None = None
    stderr_file: Path | None = None
    argv: list[str] = field(default_factory=list)

    def start(self, command: list[str] | None, duration: float | None,
              preexec_fn: Callable[[], None] | None = None, env: dict[str, str] | None = None) -> None:
        argv = [self.perf, "record", "-q", "-a", "-m", self.mmap_pages, "-o", str(self.out_file)]
        for e in self.events:
            argv += ["-e", e]
        if self.sample_event:
            argv += ["-e", self.sample_event]
            if self.sample_event.startswith("cpu-clock"):
                argv += ["-F", "1000"]
        if self.cpus is not None:
            argv += ["-C", ",".join(map(str, self.cpus))]
        argv += ["--"] + (command if command else ["sleep", f"{duration if duration is not None else 10:g}"])
        self.argv = argv
        self.stderr_file = self.out_file.with_suffix(".perf-record.log")
        with open(self.stderr_file, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                         preexec_fn=preexec_fn, env=env)  # noqa: PLW1509

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def interrupt(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def bytes_written(self) -> int:
        try:
            return self.out_file.stat().st_size
        except OSError:
            return 0

    def log(self) -> str:
        try:
            return self.stderr_file.read_text(errors="replace") if self.stderr_file else ""
        except OSError:
            return ""


class PerfProgress:
    """Events and lost counts of a perf.data that perf record is still writing, read incrementally.

    perf writes the header (with the data offset) first and appends records as it drains
    the ring buffers; each call walks only what was appended since the last one and stops
    at a record that is not complete yet.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos: int | None = None
        self.events = 0
        self.lost = 0

    def update(self) -> tuple[int, int]:
        import numpy as np

        from vpmutrace.readers.perf_data import walk

        try:
            size = self.path.stat().st_size
            if size < 104:
                return self.events, self.lost
            buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError):
            return self.events, self.lost
        if self.pos is None:
            if bytes(buf[:8]) != b"PERFILE2":
                return self.events, self.lost
            self.pos = int(buf[40:48].view("<u8")[0])  # perf_header.data.offset
        offs, types, _miscs, _sizes, stop, _err = walk(buf, self.pos, len(buf))
        self.events += int((types == 9).sum())  # PERF_RECORD_SAMPLE
        lost = (types == 2) | (types == 13)
        for o, t in zip(offs[lost].tolist(), types[lost].tolist(), strict=True):
            at = o + 16 if t == 2 else o + 8  # LOST: id, lost; LOST_SAMPLES: lost
            self.lost += int(buf[at:at + 8].view("<u8")[0])
        self.pos = int(stop)
        return self.events, self.lost
