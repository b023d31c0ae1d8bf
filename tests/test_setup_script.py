"""scripts/setup: the demo's setup installs no browser; the test setup installs its host tools with
--no-install-recommends, says what it installs and shows apt's progress.

Run for real on a copy of the script, with stand-ins for the venv's python and apt-get that log
their arguments, on a PATH without the host tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

APT = """#!/bin/sh
echo "$*" >> "$LOG"
case "$*" in *" -s "*) printf 'Inst chromium (1)\\nInst chromium-driver (1)\\nInst libx (1)\\n'; exit 0 ;; esac
echo "Get:1 http://deb.example chromium 1 [70 MB]"
echo "Unpacking chromium (1) ..."
echo "Setting up chromium (1) ..."
"""


def _run(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str], list[str]]:
    root = tmp / "clone"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup", root / "scripts" / "setup")
    venv_py = root / ".venv" / "bin" / "python"
    venv_py.parent.mkdir(parents=True)
    venv_py.write_text('#!/bin/sh\necho "$*" >> "$PIPLOG"\ncase "$*" in --version) echo "Python 3.11.9";; esac\n')
    binp = tmp / "bin"
    binp.mkdir()
    for tool in ("dirname", "grep", "sed"):
        (binp / tool).symlink_to(shutil.which(tool))
    (binp / "python3").symlink_to(sys.executable)
    (binp / "id").write_text("#!/bin/sh\necho 0\n")
    (binp / "apt-get").write_text(APT)
    for f in binp.iterdir():
        if not f.is_symlink():
            f.chmod(0o755)
    venv_py.chmod(0o755)
    env = {"PATH": str(binp), "LOG": str(tmp / "apt.log"), "PIPLOG": str(tmp / "pip.log"), "HOME": str(tmp)}
    r = subprocess.run(["/bin/bash", str(root / "scripts" / "setup"), *args], capture_output=True, text=True,
                       env=env, check=False)
    read = lambda p: p.read_text().splitlines() if p.exists() else []  # noqa: E731
    return r, read(tmp / "apt.log"), read(tmp / "pip.log")


def test_demo_setup_installs_no_browser(tmp_path: Path) -> None:
    r, apt, pip = _run(tmp_path, "--demo")
    assert r.returncode == 0, r.stderr
    assert apt == []  # nothing from apt at all
    assert any(line.endswith("install -e .") for line in pip), pip  # no test extra either
    assert "installing vpmutrace ('.')" in r.stdout


def test_test_setup_installs_tools_without_recommends_and_shows_progress(tmp_path: Path) -> None:
    r, apt, pip = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert any(line.endswith("install -e .[dev,fleet]") for line in pip), pip  # the fleet test needs Dask
    installs = [a for a in apt if a.startswith("install") and " -s " not in a]
    assert len(installs) == 1 and "--no-install-recommends" in installs[0].split(), apt
    assert installs[0].split()[-4:] == ["trace-cmd", "binutils", "chromium", "chromium-driver"]
    # says what it installs (names and the count apt simulates), then apt's progress lines
    assert "installing trace-cmd binutils chromium chromium-driver with apt-get --no-install-recommends " \
           "(3 packages" in r.stdout
    assert "Get:1 http://deb.example chromium" in r.stdout and "Setting up chromium (1)" in r.stdout


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    r, apt, pip = _run(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would run: apt-get install -y --no-install-recommends trace-cmd binutils chromium chromium-driver" \
        in r.stdout
    assert [a for a in apt if not a.startswith("install -s")] == [] and all("install" not in p for p in pip)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"    {ci}\n" in readme and ci == "scripts/setup && .venv/bin/python -m pytest -q"
    assert "    scripts/setup --demo && .venv/bin/vpmutrace demo\n" in readme
    assert os.access(ROOT / "scripts" / "setup", os.X_OK)
