"""InfoFlowCallback: information per layer and per word, estimated on a fixed probe while a model trains."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Literal, Optional, Union

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_infoflow.core.estimator import InfoFlowEstimator
from lightning_infoflow.core.probe import Probe, ProbeLike
from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.lightning import schedule
from lightning_infoflow.lightning.config import EstimatorConfig, check_arguments
from lightning_infoflow.lightning.distributed import agree, estimate_split, refuse_sharded
from lightning_infoflow.lightning.hooks import HookOutput, InfoFlowHook
from lightning_infoflow.lightning.probing import build_checked_probe
from lightning_infoflow.lightning.progress import Progress
from lightning_infoflow.lightning.publish import Publisher
from lightning_infoflow.lightning.schedule import OverheadBudget, Schedule
from lightning_infoflow.lightning.state import RunState
from lightning_infoflow.lightning.target import find_target
from lightning_infoflow.lightning.worker import FIGURES

_DEFAULT_ESTIMATOR = EstimatorConfig()


class InfoFlowCallback(Callback):
    r"""Estimate, during training, how much information of each probe word every layer keeps.

    At step 0, at log-spaced early steps (1, 2, 5, 10, ...), every ``every_n_train_steps`` optimizer
    steps and once when training ends, the callback runs :class:`~lightning_infoflow.InfoFlowEstimator`
    on a fixed probe with the weights of that step (warm-started from the previous analysis) and logs,
    under its namespace ``name`` (default ``infoflow``), at ``step = trainer.global_step``:

    - scalars per layer, ``<name>/<measure>/<layer>``: ``information`` (mean information per word, nats),
      its standard error ``information_se`` (bootstrap over probe sentences, estimator noise included), its
      90% interval ``information_low``/``information_high``, ``noise_se`` (the estimator's noise alone),
      ``entropy``, ``effective_words`` (exp entropy of the words' shares of the precision 1/sigma^2),
      ``log_sigma`` (free of sigma_max), ``state_spread`` (near 0: collapsed) and ``loss``; and
      ``<name>/analysis_seconds``; to every logger and ``trainer.callback_metrics``;
    - figures: a layers x words heatmap per probe sentence (up to ``heatmaps``) and the information of
      every layer against step with its 90% band (see :mod:`lightning_infoflow.lightning.sinks`);
    - at the end of training, the guidance rules' findings (TensorBoard text, W&B run summary, else
      ``<log_dir>/<name>/findings.md``; ``not_learning`` reads the validation loss the run logged, else the
      training loss); after each analysis, a warning per collapsed layer (once per layer);
    - each result, ``<log_dir>/<name>/results/step_XXXXXXXX.pt`` (written atomically), a plain dict that
      ``torch.load(path, weights_only=True)`` reads; its ``meta`` holds ``name``, ``step`` and ``run_id``.

    The training step waits for the estimate, ``trainer.callback_metrics`` and the scalars only: the result
    file, the figures and their images are written by a background thread, in order (see
    :mod:`~lightning_infoflow.lightning.worker`). When it is two analyses behind, the next analysis waits
    for it; a checkpoint, the end of training and an exception in training wait for every pending write,
    so the files on disk always hold every analysis that a checkpoint or the end of ``fit`` counts as done.

    The analysis never changes the training (modes, RNG, parameters and gradients are restored) and never
    ends it: a failure of ours is a warning and the next analysis tries again. Under DDP the probe is
    split across the ranks and gathered (``distributed="split"``), or analysed on rank 0 alone
    (``"rank_zero"``); sharded strategies are refused at setup. A progress bar shows when the Trainer has one.

    Args:
        probe: token ids ``[B, T]``, a dict batch with ``input_ids``, a list of strings (with ``tokenizer``),
            a text file's path or a Dataset/DataLoader (its first ``num_sentences`` examples).
        tokenizer: a Hugging Face tokenizer, a callable ``list[str] -> ids``, or a local Hugging Face tokenizer
            folder (for YAML); also labels the words.
        max_length: cut every probe sentence to this many tokens (for models with fewer positions).
        num_sentences: probe size when the probe is a dataset, and a cap otherwise.
        layers: module names, glob patterns or ``"auto"`` (see :class:`~lightning_infoflow.InfoFlowEstimator`).
        embedding: the word-embedding module name or ``"auto"``.
        module: attribute of the LightningModule holding the network (e.g. ``"model"``). ``None``: the
            LightningModule itself when its ``forward`` takes ``input_ids`` (or ``**kwargs``), else its one
            Hugging Face submodule (see :mod:`lightning_infoflow.lightning.target`). Layer names are
            relative to the analysed network (names relative to the LightningModule are cut to it).
        every_n_train_steps: analyse every N optimizer steps.
        log_spaced: also analyse at steps 1, 2, 5, 10, 20, 50, ... below ``every_n_train_steps``.
        at_end: analyse once more when training ends.
        max_overhead: keep the analyses' wall time under this fraction of the run's projected training time
            by skipping scheduled analyses (counted in ``skipped``). The first (step 0) and the last always
            run; when those two alone exceed the budget, a warning after the first training step says so
            once, with the projected training time and the cost of one analysis, and only those two run.
            An automatic analysis (``steps="auto"``) is also capped at the steps its share of the budget left
            pays for (at least one check); one that stops there short of ``target_error`` says
            ``meta["stopped"] == "budget"`` (counted in ``capped``, said once). ``None`` runs every
            scheduled analysis to its target.
        name: the namespace of metric keys, folders and checkpoint state; two callbacks in one Trainer
            need two names.
        estimator: the estimator's settings (:class:`~lightning_infoflow.lightning.config.EstimatorConfig`).
        heatmaps: heatmap figures per analysis (with the curves figure); 0 logs no figures at all.
        hooks: extra analyses published with each analysis, e.g. ``SaliencyHook``, ``AttributesHook``
            (see :mod:`lightning_infoflow.lightning.hooks`).
        distributed: ``"split"`` or ``"rank_zero"`` with several processes (see above).
        background: write result files and figures on a background thread (above); ``False`` writes them
            on the training thread before the training step goes on.

    Raises:
        ValueError: invalid arguments here; at ``setup``: no logger, unknown layers, a probe the model
            cannot take (too long: names ``max_length``), a log dir that is not writable, or another
            callback with the same ``name`` (each with the fix in the message).

    Example::

        >>> import lightning.pytorch as L
        >>> import torch
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> cb = InfoFlowCallback(probe=torch.randint(0, 100, (4, 12)), every_n_train_steps=200,
        ...                       estimator=EstimatorConfig(steps=10))
        >>> trainer = L.Trainer(callbacks=[cb], logger=CSVLogger("runs"), max_steps=1000)  # doctest: +SKIP
    """

    def __init__(
        self,
        probe: ProbeLike,
        tokenizer: Optional[Union[str, Callable[..., Any]]] = None,
        max_length: Optional[int] = None,
        num_sentences: Optional[int] = 16,
        layers: Union[str, Sequence[str]] = "auto",
        embedding: str = "auto",
        module: Optional[str] = None,
        every_n_train_steps: int = 500,
        log_spaced: bool = True,
        at_end: bool = True,
        max_overhead: Optional[float] = 0.1,
        name: str = "infoflow",
        estimator: EstimatorConfig = _DEFAULT_ESTIMATOR,
        heatmaps: int = 4,
        hooks: Sequence[InfoFlowHook] = (),
        distributed: Literal["split", "rank_zero"] = "split",
        background: bool = True,
    ) -> None:
        check_arguments(every_n_train_steps, max_length, num_sentences, max_overhead, name, estimator, heatmaps,
                        hooks, distributed, background)
        self.probe = probe
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_sentences = num_sentences
        self.layers = layers
        self.embedding = embedding
        self.module = module
        self.every_n_train_steps = every_n_train_steps
        self.log_spaced = log_spaced
        self.at_end = at_end
        self.max_overhead = max_overhead
        self.name = name
        self.estimator = estimator
        self.heatmaps = heatmaps
        self.hooks = list(hooks)
        self.distributed = distributed
        self.background = background

        self._schedule = Schedule(every_n_train_steps, log_spaced)
        self._budget = OverheadBudget(max_overhead)
        self._publisher = Publisher(name, heatmaps, background)
        self._probe: Optional[Probe] = None
        self._estimator: Optional[InfoFlowEstimator] = None
        self._enabled = True
        self._progress = False
        self._attempted_step = -1  # a failed analysis is not retried at the same step in this process
        self.state = RunState()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, layers=str(self.layers), embedding=self.embedding,
                                        module=self.module, position=str(self.estimator.position))

    @property
    def last_result(self) -> Optional[InfoFlowResult]:
        """The most recent analysis (``None`` before the first)."""
        return self.state.previous

    @property
    def failures(self) -> int:
        """Analyses that failed (each reported as a warning)."""
        return self.state.failures

    @property
    def skipped(self) -> int:
        """Scheduled analyses skipped to stay under ``max_overhead``."""
        return self.state.skipped

    @property
    def capped(self) -> int:
        """Analyses that ``max_overhead`` stopped short of the target error (``meta["stopped"] == "budget"``)."""
        return self.state.capped

    # ------------------------------------------------------------------ setup

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        self.state = RunState()  # a new fit starts a new run; fit(ckpt_path=...) restores the old one after this
        self._budget.reset()
        self._attempted_step = -1
        if trainer.fast_dev_run:  # type: ignore[attr-defined]  # set by Lightning's debugging connector
            self._enabled = False
            rank_zero_warn(
                "InfoFlowCallback is off under fast_dev_run: Lightning replaces every logger with a DummyLogger "
                "there, so nothing could be logged. Run without fast_dev_run (e.g. max_steps=...) to see it."
            )
            return
        self._enabled = True
        self._check_trainer(trainer)
        target = find_target(pl_module, self.module)
        if target.found:
            rank_zero_info(
                f"InfoFlowCallback(name={self.name!r}): {type(pl_module).__name__}.forward does not take input_ids; "
                f"analysing its Hugging Face submodule {target.attribute!r} ({type(target.module).__name__}), "
                "layer names relative to it (pass module=... to choose another)"
            )
        self._estimator = InfoFlowEstimator(target.module, target.relative_layers(self.layers),
                                            target.relative(self.embedding), **self.estimator.estimator_kwargs())
        try:
            self._probe, self.state.layer_names = build_checked_probe(
                self.probe, self.tokenizer, self._estimator, num_sentences=self.num_sentences,
                max_length=self.max_length
            )
        except ValueError as err:
            if target.note:
                raise ValueError(f"{err}\n{target.note}") from err
            raise
        for hook in self.hooks:
            hook.setup(self._estimator, self._probe, self.tokenizer if callable(self.tokenizer) else None)
        problem = ""
        if trainer.is_global_zero:
            try:
                self._publisher.prepare(trainer)
            except ValueError as err:
                problem = str(err)
        problem = agree(trainer, problem)  # every rank stops, or none
        if problem:
            raise ValueError(problem)
        self._progress = trainer.progress_bar_callback is not None
        rank_zero_info(
            f"InfoFlowCallback(name={self.name!r}): {len(self._probe)} probe sentences, layers "
            f"{self.state.layer_names}, embedding {self._estimator.embedding_name!r}; analyses at "
            f"{self._schedule.describe()}{' and at the end' if self.at_end else ''}"
        )

    def _check_trainer(self, trainer: Trainer) -> None:
        if not trainer.loggers or all(isinstance(lg, DummyLogger) for lg in trainer.loggers):
            raise ValueError(
                "InfoFlowCallback needs a logger to write to; pass e.g. Trainer(logger=TensorBoardLogger('runs'))"
            )
        same = [cb for cb in trainer.callbacks  # type: ignore[attr-defined]  # set by the callback connector
                if isinstance(cb, InfoFlowCallback) and cb is not self and cb.name == self.name]
        if same:
            raise ValueError(
                f"two InfoFlowCallbacks in this Trainer have name={self.name!r}: their metrics and result files "
                "would overwrite each other. Give each its own `name=` (e.g. name='infoflow_encoder')."
            )
        refuse_sharded(trainer)

    # ------------------------------------------------------------------ schedule

    def _due(self, step: int) -> bool:
        done = step in (self.state.last_step, self._attempted_step)
        return self._enabled and not done and self._schedule.due(step)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._budget.start()
        # step 0, or the step a resumed run was interrupted at before its analysis finished
        if self._due(trainer.global_step):
            self._analyse(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # global_step counts optimizer steps: with gradient accumulation it stays put on the batches that
        # only accumulate, and the last step handled stops a second analysis of the same step.
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor) and loss.numel() == 1:
            self.state.add_loss(loss)
        if not self._budget.judged:  # once, after the first analysis and training step
            verdict = self._budget.verdict(trainer.global_step, float(trainer.estimated_stepping_batches))
            if verdict:
                rank_zero_warn(f"InfoFlowCallback(name={self.name!r}): {verdict}")
        if not self._due(trainer.global_step):
            return
        skip = self._budget.over(trainer.global_step, float(trainer.estimated_stepping_batches))
        if self._split(trainer):
            skip = agree(trainer, skip)  # every rank must take the same decision
        if skip:
            self.state.last_step = trainer.global_step
            self.state.skipped += 1
            if self.state.skipped == 1 and not self._budget.cannot_hold:  # else said by the verdict
                rank_zero_info(
                    f"InfoFlowCallback: skipping the analysis at step {trainer.global_step} (and later ones while "
                    f"needed) to keep the analyses under max_overhead={self.max_overhead} of the training time; "
                    "raise max_overhead, or set it to None, to run every scheduled analysis."
                )
            return
        self._analyse(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the validation loss, for the not_learning rule of the findings at the end of training
        if self._enabled and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            own = tuple(f"{cb.name}/" for cb in trainer.callbacks  # type: ignore[attr-defined]
                        if isinstance(cb, InfoFlowCallback))
            self.state.add_val_loss(trainer, own)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_end and self._enabled and trainer.global_step not in self.state.steps:
            self._analyse(trainer, pl_module, at_end=True)
        self._budget.stop()
        if self._enabled and trainer.is_global_zero:
            self._publisher.close()  # every pending result file and figure first
            self._publisher.publish_findings(trainer, self.state)
            self._publisher.finish(trainer)
        if self._enabled and trainer.world_size > 1:
            # every rank waits for rank 0's last analysis and logging before the process group goes away
            trainer.strategy.barrier("infoflow_end")

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # before Lightning finalizes the loggers: the analyses done so far keep their files and figures
        if self._enabled and trainer.is_global_zero:
            self._publisher.finish(trainer)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._publisher.close()

    # ------------------------------------------------------------------ one analysis

    def _split(self, trainer: Trainer) -> bool:
        return self.distributed == "split" and trainer.world_size > 1

    def _analyse(self, trainer: Trainer, pl_module: LightningModule, at_end: bool = False) -> None:
        """Estimate at this step and publish it; the step counts as done only once this returns."""
        step = trainer.global_step
        if not self._split(trainer) and not trainer.is_global_zero:
            self.state.last_step = step
            return
        if self.state.run_id is None:
            self.state.run_id = uuid.uuid4().hex
        started = schedule.clock()
        warm = self.state.previous is not None
        steps = self.estimator.warm if warm else self.estimator.steps
        cap = self._step_cap(trainer, at_end) if steps == "auto" else None
        try:
            result = self._estimate(trainer, steps, step, cap)
        except Exception as err:  # noqa: BLE001 - training must go on
            self.state.failures += 1
            self.state.previous = None  # the next analysis starts cold
            self._attempted_step = step
            rank_zero_warn(
                f"InfoFlowCallback: the analysis at step {step} failed and was skipped ({type(err).__name__}: {err}). "
                "Training continues; the next analysis will try again."
            )
            return
        seconds = schedule.clock() - started
        self._budget.spent(seconds, new_analysis=True, steps_run=int(result.meta.get("steps_run") or 0))
        if cap is not None and result.meta.get("stopped") == "max_steps" and cap < self.estimator.max_steps:
            result.meta["stopped"] = "budget"
            self._said_budget_cap(step, cap, result)
        result.meta.update(name=self.name, step=step, run_id=self.state.run_id, epoch=trainer.current_epoch,
                           seconds=seconds, warm_start=warm,
                           world_size=trainer.world_size if self._split(trainer) else 1)
        self.state.record(result, step, trainer)
        if trainer.is_global_zero:
            started = schedule.clock()
            self._publisher.publish(trainer, result, self.state.curves(), self._run_hooks(result, step))
            self.state.check_collapse()
            self._budget.spent(schedule.clock() - started, new_analysis=False)  # logging counts too
        self.state.last_step = step

    def _step_cap(self, trainer: Trainer, at_end: bool) -> Optional[int]:
        """The budget's cap on the optimisation steps of an automatic analysis (at least one check)."""
        assert self._estimator is not None
        cap = self._budget.step_cap(trainer.global_step, float(trainer.estimated_stepping_batches), at_end,
                                    floor=self._estimator.check_every)
        return None if cap is None else min(cap, self.estimator.max_steps)

    def _said_budget_cap(self, step: int, cap: int, result: InfoFlowResult) -> None:
        """Once per run: an analysis stopped at the budget's cap, short of the target error."""
        self.state.capped += 1
        if self.state.capped == 1:
            rank_zero_info(
                f"InfoFlowCallback: the analysis at step {step} stopped at {cap} steps to keep the analyses under "
                f"max_overhead={self.max_overhead}, at an estimated error of {result.stated_error:.3f} (target_error="
                f"{self.estimator.target_error}); its result says so (meta['stopped'] == 'budget'). Raise "
                "max_overhead, or set it to None, for analyses that reach the target."
            )

    def _estimate(self, trainer: Trainer, steps: Union[int, Literal["auto"]], step: int,
                  cap: Optional[int]) -> InfoFlowResult:
        assert self._estimator is not None and self._probe is not None
        context: AbstractContextManager[Any] = (
            trainer.precision_plugin.forward_context() if self.estimator.precision == "training" else nullcontext()
        )
        total = (cap or self.estimator.max_steps) if steps == "auto" else int(steps)
        with context, Progress(self._progress and trainer.is_global_zero, f"{self.name} step {step}", total) as bar:
            if self._split(trainer):
                return estimate_split(trainer, self._estimator, self._probe, self.state.layer_names,
                                      steps=steps, init=self.state.previous, on_step=bar.update, max_steps=cap)
            return self._estimator.estimate(self._probe.batch, steps=steps, init=self.state.previous,
                                            tokens=self._probe.tokens, on_step=bar.update, max_steps=cap)

    def _run_hooks(self, result: InfoFlowResult, step: int) -> HookOutput:
        out = HookOutput()
        for hook in self.hooks:
            with FIGURES:  # a hook may build figures while the worker draws others
                out.update(self._run_hook(hook, result, step))
        return out

    def _run_hook(self, hook: InfoFlowHook, result: InfoFlowResult, step: int) -> HookOutput:
        assert self._estimator is not None and self._probe is not None
        try:
            return hook(self._estimator, self._probe, result)
        except Exception as err:  # noqa: BLE001 - the information itself is still logged
            rank_zero_warn(f"InfoFlowCallback: {type(hook).__name__} at step {step} failed "
                           f"({type(err).__name__}: {err}); the information is logged without it")
            return HookOutput()

    # ------------------------------------------------------------------ checkpointing

    @override
    def state_dict(self) -> dict[str, Any]:
        # a checkpoint counts an analysis as done only once its result file and figures are written
        self._publisher.flush()
        return {**self.state.state_dict(), **self._budget.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state.load_state_dict(state_dict)
        self._budget.load_state_dict(state_dict)
