"""Run a reader on a damaged input in a worker process and classify the outcome.

Outcomes (docs/reliability.md):

- ``ok``: a result; every event row of a truncated copy is a row of the undamaged file, and if
  rows were lost (fewer events than the undamaged file) the loss is counted in the stats
  (severity data_loss or error).
- ``error``: ``errors.InputError`` with a one-line message.
- defects: ``crash`` (killed by a signal), ``timeout``, ``memory`` (MemoryError, or resident
  memory above the bound), ``traceback`` (any other exception), ``silent_loss`` (fewer events,
  nothing counted), ``changed_rows`` (a truncated copy gives rows the undamaged file does not
  have), ``invalid_json`` (``info --json`` would print invalid JSON), ``multiline_error``.

Memory bound (checked here, documented in docs/reliability.md): the reader's peak resident
memory may grow by at most ``RSS_FIXED_MB`` + ``RSS_PER_BYTE`` x the input's size over what the
worker had before the input (the libraries already loaded); the worker's address space is capped
so that a blow-up stops early instead of taking the machine. Workers are separate processes
(not forks: polars' thread pool does not survive a fork), restarted after a crash or timeout.
"""

from __future__ import annotations

import os
import pickle
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RSS_FIXED_MB = 384  # what reading any input may take on top of the loaded libraries
RSS_PER_BYTE = 64  # ... plus this multiple of the input's size
TIMEOUT_S = 30.0

DEFECTS = ("crash", "timeout", "memory", "traceback", "silent_loss", "changed_rows", "invalid_json",
           "multiline_error")


@dataclass
class Outcome:
    kind: str  # ok, error, or one of DEFECTS
    detail: str = ""
    seconds: float = 0.0
    rss_mb: float = 0.0
    summary: dict[str, Any] | None = field(default=None, repr=False)


def _peak_reset() -> None:
    """Reset this process's peak resident size (VmHWM): proc(5), /proc/pid/clear_refs value 5."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _one(target: str, data: bytes) -> dict[str, Any]:
    """Read one input in this (worker) process; the raw outcome as a dict."""
    import gc

    from fuzz.targets import TARGETS, summary
    from vpmutrace.errors import InputError

    gc.collect()
    base = _status_mb("VmRSS")
    _peak_reset()
    limit_mb = RSS_FIXED_MB + RSS_PER_BYTE * len(data) / 2**20
    t0 = time.monotonic()
    res: dict[str, Any]
    try:
        with tempfile.TemporaryDirectory(prefix="vpmufuzz") as tmp:
            td = TARGETS[target].read(data, Path(tmp))
            res = {"kind": "ok", "summary": summary(td)}
            del td
    except InputError as e:
        msg = str(e)
        res = {"kind": "error" if "\n" not in msg.strip() else "multiline_error", "detail": msg[:300]}
    except MemoryError as e:
        res = {"kind": "memory", "detail": f"MemoryError {e} " + _where()}
    except RecursionError:
        res = {"kind": "traceback", "detail": "RecursionError " + _where()}
    except Exception as e:  # noqa: BLE001 - every other exception is the defect we look for
        res = {"kind": "traceback", "detail": f"{type(e).__module__}.{type(e).__name__}: {str(e)[:160]} "
                                              + _where()}
    res["seconds"] = time.monotonic() - t0
    grew = _status_mb("VmHWM") - base
    res["rss_mb"] = grew
    if res["kind"] in ("ok", "error") and grew > limit_mb:
        res = {**res, "kind": "memory", "detail": f"resident memory grew {grew:.0f} MB for a "
                                                  f"{len(data)}-byte input (bound {limit_mb:.0f} MB)"}
    return res


def worker_main() -> None:
    """A worker process: reads (target, input) messages on stdin, answers each outcome on stdout.

    Its address space is capped (RLIMIT_AS) so that a blow-up ends in MemoryError, not in the OOM killer."""
    import sys

    cap = int(WORKER_AS_GB * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # (whatever a reader prints must not mix with the answers)
    while True:
        head = inp.read(8)
        if len(head) < 8:
            return
        target, data = pickle.loads(inp.read(int.from_bytes(head, "little")))
        msg = pickle.dumps(_one(target, data))
        out.write(len(msg).to_bytes(8, "little") + msg)
        out.flush()


WORKER_AS_GB = 8.0  # address space of a worker: numba, polars and arrow map ~2 GB before reading anything


class Worker:
    """One worker process (python -m fuzz.worker), restarted after a crash or a timeout."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        root = Path(__file__).resolve().parent.parent
        # (a PYTHONPATH given comes first: ``PYTHONPATH=<other checkout> python -m fuzz.run`` fuzzes that code)
        path = os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(root))))
        env = {**os.environ, "PYTHONPATH": path}
        return subprocess.Popen([sys.executable, "-m", "fuzz.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tempfile.gettempdir())

    def run(self, target: str, data: bytes, timeout: float) -> Outcome:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        p = self.proc
        assert p.stdin is not None and p.stdout is not None
        msg = pickle.dumps((target, data))
        t0 = time.monotonic()
        try:
            p.stdin.write(len(msg).to_bytes(8, "little") + msg)
            p.stdin.flush()
        except BrokenPipeError:
            pass
        buf = b""
        need = 8
        fd = p.stdout.fileno()
        while True:
            left = timeout - (time.monotonic() - t0)
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                self.stop()
                return Outcome("timeout", f"no result after {timeout:.0f} s", time.monotonic() - t0)
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                rc = p.wait()
                self.proc = None
                what = f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"worker exited {rc}"
                return Outcome("crash", what, time.monotonic() - t0)
            buf += chunk
            if len(buf) >= 8:
                need = 8 + int.from_bytes(buf[:8], "little")
            if len(buf) >= need > 8:
                res = pickle.loads(buf[8:need])
                return Outcome(res["kind"], res.get("detail", ""), res["seconds"], res["rss_mb"], res.get("summary"))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


_WORKERS: list[Worker] = []


def _where() -> str:
    tb = traceback.extract_tb(sys.exc_info()[2])
    ours = [f for f in tb if "/vpmutrace/" in f.filename or "/fuzz/" in f.filename]
    f = (ours or tb)[-1]
    return f"at {Path(f.filename).name}:{f.lineno}"


def run(target: str, data: bytes, timeout: float = TIMEOUT_S) -> Outcome:
    """Run ``target`` on ``data`` in a worker process and classify the raw outcome (no comparison)."""
    return run_many(target, [data], timeout, jobs=1)[0]


def run_many(target: str, inputs: list[bytes], timeout: float = TIMEOUT_S, jobs: int = 2) -> list[Outcome]:
    """Each input read by one of ``jobs`` worker processes (kept between calls)."""
    while len(_WORKERS) < jobs:
        _WORKERS.append(Worker())
    out: list[Outcome | None] = [None] * len(inputs)
    nxt = iter(range(len(inputs)))
    lock = threading.Lock()

    def drive(w: Worker) -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            out[i] = w.run(target, inputs[i], timeout)

    threads = [threading.Thread(target=drive, args=(w,)) for w in _WORKERS[:jobs]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [o for o in out if o is not None]


def shutdown() -> None:
    for w in _WORKERS:
        w.stop()
    _WORKERS.clear()


def judge(kind: str, got: Outcome, base: dict[str, Any]) -> Outcome:
    """Compare a result with the undamaged input's (``base``, a targets.summary)."""
    if got.kind != "ok" or got.summary is None:
        return got
    s = got.summary
    if not s["json_ok"]:
        return Outcome("invalid_json", "info --json gives NaN or an unserialisable value", got.seconds, got.rss_mb)
    counted = any(v > base["loss"].get(k, 0) for k, v in s["loss"].items()) or (s["cut"] and not base["cut"])
    if s["events"] < base["events"] and not counted:
        return Outcome("silent_loss", f"{s['events']} of {base['events']} events, no loss counted",
                       got.seconds, got.rss_mb)
    if kind == "truncate":
        for table, h in s["hashes"].items():
            have = Counter(list(base["hashes"].get(table, [])))
            extra = Counter(list(h)) - have
            if extra:
                return Outcome("changed_rows", f"{table}: {sum(extra.values())} row(s) the undamaged input does not "
                                               "have", got.seconds, got.rss_mb)
    return got
