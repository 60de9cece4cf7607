"""Several processes: which strategies the callback refuses, and one analysis split across the ranks.

Every function here that communicates must be called on every rank, in the same order: the strategy's
collectives (``all_gather``, ``broadcast``) and torchmetrics' :func:`gather_all_tensors` (for the
probe shares, whose sizes differ between ranks) block until all ranks arrive.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, TypeVar, Union

import torch
from lightning.pytorch import Trainer
from torch import Tensor

from lightning_infoflow.core.estimator import InfoFlowEstimator
from lightning_infoflow.core.probe import Probe
from lightning_infoflow.core.result import InfoFlowResult

T = TypeVar("T")


def _sharded_strategies() -> tuple[type, ...]:
    """Strategies whose forward needs every rank (FSDP, DeepSpeed, ModelParallel), where this Lightning has them."""
    from lightning.pytorch import strategies

    names = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")
    return tuple(cls for cls in (getattr(strategies, n, None) for n in names) if isinstance(cls, type))


def refuse_sharded(trainer: Trainer) -> None:
    """Raise for a sharded strategy: the analysis runs the model on some ranks only.

    Raises:
        ValueError: the strategy is FSDP, DeepSpeed or ModelParallel.
    """
    for cls in _sharded_strategies():
        if isinstance(trainer.strategy, cls):
            raise ValueError(
                f"InfoFlowCallback does not support {cls.__name__}: a sharded model needs every rank in each forward, "
                "which the analysis does not do yet. Use DDP (strategy='ddp'), or remove the callback."
            )


def agree(trainer: Trainer, value: T) -> T:
    """Rank 0's ``value`` on every rank (one broadcast when there are several processes)."""
    if trainer.world_size == 1:
        return value
    return trainer.strategy.broadcast(value, src=0)


def estimate_split(
    trainer: Trainer,
    estimator: InfoFlowEstimator,
    probe: Probe,
    rows: list[str],
    *,
    steps: Union[int, Literal["auto"]],
    init: Optional[InfoFlowResult],
    on_step: Callable[[int, int], None],
    max_steps: Optional[int] = None,
) -> InfoFlowResult:
    """Each rank estimates its share of the probe sentences; the shares are gathered on every rank.

    The shares are normalised by the hidden states of the whole probe (``reference=``), so the
    gathered result matches one process's within the optimiser's noise. A failure on any rank raises
    the same ``RuntimeError`` on every rank, after the collectives, so that no rank waits for another.
    """
    shares = torch.arange(len(probe)).tensor_split(trainer.world_size)
    mine = shares[trainer.global_rank]
    part: Optional[InfoFlowResult] = None
    error: Optional[BaseException] = None
    if len(mine):
        try:
            part = estimator.estimate(
                probe.select(mine), steps=steps, init=init.select(mine) if init is not None else None,
                reference=probe.batch, tokens=[probe.tokens[i] for i in mine.tolist()], on_step=on_step,
                max_steps=max_steps,
            )
        except Exception as err:  # noqa: BLE001 - reported on every rank after the gather
            error = err
    return _gather(trainer, part, error, probe, rows)


def _gather(trainer: Trainer, part: Optional[InfoFlowResult], error: Optional[BaseException], probe: Probe,
            rows: list[str]) -> InfoFlowResult:
    device = trainer.strategy.root_device
    seq = probe.input_ids.shape[1]
    count = 0 if part is None else part.sigma.shape[1]
    header = torch.tensor([0.0 if error is not None else 1.0, float(count),
                           part.sigma_max if part is not None else float("nan"),
                           float(part.embedding_dim) if part is not None else float("nan")])
    loss = part.loss * count if part is not None and part.loss is not None else torch.zeros(len(rows))
    headers = _all_gather(trainer, torch.cat([header, loss.float()]).to(device))
    failed = [r for r in range(trainer.world_size) if float(headers[r, 0]) < 1]
    if failed:
        detail = f"{type(error).__name__}: {error}" if error is not None else "see that rank's log"
        raise RuntimeError(f"the analysis failed on rank(s) {failed} ({detail})")
    sigma = part.sigma.float() if part is not None else torch.empty(len(rows), 0, seq)
    mask = part.mask.float() if part is not None else torch.empty(0, seq)
    from torchmetrics.utilities.distributed import gather_all_tensors

    sigmas = gather_all_tensors(sigma.contiguous().to(device))
    masks = gather_all_tensors(mask.contiguous().to(device))
    first = next(r for r in range(trainer.world_size) if float(headers[r, 1]) > 0)
    return InfoFlowResult(
        layer_names=list(rows),
        sigma=torch.cat([s.cpu() for s in sigmas], dim=1),
        mask=torch.cat([m.cpu() for m in masks], dim=0).bool(),
        sigma_max=float(headers[first, 2]),
        embedding_dim=int(headers[first, 3]),
        loss=headers[:, 4:].sum(0) / len(probe),
        tokens=probe.tokens,
        meta=dict(part.meta) if part is not None else {},
    )


def _all_gather(trainer: Trainer, tensor: Tensor) -> Tensor:
    """``[world_size, *tensor.shape]`` on the CPU, through the strategy's collective."""
    gathered: Any = trainer.strategy.all_gather(tensor)
    return gathered.reshape(trainer.world_size, *tensor.shape).cpu()
