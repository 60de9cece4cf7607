"""Result files and figures written off the training thread: training waits only for the estimate, a failure there
is a warning, and the end of training, an exception and a checkpoint wait for every pending write."""

from __future__ import annotations

import glob
import os
import pickle
import threading
import time
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lit_helpers import TinyClassifier, fit_tiny, probe_ids, quick_trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_infoflow import EstimatorConfig, InfoFlowCallback, InfoFlowResult
from lightning_infoflow.lightning.worker import Worker
from lightning_infoflow.reporting import figures as figures_module

FAST: dict[str, Any] = {"estimator": EstimatorConfig(steps=3, warm_steps=1, samples=2), "max_overhead": None}
WORKER = "infoflow-infoflow"  # the worker thread's name for the default namespace


def _slow_curves(monkeypatch: pytest.MonkeyPatch, seconds: float, threads: list[str] | None = None) -> None:
    """Each curves figure takes ``seconds`` longer to draw (and records the thread that drew it)."""
    real = figures_module.information_curves

    def slow(*args: Any, **kwargs: Any) -> Any:
        if threads is not None:
            threads.append(threading.current_thread().name)
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(figures_module, "information_curves", slow)


def _result_steps(log_dir: str) -> list[int]:
    paths = glob.glob(os.path.join(log_dir, "infoflow", "results", "*.pt"))
    return sorted(int(os.path.basename(p)[5:13]) for p in paths)


def _png_steps(log_dir: str, tag: str = "infoflow__curves") -> list[int]:
    return sorted(int(os.path.basename(p)[-12:-4]) for p in glob.glob(os.path.join(log_dir, "infoflow", "images",
                                                                                     f"{tag}_step*.png")))


def _tb_image_steps(log_dir: str, tag: str) -> list[int]:
    acc = EventAccumulator(log_dir, size_guidance={"images": 0})
    acc.Reload()
    return sorted(e.step for e in acc.Images(tag))


# ---------------------------------------------------------------------------------------------------- the worker


def test_worker_runs_jobs_in_order_and_a_failure_is_reported_not_raised():
    done: list[int] = []
    errors: list[str] = []
    worker = Worker("test-worker", lambda label, err: errors.append(f"{label}: {err}"))

    def job(i: int) -> None:
        if i == 1:
            raise OSError("disk full")
        done.append(i)

    for i in range(5):
        worker.submit(f"job {i}", lambda i=i: job(i))
    worker.close()
    assert done == [0, 2, 3, 4] and errors == ["job 1: disk full"]
    worker.submit("job 5", lambda: done.append(5))  # a closed worker starts again
    worker.flush()
    assert done[-1] == 5
    worker.close()


def test_worker_that_falls_behind_makes_the_caller_wait():
    release = threading.Event()
    worker = Worker("test-worker", lambda label, err: None, max_pending=2)
    worker.submit("blocked", lambda: release.wait(10))
    worker.submit("queued", lambda: None)
    assert worker.pending == 2
    third = threading.Thread(target=worker.submit, args=("third", lambda: None))
    third.start()
    third.join(0.3)
    assert third.is_alive() and worker.pending == 2  # waits while two are held
    release.set()
    third.join(10)
    assert not third.is_alive()
    worker.close()
    assert worker.pending == 0


def test_worker_error_report_that_raises_reaches_the_caller_and_later_jobs_still_run():
    done: list[str] = []

    def strict(label: str, err: Exception) -> None:  # like warnings turned into errors
        raise RuntimeError(f"{label} failed")

    worker = Worker("test-worker", strict)
    worker.submit("first", lambda: 1 / 0)
    worker.submit("second", lambda: done.append("second"))
    with pytest.raises(RuntimeError, match="first failed"):
        worker.close()
    assert done == ["second"]


def test_idle_worker_pickles_for_ddp_spawn():
    worker = Worker("test-worker", print)
    worker.submit("one", lambda: None)
    worker.flush()
    copy = pickle.loads(pickle.dumps(worker))
    assert copy.pending == 0 and copy.name == "test-worker"
    worker.close()


# ---------------------------------------------------------------------------------------------------- the callback


def test_training_steps_run_while_figures_are_drawn(tmp_path, monkeypatch):
    release, drawing = threading.Event(), threading.Event()
    drawn_on: list[str] = []
    real = figures_module.information_heatmap

    def blocked(*args: Any, **kwargs: Any) -> Any:
        drawn_on.append(threading.current_thread().name)
        drawing.set()
        release.wait(5)  # without the worker this blocks training itself, for 5 s
        drawing.clear()
        return real(*args, **kwargs)

    monkeypatch.setattr(figures_module, "information_heatmap", blocked)
    logger = CSVLogger(tmp_path)
    seen: list[tuple[int, bool, list[int]]] = []  # (step, result file of step 0 written, PNG steps)

    class Watch(L.Callback):  # runs after InfoFlowCallback in each hook
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if drawing.is_set():
                seen.append((trainer.global_step, _result_steps(logger.log_dir) == [0], _png_steps(logger.log_dir)))
            if trainer.global_step == 3:
                release.set()

    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=100, log_spaced=False, heatmaps=1, **FAST)
    fit_tiny(quick_trainer(tmp_path, [cb, Watch()], logger=logger))
    # steps 1-3 trained while the figures of step 0 were being drawn; its result file was already written
    assert seen == [(1, True, []), (2, True, []), (3, True, [])]
    assert drawn_on == [WORKER, WORKER]  # steps 0 and 6
    assert _result_steps(logger.log_dir) == [0, 6] and _png_steps(logger.log_dir) == [0, 6]
    assert _png_steps(logger.log_dir, "infoflow__heatmap__sentence_0") == [0, 6]


def test_failing_figures_and_file_are_warnings_and_the_next_analysis_is_written(tmp_path, monkeypatch):
    failed_on: list[str] = []
    real_heatmap, real_save = figures_module.information_heatmap, torch.save

    def heatmap_fails_at_step_zero(result: InfoFlowResult, *args: Any, **kwargs: Any) -> Any:
        if result.meta["step"] == 0:
            failed_on.append(threading.current_thread().name)
            raise RuntimeError("no figure today")
        return real_heatmap(result, *args, **kwargs)

    def save_fails_at_step_zero(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, dict) and obj.get("meta", {}).get("step") == 0:
            failed_on.append(threading.current_thread().name)
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(figures_module, "information_heatmap", heatmap_fails_at_step_zero)
    monkeypatch.setattr(torch, "save", save_fails_at_step_zero)
    logger = CSVLogger(tmp_path)
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=3, log_spaced=False, heatmaps=1, **FAST)
    trainer = quick_trainer(tmp_path, [cb], logger=logger)
    with pytest.warns(UserWarning) as record:
        fit_tiny(trainer)
    messages = [str(w.message) for w in record]
    assert any(m.startswith("InfoFlowCallback(name='infoflow'): could not write the result file of the analysis at "
                            "step 0 (OSError") and "Training continues" in m for m in messages)
    assert any("could not draw the figures of the analysis at step 0 (RuntimeError: no figure today)" in m
               for m in messages)
    assert failed_on == [WORKER, WORKER]  # both failed on the worker, not in the training step
    assert trainer.global_step == 6 and cb.state.steps == [0, 3, 6]
    assert _result_steps(logger.log_dir) == [3, 6] and _png_steps(logger.log_dir) == [3, 6]


def test_every_scheduled_file_and_image_is_there_when_fit_returns(tmp_path, monkeypatch):
    threads: list[str] = []
    _slow_curves(monkeypatch, 0.5, threads)  # the worker is still busy when training ends
    tensorboard, csv = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=3, log_spaced=False, heatmaps=2, **FAST)
    fit_tiny(quick_trainer(tmp_path, [cb], logger=[tensorboard, csv]))
    assert threads == [WORKER] * 3
    assert cb.state.steps == [0, 3, 6]
    assert _result_steps(tensorboard.log_dir) == [0, 3, 6]  # in the first logger's run folder
    for tag in ("infoflow/curves", "infoflow/heatmap/sentence_0", "infoflow/heatmap/sentence_1"):
        assert _tb_image_steps(tensorboard.log_dir, tag) == [0, 3, 6]
    for tag in ("infoflow__curves", "infoflow__heatmap__sentence_0", "infoflow__heatmap__sentence_1"):
        assert _png_steps(csv.log_dir, tag) == [0, 3, 6]
    result = InfoFlowResult.load(os.path.join(tensorboard.log_dir, "infoflow", "results", "step_00000006.pt"))
    assert torch.equal(result.sigma, cb.last_result.sigma)


class _FailsAtStep(TinyClassifier):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.fail_at = step

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.trainer.global_step == self.fail_at:
            raise RuntimeError("boom in training_step")
        return super().training_step(batch, batch_idx)


def test_an_exception_in_training_still_writes_the_pending_results(tmp_path, monkeypatch):
    _slow_curves(monkeypatch, 0.5)  # the job of step 3 is still running when training fails at step 3
    tensorboard, csv = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=3, log_spaced=False, heatmaps=1, **FAST)
    trainer = quick_trainer(tmp_path, [cb], logger=[tensorboard, csv])
    with pytest.raises(RuntimeError, match="boom in training_step"):
        fit_tiny(trainer, _FailsAtStep(3))
    assert cb.state.steps == [0, 3]
    assert _result_steps(tensorboard.log_dir) == [0, 3]
    assert _png_steps(csv.log_dir) == [0, 3]
    assert _tb_image_steps(tensorboard.log_dir, "infoflow/curves") == [0, 3]


def test_checkpoint_waits_for_pending_files_and_resume_analyses_each_step_once(tmp_path, monkeypatch):
    real_save = torch.save

    def slow_result_files(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, dict) and "meta" in obj and "sigma" in obj:
            time.sleep(0.5)  # a slow disk, for the result files only
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", slow_result_files)
    on_disk_at_checkpoint: list[tuple[list[int], list[int]]] = []
    logger = CSVLogger(tmp_path, name="run")

    class AtCheckpoint(L.Callback):
        def on_save_checkpoint(self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            counted = [int(s) for s in checkpoint["callbacks"][cb.state_key]["history_steps"]]
            on_disk_at_checkpoint.append((counted, _result_steps(logger.log_dir)))

    kw: dict[str, Any] = {"every_n_train_steps": 3, "log_spaced": False, "heatmaps": 1, **FAST}
    cb = InfoFlowCallback(probe_ids(), **kw)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    fit_tiny(quick_trainer(tmp_path, [cb, AtCheckpoint(), ckpt], logger=logger, enable_checkpointing=True))
    # what each checkpoint counts as done is on disk when it is saved
    assert on_disk_at_checkpoint == [([0, 3], [0, 3]), ([0, 3, 6], [0, 3, 6])]

    resumed_logger = CSVLogger(tmp_path, name="run")  # the next version of the same run
    resumed = InfoFlowCallback(probe_ids(), **kw)
    fit_tiny(quick_trainer(tmp_path, [resumed], logger=resumed_logger, max_steps=9),
         ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=3.ckpt"))
    assert resumed.state.steps == [0, 3, 6, 9]  # each step once
    assert resumed.state.run_id == cb.state.run_id
    assert _result_steps(logger.log_dir) == [0, 3, 6] and _result_steps(resumed_logger.log_dir) == [6, 9]
    assert _png_steps(resumed_logger.log_dir) == [6, 9]


def test_synchronous_mode_writes_the_same_files(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"InfoFlowCallback\(background='no'\): `background` must be True or False"):
        InfoFlowCallback(probe_ids(), background="no")  # type: ignore[arg-type]
    runs: dict[bool, tuple[list[str], list[str], InfoFlowResult]] = {}
    threads: list[str] = []
    _slow_curves(monkeypatch, 0.0, threads)  # records where the figures are drawn
    for background in (True, False):
        threads.clear()
        L.seed_everything(3)
        tensorboard = TensorBoardLogger(tmp_path / str(background), name="tb")
        csv = CSVLogger(tmp_path / str(background), name="csv")
        cb = InfoFlowCallback(probe_ids(), every_n_train_steps=3, heatmaps=1, background=background, **FAST)
        fit_tiny(quick_trainer(tmp_path / str(background), [cb], logger=[tensorboard, csv]))
        assert cb.state.steps == [0, 1, 2, 3, 6]
        files = sorted(os.path.relpath(p, tmp_path / str(background)) for p in glob.glob(
            os.path.join(tmp_path, str(background), "*", "version_0", "infoflow", "*", "*.p[tn]*")))
        last = InfoFlowResult.load(os.path.join(tensorboard.log_dir, "infoflow", "results", "step_00000006.pt"))
        runs[background] = (files, list(threads), last)
        assert _tb_image_steps(tensorboard.log_dir, "infoflow/curves") == [0, 1, 2, 3, 6]
    assert runs[True][1] == [WORKER] * 5 and runs[False][1] == ["MainThread"] * 5
    assert runs[True][0] == runs[False][0] and len(runs[True][0]) == 5 * 3  # the result, curves and heatmap PNG
    assert torch.equal(runs[True][2].sigma, runs[False][2].sigma)
