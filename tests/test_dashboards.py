"""The dashboards with the real programs: TensorBoard's own server reads what the callback logged, and
headless Chromium renders the HTML report with every figure decoded."""

from __future__ import annotations

import glob
import html
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from click.testing import CliRunner
from lightning.pytorch.loggers import TensorBoardLogger
from lit_helpers import TinyClassifier, loaders, probe_ids
from PIL import Image

from lightning_infoflow import EstimatorConfig, InfoFlowCallback, InfoFlowResult
from lightning_infoflow.cli import main

LAYERS = ("model.rnns.0", "model.rnns.1")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory) -> dict[str, Any]:
    """A TensorBoard log dir written by the callback: scalars, custom-scalars layout, heatmaps and curves."""
    root = tmp_path_factory.mktemp("tb")
    torch.manual_seed(0)
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=3, estimator=EstimatorConfig(steps=3, warm_steps=1, samples=1),
                          heatmaps=2, max_overhead=None)
    logger = TensorBoardLogger(str(root), name="tiny")
    trainer = L.Trainer(max_steps=6, logger=logger, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0)
    train, _ = loaders()
    trainer.fit(TinyClassifier(), train)
    files = sorted(glob.glob(os.path.join(logger.log_dir, "infoflow", "results", "*.pt")))
    return {"logdir": os.path.join(str(root), "tiny"), "log_dir": logger.log_dir,
            "results": [InfoFlowResult.load(p) for p in files]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # a local server
        return response.read()


def _json(base: str, path: str, **query: Any) -> Any:
    return json.loads(_get(f"{base}{path}?{urllib.parse.urlencode(query)}" if query else f"{base}{path}"))


def _wait_for(base: str, ready: Any, proc: subprocess.Popen, seconds: float = 90.0) -> Any:
    """Poll until ``ready()`` returns something truthy (TensorBoard loads event files in the background)."""
    deadline, last_error = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"TensorBoard exited with {proc.returncode}")
        try:
            value = ready()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as err:
            last_error = err
        time.sleep(0.5)
    raise AssertionError(f"TensorBoard at {base} not ready within {seconds:.0f} s (last error: {last_error})")


@contextmanager
def tensorboard(logdir: str, log_path: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """TensorBoard's own server on a free local port; stopped (killed if need be) on exit."""
    port = _free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        try:
            yield f"http://127.0.0.1:{port}", proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_tensorboard_server_serves_infoflow_scalars_layout_and_images(tb_run, tmp_path):
    with tensorboard(tb_run["logdir"], str(tmp_path / "tensorboard.log")) as (base, proc):
        expected_tags = {f"infoflow/{m}/{layer}" for m in ("information", "entropy", "effective_words", "loss")
                         for layer in LAYERS}
        tags = _wait_for(base, lambda: (t := _json(base, "/data/plugin/scalars/tags")).get("version_0", {}).keys()
                         >= expected_tags and t, proc)
        assert list(tags) == ["version_0"]
        run = "version_0"
        results = tb_run["results"]
        steps = [int(r.meta["step"]) for r in results]
        assert steps == [0, 1, 2, 3, 6]

        # scalars: one point per analysis, the values of the saved results
        for i, layer in enumerate(LAYERS):
            points = _json(base, "/data/plugin/scalars/scalars", run=run, tag=f"infoflow/information/{layer}")
            assert [p[1] for p in points] == steps
            assert [p[2] for p in points] == pytest.approx([float(r.layer_information[i]) for r in results], rel=1e-5)
            words = _json(base, "/data/plugin/scalars/scalars", run=run, tag=f"infoflow/effective_words/{layer}")
            assert [p[2] for p in words] == pytest.approx([float(r.effective_words[i]) for r in results], rel=1e-5)
        assert "infoflow/analysis_seconds" in tags[run]

        # custom scalars: one multi-line chart per measure whose regex picks every layer's tag
        layout = _json(base, "/data/plugin/custom_scalars/layout")
        (category,) = [c for c in layout["category"] if c["title"] == "infoflow"]
        charts = {c["title"]: c["multiline"]["tag"] for c in category["chart"]}
        (info_chart,) = [v for k, v in charts.items() if k.startswith("information per word")]
        matched = sorted(t for t in tags[run] if any(re.search(rx, t) for rx in info_chart))
        assert matched == [f"infoflow/information/{layer}" for layer in LAYERS]
        assert len(charts) == 4

        # images: heatmaps of two probe sentences and the curves, at every analysis, each a decodable PNG
        image_tags = _json(base, "/data/plugin/images/tags")[run]
        assert set(image_tags) == {"infoflow/heatmap/sentence_0", "infoflow/heatmap/sentence_1", "infoflow/curves"}
        for tag in image_tags:
            entries = _json(base, "/data/plugin/images/images", run=run, tag=tag, sample=0)
            assert [e["step"] for e in entries] == steps
            png = _get(f"{base}/data/plugin/images/individualImage?{entries[-1]['query']}")
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            image = Image.open(io.BytesIO(png))
            image.load()
            assert image.width > 200 and image.height > 100
            assert len(set(image.convert("L").getdata())) > 10  # a drawn figure, not a blank canvas


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


def test_html_report_renders_in_headless_chromium(tb_run, tmp_path):
    chromium = _chromium()
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["report", tb_run["log_dir"], "--out", str(out), "--steps", "first,last",
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
