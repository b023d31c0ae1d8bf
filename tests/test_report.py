"""HTML report: rendered in real headless Chromium (no console errors, expected traces, no overlapping or
cut text, the detail-window selector), full-page screenshots at two widths, escaping, readable tables."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import time
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


WIDTHS = (1400, 820)

# Per figure: its legend, axis titles, tick labels and colorbar ticks as boxes on the page, and what
# overlaps or is cut: a legend on an axis title or tick labels, colorbar ticks on each other, tick
# labels outside the figure.
GEOMETRY = """
const boxes = (root, sel) => Array.from(root.querySelectorAll(sel)).map(e => [e.textContent, e.getBoundingClientRect()])
  .filter(([t, r]) => r.width > 0 && r.height > 0);
const hit = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
return Array.from(document.querySelectorAll('.fig')).filter(f => f.querySelector('.main-svg')).map(fig => {
  const svg = fig.querySelector('.main-svg').getBoundingClientRect();
  const legend = boxes(fig, 'g.legend .bg');
  const titles = [...boxes(fig, '.g-xtitle text'), ...boxes(fig, '.g-ytitle text')];
  const ticks = [...boxes(fig, '.xtick text'), ...boxes(fig, '.ytick text')];
  const cb = boxes(fig, '.colorbar .cbaxis text');
  const problems = [];
  for (const [n, l] of legend)
    for (const [t, r] of [...titles, ...ticks]) if (hit(l, r)) problems.push('legend on ' + t);
  for (let i = 0; i < cb.length; i++) for (let j = i + 1; j < cb.length; j++)
    if (hit(cb[i][1], cb[j][1])) problems.push('colorbar ticks ' + cb[i][0] + '/' + cb[j][0]);
  for (const [t, r] of [...ticks, ...titles])
    if (r.left < svg.left - 1 || r.right > svg.right + 1 || r.bottom > svg.bottom + 1) problems.push('cut: ' + t);
  return {id: fig.id, legend: legend.length, traces: fig.data.length, problems,
          xtitle: (titles[0] || [''])[0], xticks: boxes(fig, '.xtick text').map(([t]) => t)};
});"""


def _full_page(drv, width: int, path: Path) -> None:  # noqa: ANN001
    """A screenshot of the whole page at this width."""
    drv.set_window_size(width, 1000)
    time.sleep(0.5)
    h = drv.execute_script("return document.documentElement.scrollHeight")
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": h, "deviceScaleFactor": 1, "mobile": False})
    time.sleep(0.5)
    png = drv.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(png["data"]))
    drv.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _reports(tmp: Path) -> dict[str, Path]:
    """A large-trace report (more events than its point budget: detail windows), a report against the
    wrong design (divergences), a single-CPU real trace and a real capture with #GP MSR accesses."""
    sim = tmp / "sim"
    assert _cli("simulate", "--scenario", "skid", "--isa", "vmx", "--seed", "2", "-o", str(sim)).returncode == 0
    out = {"windows": tmp / "windows.html", "diverge": tmp / "diverge.html", "one-cpu": tmp / "one-cpu.html",
           "gp": tmp / "gp.html"}
    runs = [("windows", str(sim / "dataset"), "--max-points", "600"),
            ("diverge", str(sim / "dataset"), "--model", "mediated"),
            ("one-cpu", str(FIXTURES / "lkml_rak_ept_violation_loop_host_write_msr.txt")),
            ("gp", str(FIXTURES / "microguest200.perf.data"))]
    for name, *args in runs:
        r = _cli("report", *args, "-o", str(out[name]))
        assert r.returncode == 0, r.stderr
    return out


def test_report_layout_in_chromium_at_two_widths(tmp_path: Path) -> None:
    pages = _reports(tmp_path)
    drv = _browser()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        for name, page in pages.items():
            for width in WIDTHS:
                drv.set_window_size(width, 1000)
                drv.get(page.as_uri())
                time.sleep(0.3)
                figs = drv.execute_script(GEOMETRY)
                assert len(figs) >= 2, name
                for f in figs:
                    assert not f["problems"], (name, width, f["id"], f["problems"])
                    assert f["legend"] == 1 or f["id"] == "overview", (name, f)  # shown for one trace too
                    assert not any("," in t for t in f["xticks"]), (name, f["id"], f["xticks"])
                    if f["id"] in ("timeline", "overview"):
                        assert re.match(r"time since trace start \((s|ms|µs)\)", f["xtitle"]), f
                errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
                assert not errors, errors
                _full_page(drv, width, ARTIFACTS / f"report-{name}-{width}.png")
        # the detail window of a trace larger than its budget: says what it covers, offers the others
        drv.set_window_size(WIDTHS[0], 1000)
        drv.get(pages["windows"].as_uri())
        options = drv.execute_script("return Array.from(document.querySelectorAll('#window option'))"
                                     ".map(o => o.textContent)")
        assert len(options) >= 2 and options[0].startswith("start of the trace: 0.0")
        assert any(o.startswith("densest stretch") for o in options)
        assert all(re.search(r"of 21\.553 ms \(\d+ events\)$", o) for o in options), options
        first = drv.execute_script("return document.getElementById('timeline').layout.xaxis.title.text")
        assert "detail start of the trace" in first
        x0 = drv.execute_script("return Math.min(...document.getElementById('timeline').data"
                                ".flatMap(t => t.x.filter(v => v !== null)))")
        drv.execute_script("const s = document.getElementById('window'); s.selectedIndex = s.options.length - 1;"
                           "s.dispatchEvent(new Event('change'));")
        time.sleep(0.3)
        after = drv.execute_script("return document.getElementById('timeline').layout.xaxis.title.text")
        x1 = drv.execute_script("return Math.min(...document.getElementById('timeline').data"
                                ".flatMap(t => t.x.filter(v => v !== null)))")
        assert after != first and x1 > x0 and options[-1] in after
        assert drv.execute_script("return document.getElementById('coverage').textContent") == options[-1]
        # #GP is drawn as a subset of the accesses, not as a third bar beside reads and writes
        drv.get(pages["gp"].as_uri())
        msr = drv.execute_script("return document.getElementById('msr0').data.map(t => [t.type, t.name])")
        assert ["scatter", "of which #GP"] in msr and [t for t, n in msr if n == "of which #GP"] == ["scatter"]
        assert all(t == "bar" for t, n in msr if n in ("reads", "writes"))
        assert drv.execute_script("return document.getElementById('msr0').layout.barmode") == "stack"
    finally:
        drv.quit()


def test_report_tables_read_as_text(tmp_path: Path) -> None:
    pages = _reports(tmp_path)
    text = pages["diverge"].read_text()
    body = text.split("</head>", 1)[1].split("<script>var VPMU_VIEWS", 1)[0]
    # the absolute start once; everything else relative
    assert len(re.findall(r"Trace start: <b>0\.000100 s</b>", body)) == 1
    # divergences: a table with the design section linked, times relative, MSRs in hex; JSON only disclosed
    assert "<td>pmu_msr_exit_passthrough</td><td><a href='#design-1.3'>§1.3</a></td>" in body
    assert re.search(r"<td>\d+\.\d{3} ms</td><td>a guest access to a PMU MSR", body)
    assert re.search(r"first example</th>.*msr=0x[0-9a-f]+", body, re.S)
    assert "<section id='design-1.3' class='ref'><h3>§1.3 MSR interception</h3>" in body
    for pre in re.finditer(r"<pre>", body):  # raw JSON only inside a disclosure
        assert body.rfind("<details>", 0, pre.start()) > body.rfind("</details>", 0, pre.start())
    # what-if: units, yes/no, ranges; no Python literals or bare ns integers
    emulated = pages["windows"].read_text().split("<script>var VPMU_VIEWS", 1)[0]
    whatif = emulated.split("<h3>What-if in numbers</h3>", 1)[1].split("<details>", 1)[0]
    assert "<td>applicable</td><td>yes</td>" in whatif and "True" not in whatif and "False" not in whatif
    assert re.search(r"<td>switch cost</td><td>[\d.]+ (ns|µs) \.\. [\d.]+ (ns|µs)</td>", whatif)
    # the trace and host snapshot as tables
    assert "<td>trace start (absolute)</td><td>0.000100 s on the trace clock</td>" in body
    assert "<td>TSC</td><td>2.500000 GHz</td>" in body
    # the mediated model states its PMI vector in hex
    assert "guest PMIs: vector 0xF5" in body
