"""InfoFlowCallback: information per layer and per word, estimated on a fixed probe while a model trains."""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from collections.abc import Sequence
from typing import Any, Callable, Literal, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_infoflow.reporting import figures
from lightning_infoflow.core.estimator import InfoFlowEstimator
from lightning_infoflow.core.probe import Probe, ProbeLike, build_probe
from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.lightning.sinks import Sinks, logger_dir

_MEASURES = ("information", "entropy", "effective_words", "loss")


def log_spaced_steps(limit: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... below ``limit``: the early steps the regular schedule would miss.

    >>> log_spaced_steps(150)
    [1, 2, 5, 10, 20, 50, 100]
    """
    out, decade = [], 1
    while decade < limit:
        out += [s for s in (decade, 2 * decade, 5 * decade) if s < limit]
        decade *= 10
    return out


class InfoFlowCallback(Callback):
    r"""Estimate, during training, how much information of each probe word every layer keeps.

    At step 0 (before the first optimizer step), at log-spaced early steps (1, 2, 5, 10, ...), every
    ``every_n_train_steps`` optimizer steps and once at the end of training, the callback runs
    :class:`~lightning_infoflow.InfoFlowEstimator` on a fixed probe with the weights of that step
    (warm-started from the previous analysis) and logs, under ``infoflow/``:

    - scalars per layer (the x-axis is ``trainer.global_step``, the optimizer step):
      ``infoflow/information/<layer>`` (mean information per word, nats), ``infoflow/entropy/<layer>``
      (mean word entropy), ``infoflow/effective_words/<layer>``, ``infoflow/loss/<layer>`` (the
      estimator's final loss) and ``infoflow/analysis_seconds``; they also go into
      ``trainer.callback_metrics`` for EarlyStopping / ModelCheckpoint;
    - figures: a layers x words heatmap per probe sentence (up to ``max_heatmaps``) and the information
      of every layer against step; TensorBoard gets a custom-scalars chart with all layers on one plot;
    - the raw result of every analysis, ``<log_dir>/infoflow/results/step_XXXXXXXX.pt``, a plain dict
      of tensors and strings that ``torch.load(path, weights_only=True)`` reads without this package.

    The analysis never changes the training: the model runs in eval mode and every submodule's mode is
    restored, the noise comes from a private generator and the global RNG state is restored, and the
    gradient reaches only the noise scales (parameters' ``.grad`` are untouched).

    Under DDP the probe sentences are split across the ranks, each rank estimates its share on its own
    device (normalised by the hidden states of the whole probe, so the numbers match one process), and
    the shares are gathered; rank 0 logs. A failure on any rank is known to every rank and training goes
    on. ``distributed="rank_zero"`` instead analyses on rank 0 alone (the other ranks go on; all meet at
    one barrier when training ends).

    Args:
        probe: the fixed probe: token ids ``[B, T]``, a dict batch with ``input_ids``, a list of strings
            (with ``tokenizer``) or a Dataset/DataLoader (the first ``num_sentences`` examples).
        tokenizer: a Hugging Face tokenizer or a callable ``list[str] -> ids``; also labels the words.
        layers: module names, glob patterns or ``"auto"`` (see :class:`InfoFlowEstimator`).
        embedding: the word-embedding module name or ``"auto"``.
        module: attribute of the LightningModule to analyse (e.g. ``"model"``); ``None`` calls the
            LightningModule itself. Layer names are relative to it.
        every_n_train_steps: analyse every N optimizer steps.
        log_spaced: also analyse at steps 1, 2, 5, 10, 20, 50, ... below ``every_n_train_steps``.
        at_end: analyse once more when training ends.
        num_sentences: probe size when the probe is a dataset (and a cap otherwise).
        lam, samples, position, sigma_max: estimator settings (see :class:`InfoFlowEstimator`).
        steps: optimisation steps of a cold analysis (the first one).
        warm_steps: optimisation steps of a warm-started analysis.
        max_heatmaps: heatmap figures logged per analysis (0 disables them).
        log_figures: log figures at all.
        save_results: write each analysis's raw result under the log dir.
        progress: show a progress bar during an analysis (rank 0).
        max_overhead: keep the analyses' wall time under this fraction of the whole run's training time
            (projected from the time per step and ``trainer.estimated_stepping_batches``): a scheduled
            analysis is skipped (and counted in ``skipped``) when it and the one reserved for the end would
            exceed it. Early analyses come first, so a long run keeps its log-spaced early points (Fig. 9)
            and thins the later ones. The first and the last analysis always run. ``None`` runs every
            scheduled analysis.
        distributed: with several processes, ``"split"`` (default) gives each rank a share of the probe
            sentences and gathers the results (an analysis takes about 1/world_size of the time; every rank
            joins one ``all_gather`` per analysis and one ``broadcast`` per scheduled step), ``"rank_zero"``
            analyses the whole probe on global rank 0 while the other ranks go on (their only collective:
            one barrier when training ends, so that rank 0 finishes logging).
            Sharded strategies (FSDP, DeepSpeed) are refused at setup: their forward needs every rank.
        baselines: saliency methods to log next to the information heatmaps at each analysis
            (``"gradient"``, ``"integrated_gradients"``, ``"perturbation"``, ``"lrp"``; see
            :func:`~lightning_infoflow.saliency`); off by default. Their maps are saved with the raw result.
        attributes: ``(sentence, word position or word-piece positions)`` pairs of the probe whose
            attributes (Eqs. 8-9, :func:`~lightning_infoflow.word_attributes`) are logged at each analysis
            as ``infoflow/attribute/s<sentence>w<word>/<concept>/<layer>`` (r = A_i - A_c) and a Fig. 8 figure.
            Needs a ``tokenizer`` (for the vocabulary) and an ``nn.Embedding`` word embedding.
        concepts: the concepts for ``attributes``: a dict, a JSON/YAML file or a shipped set's name.
        vocab: the vocabulary for ``attributes`` (``{word: id}``, a list of words, or a Hugging Face
            tokenizer); default: ``tokenizer``.
        loss_key: a training loss in ``trainer.callback_metrics`` to use for the collapse check. Default:
            the mean of the losses ``training_step`` returned since the previous analysis.
        warn_collapse: warn when a layer's information falls steeply between two analyses while the
            training loss does not improve (:func:`lightning_infoflow.analysis.guidance.collapse_finding`).
        precision: ``"32"`` runs the estimator in float32 (default, autocast off); ``"training"`` runs it
            in the Trainer's precision (``trainer.precision_plugin.forward_context()``, e.g. bf16 autocast).
        seed: seed of the estimator's private noise generator.

    Raises:
        ValueError: invalid arguments here; at ``setup``, no logger, unknown layers, or a probe the model
            cannot take (each with the fix in the message).

    Example::

        >>> import lightning.pytorch as L
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> cb = InfoFlowCallback(probe=torch.randint(0, 100, (4, 12)), every_n_train_steps=200)
        >>> trainer = L.Trainer(callbacks=[cb], logger=CSVLogger("runs"), max_steps=1000)  # doctest: +SKIP
    """

    def __init__(
        self,
        probe: ProbeLike,
        tokenizer: Optional[Callable[..., Any]] = None,
        layers: Union[str, Sequence[str]] = "auto",
        embedding: str = "auto",
        module: Optional[str] = None,
        every_n_train_steps: int = 500,
        log_spaced: bool = True,
        at_end: bool = True,
        num_sentences: Optional[int] = 16,
        lam: float = 0.1,
        steps: int = 20,
        warm_steps: int = 5,
        samples: int = 4,
        position: Union[Literal["all", "each"], int, list[int]] = "all",
        sigma_max: Optional[float] = None,
        max_heatmaps: int = 4,
        log_figures: bool = True,
        save_results: bool = True,
        progress: bool = True,
        max_overhead: Optional[float] = 0.1,
        distributed: Literal["split", "rank_zero"] = "split",
        baselines: Sequence[str] = (),
        attributes: Optional[Sequence[tuple[int, Union[int, list[int]]]]] = None,
        concepts: Union[str, dict[str, list[str]]] = "sst2_example",
        vocab: Optional[Any] = None,
        loss_key: Optional[str] = None,
        warn_collapse: bool = True,
        precision: Literal["32", "training"] = "32",
        seed: int = 0,
    ) -> None:
        if not (isinstance(every_n_train_steps, int) and every_n_train_steps > 0):
            raise ValueError(f"`every_n_train_steps` must be a positive int, got {every_n_train_steps!r}")
        for name, value in (("steps", steps), ("warm_steps", warm_steps), ("max_heatmaps", max_heatmaps)):
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"`{name}` must be a non-negative int, got {value!r}")
        if not (isinstance(samples, int) and samples > 0):
            raise ValueError(f"`samples` must be a positive int, got {samples!r}")
        if not (lam > 0 and math.isfinite(lam)):
            raise ValueError(f"`lam` must be a positive number, got {lam!r}")
        if max_overhead is not None and not max_overhead > 0:
            raise ValueError(f"`max_overhead` must be a positive fraction or None, got {max_overhead!r}")
        if distributed not in ("split", "rank_zero"):
            raise ValueError(f"`distributed` must be 'split' or 'rank_zero', got {distributed!r}")
        if precision not in ("32", "training"):
            raise ValueError(f"`precision` must be '32' or 'training', got {precision!r}")
        if num_sentences is not None and num_sentences <= 0:
            raise ValueError(f"`num_sentences` must be positive or None, got {num_sentences!r}")
        self.probe_source = probe
        self.tokenizer = tokenizer
        self.layers = layers
        self.embedding = embedding
        self.module = module
        self.every_n_train_steps = every_n_train_steps
        self.log_spaced = log_spaced
        self.at_end = at_end
        self.num_sentences = num_sentences
        self.estimator_kwargs: dict[str, Any] = {
            "lam": lam, "samples": samples, "position": position, "sigma_max": sigma_max, "seed": seed,
        }
        self.steps = steps
        self.warm_steps = warm_steps
        self.max_heatmaps = max_heatmaps
        self.log_figures = log_figures
        self.save_results = save_results
        self.progress = progress
        self.max_overhead = max_overhead
        self.distributed = distributed
        from lightning_infoflow.analysis.saliency import METHODS

        unknown = [m for m in baselines if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown baseline method(s) {unknown}; choose from {list(METHODS)}")
        self.baselines = list(baselines)
        self.attributes = [(int(s), w) for s, w in attributes] if attributes else []
        self.concepts = concepts
        self.vocab = vocab
        self.loss_key = loss_key
        self.warn_collapse = warn_collapse
        self.precision = precision

        self._early = set(log_spaced_steps(every_n_train_steps)) if log_spaced else set()
        self._probe: Optional[Probe] = None
        self._estimator: Optional[InfoFlowEstimator] = None
        self._sinks = Sinks()
        self._enabled = True
        self._dirs: list[str] = []
        # state saved in checkpoints
        self._last_step = -1
        self._history_steps: list[int] = []
        self._history: list[Tensor] = []
        self._losses: list[float] = []
        self._loss_sum: Optional[Tensor] = None
        self._loss_count = 0
        self._layer_names: list[str] = []
        self._previous: Optional[InfoFlowResult] = None
        self.failures = 0
        self.skipped = 0
        self._analysis_seconds = 0.0
        self._last_seconds = 0.0
        self._fit_seconds = 0.0
        self._clock: Optional[float] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=str(self.layers), embedding=self.embedding, module=self.module,
                                        position=str(self.estimator_kwargs["position"]))

    @property
    def last_result(self) -> Optional[InfoFlowResult]:
        """The most recent analysis (``None`` before the first)."""
        return self._previous

    # ------------------------------------------------------------------ setup

    def _target(self, pl_module: LightningModule) -> nn.Module:
        if self.module is None:
            return pl_module
        target = getattr(pl_module, self.module, None)
        if not isinstance(target, nn.Module):
            raise ValueError(
                f"InfoFlowCallback(module={self.module!r}): the LightningModule has no submodule of that name; "
                "pass the attribute that holds the network, or module=None"
            )
        return target

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        if trainer.fast_dev_run:
            self._enabled = False
            rank_zero_warn(
                "InfoFlowCallback is off under fast_dev_run: Lightning replaces every logger with a DummyLogger "
                "there, so nothing could be logged. Run without fast_dev_run (e.g. max_steps=...) to see it."
            )
            return
        if not trainer.loggers or all(isinstance(lg, DummyLogger) for lg in trainer.loggers):
            raise ValueError(
                "InfoFlowCallback needs a logger to write to; pass e.g. Trainer(logger=TensorBoardLogger('runs'))"
            )
        sharded = type(trainer.strategy).__name__
        if sharded in ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"):
            raise ValueError(
                f"InfoFlowCallback does not support {sharded}: a sharded model needs every rank in each forward, "
                "which the analysis does not do yet. Use DDP (strategy='ddp'), or remove the callback."
            )
        model = self._target(pl_module)
        self._probe = build_probe(self.probe_source, self.tokenizer, num_sentences=self.num_sentences)
        self._estimator = InfoFlowEstimator(model, self.layers, self.embedding, steps=self.steps,
                                            **self.estimator_kwargs)
        self._layer_names = self._estimator.check(self._probe.batch)
        if self.attributes:
            if self.vocab is None and self.tokenizer is None:
                raise ValueError("InfoFlowCallback(attributes=...) needs `vocab=` (or a `tokenizer=`) to look up "
                                 "concept words")
            from lightning_infoflow.analysis.attributes import load_concepts

            self.concepts = load_concepts(self.concepts)
            for sentence, _ in self.attributes:
                if not 0 <= sentence < len(self._probe):
                    raise ValueError(f"attributes: sentence {sentence} is not in the probe of {len(self._probe)}")
        fallback = trainer.default_root_dir
        self._dirs = [logger_dir(lg, fallback) for lg in trainer.loggers]
        rank_zero_info(
            f"InfoFlowCallback: {len(self._probe)} probe sentences, layers {self._layer_names}, "
            f"embedding {self._estimator.embedding_name!r}; analyses at steps 0, {sorted(self._early)}, "
            f"every {self.every_n_train_steps} and at the end"
        )

    # ------------------------------------------------------------------ schedule

    def _due(self, step: int) -> bool:
        return step != self._last_step and (step == 0 or step in self._early or step % self.every_n_train_steps == 0)

    def _over_budget(self, trainer: Trainer) -> bool:
        """Whether one more analysis (and the one reserved for the end) would exceed ``max_overhead``.

        The budget is ``max_overhead`` times the training time of the whole run, projected from the time
        per step so far and ``trainer.estimated_stepping_batches`` (the time so far when that is unknown).
        """
        if self.max_overhead is None or not self._history:
            return False
        now = time.perf_counter()
        training = self._fit_seconds + (now - self._clock if self._clock else 0.0) - self._analysis_seconds
        total = float(trainer.estimated_stepping_batches)
        step = max(trainer.global_step, 1)
        if math.isfinite(total) and total >= step:
            training = training / step * total
        upcoming = 2 * self._last_seconds  # this analysis and the one at the end
        return self._analysis_seconds + upcoming > self.max_overhead * max(training, 0.0)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock = time.perf_counter()
        if self._enabled and self._due(trainer.global_step) and trainer.global_step == 0:
            self._analyse(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # global_step counts optimizer steps: with gradient accumulation it stays put on the batches that
        # only accumulate, and _last_step stops a second analysis of the same step.
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor) and loss.numel() == 1:
            # summed on the device (no synchronisation); averaged at the next analysis for the collapse check
            detached = loss.detach().float()
            self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
            self._loss_count += 1
        if not (self._enabled and self._due(trainer.global_step)):
            return
        skip = self._over_budget(trainer)
        if self._split(trainer):
            skip = bool(trainer.strategy.broadcast(skip, src=0))  # every rank must take the same decision
        if skip:
            self._last_step = trainer.global_step
            self.skipped += 1
            if self.skipped == 1:
                rank_zero_info(
                    f"InfoFlowCallback: skipping the analysis at step {trainer.global_step} (and later ones while "
                    f"needed) to keep the analyses under max_overhead={self.max_overhead} of the training time; "
                    "raise max_overhead, or set it to None, to run every scheduled analysis."
                )
            return
        self._analyse(trainer, pl_module)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        done = bool(self._history_steps) and self._history_steps[-1] == trainer.global_step
        if self._enabled and self.at_end and not done:
            self._analyse(trainer, pl_module)
        if self._clock is not None:
            self._fit_seconds += time.perf_counter() - self._clock
            self._clock = None
        if self._enabled and trainer.world_size > 1:
            # every rank waits for rank 0's last analysis and logging before the process group goes away
            trainer.strategy.barrier("infoflow_end")

    # ------------------------------------------------------------------ one analysis

    def _split(self, trainer: Trainer) -> bool:
        return self.distributed == "split" and trainer.world_size > 1

    def _analyse(self, trainer: Trainer, pl_module: LightningModule) -> None:
        step = trainer.global_step
        self._last_step = step
        split = self._split(trainer)
        if not split and not trainer.is_global_zero:
            return
        assert self._estimator is not None and self._probe is not None
        started = time.perf_counter()
        warm = self._previous is not None
        steps = self.warm_steps if warm else self.steps
        try:
            context = trainer.precision_plugin.forward_context() if self.precision == "training" else nullcontext()
            with context, _Progress(self.progress and trainer.is_global_zero, f"infoflow step {step}",
                                    steps) as bar:
                if split:
                    result = self._estimate_split(trainer, pl_module, steps, bar.update)
                else:
                    result = self._estimator.estimate(self._probe.batch, steps=steps, init=self._previous,
                                                      tokens=self._probe.tokens, on_step=bar.update)
        except Exception as err:  # noqa: BLE001 - training must go on
            self.failures += 1
            rank_zero_warn(
                f"InfoFlowCallback: the analysis at step {step} failed and was skipped ({type(err).__name__}: {err}). "
                "Training continues; the next analysis will try again."
            )
            self._previous = None  # the next analysis starts cold
            return
        seconds = time.perf_counter() - started
        self._analysis_seconds += seconds
        self._last_seconds = seconds
        result.meta.update(step=step, epoch=trainer.current_epoch, seconds=seconds, warm_start=warm,
                           world_size=trainer.world_size if split else 1)
        self._previous = result
        self._history_steps.append(step)
        self._history.append(result.layer_information.clone())
        self._losses.append(self._training_loss(trainer))
        if trainer.is_global_zero:
            logging_started = time.perf_counter()
            self._log(trainer, result, step, seconds)
            self._check_collapse()
            # figures and files count against max_overhead too
            logged = time.perf_counter() - logging_started
            self._analysis_seconds += logged
            self._last_seconds += logged

    def _training_loss(self, trainer: Trainer) -> float:
        """Mean training loss since the previous analysis (or the logged loss when steps return none)."""
        if self._loss_sum is not None and self.loss_key is None:
            mean = float(self._loss_sum) / self._loss_count
            self._loss_sum, self._loss_count = None, 0
            return mean
        keys = [self.loss_key] if self.loss_key else ["train_loss", "train/loss", "loss"]
        for key in keys:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                return float(value)
        return float("nan")

    def _check_collapse(self) -> None:
        if not self.warn_collapse or len(self._history) < 2:
            return
        from lightning_infoflow.analysis.guidance import collapse_finding

        finding = collapse_finding(self._history_steps, torch.stack(self._history), self._losses, self._layer_names)
        if finding is not None:
            rank_zero_warn(f"InfoFlowCallback: {finding}")

    def _estimate_split(self, trainer: Trainer, pl_module: LightningModule, steps: int,
                        on_step: Callable[[int, int], None]) -> InfoFlowResult:
        """Each rank estimates its share of the probe; the shares are gathered on every rank."""
        assert self._estimator is not None and self._probe is not None
        probe, world = self._probe, trainer.world_size
        shares = torch.arange(len(probe)).tensor_split(world)
        mine = shares[trainer.global_rank]
        n_layers, seq = len(self._layer_names), probe.input_ids.shape[1]
        width = max(len(s) for s in shares)
        sigma = torch.full((n_layers, width, seq), float("nan"))
        loss = torch.zeros(n_layers)
        mask = torch.zeros(width, seq)
        error: Optional[BaseException] = None
        part: Optional[InfoFlowResult] = None
        if len(mine):
            try:
                part = self._estimator.estimate(
                    probe.select(mine), steps=steps, init=self._previous.select(mine) if self._previous is not None else None,
                    reference=probe.batch, tokens=[probe.tokens[i] for i in mine.tolist()], on_step=on_step,
                )
                sigma[:, : len(mine)] = part.sigma
                mask[: len(mine)] = part.mask.float()
                loss = part.loss * len(mine)
            except Exception as err:  # noqa: BLE001 - reported on every rank after the gather
                error = err
        ok = torch.tensor([0.0 if error else 1.0])
        # one plain all_gather of a flat payload (every rank's share has the same padded shape)
        payload = torch.cat([sigma.flatten(), mask.flatten(), loss, ok]).to(pl_module.device)
        parts = [torch.empty_like(payload) for _ in range(world)]
        torch.distributed.all_gather(parts, payload)
        sizes = [sigma.numel(), mask.numel(), loss.numel(), 1]
        fields = [torch.split(p.cpu(), sizes) for p in parts]
        gathered = {
            "sigma": torch.stack([f[0].view_as(sigma) for f in fields]),
            "mask": torch.stack([f[1].view_as(mask) for f in fields]),
            "loss": torch.stack([f[2] for f in fields]),
            "ok": torch.stack([f[3] for f in fields]),
        }
        failed = [r for r in range(world) if float(gathered["ok"][r]) < 1]
        if failed:
            detail = f"{type(error).__name__}: {error}" if error else "see that rank's log"
            raise RuntimeError(f"the analysis failed on rank(s) {failed} ({detail})")
        full = torch.cat([gathered["sigma"][r, :, : len(s)].cpu() for r, s in enumerate(shares)], dim=1)
        full_mask = torch.cat([gathered["mask"][r, : len(s)].cpu() for r, s in enumerate(shares)], dim=0)
        return InfoFlowResult(
            layer_names=list(self._layer_names),
            sigma=full,
            mask=full_mask.bool(),
            sigma_max=float(self._estimator.sigma_max),
            embedding_dim=int(self._estimator.embedding_dim),
            loss=(gathered["loss"].sum(0) / len(probe)).cpu(),
            tokens=probe.tokens,
            meta=dict(part.meta) if part is not None else {},
        )

    def _scalars(self, result: InfoFlowResult, seconds: float) -> dict[str, float]:
        values = {
            "information": result.layer_information,
            "entropy": result.mean_entropy,
            "effective_words": result.effective_words,
            "loss": result.loss,
        }
        scalars = {f"infoflow/{m}/{name}": float(values[m][i]) for m in _MEASURES
                   for i, name in enumerate(result.layer_names)}
        scalars["infoflow/analysis_seconds"] = seconds
        return scalars

    def _extras(self, result: InfoFlowResult) -> tuple[dict[str, Tensor], list[Any], dict[str, float]]:
        """Baseline saliency maps, word attributes and their scalars for one analysis (rank 0)."""
        from lightning_infoflow.analysis.attributes import word_attributes
        from lightning_infoflow.analysis.saliency import saliency

        assert self._estimator is not None and self._probe is not None
        est = self._estimator
        maps = {m: saliency(est.model, self._probe.batch, est.layer_names, m, embedding=est.embedding_name,
                            position=est.position, pad_token_id=est.pad_token_id).values for m in self.baselines}
        attrs, scalars = [], {}
        for sentence, word in self.attributes:
            vocab = self.vocab if self.vocab is not None else self.tokenizer
            a = word_attributes(est, result, sentence, word, self.concepts, vocab, batch=self._probe.batch)
            attrs.append(a)
            tag = f"s{sentence}w{word if isinstance(word, int) else '_'.join(map(str, word))}"
            for c, concept in enumerate(a.concepts):
                for i, layer in enumerate(a.layer_names):
                    scalars[f"infoflow/attribute/{tag}/{concept}/{layer}"] = float(a.remaining[i, c])
        return maps, attrs, scalars

    def _log(self, trainer: Trainer, result: InfoFlowResult, step: int, seconds: float) -> None:
        scalars = self._scalars(result, seconds)
        maps: dict[str, Tensor] = {}
        attrs: list[Any] = []
        if self.baselines or self.attributes:
            try:
                maps, attrs, extra = self._extras(result)
                scalars.update(extra)
            except Exception as err:  # noqa: BLE001 - the information itself is still logged
                rank_zero_warn(f"InfoFlowCallback: baselines/attributes at step {step} failed ({type(err).__name__}: {err})")
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})
        loggers = list(trainer.loggers)
        self._sinks.write_layout(loggers, {m: result.layer_names for m in _MEASURES})
        self._sinks.log_scalars(loggers, scalars, step)
        for logger in loggers:
            logger.save()
        if self.save_results:
            for directory in dict.fromkeys(self._dirs):
                path = os.path.join(directory, "infoflow", "results")
                os.makedirs(path, exist_ok=True)
                data = result.to_dict()
                if maps:
                    data["baselines"] = maps
                if attrs:
                    data["attributes"] = [a.to_dict() for a in attrs]
                torch.save(data, os.path.join(path, f"step_{step:08d}.pt"))
        if self.log_figures:
            figs = self._figures(result)
            for b in range(min(self.max_heatmaps, result.sigma.shape[1]) if maps else 0):
                figs[f"infoflow/baselines/sentence_{b}"] = (figures.comparison_heatmaps(result, maps, b),
                                                            "information beside " + ", ".join(maps))
            if attrs:
                from lightning_infoflow.analysis.attributes import attribute_figure

                figs["infoflow/attributes"] = (attribute_figure(attrs, titles=[a.word for a in attrs]),
                                               "r = A_i - A_c per layer and concept (Fig. 8)")
            self._sinks.log_figures(loggers, figs, step, trainer.default_root_dir)
            for fig, _ in figs.values():
                fig.clear()

    def _figures(self, result: InfoFlowResult) -> dict[str, tuple[Any, str]]:
        out: dict[str, tuple[Any, str]] = {}
        tokens = result.tokens or []
        for b in range(min(self.max_heatmaps, result.sigma.shape[1])):
            words = " ".join(tokens[b]) if b < len(tokens) else f"sentence {b}"
            out[f"infoflow/heatmap/sentence_{b}"] = (figures.information_heatmap(result, b), words)
        if self._history:
            out["infoflow/curves"] = (
                figures.information_curves(self._history_steps, torch.stack(self._history), result.layer_names),
                "information per layer against step",
            )
        return out

    # ------------------------------------------------------------------ checkpointing

    @override
    def state_dict(self) -> dict[str, Any]:
        prev = self._previous
        return {
            "last_step": self._last_step,
            "history_steps": list(self._history_steps),
            "history": torch.stack(self._history) if self._history else torch.zeros(0),
            "losses": list(self._losses),
            "layer_names": list(self._layer_names),
            "previous": prev.to_dict() if prev is not None else None,
            "failures": self.failures,
            "skipped": self.skipped,
            "analysis_seconds": self._analysis_seconds,
            "fit_seconds": self._fit_seconds + (time.perf_counter() - self._clock if self._clock else 0.0),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = int(state_dict["last_step"])
        self._history_steps = [int(s) for s in state_dict["history_steps"]]
        history = state_dict["history"]
        self._history = list(history) if history.numel() else []
        self._losses = [float(v) for v in state_dict.get("losses", [float("nan")] * len(self._history))]
        self._layer_names = list(state_dict["layer_names"])
        prev = state_dict.get("previous")
        self._previous = InfoFlowResult.from_dict(prev) if prev is not None else None
        self.failures = int(state_dict.get("failures", 0))
        self.skipped = int(state_dict.get("skipped", 0))
        self._analysis_seconds = float(state_dict.get("analysis_seconds", 0.0))
        self._fit_seconds = float(state_dict.get("fit_seconds", 0.0))


class _Progress:
    """A tqdm bar over the estimator's steps, on rank 0 only (the callback runs there)."""

    def __init__(self, enabled: bool, desc: str, total: int) -> None:
        self.enabled = enabled and total > 0
        self.desc = desc
        self.total = total
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, leave=False, dynamic_ncols=True)
        return self

    def update(self, step: int, total: int) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()
