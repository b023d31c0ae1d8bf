"""Record through a private tracefs instance, reading per-CPU trace_pipe_raw while the capture runs.

The instance (``instances/vpmutrace.<pid>``) is ours alone: the top-level buffer and
other tools' instances are never touched. Pages are copied to per-CPU spool files as
they fill, so a normal run loses nothing; the kernel's overrun counters and the
pages' missing-events flags record any loss. On stop (end, error or signal) tracing
is turned off, the buffers are drained, a trace.dat is written (readable by
``trace-cmd report``) and the instance is removed.
"""

from __future__ import annotations

import errno
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vpmutrace.formats.event_format import parse_header_page
from vpmutrace.readers.ringbuf import walk_pages
from vpmutrace.writers.trace_dat import BufferData, TraceDatContent, write_trace_dat


@dataclass
class CpuReader:
    cpu: int
    path: Path
    spool: Path
    events: int = 0
    pages: int = 0
    error: str | None = None


@dataclass
class TracefsCapture:
    root: Path
    events: list[str]
    out_file: Path
    cpus: list[int] | None = None
    buffer_kb: int = 16384
    name: str = field(default_factory=lambda: f"vpmutrace.{os.getpid()}")
    readers: list[CpuReader] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    page_size: int = 4096
    header_page: dict = field(default_factory=dict)

    @property
    def inst(self) -> Path:
        return self.root / "instances" / self.name

    def _write(self, rel: str, value: str) -> None:
        (self.inst / rel).write_text(value)

    def start(self) -> None:
        self.inst.mkdir()
        try:
            self._write("buffer_size_kb", str(self.buffer_kb))
            sub = self.inst / "buffer_subbuf_size_kb"
            self.page_size = int(sub.read_text()) * 1024 if sub.exists() else os.sysconf("SC_PAGE_SIZE")
            ncpu = os.cpu_count() or 1
            cpus = self.cpus if self.cpus is not None else list(range(ncpu))
            if self.cpus is not None:
                mask = sum(1 << c for c in self.cpus)
                self._write("tracing_cpumask", f"{mask:x}")
            for e in self.events:
                system, _, name = e.partition(":")
                self._write(f"events/{system}/{name}/enable", "1")
            self.header_page = parse_header_page((self.root / "events" / "header_page").read_text())
            spool_dir = self.out_file.parent / f".{self.out_file.name}.spool"
            spool_dir.mkdir(parents=True, exist_ok=True)
            for cpu in cpus:
                r = CpuReader(cpu, self.inst / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw", spool_dir / f"cpu{cpu}")
                self.readers.append(r)
                t = threading.Thread(target=self._read_loop, args=(r,), daemon=True, name=f"tracefs-cpu{cpu}")
                self._threads.append(t)
                t.start()
            self._write("tracing_on", "1")
        except BaseException:
            self.cleanup()
            raise

    def _read_loop(self, r: CpuReader) -> None:
        try:
            fd = os.open(r.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            r.error = f"cannot open {r.path}: {e.strerror}"
            return
        try:
            with open(r.spool, "wb") as spool:
                draining = False
                while True:
                    try:
                        page = os.read(fd, self.page_size)
                    except OSError as e:
                        if e.errno != errno.EAGAIN:
                            r.error = f"read {r.path}: {e.strerror}"
                            return
                        page = b""
                    if page:
                        spool.write(page)
                        r.pages += 1
                        w = walk_pages(np.frombuffer(page.ljust(self.page_size, b"\0"), dtype=np.uint8),
                                       self.page_size, self.header_page)
                        r.events += len(w.offsets)
                        continue
                    if draining:
                        return
                    if self._stop.is_set():
                        draining = True  # tracing is off: one more pass empties the buffer
                        continue
                    time.sleep(0.05)
        finally:
            os.close(fd)

    def progress(self) -> tuple[int, int]:
        """(events read so far, overruns so far)."""
        return sum(r.events for r in self.readers), sum(self.overruns().values())

    def overruns(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self.readers:
            try:
                stats = (self.inst / "per_cpu" / f"cpu{r.cpu}" / "stats").read_text()
            except OSError:
                continue
            n = 0
            for line in stats.splitlines():
                k, _, v = line.partition(":")
                if k.strip() in ("overrun", "dropped events") and v.strip().isdigit():
                    n += int(v)
            out[r.cpu] = n
        return out

    def stop(self) -> dict:
        """Turn tracing off, drain, write the trace.dat. Returns a summary."""
        try:
            self._write("tracing_on", "0")
        except OSError:
            pass
        cpustat = []
        for r in self.readers:
            try:
                stats = (self.inst / "per_cpu" / f"cpu{r.cpu}" / "stats").read_text()
            except OSError:
                stats = ""
            cpustat.append(f"CPU: {r.cpu}\n{stats}")
        overruns = self.overruns()
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        self._write_trace_dat(cpustat)
        errors = [r.error for r in self.readers if r.error]
        return {"events": sum(r.events for r in self.readers), "pages": sum(r.pages for r in self.readers),
                "overruns": sum(overruns.values()), "errors": errors, "file": str(self.out_file)}

    def _write_trace_dat(self, cpustat: list[str]) -> None:
        def rb(p: Path) -> bytes:
            try:
                return p.read_bytes()
            except OSError:
                return b""

        by_sys: dict[str, list[bytes]] = {}
        for e in self.events:
            system, _, name = e.partition(":")
            by_sys.setdefault(system, []).append(rb(self.root / "events" / system / name / "format"))
        ftrace = [rb(f) for f in sorted((self.root / "events" / "ftrace").glob("*/format"))]
        cpus = {r.cpu: rb(r.spool) for r in self.readers}
        u = platform.uname()
        content = TraceDatContent(
            page_size=self.page_size, header_page=rb(self.root / "events" / "header_page"),
            header_event=rb(self.root / "events" / "header_event"), ftrace_formats=ftrace, event_formats=by_sys,
            kallsyms=rb(Path("/proc/kallsyms")), printk=rb(self.root / "printk_formats"),
            cmdlines=rb(self.root / "saved_cmdlines"),
            buffers=[BufferData("", _clock(rb(self.inst / "trace_clock").decode()), cpus)],
            uname=f"{u.system} {u.node} {u.release} {u.machine}",
            trace_clock=rb(self.inst / "trace_clock").decode().strip(), cpustat=cpustat,
            cpucount=os.cpu_count() or len(cpus), tool_version="vpmutrace tracefs backend")
        write_trace_dat(self.out_file, content, 7, "zstd")
        for r in self.readers:
            r.spool.unlink(missing_ok=True)
        try:
            self.readers[0].spool.parent.rmdir() if self.readers else None
        except OSError:
            pass

    def cleanup(self) -> None:
        """Leave tracefs as it was: our instance off, its events disabled, the instance removed."""
        if not self.inst.exists():
            return
        for rel, val in (("tracing_on", "0"), ("events/enable", "0")):
            try:
                self._write(rel, val)
            except OSError:
                pass
        for _ in range(50):
            try:
                self.inst.rmdir()
                return
            except OSError as e:
                if e.errno != errno.EBUSY:
                    return
                time.sleep(0.1)  # a reader still holds trace_pipe_raw open


def _clock(text: str) -> str:
    for w in text.split():
        if w.startswith("["):
            return w.strip("[]")
    return "local"
