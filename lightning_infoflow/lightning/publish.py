"""Publishing one analysis, on global rank 0: scalars at once, then figures and the result file in the background.

Everything goes under the callback's namespace ``name``: metric keys ``<name>/<measure>/<layer>``,
result files ``<run folder>/<name>/results/step_XXXXXXXX.pt`` (written atomically, once, in the run
folder of the Trainer's first logger: see :func:`~lightning_infoflow.lightning.sinks.logger_dir`) and
PNG figures ``<log_dir>/<name>/images/`` for loggers without an image API.

The training thread does only what must happen on it: ``trainer.callback_metrics`` and each logger's
scalars (in order with Lightning's own logging; see :mod:`~lightning_infoflow.lightning.sinks`). The
result file, the figures and their logging are one job of a :class:`~lightning_infoflow.lightning.worker.
Worker`, run in order on its thread from a copy of everything it needs (``background=False`` runs it
inline). :meth:`Publisher.flush` waits for the pending jobs: the callback calls it before a checkpoint is
saved and when training ends or fails. A failure of one part (a full disk, a logger's error) is a warning
naming the step; the other parts are still published and the next analysis tries again.
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_infoflow.core.files import atomic_write, check_writable
from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.lightning.hooks import HookOutput
from lightning_infoflow.lightning.sinks import MEASURES, Figures, Sinks, logger_dir
from lightning_infoflow.lightning.state import Curves, RunState
from lightning_infoflow.lightning.worker import FIGURES, Worker
from lightning_infoflow.reporting.tables import INTERVAL_LEVEL

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def result_path(folder: str, name: str, step: int) -> str:
    """Where the result of the analysis at ``step`` goes under one logger's run folder."""
    return os.path.join(folder, name, "results", f"step_{step:08d}.pt")


def layer_measures(result: InfoFlowResult) -> dict[str, Tensor]:
    """Each per-layer measure of one result, ``[L]`` by name: the information with its standard errors and
    :data:`~lightning_infoflow.reporting.tables.INTERVAL_LEVEL` interval (over probe sentences and the
    estimator's noise), entropy, effective words, mean log sigma, state spread and the estimator's loss."""
    low, high = result.layer_information_interval(INTERVAL_LEVEL, source="probe")
    nan = torch.full((len(result.layer_names),), float("nan"))
    values = {"information": result.layer_information, "information_se": result.layer_information_se,
              "information_low": low, "information_high": high, "noise_se": result.noise_se,
              "entropy": result.mean_entropy, "effective_words": result.effective_words,
              "log_sigma": result.layer_log_sigma, "state_spread": result.state_spread, "loss": result.loss}
    return {m: nan if v is None else v for m, v in values.items()}


class Publisher:
    """Writes analyses of one callback (namespace ``name``) to a Trainer's loggers and log dirs.

    Args:
        name: the namespace: metric prefix and folder under each logger's run folder.
        heatmaps: layers x words heatmaps per analysis; 0 logs no figures at all.
        background: write the result file and the figures on a background thread (``False``: inline).
    """

    def __init__(self, name: str, heatmaps: int, background: bool = True) -> None:
        self.name = name
        self.heatmaps = heatmaps
        self.sinks = Sinks(name)
        self.worker = Worker(f"infoflow-{name}", self._job_failed, background=background)
        self._run_dirs: list[str] = []

    def prepare(self, trainer: Trainer) -> None:
        """Find each logger's run folder and prove the results (and PNG) folders writable (rank 0).

        Raises:
            ValueError: a folder is a file or not writable (from :func:`check_writable`).
        """
        self._run_dirs = [logger_dir(lg, trainer.default_root_dir) for lg in trainer.loggers]
        check_writable(os.path.join(self.results_dir, self.name, "results"),
                       f"InfoFlowCallback(name={self.name!r}): the results folder")
        for logger, folder in zip(trainer.loggers, self._run_dirs):
            if self.heatmaps and self.sinks.writer(logger).writes_pngs:
                check_writable(os.path.join(folder, self.name, "images"),
                               f"InfoFlowCallback(name={self.name!r}): the images folder")

    @property
    def results_dir(self) -> str:
        """The run folder that holds ``<name>/results``: the first logger's."""
        return self._run_dirs[0]

    def scalars(self, result: InfoFlowResult, seconds: float) -> dict[str, float]:
        """``<name>/<measure>/<layer>`` for every measure of :data:`~lightning_infoflow.lightning.sinks.MEASURES`
        (the same keys at every analysis; NaN where a value is unknown), ``<name>/analysis_seconds``, and the
        estimate's own quality: ``<name>/optimisation_steps`` (steps run) and ``<name>/estimate_error`` (the
        largest layer's stated error of ``log sigma``; NaN for fixed steps)."""
        values = layer_measures(result)
        out = {f"{self.name}/{m}/{layer}": float(values[m][i])
               for m in MEASURES for i, layer in enumerate(result.layer_names)}
        out[f"{self.name}/analysis_seconds"] = seconds
        out[f"{self.name}/optimisation_steps"] = float(result.meta.get("steps_run", float("nan")))
        out[f"{self.name}/estimate_error"] = result.stated_error
        return out

    def publish(self, trainer: Trainer, result: InfoFlowResult, curves: Curves, extra: HookOutput) -> None:
        """``trainer.callback_metrics`` and each logger's scalars now; the result file and the figures as a job
        of the worker (which waits first when it is ``max_pending`` jobs behind)."""
        step = int(result.meta["step"])
        scalars = self.scalars(result, float(result.meta.get("seconds", 0.0)))
        scalars.update({f"{self.name}/{k}": v for k, v in extra.scalars.items()})
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})
        for logger in trainer.loggers:
            self._attempt(f"log to {type(logger).__name__}", step,
                          lambda lg=logger: self.sinks.log_scalars(lg, scalars, step))
        # a copy of all the job reads: later analyses (and the next warm start) must not change it
        snapshot = InfoFlowResult.from_dict(copy.deepcopy(result.to_dict()))
        curves = Curves(list(curves.steps), curves.information.clone(), curves.se.clone())
        extra = HookOutput(dict(extra.scalars), dict(extra.figures), copy.deepcopy(extra.data))
        targets = [(lg, os.path.join(folder, self.name, "images"))
                   for lg, folder in zip(trainer.loggers, self._run_dirs)]
        self.worker.submit(f"the analysis at step {step}",
                           lambda: self._write(step, snapshot, curves, extra, scalars, targets))

    def _write(self, step: int, result: InfoFlowResult, curves: Curves, extra: HookOutput,
               scalars: dict[str, float], targets: list[tuple[Logger, str]]) -> None:
        """The worker's job for one analysis: the result file, then the figures drawn and logged to each logger."""
        self._attempt("write the result file", step, lambda: self.save(result, extra.data))
        figures: dict[str, tuple[Figure, str]] = {}
        with FIGURES:
            if self.heatmaps:
                self._attempt("draw the figures", step, lambda: figures.update(self.figures(result, curves, extra)))
            for logger, image_dir in targets:
                self._attempt(f"log the figures to {type(logger).__name__}", step,
                              lambda lg=logger, d=image_dir: self.sinks.log_figures(lg, scalars, figures, step, d))
            for fig, _ in [*figures.values(), *extra.figures.values()]:
                fig.clear()

    def flush(self) -> None:
        """Wait until the result files and figures of every analysis so far are written and logged."""
        self.worker.flush()

    def close(self) -> None:
        """Wait for the pending jobs, then stop the worker's thread (the next analysis starts it again)."""
        self.worker.close()

    def publish_findings(self, trainer: Trainer, state: RunState) -> None:
        """The guidance rules over the run's history, as Markdown, to every logger (rank 0, end of training).

        The same single-run rules as ``infoflow report`` (:func:`~lightning_infoflow.reporting.findings.
        history_findings`), with the LightningModule's hyperparameters; a failure is a warning.
        """
        if not state.steps:
            return
        step = state.steps[-1]

        def write() -> None:
            from lightning_infoflow.reporting.logs import flatten
            from lightning_infoflow.reporting.markdown import findings_markdown

            module = trainer.lightning_module
            hparams = flatten(dict(module.hparams)) if module is not None else {}
            markdown = findings_markdown(state.findings(hparams),
                                         f"{self.name}: guidance at step {step} ({len(state.steps)} analyses)")
            for logger, folder in zip(trainer.loggers, self._run_dirs):
                here = os.path.join(folder, self.name)
                self._attempt(f"write the findings to {type(logger).__name__}", step,
                              lambda lg=logger, d=here: self.sinks.log_findings(lg, markdown, step, d))

        self._attempt("apply the guidance rules", step, write)

    def finish(self, trainer: Trainer) -> None:
        """Training ended (or failed): wait for the pending jobs, then let each logger's writer close what it
        opened (rank 0)."""
        self.close()
        self._attempt("close the loggers' writers", -1, lambda: self.sinks.finish(trainer.loggers))

    def save(self, result: InfoFlowResult, data: dict[str, Any]) -> None:
        """The result, plus the hooks' data, in the results folder; written atomically."""
        content = {**data, **result.to_dict()}
        path = result_path(self.results_dir, self.name, int(result.meta["step"]))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, lambda f: torch.save(content, f))

    def figures(self, result: InfoFlowResult, curves: Curves, extra: HookOutput) -> Figures:
        """Heatmaps (up to ``heatmaps``), the curves against step (once there are any) and the hooks' figures."""
        from lightning_infoflow.reporting import figures

        out: dict[str, tuple[Figure, str]] = {}
        for b in range(min(self.heatmaps, result.sigma.shape[1])):
            out[f"{self.name}/heatmap/sentence_{b}"] = (figures.information_heatmap(result, b),
                                                        " ".join(result.words(b)))
        if curves.steps:
            out[f"{self.name}/curves"] = (
                figures.information_curves(curves.steps, curves.information, result.layer_names, se=curves.se),
                "information per layer against step; band: 90% interval (+/- 1.645 standard errors over the probe "
                "sentences)")
        out.update({f"{self.name}/{tag}": value for tag, value in extra.figures.items()})
        return out

    def _job_failed(self, label: str, err: Exception) -> None:
        rank_zero_warn(
            f"InfoFlowCallback(name={self.name!r}): could not write {label} ({type(err).__name__}: {err}). "
            "Training continues and the next analysis tries again."
        )

    def _attempt(self, what: str, step: int, action: Any) -> None:
        try:
            action()
        except Exception as err:  # noqa: BLE001 - training must go on; the next analysis tries again
            rank_zero_warn(
                f"InfoFlowCallback(name={self.name!r}): could not {what} of the analysis at step {step} "
                f"({type(err).__name__}: {err}). Training continues and the next analysis tries again; "
                "check the log dir's free space and permissions."
            )
