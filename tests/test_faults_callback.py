"""InfoFlowCallback under faults and hostile use: unwritable or full disks, interruptions, two callbacks in one
Trainer, a reused callback, a probe too long for the model, and models trained in bf16, fp16 and float64.

Each case ends in one of two ways: a clear error at ``setup`` (before the first training step) naming the
fix, or a warning while training goes on with nothing already written lost, overwritten or left half-written.
"""

from __future__ import annotations

import csv
import errno
import glob
import os
import signal
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lit_helpers import TinyClassifier, fit_tiny, probe_ids, quick_trainer
from matplotlib.figure import Figure

from lightning_infoflow import EstimatorConfig, InfoFlowCallback, InfoFlowEstimator, InfoFlowResult
from lightning_infoflow.testing import TransformerClassifier

FAST: dict[str, Any] = {"estimator": EstimatorConfig(steps=3, warm_steps=1, samples=2), "max_overhead": None}


class _StepCounter(L.Callback):
    """Counts training steps begun: a setup error must come before the first."""

    def __init__(self) -> None:
        self.started = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.started += 1


def _logged_steps(log_dir: str, key: str) -> list[int]:
    with open(os.path.join(log_dir, "metrics.csv")) as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get(key)]


def _disk_full(save_fn: Any, is_full: Any) -> Any:
    """A writer that, while ``is_full()``, writes a few bytes and then fails like a full disk."""

    def write(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_full(obj):
            return save_fn(obj, f, *args, **kwargs)
        if hasattr(f, "write"):
            f.write(b"partial")
        else:
            with open(f, "wb") as handle:
                handle.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def _result_step(obj: Any) -> int | None:
    return obj.get("meta", {}).get("step") if isinstance(obj, dict) else None


# ---------------------------------------------------------------------------------------------------- disks


@pytest.mark.parametrize("where", ["results", "images"])
def test_a_file_where_the_folder_should_be_fails_at_setup(tmp_path, where):
    logger = CSVLogger(tmp_path)
    os.makedirs(os.path.join(logger.log_dir, "infoflow"))
    with open(os.path.join(logger.log_dir, "infoflow", where), "w") as f:
        f.write("not a folder")
    counter = _StepCounter()
    trainer = quick_trainer(tmp_path, [InfoFlowCallback(probe_ids(), **FAST), counter], logger=logger)
    with pytest.raises(ValueError, match=rf"{where} folder .* is a file, not a folder; remove it or choose another"):
        fit_tiny(trainer)
    assert counter.started == 0


def test_read_only_results_folder_fails_at_setup(tmp_path, monkeypatch):
    # Permission bits do not stop root, so the refusal of the file system is simulated where files are made.
    import tempfile

    logger = CSVLogger(tmp_path)
    results = os.path.join(logger.log_dir, "infoflow", "results")
    mkstemp = tempfile.mkstemp

    def read_only(*args: Any, **kwargs: Any) -> Any:
        if os.path.abspath(kwargs.get("dir", "")).startswith(os.path.abspath(results)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), results)
        return mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    counter = _StepCounter()
    trainer = quick_trainer(tmp_path, [InfoFlowCallback(probe_ids(), **FAST), counter], logger=logger)
    with pytest.raises(ValueError, match=r"results folder .* is not writable .*Permission denied.*fix its permissions"):
        fit_tiny(trainer)
    assert counter.started == 0


def test_disk_full_mid_run_is_a_warning_and_leaves_no_partial_file(tmp_path, monkeypatch):
    # The disk is full from the result file of step 5 until that of step 10: the files of one analysis are
    # written in order (the result, then the figures), on the background writer when it is on.
    full = {"on": False}

    def result_of_step_five(obj: Any) -> bool:
        step = _result_step(obj)
        if step is not None:
            full["on"] = step == 5
        return step == 5

    monkeypatch.setattr(torch, "save", _disk_full(torch.save, result_of_step_five))
    monkeypatch.setattr(Figure, "savefig", _disk_full(Figure.savefig, lambda fig: full["on"]))
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=5, log_spaced=False, heatmaps=1, **FAST)
    logger = CSVLogger(tmp_path)
    trainer = quick_trainer(tmp_path, [cb], logger=logger, max_steps=10)
    with pytest.warns(UserWarning, match=r"could not write the result file of the analysis at step 5 .*No space left"):
        fit_tiny(trainer)
    assert trainer.global_step == 10 and cb.state.steps == [0, 5, 10]  # training and later analyses went on
    results = os.path.join(logger.log_dir, "infoflow", "results")
    assert sorted(os.listdir(results)) == ["step_00000000.pt", "step_00000010.pt"]  # nothing partial, no temp file
    assert InfoFlowResult.load(os.path.join(results, "step_00000010.pt")).meta["step"] == 10
    images = sorted(os.listdir(os.path.join(logger.log_dir, "infoflow", "images")))
    assert images and all(name.endswith(("_step00000000.png", "_step00000010.png")) for name in images)
    assert _logged_steps(logger.log_dir, "infoflow/information/model.rnns.0") == [0, 5, 10]


class DiskFullOnRankZero(InfoFlowCallback):
    """On global rank 0 the disk is full while the result of step 3 is written."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.global_rank == 0:  # this process only (ddp_spawn): its torch.save fails for step 3
            torch.save = _disk_full(torch.save, lambda obj: _result_step(obj) == 3)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_ddp_write_failure_on_rank_zero_kills_and_hangs_no_rank(tmp_path):
    cb = DiskFullOnRankZero(probe_ids(), every_n_train_steps=3, log_spaced=False, heatmaps=0, **FAST)
    logger = CSVLogger(tmp_path, name="ddp")
    trainer = quick_trainer(tmp_path, [cb], logger=logger, strategy="ddp_spawn", accelerator="cpu", devices=2)
    fit_tiny(trainer)  # an exception or a hang here would be the bug
    log_dir = os.path.join(tmp_path, "ddp", "version_0")
    assert _logged_steps(log_dir, "infoflow/information/model.rnns.0") == [0, 3, 6]
    assert sorted(os.listdir(os.path.join(log_dir, "infoflow", "results"))) == ["step_00000000.pt", "step_00000006.pt"]


# ---------------------------------------------------------------------------------------------------- interruptions


def test_sigint_during_an_analysis_is_analysed_again_after_resume(tmp_path, monkeypatch):
    estimate = InfoFlowEstimator.estimate
    calls = {"n": 0}

    def interrupted_at_step_six(self: InfoFlowEstimator, batch: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # analyses at 0, 3, then 6: Ctrl+C arrives in the middle of it
            signal.raise_signal(signal.SIGINT)
        return estimate(self, batch, **kw)

    monkeypatch.setattr(InfoFlowEstimator, "estimate", interrupted_at_step_six)
    handler = signal.getsignal(signal.SIGINT)
    kw = {"every_n_train_steps": 3, "log_spaced": False, "at_end": False, **FAST}
    cb = InfoFlowCallback(probe_ids(), **kw)
    trainer = quick_trainer(tmp_path, [cb, OnExceptionCheckpoint(tmp_path / "ckpt")], max_steps=9,
                            enable_checkpointing=True)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown on KeyboardInterrupt
            fit_tiny(trainer)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert trainer.global_step == 6 and cb.state.steps == [0, 3]

    resumed = InfoFlowCallback(probe_ids(), **kw)
    fit_tiny(quick_trainer(tmp_path, [resumed], max_steps=9), ckpt_path=str(tmp_path / "ckpt" / "on_exception.ckpt"))
    assert resumed.state.steps == [0, 3, 6, 9]  # step 6 analysed after all; no gap in the curve
    assert resumed.state.run_id == cb.state.run_id


def test_failed_analysis_is_analysed_again_after_resume(tmp_path, monkeypatch):
    estimate = InfoFlowEstimator.estimate
    calls = {"n": 0}

    def fails_once(self: InfoFlowEstimator, batch: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated out of memory")
        return estimate(self, batch, **kw)

    monkeypatch.setattr(InfoFlowEstimator, "estimate", fails_once)
    kw = {"every_n_train_steps": 4, "log_spaced": False, "at_end": False, **FAST}
    cb = InfoFlowCallback(probe_ids(), **kw)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    with pytest.warns(UserWarning, match="analysis at step 4 failed"):
        fit_tiny(quick_trainer(tmp_path, [cb, ckpt], max_steps=8, enable_checkpointing=True))
    assert cb.state.steps == [0, 8] and cb.failures == 1

    resumed = InfoFlowCallback(probe_ids(), **kw)
    fit_tiny(quick_trainer(tmp_path, [resumed], max_steps=8), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))
    assert resumed.state.steps == [0, 4, 8]


# ---------------------------------------------------------------------------------------------------- namespaces


def test_two_callbacks_in_one_trainer_keep_their_own_namespace(tmp_path):
    lower = InfoFlowCallback(probe_ids(), layers="model.rnns.0", name="lower", every_n_train_steps=3, log_spaced=False,
                             heatmaps=1, **FAST)
    upper = InfoFlowCallback(probe_ids()[:2], layers="model.rnns.1", name="upper", every_n_train_steps=3,
                             log_spaced=False, heatmaps=1, **FAST)
    logger = CSVLogger(tmp_path)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=6)
    fit_tiny(quick_trainer(tmp_path, [lower, upper, ckpt], logger=logger, enable_checkpointing=True))
    for cb, layer, sentences in ((lower, "model.rnns.0", 4), (upper, "model.rnns.1", 2)):
        files = sorted(glob.glob(os.path.join(logger.log_dir, cb.name, "results", "*.pt")))
        assert [os.path.basename(p) for p in files] == ["step_00000000.pt", "step_00000003.pt", "step_00000006.pt"]
        result = InfoFlowResult.load(files[-1])
        assert result.layer_names == [layer] and result.sigma.shape[1] == sentences
        assert result.meta["name"] == cb.name and result.meta["run_id"] == cb.state.run_id
        assert glob.glob(os.path.join(logger.log_dir, cb.name, "images", f"{cb.name}__heatmap__sentence_0_*.png"))
    for key in ("lower/information/model.rnns.0", "upper/information/model.rnns.1"):
        assert _logged_steps(logger.log_dir, key) == [0, 3, 6]  # each value once per step
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        assert not any(key.startswith("infoflow/") for key in next(csv.reader(f)))
    state = torch.load(glob.glob(str(tmp_path / "ckpt" / "*.ckpt"))[0], weights_only=True)["callbacks"]
    keys = [k for k in state if k.startswith("InfoFlowCallback")]
    assert len(keys) == 2 and {state[k]["layer_names"][0] for k in keys} == {"model.rnns.0", "model.rnns.1"}


def test_two_callbacks_with_one_name_fail_at_setup(tmp_path):
    counter = _StepCounter()
    callbacks = [InfoFlowCallback(probe_ids(), layers="model.rnns.0", **FAST),
                 InfoFlowCallback(probe_ids(), layers="model.rnns.1", **FAST), counter]
    with pytest.raises(ValueError, match=r"two InfoFlowCallbacks .* name='infoflow'.*Give each its own `name=`"):
        fit_tiny(quick_trainer(tmp_path, callbacks))
    assert counter.started == 0


# ---------------------------------------------------------------------------------------------------- runs


def test_run_id_in_every_result_and_kept_on_resume(tmp_path):
    kw = {"every_n_train_steps": 2, "log_spaced": False, "at_end": False, "heatmaps": 0, **FAST}
    cb = InfoFlowCallback(probe_ids(), **kw)
    logger = CSVLogger(tmp_path, name="first")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    fit_tiny(quick_trainer(tmp_path, [cb, ckpt], logger=logger, max_steps=4, enable_checkpointing=True))
    run_id = cb.state.run_id
    assert isinstance(run_id, str) and len(run_id) == 32 and int(run_id, 16) >= 0
    metas = [InfoFlowResult.load(p).meta for p in sorted(glob.glob(os.path.join(logger.log_dir, "infoflow", "results",
                                                                                  "*.pt")))]
    assert [(m["name"], m["step"], m["run_id"]) for m in metas] == [("infoflow", s, run_id) for s in (0, 2, 4)]
    assert cb.state_dict()["run_id"] == run_id

    resumed = InfoFlowCallback(probe_ids(), **kw)
    logger2 = CSVLogger(tmp_path, name="resumed")
    fit_tiny(quick_trainer(tmp_path, [resumed], logger=logger2, max_steps=6),
         ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=2.ckpt"))
    assert resumed.state.run_id == run_id and resumed.state.steps == [0, 2, 4, 6]
    assert InfoFlowResult.load(os.path.join(logger2.log_dir, "infoflow", "results", "step_00000006.pt")).meta[
        "run_id"] == run_id


def test_reused_callback_on_another_model_starts_a_new_cold_run(tmp_path, monkeypatch):
    estimate = InfoFlowEstimator.estimate
    inits: list[bool] = []

    def recording(self: InfoFlowEstimator, batch: Any, **kw: Any) -> Any:
        inits.append(kw.get("init") is not None)
        return estimate(self, batch, **kw)

    monkeypatch.setattr(InfoFlowEstimator, "estimate", recording)
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=4, log_spaced=False, heatmaps=0, **FAST)
    fit_tiny(quick_trainer(tmp_path / "a", [cb], max_steps=4))
    first_run = cb.state.run_id
    assert cb.state.steps == [0, 4] and inits == [False, True]

    fit_tiny(quick_trainer(tmp_path / "b", [cb], max_steps=4), model=TinyClassifier(lr=0.1))
    assert cb.state.steps == [0, 4]  # a fresh history, not [0, 4, 0, 4]
    assert inits == [False, True, False, True]  # the new model's first analysis starts cold
    assert cb.state.run_id != first_run and cb.last_result.meta["warm_start"] is True
    (first,) = glob.glob(str(tmp_path / "b" / "**" / "step_00000000.pt"), recursive=True)
    assert InfoFlowResult.load(first).meta["warm_start"] is False


# ---------------------------------------------------------------------------------------------------- models


def _long_probe() -> torch.Tensor:
    return torch.randint(1, 50, (3, 70), generator=torch.Generator().manual_seed(4))  # the model takes 64 positions


def test_probe_longer_than_the_model_fails_at_setup_naming_max_length(tmp_path):
    counter = _StepCounter()
    cb = InfoFlowCallback(_long_probe(), layers="model.encoder.layers.*", **FAST)
    with pytest.raises(ValueError, match=r"fails on the probe's 70 tokens .* runs on its first 35.*max_length="):
        fit_tiny(quick_trainer(tmp_path, [cb, counter]), model=TinyClassifier(model=TransformerClassifier()))
    assert counter.started == 0


def test_max_length_cuts_the_probe_to_the_models_positions(tmp_path):
    cb = InfoFlowCallback(_long_probe(), max_length=64, layers="model.encoder.layers.*", every_n_train_steps=100,
                          log_spaced=False, at_end=False, heatmaps=0, **FAST)
    fit_tiny(quick_trainer(tmp_path, [cb], max_steps=1), model=TinyClassifier(model=TransformerClassifier()))
    assert cb.last_result.sigma.shape == (2, 3, 64) and len(cb.last_result.tokens[0]) == 64
    assert torch.isfinite(cb.last_result.layer_information).all()


def test_max_length_reaches_the_tokenizer(tmp_path):
    seen: list[Any] = []

    class Tokenizer:
        """A Hugging Face-like tokenizer: one id per character."""

        def __call__(self, texts, padding, truncation, max_length, return_tensors):
            seen.append((truncation, max_length))
            ids = torch.tensor([[1 + ord(c) % 40 for c in t[:max_length]] for t in texts])
            return {"input_ids": ids}  # the model takes ids only

        def convert_ids_to_tokens(self, ids):
            return [str(i) for i in ids]

    cb = InfoFlowCallback(["abcdefghijkl", "mnopqrstuvwx"], tokenizer=Tokenizer(), max_length=8,
                          every_n_train_steps=100, log_spaced=False, at_end=False, heatmaps=0, **FAST)
    fit_tiny(quick_trainer(tmp_path, [cb], max_steps=1))
    assert seen == [(True, 8)] and cb.last_result.sigma.shape == (2, 2, 8)


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "64-true"])
def test_models_trained_in_other_precisions_are_measured(tmp_path, precision):
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=2, log_spaced=False, heatmaps=0, **FAST)
    fit_tiny(quick_trainer(tmp_path, [cb], max_steps=4, precision=precision))
    assert cb.failures == 0 and cb.state.steps == [0, 2, 4]
    assert torch.isfinite(cb.last_result.layer_information).all() and cb.last_result.sigma.dtype == torch.float32
