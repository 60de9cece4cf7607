"""InfoFlowCallback: schedule, logging to every logger, resume, isolation from training, errors."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
import warnings
from typing import Any
from unittest import mock

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lit_helpers import TinyClassifier, loaders, make_data, probe_ids
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lightning_infoflow import AttributesHook, EstimatorConfig, InfoFlowCallback, InfoFlowResult, SaliencyHook
from lightning_infoflow.lightning.schedule import log_spaced_steps
from lightning_infoflow.lightning.sinks import MEASURES
from lightning_infoflow.reporting.runs import load_run

FAST = dict(estimator=EstimatorConfig(steps=4, warm_steps=2, samples=2), max_overhead=None)


def _trainer(tmp_path, callbacks, logger=None, **kw: Any) -> L.Trainer:
    defaults = dict(
        max_steps=12, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        logger=logger if logger is not None else CSVLogger(tmp_path), default_root_dir=tmp_path,
        callbacks=callbacks, num_sanity_val_steps=0,
    )
    defaults.update(kw)
    return L.Trainer(**defaults)


def _analysed_steps(cb: InfoFlowCallback) -> list[int]:
    return list(cb.state.steps)


def test_log_spaced_steps():
    assert log_spaced_steps(1) == []
    assert log_spaced_steps(500) == [1, 2, 5, 10, 20, 50, 100, 200]


def test_schedule_once_per_optimizer_step_with_accumulation(tmp_path):
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=4, **FAST)
    trainer = _trainer(tmp_path, [cb], max_steps=9, accumulate_grad_batches=2)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    # step 0 before training, log-spaced 1 and 2, every 4, and the end (9); each exactly once
    assert _analysed_steps(cb) == [0, 1, 2, 4, 8, 9]


def test_scalars_reach_csv_and_callback_metrics(tmp_path):
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=5, log_spaced=False, **FAST)
    logger = CSVLogger(tmp_path)
    trainer = _trainer(tmp_path, [cb], logger=logger, max_steps=10)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    key = "infoflow/information/model.rnns.1"
    steps = [int(r["step"]) for r in rows if r.get(key)]
    assert steps == [0, 5, 10]
    per_layer = {f"infoflow/{m}/{layer}" for m in MEASURES for layer in ("model.rnns.0", "model.rnns.1")}
    assert per_layer <= set(trainer.callback_metrics)
    assert {"infoflow/information_se/model.rnns.1", "infoflow/noise_se/model.rnns.0", "infoflow/log_sigma/model.rnns.1",
            "infoflow/state_spread/model.rnns.0", "infoflow/information_low/model.rnns.0"} <= per_layer
    # one fixed key set: every analysis's row holds every per-layer key (the CSV header never changes)
    assert all(r[k] != "" for r in rows if r.get(key) for k in per_layer)
    # guidance at the end of training: a logger without a text API gets findings.md beside the results
    with open(os.path.join(logger.log_dir, "infoflow", "findings.md")) as f:
        assert f.read().startswith("### infoflow: guidance at step 10 (3 analyses)")
    assert float(trainer.callback_metrics["infoflow/analysis_seconds"]) > 0
    # the estimate's own quality: steps run (the warm analysis's 2) and no stated error for fixed steps
    assert float(trainer.callback_metrics["infoflow/optimisation_steps"]) == 2
    assert torch.isnan(trainer.callback_metrics["infoflow/estimate_error"])
    pngs = glob.glob(os.path.join(logger.log_dir, "infoflow", "images", "*.png"))
    assert any("heatmap" in p for p in pngs) and any("curves" in p for p in pngs)
    # raw results load without this package's classes
    raw = sorted(glob.glob(os.path.join(logger.log_dir, "infoflow", "results", "*.pt")))
    assert [os.path.basename(p) for p in raw] == ["step_00000000.pt", "step_00000005.pt", "step_00000010.pt"]
    data = torch.load(raw[-1], weights_only=True)
    assert data["meta"]["step"] == 10 and data["layer_names"] == ["model.rnns.0", "model.rnns.1"]
    assert data["sigma"].shape == (2, 4, 8) and len(data["tokens"]) == 4
    assert torch.allclose(InfoFlowResult.load(raw[-1]).layer_information, cb.last_result.layer_information)


def test_tensorboard_scalars_layout_and_images(tmp_path):
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=6, log_spaced=False, heatmaps=2, **FAST)
    logger = TensorBoardLogger(tmp_path)
    trainer = _trainer(tmp_path, [cb], logger=logger, max_steps=6)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    # one run per layer (TensorBoard colours lines by run), one tag per measure in each
    for layer in ("model.rnns.0", "model.rnns.1"):
        run = EventAccumulator(os.path.join(logger.log_dir, "infoflow", "tb", layer), size_guidance={"scalars": 0})
        run.Reload()
        assert set(run.Tags()["scalars"]) == {f"infoflow/{m}" for m in MEASURES}
        assert [e.step for e in run.Scalars("infoflow/information")] == [0, 6]
    last = cb.last_result
    assert [e.value for e in run.Scalars("infoflow/information")][-1] == pytest.approx(float(last.layer_information[1]))
    # the interval's ends bracket the value by 1.645 standard errors (the bootstrap over probe sentences)
    low, high, se = (run.Scalars(f"infoflow/{m}")[-1].value for m in ("information_low", "information_high",
                                                                      "information_se"))
    assert se == pytest.approx(float(last.layer_information_se[1]), rel=1e-5) and se > 0
    assert (high - low) / 2 == pytest.approx(1.6449 * se, rel=1e-3)
    assert run.Scalars("infoflow/noise_se")[-1].value == pytest.approx(float(last.noise_se[1]), rel=1e-5)
    assert run.Scalars("infoflow/log_sigma")[-1].value == pytest.approx(float(last.layer_log_sigma[1]), rel=1e-5)
    assert run.Scalars("infoflow/state_spread")[-1].value == pytest.approx(float(last.state_spread[1]), rel=1e-5)
    assert "infoflow/information/model.rnns.0" not in tags["scalars"]  # not twice
    assert "infoflow/analysis_seconds" in tags["scalars"]
    assert {"infoflow/heatmap/sentence_0", "infoflow/heatmap/sentence_1", "infoflow/curves"} <= set(tags["images"])
    assert "infoflow/heatmap/sentence_2" not in tags["images"]
    # the custom-scalars layout is a tensor summary under its plugin tag: one chart per measure, every layer's run
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0])
    assert [cat.title for cat in layout.category] == ["infoflow"]
    charts = [c for cat in layout.category for c in cat.chart]
    assert any("^infoflow/information$" in c.multiline.tag for c in charts)
    # a margin chart: the information with its interval as the band, tags every layer's run holds
    (margin,) = [c.margin for c in charts if c.HasField("margin")]
    assert [(s.value, s.lower, s.upper) for s in margin.series] == [
        ("infoflow/information", "infoflow/information_low", "infoflow/information_high")]
    # the guidance at the end of training, in the text plugin of the logger's own run, at the last step
    (text,) = acc.Tensors("infoflow/findings/text_summary")
    assert text.step == 6
    markdown = text.tensor_proto.string_val[0].decode()
    assert markdown.startswith("### infoflow: guidance at step 6 (2 analyses)")


def _wandb_records(run_dir: str) -> list[dict[str, Any]]:
    """Records of an offline W&B run, read by W&B's own reader (``wandb leet inspect --json``)."""
    (path,) = glob.glob(os.path.join(run_dir, "*.wandb"))
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", path], capture_output=True,
                          text=True, timeout=120, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _wandb_history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History rows of an offline W&B run."""
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def _wandb_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The run summary: every summary update, in order."""
    summary: dict[str, Any] = {}
    for r in records:
        if r.get("type") == "summary":
            summary.update(r["summary"].get("update", {}))
    return summary


def test_wandb_offline_one_row_per_analysis_and_results_written_once(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")  # installed by the [test] extra
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=6, log_spaced=False, heatmaps=1, **FAST)
    tensorboard = TensorBoardLogger(tmp_path / "tb")
    logger = WandbLogger(save_dir=str(tmp_path / "wb"), offline=True, project="infoflow-test")
    trainer = _trainer(tmp_path, [cb], logger=[tensorboard, logger], max_steps=6, log_every_n_steps=1)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    run_dir = logger.experiment.dir.rsplit(os.sep, 1)[0]
    wandb.finish()
    wandb.teardown()  # flushes the offline run file
    records = _wandb_records(run_dir)
    history = _wandb_history(records)
    rows = [h for h in history if any(k.startswith("infoflow/") for k in h)]
    # one row per analysis, at the analysis's own step metric, scalars and images together
    assert [int(h["infoflow/step"]) for h in rows] == [0, 6]
    assert [int(h["trainer/global_step"]) for h in rows] == [0, 6]
    for row in rows:
        assert "infoflow/information/model.rnns.0" in row and "infoflow/analysis_seconds" in row
        assert "infoflow/heatmap/sentence_0._type" in row and "infoflow/curves._type" in row
    assert rows[-1]["infoflow/information/model.rnns.0"] == pytest.approx(float(cb.last_result.layer_information[0]))
    assert rows[-1]["infoflow/heatmap/sentence_0.caption"] == " ".join(cb.last_result.words(0))
    assert len(history) > len(rows)  # the trainer's own rows are there too, untouched
    assert glob.glob(os.path.join(run_dir, "files", "media", "images", "infoflow", "heatmap", "*.png"))
    # the guidance at the end of training, in the run summary (the run's overview page)
    assert _wandb_summary(records)["infoflow/findings"].startswith("### infoflow: guidance at step 6 (2 analyses)")
    assert "infoflow/information_se/model.rnns.0" in rows[-1] and "infoflow/information_high/model.rnns.1" in rows[-1]
    # results written once, in the first logger's run folder
    results = glob.glob(os.path.join(str(tmp_path), "**", "step_*.pt"), recursive=True)
    assert sorted(os.path.relpath(p, tensorboard.log_dir) for p in results) == [
        os.path.join("infoflow", "results", f"step_{s:08d}.pt") for s in (0, 6)]


def test_mlflow_gets_figures(tmp_path):
    logger = mock.create_autospec(MLFlowLogger, instance=True)
    logger.run_id = "run"
    logger.save_dir = str(tmp_path)
    logger.experiment_id = "0"
    logger.log_dir = None
    from matplotlib.figure import Figure

    from lightning_infoflow.lightning.sinks import Sinks

    fig = Figure()
    fig.subplots().plot([0, 1])
    sinks = Sinks("infoflow")
    sinks.log_scalars(logger, {"infoflow/analysis_seconds": 1.0}, step=3)  # on the training thread
    sinks.log_figures(logger, {"infoflow/analysis_seconds": 1.0}, {"infoflow/curves": (fig, "c")}, step=3,
                      image_dir=str(tmp_path))  # on the worker
    logger.log_metrics.assert_called_once_with({"infoflow/analysis_seconds": 1.0}, step=3)
    logger.experiment.log_figure.assert_called_once_with("run", fig, "infoflow__curves_step00000003.png")
    assert not glob.glob(os.path.join(tmp_path, "*.png"))


def test_writer_registry_takes_a_users_logger(tmp_path):
    from lightning.pytorch.loggers import Logger

    from lightning_infoflow.lightning.sinks import LoggerWriter, register_writer, writer_for

    class MyLogger(CSVLogger):
        pass

    class OtherLogger(Logger):  # no writer registered: the default one, with one warning
        name, version = "other", 0

        def log_metrics(self, metrics, step=None):
            pass

        def log_hyperparams(self, *args, **kwargs):
            pass

    received = []

    class MyWriter(LoggerWriter):
        writes_pngs = False

        def log_figures(self, logger, figures, step, image_dir):
            received.append((sorted(figures), step))

    assert type(writer_for(MyLogger(tmp_path))) is LoggerWriter  # inherits CSVLogger's writer
    register_writer(MyLogger, MyWriter())  # MyLogger exists in this test only
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=100, log_spaced=False, at_end=False, heatmaps=1, **FAST)
    trainer = _trainer(tmp_path, [cb], logger=[MyLogger(tmp_path / "mine"), OtherLogger()], max_steps=1)
    tl, vl = loaders()
    with pytest.warns(UserWarning, match="no writer is registered for OtherLogger"):
        trainer.fit(TinyClassifier(), tl, vl)
    assert received == [(["infoflow/curves", "infoflow/heatmap/sentence_0"], 0)]
    with pytest.raises(ValueError, match="not a Logger class"):
        register_writer(dict, MyWriter())


def _train_weights(tmp_path, callback: bool, **kw: Any) -> dict[str, torch.Tensor]:
    L.seed_everything(7)
    model = TinyClassifier(dropout=0.5)
    cbs = [InfoFlowCallback(probe_ids(), every_n_train_steps=3, **FAST)] if callback else []
    trainer = _trainer(tmp_path, cbs, max_steps=8, val_check_interval=4, **kw)
    tl, vl = loaders()
    trainer.fit(model, tl, vl)
    torch_state = torch.get_rng_state()
    return {**{k: v.clone() for k, v in model.state_dict().items()}, "_rng": torch_state}


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_training_is_bitwise_unchanged(tmp_path, accumulate):
    without = _train_weights(tmp_path / "a", callback=False, accumulate_grad_batches=accumulate)
    with_cb = _train_weights(tmp_path / "b", callback=True, accumulate_grad_batches=accumulate)
    assert without.keys() == with_cb.keys()
    for key in without:
        assert torch.equal(without[key], with_cb[key]), key


def test_modes_and_grads_left_alone(tmp_path):
    seen = {}

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen["modes"] = [m.training for m in pl_module.modules()]
            seen["grads"] = [None if p.grad is None else p.grad.clone() for p in pl_module.parameters()]
            seen["req"] = [p.requires_grad for p in pl_module.parameters()]

    class Check(L.Callback):  # runs after InfoFlowCallback
        def on_train_batch_end(self, trainer, pl_module, *args):
            assert [m.training for m in pl_module.modules()] == seen["modes"]
            assert [p.requires_grad for p in pl_module.parameters()] == seen["req"]
            for g, p in zip(seen["grads"], pl_module.parameters()):
                assert (g is None and p.grad is None) or torch.equal(g, p.grad)
            seen["checked"] = seen.get("checked", 0) + 1

    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=1, log_spaced=False, **FAST)
    trainer = _trainer(tmp_path, [Spy(), cb, Check()], max_steps=3)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    assert seen["checked"] == 3 and _analysed_steps(cb) == [0, 1, 2, 3]


def test_resume_continues_without_gap_or_repeat(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=4, log_spaced=False, at_end=False, **FAST)
    trainer = _trainer(tmp_path, [cb, ckpt], max_steps=8, enable_checkpointing=True)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    assert _analysed_steps(cb) == [0, 4, 8]

    resumed = InfoFlowCallback(probe_ids(), every_n_train_steps=4, log_spaced=False, at_end=False, **FAST)
    ckpt2 = ModelCheckpoint(dirpath=tmp_path / "ckpt2", every_n_train_steps=4)
    trainer2 = _trainer(tmp_path, [resumed, ckpt2], max_steps=12, enable_checkpointing=True)
    trainer2.fit(TinyClassifier(), tl, vl, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))
    assert _analysed_steps(resumed) == [0, 4, 8, 12]  # history restored, step 4 not repeated
    assert resumed.last_result.meta["warm_start"] is True
    state = torch.load(tmp_path / "ckpt" / "epoch=0-step=4.ckpt", weights_only=True)
    assert any(k.startswith("InfoFlowCallback") for k in state["callbacks"])


def test_failure_is_reported_and_training_continues(tmp_path):
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=2, log_spaced=False, **FAST)
    original_estimate = None
    calls = {"n": 0}

    def flaky(batch, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated out of memory")
        return original_estimate(batch, **kw)

    class Patch(L.Callback):
        def on_train_start(self, trainer, pl_module):
            nonlocal original_estimate
            original_estimate = cb._estimator.estimate
            cb._estimator.estimate = flaky

    trainer = _trainer(tmp_path, [Patch(), cb], max_steps=6)
    tl, vl = loaders()
    with pytest.warns(UserWarning, match="analysis at step .* failed .*simulated out of memory.*Training continues"):
        trainer.fit(TinyClassifier(), tl, vl)
    assert cb.failures == 1 and trainer.global_step == 6
    assert _analysed_steps(cb) == [0, 4, 6]


@pytest.mark.parametrize(
    ("kwargs", "trainer_kw", "match"),
    [
        (dict(layers=["model.rnn.0"]), {}, r"Unknown layer module 'model.rnn.0'.*model.rnns.0"),
        (dict(), dict(logger=False), "needs a logger"),
        (dict(probe=torch.full((2, 4), 99)), {}, "model failed on the probe batch"),
        (dict(probe=["a b"], tokenizer=lambda xs: [[] for _ in xs]), {}, "tokenizer returned no token ids"),
        (dict(probe=["a b"]), {}, "no `tokenizer` was given"),
        (dict(module="net"), {}, "no submodule of that name"),
    ],
)
def test_bad_configuration_fails_in_setup(tmp_path, kwargs, trainer_kw, match):
    kwargs = {"probe": probe_ids(), **FAST, **kwargs}
    cb = InfoFlowCallback(**kwargs)
    started = {"n": 0}

    class Count(L.Callback):
        def on_train_batch_start(self, *a):
            started["n"] += 1

    trainer = _trainer(tmp_path, [cb, Count()], **trainer_kw)
    tl, vl = loaders()
    with pytest.raises(ValueError, match=match):
        trainer.fit(TinyClassifier(), tl, vl)
    assert started["n"] == 0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: InfoFlowCallback(probe_ids(), every_n_train_steps=0), r"every_n_train_steps=0.*positive int"),
        (lambda: InfoFlowCallback(probe_ids(), estimator=EstimatorConfig(steps=-1)), r"`steps` must be"),
        (lambda: InfoFlowCallback(probe_ids(), estimator=EstimatorConfig(samples=0)), r"`samples` must be"),
        (lambda: InfoFlowCallback(probe_ids(), estimator=EstimatorConfig(lam=0.0)), r"`lam` must be"),
        (lambda: InfoFlowCallback(probe_ids(), estimator={"steps": 3}), r"estimator=.*EstimatorConfig"),
        (lambda: InfoFlowCallback(probe_ids(), name="info flow/x"), r"name='info flow/x'"),
        (lambda: InfoFlowCallback(probe_ids(), max_length=0), r"max_length"),
        (lambda: InfoFlowCallback(probe_ids(), hooks=[print]), r"hooks.*InfoFlowHook"),
    ],
)
def test_constructor_validates(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_fast_dev_run_warns_and_stays_off(tmp_path):
    cb = InfoFlowCallback(probe_ids(), **FAST)
    trainer = L.Trainer(fast_dev_run=2, callbacks=[cb], enable_progress_bar=False, default_root_dir=tmp_path)
    tl, vl = loaders()
    with pytest.warns(UserWarning, match="off under fast_dev_run"):
        trainer.fit(TinyClassifier(), tl, vl)
    assert _analysed_steps(cb) == []


def test_probe_from_dataset_and_dataloader(tmp_path):
    data = make_data(10, seed=3)
    for probe in (data, DataLoader(data, batch_size=4)):
        cb = InfoFlowCallback(probe, num_sentences=6, every_n_train_steps=100, log_spaced=False, at_end=False, **FAST)
        trainer = _trainer(tmp_path, [cb], max_steps=1)
        tl, vl = loaders()
        trainer.fit(TinyClassifier(), tl, vl)
        assert cb.last_result.sigma.shape == (2, 6, 8)
        assert torch.equal(cb._probe.input_ids, data.tensors[0][:6])


def test_overhead_budget_skips_analyses(tmp_path):
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=2, **{**FAST, "max_overhead": 1e-6})
    trainer = _trainer(tmp_path, [cb], max_steps=6)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    # only the first and the last run: due at 1 (log-spaced), 2, 4 and 6 were skipped; 6 ran as the end one
    assert _analysed_steps(cb) == [0, 6]
    assert cb.skipped == 4
    assert cb.state_dict()["analysis_seconds"] > 0


def test_overhead_budget_is_projected_over_the_whole_run(tmp_path):
    # a generous budget over a long projected run lets the early analyses through and thins nothing
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=4, **{**FAST, "max_overhead": 1e6})
    trainer = _trainer(tmp_path, [cb], max_steps=8)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    assert _analysed_steps(cb) == [0, 1, 2, 4, 8] and cb.skipped == 0


def test_two_instances_have_distinct_state_keys():
    a = InfoFlowCallback(probe_ids(), layers="model.rnns.0", name="lower")
    b = InfoFlowCallback(probe_ids(), layers="model.rnns.1", name="upper")
    assert a.state_key != b.state_key and "lower" in a.state_key and "upper" in b.state_key
    assert InfoFlowCallback(probe_ids(), layers="model.rnns.0").state_key != InfoFlowCallback(probe_ids()).state_key


@pytest.mark.slow
def test_baselines_and_attributes_are_logged_and_saved(tmp_path):
    vocab = [f"w{i}" for i in range(50)]
    concepts = {"low": ["w1", "w2", "w3"], "high": ["w40", "w41", "w42"], "missing": ["w1", "nope"]}
    hooks = [SaliencyHook(methods=["gradient"], max_figures=1),
             AttributesHook([(0, 0)], concepts=concepts, vocab=vocab)]
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=4, log_spaced=False, hooks=hooks, heatmaps=1, **FAST)
    logger = CSVLogger(tmp_path)
    trainer = _trainer(tmp_path, [cb], logger=logger, max_steps=4)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    key = "infoflow/attribute/s0w0/low/model.rnns.1"
    assert key in trainer.callback_metrics and torch.isfinite(trainer.callback_metrics[key])
    data = torch.load(os.path.join(logger.log_dir, "infoflow", "results", "step_00000004.pt"), weights_only=True)
    assert data["baselines"]["gradient"].shape == data["sigma"].shape
    assert data["attributes"][0]["missing"]["missing"] == ["nope"]
    pngs = glob.glob(os.path.join(logger.log_dir, "infoflow", "images", "*.png"))
    assert any("baselines__sentence_0" in p for p in pngs) and any("attributes" in p for p in pngs)
    # `infoflow report` shows the saved baseline maps beside the information heatmaps
    from click.testing import CliRunner

    from lightning_infoflow.cli import main

    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["report", logger.log_dir, "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "beside gradient" in (out / "report.html").read_text()


def test_unknown_baseline_is_rejected():
    with pytest.raises(ValueError, match="unknown baseline method"):
        SaliencyHook(methods=["saliency"])


def test_hook_setup_errors_come_at_setup(tmp_path):
    cb = InfoFlowCallback(probe_ids(), hooks=[AttributesHook([(9, 0)], vocab=[f"w{i}" for i in range(50)])], **FAST)
    trainer = _trainer(tmp_path, [cb])
    tl, vl = loaders()
    with pytest.raises(ValueError, match="sentence 9 is not in the probe of 4"):
        trainer.fit(TinyClassifier(), tl, vl)
    assert trainer.global_step == 0


def test_failing_hook_is_a_warning_and_the_information_is_still_logged(tmp_path):
    from lightning_infoflow import HookOutput, InfoFlowHook

    class Broken(InfoFlowHook):
        def __call__(self, estimator, probe, result):
            raise RuntimeError("hook broke")

    class Norm(InfoFlowHook):
        def __call__(self, estimator, probe, result):
            return HookOutput(scalars={"embedding_norm": float(estimator.embedding_module.weight.norm())},
                              data={"norm_probe_size": len(probe)})

    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=100, log_spaced=False, at_end=False,
                          hooks=[Broken(), Norm()], heatmaps=0, **FAST)
    logger = CSVLogger(tmp_path)
    trainer = _trainer(tmp_path, [cb], logger=logger, max_steps=1)
    tl, vl = loaders()
    with pytest.warns(UserWarning, match="Broken at step 0 failed .*hook broke"):
        trainer.fit(TinyClassifier(), tl, vl)
    assert "infoflow/embedding_norm" in trainer.callback_metrics
    assert "infoflow/information/model.rnns.0" in trainer.callback_metrics
    data = torch.load(os.path.join(logger.log_dir, "infoflow", "results", "step_00000000.pt"), weights_only=True)
    assert data["norm_probe_size"] == 4


def _spread_result(spread: list[float], step: int) -> InfoFlowResult:
    return InfoFlowResult(["a", "b"], torch.ones(2, 1, 3), torch.ones(1, 3, dtype=torch.bool), 10.0, 8,
                          meta={"step": step}, state_spread=torch.tensor(spread))


def test_live_collapse_warning_once_per_layer_per_run():
    cb = InfoFlowCallback(probe_ids(), **FAST)
    state = cb.state
    state.last = _spread_result([0.5, 0.3], 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state.check_collapse()  # no layer collapsed
    state.last = _spread_result([0.5, 0.004], 100)
    with pytest.warns(UserWarning, match=r"at step 100, \[warning\] collapsed_layer: b has collapsed: only 0.4% .*"
                                         r"state spread below 0.01\. Try: .*lower the weight decay") as caught:
        state.check_collapse()
    assert len(caught) == 1
    state.last = _spread_result([0.5, 0.002], 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state.check_collapse()  # b again: said once already
    resumed = InfoFlowCallback(probe_ids(), **FAST).state
    resumed.load_state_dict(state.state_dict())  # a resumed run is the same run
    resumed.last = _spread_result([0.008, 0.002], 300)
    with pytest.warns(UserWarning, match="collapsed_layer: a has collapsed") as caught:
        resumed.check_collapse()
    assert len(caught) == 1 and resumed.collapse_warned == {"a", "b"}


def test_live_collapse_warning_from_the_callback_on_a_collapsed_model(tmp_path):
    """Every word embedded as the same vector: each layer maps every sentence to the same states."""
    module = TinyClassifier(lr=0.0, dropout=0.0)
    with torch.no_grad():
        module.model.emb.weight.copy_(torch.randn(16).expand_as(module.model.emb.weight))
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=100, heatmaps=0, **FAST)
    trainer = _trainer(tmp_path, [cb], max_steps=2, limit_val_batches=0)
    with pytest.warns(UserWarning, match="collapsed_layer") as caught:
        trainer.fit(module, loaders()[0])
    assert cb.state.steps == [0, 1, 2]  # three analyses, one warning per layer, at the first
    said = [str(w.message) for w in caught if "collapsed_layer" in str(w.message)]
    assert len(said) == 2 and all(m.startswith("InfoFlowCallback: at step 0, ") for m in said)
    assert {m.split("collapsed_layer: ")[1].split(" ")[0] for m in said} == {"model.rnns.0", "model.rnns.1"}


def test_the_callback_keeps_the_validation_loss_the_reports_read(tmp_path):
    """After each validation of the fit (not the sanity check, not a later ``validate``), the logged validation
    loss at its step: the same points ``infoflow report`` reads from the logger, for the not_learning rule."""
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=3, log_spaced=False, heatmaps=0, **FAST)
    logger = CSVLogger(tmp_path)
    trainer = _trainer(tmp_path, [cb], logger=logger, max_steps=6, val_check_interval=3, check_val_every_n_epoch=None,
                       num_sanity_val_steps=1)
    module = TinyClassifier()
    trainer.fit(module, *loaders())
    kept = list(cb.state.val_losses)
    assert [s for s, _ in kept] == [2, 5]  # the loggers' step of a validation after optimizer steps 3 and 6
    assert [s for s, _ in kept] == [s for s, _ in load_run(logger.log_dir).val_losses()]
    assert [v for _, v in kept] == pytest.approx([v for _, v in load_run(logger.log_dir).val_losses()])
    trainer.validate(module, loaders()[1], verbose=False)
    assert cb.state.val_losses == kept
    assert cb.state.state_dict()["val_loss_values"] == [v for _, v in kept]


@pytest.mark.parametrize("bar", [True, False])
def test_progress_bar_follows_the_trainers(tmp_path, monkeypatch, bar):
    import tqdm.auto

    bars = []
    real = tqdm.auto.tqdm

    def recording(*args, **kwargs):
        bars.append(kwargs.get("desc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", recording)
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=100, log_spaced=False, heatmaps=0, **FAST)
    trainer = _trainer(tmp_path, [cb], max_steps=2, enable_progress_bar=bar)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    expected = ["infoflow step 0", "infoflow step 2"] if bar else []
    assert [d for d in bars if d and d.startswith("infoflow")] == expected


class _FakeClock:
    """The budget's clock, driven by the test: each training step and each analysis costs what the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Tick(L.Callback):
    def __init__(self, clock: _FakeClock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    def on_train_batch_start(self, *args: Any) -> None:
        self.clock.now += self.seconds


def _budget_run(tmp_path, monkeypatch, analysis_s: float, step_s: float = 1.0, max_steps: int = 60):
    """60 steps of 1 s each (fake clock); every analysis costs ``analysis_s`` (a hook advances the clock)."""
    from lightning_infoflow.lightning import schedule
    from lightning_infoflow.lightning.hooks import HookOutput, InfoFlowHook

    clock = _FakeClock()
    monkeypatch.setattr(schedule, "clock", clock)

    class Cost(InfoFlowHook):
        def __call__(self, estimator, probe, result):
            clock.now += analysis_s
            return HookOutput()

    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=20, heatmaps=0, hooks=[Cost()],
                          **{**FAST, "max_overhead": 0.1})
    trainer = _trainer(tmp_path, [cb, _Tick(clock, step_s)], max_steps=max_steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyClassifier(), loaders()[0])
    messages = [str(w.message) for w in caught if "max_overhead" in str(w.message)]
    return cb, messages


def _overhead(cb: InfoFlowCallback, max_steps: int = 60, step_s: float = 1.0) -> float:
    return cb.state_dict()["analysis_seconds"] / (max_steps * step_s)


def test_budget_that_cannot_hold_says_so_once_with_its_numbers(tmp_path, monkeypatch):
    # one analysis (17 s) already exceeds 10% of 60 s of training: said once, at step 1, then first and last only
    cb, messages = _budget_run(tmp_path, monkeypatch, analysis_s=17.0)
    assert len(messages) == 1
    (message,) = messages
    assert "cannot hold" in message and "60.0 s (60 steps at 1.00 s)" in message and "budget of 6.0 s" in message
    assert "one analysis costs 17.0 s" in message and "only the first analysis and the one at the end" in message
    assert _analysed_steps(cb) == [0, 60] and cb.skipped == 7  # 1, 2, 5, 10, 20, 40 and 60 (run as the end one)


def test_budget_holds_when_it_can(tmp_path, monkeypatch):
    # 1.5 s per analysis, 6 s of budget: some analyses run, the measured overhead stays within 10%, no verdict
    cb, messages = _budget_run(tmp_path, monkeypatch, analysis_s=1.5)
    assert messages == []
    assert _analysed_steps(cb)[0] == 0 and _analysed_steps(cb)[-1] == 60 and 2 < len(_analysed_steps(cb)) < 8
    assert _overhead(cb) <= 0.1 + 1e-9
    # cheap analyses: every scheduled one runs, still within budget
    cheap, messages = _budget_run(tmp_path / "cheap", monkeypatch, analysis_s=0.5)
    assert messages == [] and _analysed_steps(cheap) == [0, 1, 2, 5, 10, 20, 40, 60] and cheap.skipped == 0
    assert _overhead(cheap) <= 0.1


def _capped_run(tmp_path, monkeypatch, per_step_s: float, max_overhead: float = 0.1):
    """60 training steps of 1 s each (fake clock); every optimisation step of an analysis costs ``per_step_s``;
    ``steps="auto"`` with a target no analysis reaches, so only ``max_steps`` (60) or the budget stops one."""
    from lightning_infoflow.core.refine import Refiner
    from lightning_infoflow.lightning import schedule
    from lightning_infoflow.lightning.hooks import HookOutput, InfoFlowHook

    clock = _FakeClock()
    monkeypatch.setattr(schedule, "clock", clock)
    gradient = Refiner.gradient

    def costly(self, log_sigma):
        clock.now += per_step_s
        return gradient(self, log_sigma)

    monkeypatch.setattr(Refiner, "gradient", costly)
    metas: list[dict[str, Any]] = []

    class Record(InfoFlowHook):
        def __call__(self, estimator, probe, result):
            metas.append(dict(result.meta))
            return HookOutput()

    config = EstimatorConfig(steps="auto", target_error=1e-4, max_steps=60, samples=1)
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=20, heatmaps=0, hooks=[Record()], estimator=config,
                          max_overhead=max_overhead)
    trainer = _trainer(tmp_path, [cb, _Tick(clock, 1.0)], max_steps=60)
    trainer.fit(TinyClassifier(), loaders()[0])
    # what the dashboards show of the last estimate's quality
    assert float(trainer.callback_metrics["infoflow/optimisation_steps"]) == metas[-1]["steps_run"]
    assert float(trainer.callback_metrics["infoflow/estimate_error"]) == pytest.approx(max(metas[-1]["error"]))
    return cb, metas


def test_budget_caps_the_steps_of_automatic_analyses(tmp_path, monkeypatch, caplog):
    # step 0 (cold, cost unknown) runs all 60 steps: 6 s, the whole budget of 10% of 60 s. Without a cap
    # the one at the end would cost 6 s more; capped, it gets one check (10 steps, 1 s) and says so
    with caplog.at_level("INFO"):
        cb, metas = _capped_run(tmp_path, monkeypatch, per_step_s=0.1)
    assert _analysed_steps(cb) == [0, 60]
    first, last = metas
    assert first["steps_run"] == 60 and first["stopped"] == "max_steps" and first["max_steps"] == 60
    assert last["steps_run"] == 10 and last["stopped"] == "budget" and last["max_steps"] == 10
    assert cb.capped == 1 and cb.last_result.meta["stopped"] == "budget"
    said = [r.getMessage() for r in caplog.records if "stopped at 10 steps" in r.getMessage()]
    assert len(said) == 1 and "max_overhead=0.1" in said[0] and "target_error=0.0001" in said[0]
    assert cb.state_dict()["analysis_seconds"] == pytest.approx(7.0)


def test_budget_cap_lets_cheap_analyses_run_in_full_and_holds_the_overhead(tmp_path, monkeypatch):
    # 1 ms per step: 60 steps cost 0.06 s, far inside the 6 s budget: nothing is capped or skipped
    cb, metas = _capped_run(tmp_path, monkeypatch, per_step_s=0.001)
    assert [m["steps_run"] for m in metas] == [60] * 8 and cb.capped == 0 and cb.skipped == 0
    # 60 ms per step (3.6 s for 60): the one at the end gets what is left (2.4 s, 40 steps), the overhead holds
    cb, metas = _capped_run(tmp_path / "tight", monkeypatch, per_step_s=0.06)
    assert [m["stopped"] for m in metas] == ["max_steps", "budget"] and 39 <= metas[1]["steps_run"] <= 40
    assert _overhead(cb) <= 0.1 + 1e-9
    # no budget: every analysis runs to max_steps
    free, metas = _capped_run(tmp_path / "free", monkeypatch, per_step_s=0.1, max_overhead=None)
    assert [m["steps_run"] for m in metas] == [60] * 8 and free.capped == 0


def test_budget_keeps_its_seconds_per_step_across_a_resume():
    from lightning_infoflow.lightning.schedule import OverheadBudget

    budget = OverheadBudget(0.1)
    budget.spent(6.0, new_analysis=True, steps_run=60)
    resumed = OverheadBudget(0.1)
    resumed.load_state_dict(budget.state_dict())
    assert resumed.step_seconds == pytest.approx(0.1) and resumed.analysis_seconds == pytest.approx(6.0)
    old = {k: v for k, v in budget.state_dict().items() if k != "step_seconds"}  # a checkpoint from before the cap
    older = OverheadBudget(0.1)
    older.load_state_dict(old)
    assert older.step_seconds == 0.0 and older.step_cap(10, 100.0, at_end=False, floor=10) is None
