"""Shared test helpers: where the real traces are, and which tools this host has."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
SHARED = Path(os.environ.get("VPMUTRACE_SHARED", ROOT.parent / "shared"))
SHARED_TRACES = SHARED / "traces"


# the common fields every tracefs event format starts with (format texts of made-up events)
COMMON_FORMAT_FIELDS = """\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
"""


def shared(rel: str) -> Path:
    """A file from ../shared/traces, or skip: a user's clone has no ../shared."""
    p = SHARED_TRACES / rel
    if not p.exists():
        pytest.skip(f"{p} not present (the shared trace collection exists only on project machines)")
    return p


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed on this host")
    return path


def trace_cmd_32() -> str:
    """trace-cmd 3.2 (TRACE_CMD, or ../tools/tc32/trace-cmd as shared/tools/trace-cmd-3.2/build.sh builds
    it), or skip."""
    import subprocess

    for p in (os.environ.get("TRACE_CMD"), str(ROOT.parent / "tools" / "tc32" / "trace-cmd")):
        if p and Path(p).exists():
            out = subprocess.run([p, "--version"], capture_output=True, text=True)
            if "3.2" in out.stdout + out.stderr:
                return p
    pytest.skip("trace-cmd 3.2 not found (TRACE_CMD, or ../tools/tc32/trace-cmd built by "
                "shared/tools/trace-cmd-3.2/build.sh)")


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
