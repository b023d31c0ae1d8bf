"""Record through a private tracefs instance, reading per-CPU trace_pipe_raw while the capture runs.

The instance (``instances/vpmutrace.<pid>``) is ours alone: the top-level buffer and
other tools' instances are never touched. Pages are copied to per-CPU spool files as
they fill, so a normal run loses nothing; the kernel's overrun counters and the
pages' missing-events flags record any loss. On stop (end, error or signal) tracing
is turned off, the buffers are drained, a trace.dat is written (readable by
``trace-cmd report``) and the instance is removed.

Faults: pages go to the spool with unbuffered writes, one page per write, so a recorder killed
with SIGKILL leaves every page it took from the kernel in the spool (a torn last page is cut off);
its guardian (collectors/guardian.py) ``attach``es to the instance and ``salvage``s: tracing off,
the rest drained, the trace.dat written. A spool write that fails (disk full) stops the capture
(``fault``), and the page it held is counted as lost; the trace.dat is then written from the
pages in memory after the spool is freed, without kallsyms and printk formats if it still does
not fit, and the summary says what was left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import platform
import threading
import time
from collections.abc import Callable
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
    lost_pages: int = 0  # taken from the kernel but not written (disk full)
    lost_events: int = 0


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
    notes: list[str] = field(default_factory=list)

    @property
    def inst(self) -> Path:
        return self.root / "instances" / self.name

    @property
    def spool_dir(self) -> Path:
        return self.out_file.parent / f".{self.out_file.name}.spool"

    def state(self) -> dict:
        """What the guardian needs to ``attach`` to this capture."""
        return {"tracefs_root": str(self.root), "instance": self.name, "events": self.events,
                "trace_file": str(self.out_file), "cpus": [r.cpu for r in self.readers],
                "page_size": self.page_size}

    @classmethod
    def attach(cls, st: dict) -> TracefsCapture:
        """The capture of a dead recorder, from its ``state()``, to ``salvage``."""
        cap = cls(Path(st["tracefs_root"]), list(st["events"]), Path(st["trace_file"]), name=st["instance"],
                  page_size=int(st["page_size"]))
        with contextlib.suppress(OSError, ValueError):
            cap.header_page = parse_header_page((cap.root / "events" / "header_page").read_text())
        for cpu in st["cpus"]:
            cap.readers.append(CpuReader(cpu, cap.inst / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw",
                                         cap.spool_dir / f"cpu{cpu}"))
        return cap

    @property
    def fault(self) -> str | None:
        """The first reader error (disk full, an unreadable buffer): the capture cannot go on."""
        return next((r.error for r in self.readers if r.error), None)

    def _write(self, rel: str, value: str) -> None:
        (self.inst / rel).write_text(value)

    def start(self, on_ready: Callable[[dict], None] | None = None) -> None:
        """Create the instance, start the readers, then tracing (``on_ready(state())`` just before)."""
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
            spool_dir = self.spool_dir
            spool_dir.mkdir(parents=True, exist_ok=True)
            for cpu in cpus:
                r = CpuReader(cpu, self.inst / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw", spool_dir / f"cpu{cpu}")
                self.readers.append(r)
                t = threading.Thread(target=self._read_loop, args=(r,), daemon=True, name=f"tracefs-cpu{cpu}")
                self._threads.append(t)
                t.start()
            if on_ready is not None:
                on_ready(self.state())
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
            spool = os.open(r.spool, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as e:
            os.close(fd)
            r.error = f"cannot create {r.spool}: {e.strerror}"
            return
        try:
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
                    if not self._spool_page(r, spool, page):
                        return
                    continue
                if draining:
                    return
                if self._stop.is_set():
                    draining = True  # tracing is off: one more pass empties the buffer
                    continue
                time.sleep(0.05)
        finally:
            os.close(fd)
            os.close(spool)

    def _count(self, page: bytes) -> int:
        w = walk_pages(np.frombuffer(page.ljust(self.page_size, b"\0"), dtype=np.uint8), self.page_size,
                       self.header_page)
        return len(w.offsets)

    def _spool_page(self, r: CpuReader, spool: int, page: bytes) -> bool:
        """Append one page (one unbuffered write); on failure the page is lost, counted, and the
        spool cut back to whole pages. False when the capture cannot go on."""
        n = self._count(page)
        try:
            if os.write(spool, page) != len(page):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            r.lost_pages += 1
            r.lost_events += n
            with contextlib.suppress(OSError):
                os.ftruncate(spool, r.pages * self.page_size)
            r.error = (f"{'disk full' if e.errno in (errno.ENOSPC, errno.EDQUOT) else 'write failed'}: "
                       f"{r.spool}: {e.strerror} after {r.pages} pages of CPU {r.cpu}")
            return False
        r.pages += 1
        r.events += n
        return True

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
            out[r.cpu] = _stat(stats, "overrun") + _stat(stats, "dropped events")
        return out

    def stop(self) -> dict:
        """Turn tracing off, drain, write the trace.dat. Returns a summary."""
        self.halt()
        cpustat = self._cpustat()
        overruns = self.overruns()
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        self._write_trace_dat(cpustat)
        return self._summary(overruns, cpustat)

    def halt(self) -> None:
        """Tracing off in our instance (nothing more is recorded; the buffer keeps what it has)."""
        with contextlib.suppress(OSError):
            self._write("tracing_on", "0")

    def salvage(self) -> dict:
        """For a dead recorder's capture: tracing off, the buffers drained into the spool (after its
        torn last page is cut off), the trace.dat written and the instance removed."""
        self.halt()
        cpustat = self._cpustat()
        overruns = self.overruns()
        for r in self.readers:
            size = r.spool.stat().st_size if r.spool.exists() else 0
            r.pages = size // self.page_size
            if size % self.page_size:
                with contextlib.suppress(OSError):
                    os.truncate(r.spool, r.pages * self.page_size)
                self.notes.append(f"CPU {r.cpu}: a torn last page ({size % self.page_size} bytes) cut off")
            with contextlib.suppress(OSError):
                r.events = sum(self._count(p) for p in _pages(r.spool.read_bytes(), self.page_size))
            self._stop.set()
            if self.inst.exists():
                self._read_loop(r)  # drains what the kernel still holds, then returns
        try:
            self._write_trace_dat(cpustat)
        finally:
            self.cleanup()
        return self._summary(overruns, cpustat)

    def _cpustat(self) -> list[str]:
        cpustat = []
        for r in self.readers:
            try:
                stats = (self.inst / "per_cpu" / f"cpu{r.cpu}" / "stats").read_text()
            except OSError:
                stats = ""
            cpustat.append(f"CPU: {r.cpu}\n{stats}")
        return cpustat

    def _summary(self, overruns: dict[int, int], cpustat: list[str]) -> dict:
        errors = [r.error for r in self.readers if r.error]
        # a CPU whose reader stopped (disk full) leaves its buffer unread: the stats' entries count it
        unread = sum(_stat(text, "entries") for r, text in zip(self.readers, cpustat, strict=True) if r.error)
        return {"events": sum(r.events for r in self.readers), "pages": sum(r.pages for r in self.readers),
                "overruns": sum(overruns.values()), "errors": errors, "file": str(self.out_file),
                "lost_unwritten_pages": sum(r.lost_pages for r in self.readers),
                "lost_unwritten_events": sum(r.lost_events for r in self.readers), "lost_unread_events": unread,
                "notes": self.notes}

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
        tmp = self.out_file.with_name(self.out_file.name + ".partial")
        # on a full disk: free the spool (its pages are in memory now), then leave out the symbol tables
        attempts = [(content, None), (content, "the spool was removed to make room"),
                    (dataclasses.replace(content, kallsyms=b"", printk=b""),
                     "kallsyms and printk formats left out: the disk was full")]
        for i, (c, note) in enumerate(attempts):
            if i == 1:
                self._remove_spool()
            try:
                write_trace_dat(tmp, c, 7, "zstd")
                tmp.replace(self.out_file)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                if e.errno not in (errno.ENOSPC, errno.EDQUOT) or i == len(attempts) - 1:
                    raise
                continue
            if note:
                self.notes.append(note)
            break
        self._remove_spool()

    def _remove_spool(self) -> None:
        for r in self.readers:
            r.spool.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.spool_dir.rmdir()

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


def _stat(text: str, key: str) -> int:
    """One counter of a per_cpu/cpuN/stats text ("entries: 12"), 0 when absent."""
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k.strip() == key and v.strip().isdigit():
            return int(v)
    return 0


def _pages(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data) - size + 1, size)]


def _clock(text: str) -> str:
    for w in text.split():
        if w.startswith("["):
            return w.strip("[]")
    return "local"
