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


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
