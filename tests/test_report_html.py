"""The HTML report in a real browser: headless Chromium renders `infoflow report` with every figure decoded;
the page is rendered from its template with autoescaping, so text from a run is never markup."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess

import pytest
import torch
import yaml
from click.testing import CliRunner

from lightning_infoflow import InfoFlowResult
from lightning_infoflow.cli import main

LAYERS = ("model.rnns.0", "model.rnns.1")
STEPS = (0, 1, 2, 3, 6)
HOSTILE = '<script>alert("x")</script>'
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture
def run_dir(tmp_path) -> str:
    """A run as the callback writes it: 2 layers, 4 probe sentences of 8 words, analyses at steps 0-3 and 6;
    one token and one hyperparameter hold markup."""
    log_dir = tmp_path / "tiny" / "version_0"
    results = log_dir / "infoflow" / "results"
    results.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    tokens = [[f"w{b}{t}" for t in range(8)] for b in range(4)]
    tokens[1][2] = HOSTILE
    for k, step in enumerate(STEPS):
        info = (1.0 + k) * torch.rand(len(LAYERS), 4, 8, generator=gen)
        r = InfoFlowResult(list(LAYERS), 10.0 * torch.exp(-info), torch.ones(4, 8, dtype=torch.bool), 10.0, 4,
                           tokens=tokens, meta={"step": step, "name": "infoflow", "run_id": "r"})
        r.save(results / f"step_{step:08d}.pt")
    (log_dir / "hparams.yaml").write_text(yaml.safe_dump({"lr": 0.05, "note": "<b>bold</b>"}))
    return str(log_dir)


def test_report_html_escapes_what_runs_hold(run_dir, tmp_path):
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["report", run_dir, "--out", str(out), "--steps", "last", "--no-progress"])
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    assert HOSTILE not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert page.count("<script") == 0


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        pytest.fail("headless Chromium is needed for this test and was not found: install Debian's package "
                    "with `apt-get install -y chromium` (.ci/run does)")
    return path


CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images), decoded = 0;
  images.forEach(function (img) {
    var ok = img.complete && img.naturalWidth > 0 && img.getBoundingClientRect().width > 0;
    img.setAttribute('data-decoded', ok ? img.naturalWidth + 'x' + img.naturalHeight : 'no');
    if (ok) { decoded += 1; }
  });
  var mark = document.createElement('div');
  mark.id = 'infoflow-check';
  mark.textContent = decoded + '/' + images.length + ' ' + document.body.scrollHeight;
  document.body.appendChild(mark);
});
</script>"""


@pytest.mark.browser
def test_html_report_renders_in_headless_chromium(run_dir, tmp_path):
    chromium = _chromium()
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["report", run_dir, "--out", str(out), "--steps", "first,last",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    n_images = page.count("<img ")
    assert n_images == 3 + 2 * 4  # curves, effective words, profile + 4 sentences at 2 steps
    # a control figure that cannot decode proves the check can fail
    control = '<img id="control" src="data:image/png;base64,iVBORw0KGgoAAAAbroken" alt="control">'
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", control + CHECK_SCRIPT + "</body>"))
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                           "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    mark = re.search(r'<div id="infoflow-check">(\d+)/(\d+) (\d+)</div>', dom)
    assert mark is not None, dom[-2000:]
    decoded, total, height = map(int, mark.groups())
    assert total == n_images + 1 and decoded == n_images
    assert re.search(r'<img id="control"[^>]*data-decoded="no"', dom)
    sizes = re.findall(r'<img src="data:image/png;base64,[^"]*" alt="([^"]*)" data-decoded="(\d+)x(\d+)"', dom)
    assert len(sizes) == n_images and all(int(w) > 200 and int(h) > 100 for _, w, h in sizes)
    assert height > 2000  # the page laid out its tables and figures
    assert "<h2>Findings</h2>" in dom and "<th>effective words</th>" in dom
    assert html.escape("mean information per word of every layer against step (Fig. 9)") in dom
