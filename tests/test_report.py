"""HTML report: rendered in real headless Chromium (no console errors, expected traces), escaping."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

ARTIFACTS = ROOT / "out" / "test-artifacts"
EVIL = ['<script>window.__xss=1</script>', '<img src=x onerror="window.__xss=2">']


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vpmutrace", *args], capture_output=True, text=True, check=False)


def _browser():  # noqa: ANN202
    chrome, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("chromium/chromedriver not installed here (scripts/setup installs them as root on Debian)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1400,1800"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


def _evil_trace(tmp: Path) -> Path:
    """A VMX ftrace snippet whose task names are HTML/script payloads."""
    lines = []
    for i, comm in enumerate(EVIL * 3):
        t = 1000 + 40 * i
        head = f" {comm}-{4000 + i % 2}  [00{i % 2}]"
        lines.append(f"{head} d....  5.{t:06d}: kvm_entry: vcpu {i % 2}, rip 0xffffffff81000000")
        lines.append(f"{head} d....  5.{t + 20:06d}: kvm_exit: vcpu {i % 2} reason MSR_WRITE "
                     "rip 0xffffffff81000010 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 "
                     "error_code 0x00000000")
        lines.append(f" {comm}-{4000 + i % 2}  [00{i % 2}] .....  5.{t + 21:06d}: kvm_msr: msr_write 186 = 0x4300c0")
    f = tmp / "evil.txt"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_report_escapes_trace_strings(tmp_path: Path) -> None:
    r = _cli("report", str(_evil_trace(tmp_path)), "-o", str(tmp_path / "r.html"), "--title", "<b>t</b>")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r.html").read_text()
    body = page.split("</head>", 1)[1]
    assert "<script>window.__xss" not in body and "<img src=x" not in body
    assert "&lt;b&gt;t&lt;/b&gt;" in page


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    assert _cli("simulate", "--scenario", "skid", "--isa", "vmx", "--seed", "2", "-o", str(out)).returncode == 0
    r = _cli("report", str(out / "dataset"), "-o", str(tmp_path / "skid.html"))
    assert r.returncode == 0
    assert _cli("report", str(_evil_trace(tmp_path)), "-o", str(tmp_path / "evil.html")).returncode == 0
    drv = _browser()
    try:
        drv.get((tmp_path / "skid.html").as_uri())
        names = drv.execute_script("return document.getElementById('timeline').data.map(t => t.name)")
        assert "guest runs" in names and "host perf NMI" in names and "guest PMI exit" in names
        assert {"perf NMI in nmi exit", "perf NMI after exit", "perf NMI before entry"} <= set(names)
        assert any(n.startswith("exit ") for n in names)
        n_figs = drv.execute_script("return document.querySelectorAll('.fig .main-svg').length")
        assert n_figs >= 4
        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(ARTIFACTS / "report-skid.png"))
        drv.get((tmp_path / "evil.html").as_uri())
        assert drv.execute_script("return window.__xss === undefined")
        hover = drv.execute_script("return JSON.stringify(document.getElementById('timeline').data)")
        assert "window.__xss" in hover  # the names are there, as text
        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        drv.quit()


def test_report_size_is_bounded(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert _cli("report", str(FIXTURES / "microguest200.perf.data"), "-o", str(out), "--max-points", "500") \
        .returncode == 0
    assert out.stat().st_size < 6 * 2**20


def test_report_shows_uncomputable_values_as_dashes(tmp_path: Path) -> None:
    """This host records no kvm_exit: what needs it is not computable and says so, not 'None'."""
    out = tmp_path / "r.html"
    assert _cli("report", str(FIXTURES / "microguest200.perf.data"), "-o", str(out)).returncode == 0
    text = out.read_text()
    assert "<td>None</td>" not in text
    assert "<td>requests</td><td>not computable: needs kvm:kvm_exit events</td>" in text


def test_report_findings_carry_certainty(tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert _cli("simulate", "--scenario", "pinned-contention", "--seed", "3", "-o", str(out)).returncode == 0
    assert _cli("report", str(out / "dataset"), "-o", str(tmp_path / "r.html")).returncode == 0
    text = (tmp_path / "r.html").read_text()
    assert "<tr class='medium'><td>medium</td><td>candidate</td><td>silent</td>" in text
    assert "vPMU design: emulated (snapshot)" in text
