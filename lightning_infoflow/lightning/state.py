"""What one run of the callback remembers: its id, the analyses so far, its losses, and the live collapse check.

Saved in checkpoints as tensors and Python primitives only (``torch.load(weights_only=True)`` reads
them), so that ``fit(ckpt_path=...)`` continues the curves of the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.reporting.losses import val_loss_tag

if TYPE_CHECKING:
    from lightning_infoflow.analysis.finding import Finding

#: metrics that hold the training loss when ``training_step`` returns none (manual optimisation)
LOSS_KEYS = ("train_loss", "train/loss", "loss")


class Curves(NamedTuple):
    """The run so far: analysed steps, ``[analyses, layers]`` information and its standard error."""

    steps: list[int]
    information: Tensor
    se: Tensor


class RunState:
    """The history of one run: analysed steps, information per layer, losses, the last result.

    Attributes:
        run_id: uuid4 hex of the run, created at its first analysis; ``None`` before.
        last_step: the last step whose analysis finished (or was skipped on purpose); -1 before the first.
        steps: steps of the successful analyses; ``history[i]`` is the information per layer at ``steps[i]``
            and ``noise_se[i]`` its standard error from the estimator's own noise (NaN when unknown),
            ``information_se[i]`` its standard error over probe sentences and noise (``layer_information_se``).
        layer_names: the result's row names.
        previous: the last result, the warm start of the next analysis (``None``: the next one starts cold).
        last: the last successful result (kept when a failure clears ``previous``); ``None`` before the first.
        losses: the training loss at each analysis (NaN when unknown).
        val_losses: ``(step, validation loss)`` after each validation of the run (:meth:`add_val_loss`).
        collapse_warned: layers the live collapse check has warned about in this run (once each).
    """

    def __init__(self) -> None:
        self.run_id: Optional[str] = None
        self.last_step = -1
        self.steps: list[int] = []
        self.history: list[Tensor] = []
        self.noise_se: list[Tensor] = []
        self.information_se: list[Tensor] = []
        self.losses: list[float] = []
        self.val_losses: list[tuple[int, float]] = []
        self.collapse_warned: set[str] = set()
        self.layer_names: list[str] = []
        self.previous: Optional[InfoFlowResult] = None
        self.last: Optional[InfoFlowResult] = None
        self.failures = 0
        self.skipped = 0
        self.capped = 0  # analyses the overhead budget stopped short of the target error
        self._loss_sum: Optional[Tensor] = None
        self._loss_count = 0

    def add_loss(self, loss: Tensor) -> None:
        """Sum a training step's loss on its device (no synchronisation); averaged at the next analysis."""
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._loss_count += 1

    def add_val_loss(self, trainer: Trainer, exclude: Sequence[str]) -> None:
        """Keep the validation loss a validation just put in ``trainer.callback_metrics``, at the step the
        loggers file it under (``_batches_that_stepped``, what ``self.log`` uses), so that the callback reads the
        same ``(step, loss)`` points as ``infoflow report`` reads from the logs.

        The loss is found as the reports find it in the logs
        (:func:`~lightning_infoflow.reporting.losses.val_loss_tag`), leaving out the keys that start with one of
        ``exclude`` (the namespaces of the InfoFlowCallbacks); nothing is kept when no key is a validation loss.
        """
        tag = val_loss_tag(trainer.callback_metrics, exclude)
        if tag is None:
            return
        step = int(trainer.fit_loop.epoch_loop._batches_that_stepped)
        if self.val_losses and self.val_losses[-1][0] == step:
            self.val_losses.pop()  # validated again at the same step: the latest value wins
        self.val_losses.append((step, float(trainer.callback_metrics[tag])))

    def record(self, result: InfoFlowResult, step: int, trainer: Trainer) -> None:
        """Add a finished analysis (replacing one of the same step, e.g. redone after an interruption)."""
        if self.steps and self.steps[-1] == step:
            self.steps.pop()
            self.history.pop()
            self.noise_se.pop()
            self.information_se.pop()
            self.losses.pop()
        self.previous = self.last = result
        self.steps.append(step)
        self.history.append(result.layer_information.clone())
        self.noise_se.append(result.noise_se.clone() if result.noise_se is not None
                             else torch.full_like(self.history[-1], float("nan")))
        self.information_se.append(result.layer_information_se.clone())
        self.losses.append(self._training_loss(trainer))

    def curves(self) -> Curves:
        """Steps, ``[analyses, layers]`` information and its standard error (``layer_information_se``) so far."""
        if not self.history:
            return Curves([], torch.zeros(0), torch.zeros(0))
        return Curves(list(self.steps), torch.stack(self.history), torch.stack(self.information_se))

    def findings(self, hparams: Optional[dict[str, Any]] = None) -> list[Finding]:
        """The single-run guidance rules over the history so far (as ``infoflow report`` applies them to the
        saved run), with the validation losses kept by :meth:`add_val_loss` (else the training losses at the
        analyses); empty before the first analysis."""
        if self.last is None or not self.history:
            return []
        from lightning_infoflow.reporting.findings import history_findings

        return history_findings(self.steps, torch.stack(self.history), torch.stack(self.noise_se), self.losses,
                                self.last, val_losses=self.val_losses, hparams=hparams)

    def _training_loss(self, trainer: Trainer) -> float:
        """Mean training loss since the previous analysis (or a logged loss when steps return none)."""
        if self._loss_sum is not None:
            mean = float(self._loss_sum) / self._loss_count
            self._loss_sum, self._loss_count = None, 0
            return mean
        for key in LOSS_KEYS:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                return float(value)
        return float("nan")

    def check_collapse(self) -> None:
        """Warn about each collapsed layer of the newest result (rule ``collapsed_layer``), once per layer per run."""
        if self.last is None:
            return
        from lightning_infoflow.analysis.guidance import collapsed_layers

        for finding in collapsed_layers(self.last):
            if finding.layer not in self.collapse_warned:
                self.collapse_warned.add(str(finding.layer))
                rank_zero_warn(f"InfoFlowCallback: at step {finding.step}, {finding}")

    def state_dict(self) -> dict[str, Any]:
        prev = self.previous
        return {
            "run_id": self.run_id,
            "last_step": self.last_step,
            "history_steps": list(self.steps),
            "history": torch.stack(self.history) if self.history else torch.zeros(0),
            "noise_se": torch.stack(self.noise_se) if self.noise_se else torch.zeros(0),
            "information_se": torch.stack(self.information_se) if self.information_se else torch.zeros(0),
            "losses": list(self.losses),
            "val_loss_steps": [s for s, _ in self.val_losses],
            "val_loss_values": [v for _, v in self.val_losses],
            "collapse_warned": sorted(self.collapse_warned),
            "layer_names": list(self.layer_names),
            "previous": prev.to_dict() if prev is not None else None,
            "failures": self.failures,
            "skipped": self.skipped,
            "capped": self.capped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")
        self.last_step = int(state["last_step"])
        self.steps = [int(s) for s in state["history_steps"]]
        history = state["history"]
        self.history = list(history) if history.numel() else []
        noise_se = state.get("noise_se")
        self.noise_se = (list(noise_se) if noise_se is not None and noise_se.numel()
                         else [torch.full_like(h, float("nan")) for h in self.history])
        information_se = state.get("information_se")  # absent from checkpoints written before the field
        self.information_se = (list(information_se) if information_se is not None and information_se.numel()
                               else [torch.full_like(h, float("nan")) for h in self.history])
        self.losses = [float(v) for v in state.get("losses", [float("nan")] * len(self.history))]
        self.val_losses = [(int(s), float(v)) for s, v in zip(state.get("val_loss_steps", []),
                                                              state.get("val_loss_values", []))]
        self.collapse_warned = set(state.get("collapse_warned", []))
        self.layer_names = list(state["layer_names"])
        prev = state.get("previous")
        self.previous = self.last = InfoFlowResult.from_dict(prev) if prev is not None else None
        self.failures = int(state.get("failures", 0))
        self.skipped = int(state.get("skipped", 0))
        self.capped = int(state.get("capped", 0))
