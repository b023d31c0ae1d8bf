"""The wheel: built from this checkout, installed in a fresh venv outside it, `vpmutrace demo` runs.

The wheel is built without build isolation (the dev venv has setuptools, numba and numpy) and
installed with --no-deps into a new venv; its dependencies come from the dev venv through a .pth
line appended after the new venv's own site-packages (a .pth's directory is searched but its own
.pth files are not run, so the checkout's editable hook stays out). Everything vpmutrace runs is
the wheel's: the test checks where the package is imported from and what the wheel installs.
Slow (the build compiles the kernels ahead of time: about 30-60 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

from vpmutrace import bundled


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "deprecated" not in r.stderr.lower(), r.stderr  # e.g. project.license as a TOML table
    (whl,) = out.glob("vpmutrace-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    v = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(v)], check=True)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(v / "bin" / "python"), "install", "-q",
                        "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    site = Path(subprocess.run([str(v / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return v


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.mark.slow
def test_wheel_installs_only_vpmutrace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"vpmutrace"}, tops
    assert "vpmutrace/collectors/record.py" in names and "vpmutrace/collectors/microguest.py" in names
    for f in bundled.FILES:
        assert f"vpmutrace/{bundled.PACKAGE_DIR}/{f}" in names
    assert "vpmutrace/docs/design.md" in names  # the reference the findings cite
    assert not any(n.startswith("vpmutrace/fixtures") for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in meta


@pytest.mark.slow
def test_demo_runs_from_the_wheel_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import vpmutrace, vpmutrace.collectors.host as h, "
                            "importlib.util as u; print(vpmutrace.__file__); print(h.__file__); "
                            "print(u.find_spec('collectors'))"], capture_output=True, text=True, cwd=tmp_path,
                           env=_env(), check=True).stdout.split("\n")
    assert where[0].startswith(str(venv)) and where[1].startswith(str(venv)), where
    assert where[2] == "None"  # no top-level 'collectors' package
    r = subprocess.run([str(venv / "bin" / "vpmutrace"), "demo", "-o", "demo"], capture_output=True, text=True,
                       cwd=tmp_path, env=_env(), check=False)
    assert r.returncode == 0, r.stderr
    reports = sorted((tmp_path / "demo").glob("*/report.html"))
    assert len(reports) == len(bundled.DEMO_TRACES) + 7
    doc = json.loads((tmp_path / "demo" / "microguest-perf" / "analysis.json").read_text())
    assert doc["pmu_msr"]["pmu_msr_accesses"] == 1600  # the bundled real capture, decoded
