"""The guardian of one capture: stops what a recorder started when the recorder dies without doing it.

A recorder killed with SIGKILL runs no handler, so whatever it started keeps going: the tracefs
instance records into its ring buffer, the probes stay defined, the workload runs orphaned and the
spool holds raw pages no reader opens. Three layers make sure nothing keeps recording unnoticed:

1. The kernel's parent-death signal (prctl(2) PR_SET_PDEATHSIG, set in the child between fork and
   exec): the workload gets SIGTERM and ``perf record`` SIGINT (perf then writes a complete file and
   stops its own workload) the moment the recorder dies.
2. A guardian process (``python -m vpmutrace.collectors.guardian STATE``) started in its own session before
   the capture. It holds the read end of a pipe whose write end only the recorder has; the kernel
   closes it when the recorder dies, however it dies. End of file without the recorder's ``done``
   line means the recorder died: the guardian salvages (``salvage``): tracing off, the workload
   stopped (SIGTERM, SIGKILL after 5 s), perf waited for, what the workload started stopped (found
   by the capture's mark, ``MARK_ENV``, in their environment), the pages still in the instance's buffer
   drained into the spool, the spool turned into trace.dat, the instance and the probes removed, and
   capture.json written saying so.
3. The state file (``STATE_DIR/<recorder pid>.json``) stays until a capture ends cleanly or is
   salvaged, so if the guardian died too (the whole process tree killed, a reboot of the cgroup), the
   next ``record`` and ``record --cleanup`` salvage it (``salvage_dead``); instances and probe groups of
   dead recorders without a state file are removed by ``probes.cleanup_leftovers``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h
STATE_DIR_ENV = "VPMUTRACE_STATE_DIR"
DONE = b"done\n"


def state_dir() -> Path:
    """Where recorders register their captures: $VPMUTRACE_STATE_DIR, else /run/vpmutrace as root,
    else a per-user directory under the temporary directory."""
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0 and Path("/run").is_dir():
        return Path("/run/vpmutrace")
    return Path(tempfile.gettempdir()) / f"vpmutrace-{os.geteuid()}"


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), telling a
    process from a later one that reused its pid; None when it does not exist or is a zombie (field 3
    is Z: it ended and waits for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] == "Z" else int(fields[19])


def same_process(rec: dict[str, Any] | None) -> bool:
    """Whether ``{"pid", "start"}`` still names the process it was recorded for."""
    return bool(rec) and start_time(int(rec["pid"])) == rec.get("start")  # type: ignore[index]


def proc_ref(pid: int) -> dict[str, Any]:
    return {"pid": pid, "start": start_time(pid)}


def pdeathsig(sig: int):  # noqa: ANN201 - a preexec_fn
    """A ``preexec_fn`` making the kernel send ``sig`` to the child when its parent dies.

    libc is resolved before the fork (nothing is loaded between fork and exec); if the parent died
    before prctl took effect, the child sends the signal to itself (prctl(2): the setting applies from
    the call on)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def set_it() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return set_it


class Guard:
    """The recorder's side: the state file and the pipe to the guardian."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.dir = state_dir()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.dir / f"{os.getpid()}.json"
        rec = proc_ref(os.getpid())
        self.state = dict(state, recorder=rec, started=time.time(), mark=f"{rec['pid']}.{rec['start']}")
        self._save()
        r, w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, str(self.path)], stdin=r,
                                     stdout=subprocess.DEVNULL, start_new_session=True)
        os.close(r)
        os.set_inheritable(w, False)
        self._w: int | None = w
        self.state["guardian"] = proc_ref(self.proc.pid)
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.path)

    def env(self) -> dict[str, str]:
        """The environment for the workload and perf: this one, with the capture's mark."""
        return dict(os.environ, **{MARK_ENV: self.state["mark"]})

    def stop_marked(self) -> str | None:
        """Stop what the workload started and left running (see ``stop_marked``)."""
        return stop_marked(self.state["mark"])

    def update(self, **kv: Any) -> None:
        """Record something the guardian must stop or clean (a workload, perf, the instance)."""
        self.state.update(kv)
        self._save()

    def done(self) -> None:
        """The capture ended and the recorder cleaned up itself: the guardian exits doing nothing."""
        if self._w is not None:
            with contextlib.suppress(OSError):
                os.write(self._w, DONE)
            os.close(self._w)
            self._w = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.path.unlink(missing_ok=True)


MARK_ENV = "VPMUTRACE_CAPTURE"  # in the workload's and perf's environment; the processes they start inherit it


def marked(mark: str) -> list[int]:
    """The processes whose environment holds ``MARK_ENV=mark`` (/proc/<pid>/environ: the environment
    they were started with, inherited by what a workload forks, even once reparented), but this one."""
    needle = b"\0" + f"{MARK_ENV}={mark}".encode() + b"\0"
    me = os.getpid()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if needle in b"\0" + env:
            found.append(int(d.name))
    return found


def stop_marked(mark: str | None, grace: float = 5.0) -> str | None:
    """SIGTERM to every process still carrying the capture's mark (what the workload started and left
    running), SIGKILL to those left after ``grace`` seconds; what was done, None if nothing ran."""
    refs = [r for r in (proc_ref(p) for p in marked(mark)) if r["start"] is not None] if mark else []
    if not refs:
        return None
    left = _stop(refs, signal.SIGTERM, grace)
    pids = " ".join(str(r["pid"]) for r in refs)
    return f"{len(refs)} process(es) the workload started stopped (pid {pids}; {len(left)} needed SIGKILL)"


def _stop(refs: list[dict[str, Any]], sig: int, grace: float) -> list[dict[str, Any]]:
    """Send ``sig`` to each recorded process, SIGKILL to those still running after ``grace``
    seconds; returns those."""
    for r in refs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(r["pid"]), sig)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(same_process(r) for r in refs):
        time.sleep(0.05)
    left = [r for r in refs if same_process(r)]
    for r in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(r["pid"]), signal.SIGKILL)
    return left


def _stop_process(rec: dict[str, Any] | None, sig: int, grace: float) -> str | None:
    """Send ``sig`` to a recorded process that still runs, SIGKILL after ``grace`` seconds."""
    if not same_process(rec):
        return None
    assert rec is not None
    if _stop([rec], sig, grace):
        return f"pid {rec['pid']} killed (ignored {signal.Signals(sig).name} for {grace:g} s)"
    return f"pid {rec['pid']} stopped by {signal.Signals(sig).name}"


def salvage(path: Path) -> list[str]:
    """Stop and clean up the capture whose recorder is gone; keep what it captured. Returns what was done."""
    from vpmutrace.collectors.probes import TracefsIO, remove_group

    from vpmutrace.capture import CAPTURE_FILE

    st = json.loads(path.read_text())
    done: list[str] = []
    out = Path(st["out"])
    root = Path(st["tracefs_root"]) if st.get("tracefs_root") else None
    cap = None
    if st.get("backend") == "tracefs" and st.get("instance") and root is not None:
        from vpmutrace.collectors.tracefs_backend import TracefsCapture

        cap = TracefsCapture.attach(st)
        cap.halt()  # tracing off first: nothing more is recorded, whatever else happens
        done.append(f"instance {st['instance']} stopped")
    if (w := _stop_process(st.get("workload"), signal.SIGTERM, 5.0)) is not None:
        done.append(f"workload {w}")
    if (p := _stop_process(st.get("perf"), signal.SIGINT, 60.0)) is not None:
        done.append(f"perf record {p}")
    if (m := stop_marked(st.get("mark"))) is not None:
        done.append(m)
    summary: dict[str, Any] = {}
    if cap is not None:
        summary = cap.salvage()
        done.append(f"{summary['events']} events in {summary['pages']} pages written to {cap.out_file}")
    if root is not None and st.get("probe_group"):
        io = TracefsIO(root)
        done += [f"probe {x} removed" for x in remove_group(io, st["probe_group"])]
    died = f"recorder pid {st['recorder']['pid']} died without stopping its capture (SIGKILL?)"
    capture = {"backend": st.get("backend"), "trace_file": st.get("trace_file"), "interrupted": died,
               "salvaged_by": "vpmutrace.collectors.guardian", "salvaged": done, "command": st.get("command"),
               "summary": summary}
    with contextlib.suppress(OSError):
        (out / CAPTURE_FILE).write_text(json.dumps(capture, indent=2) + "\n")
    path.unlink(missing_ok=True)
    return done


def salvage_dead() -> list[str]:
    """Salvage the captures of dead recorders whose guardian is gone too (state files left behind)."""
    d = state_dir()
    if not d.is_dir():
        return []
    done: list[str] = []
    for p in sorted(d.glob("*.json")):
        try:
            st = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if same_process(st.get("recorder")) or same_process(st.get("guardian")):
            continue  # still recording, or its guardian is at work
        done += [f"capture in {st.get('out')}: {x}" for x in salvage(p)]
    return done


def main(argv: list[str]) -> int:
    """Wait for the recorder's ``done``; salvage when the pipe ends without it."""
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(s, signal.SIG_IGN)  # a terminal's ^C or hangup is the recorder's to handle
    path = Path(argv[0])
    got = b""
    while True:
        chunk = os.read(0, 64)
        if not chunk:
            break
        got += chunk
    if got.endswith(DONE) or not path.exists():
        return 0
    for line in salvage(path):
        print(f"vpmutrace guardian: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
