"""The dashboards with the real programs: TensorBoard's own server reads what the callback logged. (The HTML
report in headless Chromium: tests/test_report_html.py.)"""

from __future__ import annotations

import glob
import io
import json
import os
import re
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
from lightning.pytorch.loggers import TensorBoardLogger
from lit_helpers import TinyClassifier, loaders, probe_ids
from PIL import Image

from lightning_infoflow import EstimatorConfig, InfoFlowCallback, InfoFlowResult
from lightning_infoflow.lightning.sinks import INTERVAL_BOUNDS, MEASURES

LAYERS = ("model.rnns.0", "model.rnns.1")
RUNS = 1 + len(LAYERS)  # the logger's run and one per layer


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory) -> dict[str, Any]:
    """A TensorBoard log dir written by the callback: scalars, custom-scalars layout, heatmaps and curves."""
    root = tmp_path_factory.mktemp("tb")
    torch.manual_seed(0)
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=3, heatmaps=2, max_overhead=None,
                          estimator=EstimatorConfig(steps=3, warm_steps=1, samples=1))
    logger = TensorBoardLogger(str(root), name="tiny")
    trainer = L.Trainer(max_steps=6, logger=logger, callbacks=[cb], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
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


@pytest.mark.integration
def test_tensorboard_server_serves_infoflow_scalars_layout_and_images(tb_run, tmp_path):
    with tensorboard(tb_run["logdir"], str(tmp_path / "tensorboard.log")) as (base, proc):
        measures = {f"infoflow/{m}" for m in MEASURES}
        layer_runs = {layer: f"version_0/infoflow/tb/{layer}" for layer in LAYERS}
        tags = _wait_for(base, lambda: all(measures <= (t := _json(base, "/data/plugin/scalars/tags")).get(r, {}).keys()
                                           for r in layer_runs.values()) and t, proc)
        assert sorted(tags) == sorted(["version_0", *layer_runs.values()])
        run = "version_0"
        results = tb_run["results"]
        steps = [int(r.meta["step"]) for r in results]
        assert steps == [0, 1, 2, 3, 6]

        # scalars: one run per layer (one colour each), one point per analysis, the values of the saved results
        for i, layer in enumerate(LAYERS):
            points = _json(base, "/data/plugin/scalars/scalars", run=layer_runs[layer], tag="infoflow/information")
            assert [p[1] for p in points] == steps
            assert [p[2] for p in points] == pytest.approx([float(r.layer_information[i]) for r in results], rel=1e-5)
            words = _json(base, "/data/plugin/scalars/scalars", run=layer_runs[layer], tag="infoflow/effective_words")
            assert [p[2] for p in words] == pytest.approx([float(r.effective_words[i]) for r in results], rel=1e-5)
        assert "infoflow/analysis_seconds" in tags[run]

        # custom scalars: one multi-line chart per measure whose regex picks the measure's tag in every layer's run
        layout = _json(base, "/data/plugin/custom_scalars/layout")
        assert [c["title"] for c in layout["category"]] == ["infoflow"]
        (category,) = layout["category"]
        charts = {c["title"]: c["multiline"]["tag"] for c in category["chart"] if "multiline" in c}
        (info_chart,) = [v for k, v in charts.items() if k.startswith("information per word")]
        matched = sorted(r for r, run_tags in tags.items() for t in run_tags
                         if any(re.search(rx, t) for rx in info_chart))
        assert matched == sorted(layer_runs.values())
        assert len(charts) == len(MEASURES) - len(INTERVAL_BOUNDS)  # the bounds are drawn in the margin chart
        (margin,) = [c["margin"]["series"] for c in category["chart"] if "margin" in c]
        assert margin == [{"value": "infoflow/information", "lower": "infoflow/information_low",
                           "upper": "infoflow/information_high"}]
        for i, layer in enumerate(LAYERS):  # each layer's run serves the band around its line
            low, high = (_json(base, "/data/plugin/scalars/scalars", run=layer_runs[layer], tag=f"infoflow/{b}")
                         for b in INTERVAL_BOUNDS)
            values = [float(r.layer_information[i]) for r in results]
            assert all(lo[2] <= v <= hi[2] and lo[2] < hi[2] for lo, v, hi in zip(low, values, high))

        # the guidance at the end of training, on the text dashboard of the logger's run
        text_tag = "infoflow/findings/text_summary"  # torch's SummaryWriter.add_text adds the suffix
        assert _json(base, "/data/plugin/text/tags")[run] == [text_tag]
        (entry,) = _json(base, "/data/plugin/text/text", run=run, tag=text_tag)
        assert entry["step"] == steps[-1] and "guidance at step 6" in entry["text"]

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


def _saturated_hues(png: str, box: tuple[int, int, int, int]) -> dict[int, int]:
    """Pixels per hue bucket (30 degrees) among the saturated, not-too-dark pixels inside ``box``."""
    buckets: dict[int, int] = {}
    for h, s, v in Image.open(png).convert("HSV").crop(box).getdata():
        if s > 120 and v > 90:
            buckets[h * 360 // 256 // 30] = buckets.get(h * 360 // 256 // 30, 0) + 1
    return buckets


@pytest.mark.browser
@pytest.mark.integration
def test_custom_scalars_page_draws_layers_in_different_colours(tb_run, tmp_path):
    """TensorBoard's own page in headless Chromium: the infoflow chart has more than one line colour."""
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.fail("the browser tier needs Chromium at /usr/bin/chromium (apt-get install chromium)")
    with tensorboard(tb_run["logdir"], str(tmp_path / "tensorboard.log")) as (base, proc):
        _wait_for(base, lambda: len(_json(base, "/data/plugin/scalars/tags")) >= RUNS, proc)
        png = str(tmp_path / "custom_scalars.png")
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1400,1000",
                        "--virtual-time-budget=20000", f"{base}/#custom_scalars"],
                       check=True, capture_output=True, timeout=120)
    # the plot areas of the first row of charts at this window size: no run selector chips, header or icons
    hues = _saturated_hues(png, box=(440, 150, 1080, 335))
    lines = {hue: n for hue, n in hues.items() if n > 150}  # a drawn line, not a stray pixel
    assert len(lines) >= 2, f"one line colour only on the custom-scalars page: {hues}"
