"""The hive-partitioned fleet tree: ``ROOT/host=NAME/capture=NAME/`` (see ``vpmutrace.fleet``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vpmutrace.errors import InputError

HOST_KEY, CAPTURE_KEY = "host", "capture"
SNAPSHOT = "host.json"  # a capture's host snapshot (vpmutrace record writes it; found next to the traces)


@dataclass(frozen=True)
class Capture:
    host: str
    capture: str

    @property
    def rel(self) -> Path:
        """The capture's path under a fleet root."""
        return Path(f"{HOST_KEY}={self.host}") / f"{CAPTURE_KEY}={self.capture}"


def captures(root: Path) -> list[Capture]:
    """Every ``host=*/capture=*`` directory under ``root``, sorted; an error naming the layout when none."""
    if not root.is_dir():
        raise InputError(str(root), "no such directory (a fleet tree: ROOT/host=NAME/capture=NAME/)")
    out = [Capture(h.name.partition("=")[2], c.name.partition("=")[2])
           for h in sorted(root.glob(f"{HOST_KEY}=*")) if h.is_dir()
           for c in sorted(h.glob(f"{CAPTURE_KEY}=*")) if c.is_dir()]
    bad = [c for c in out if not c.host or not c.capture]
    if bad:
        raise InputError(str(root / bad[0].rel), "empty host or capture name in the partition directory")
    if not out:
        raise InputError(str(root), "no host=NAME/capture=NAME directories (a fleet tree: "
                                    "ROOT/host=NAME/capture=NAME/ with trace files, or datasets after fleet ingest)")
    return out


def trace_files(capture_dir: Path) -> list[Path]:
    """The trace files of a raw capture directory: every file but its host snapshot and hidden files."""
    files = sorted(p for p in capture_dir.iterdir()
                   if (p.is_file() or p.is_dir()) and p.name != SNAPSHOT and not p.name.startswith((".", "_")))
    if not files:
        raise InputError(str(capture_dir), "no trace files in this capture directory")
    return files
