"""The estimator's optimisation loop: SGD on ``log sigma`` for a fixed number of steps, or until good enough.

See :mod:`~lightning_infoflow.core.estimator` for the objective and the step size schedule and
:mod:`~lightning_infoflow.core.convergence` for the stopping rule. Two modes:

fixed (``steps=N``)
    exactly ``N`` steps of ``eta_t = lr / (1 + (t + offset) / tau)`` (a warm start enters the schedule at
    ``offset``, where the step has fallen to ``warm_lr``).
automatic (``steps="auto"``)
    the same steps, checked every ``check_every`` steps; the loop stops at the first check where every
    layer's estimated error is at most ``target_error``, or after ``max_steps``. A check averages the
    gradients since the window began; a window spans at least ``check_every`` steps and about the last
    third of the run, so the checks get quieter as the target gets finer. A warm start first
    *measures* for one window (gradients at the start point, no update): a model that did not change
    stops there, after ``check_every`` steps (a start that itself stopped at the target gets the benefit
    of the doubt, one standard error; one that stopped at a cap must show it, one standard error).
    Otherwise it takes one Newton step with the window's mean gradient, ``u -= g_bar / h`` (the whole
    distance on a quadratic, with ``check_every`` times the draws of one step), and goes on with the warm
    schedule as if those ``check_every`` steps had been taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from lightning_infoflow.core.chunks import ChunkScorer
from lightning_infoflow.core.convergence import Convergence
from lightning_infoflow.core.runner import PreparedProbe
from lightning_infoflow.core.uncertainty import CURVATURE, StepNoise

TAU = 5.0  # steps over which the step size halves (eta_t = lr / (1 + t / TAU))
MAX_GRAD = 2.0  # gradient clip on log sigma from above (from below it is -1, the prior term alone)


@dataclass(frozen=True)
class Plan:
    """What one optimisation runs: ``steps`` (an int or ``"auto"``), the step sizes and the stopping rule."""

    steps: Union[int, str]
    max_steps: int
    target_error: float
    check_every: int
    lr: float
    warm_lr: float
    lam: float
    samples: int
    warm: bool
    trusted_start: bool = False  # the warm start is a result that stopped at this target or a finer one

    @property
    def auto(self) -> bool:
        return self.steps == "auto"

    @property
    def limit(self) -> int:
        """The most steps this optimisation may run."""
        return self.max_steps if self.auto else int(self.steps)

    def eta(self, step: int) -> float:
        """Step size of SGD step ``step`` (counted from the first update)."""
        offset = TAU * (self.lr / self.warm_lr - 1.0) if self.warm else 0.0
        return self.lr / (1.0 + (step + offset) / TAU)


@dataclass
class Outcome:
    """What the loop did: the last step's reconstruction term per row, the steps run (forwards of the
    batch of copies), the estimated error per row at the last check (None when no check ran: fixed steps),
    and why it stopped (``"target"``, ``"max_steps"`` or ``"steps"``)."""

    recon: Tensor
    steps_run: int
    error: Optional[list[float]]
    stopped: str


class Refiner:
    """Runs SGD on ``log sigma`` in place for one prepared probe (see the module docstring)."""

    def __init__(self, prep: PreparedProbe, scorer: ChunkScorer, bounds: list[tuple[int, int]], words: Tensor,
                 gen: torch.Generator, plan: Plan) -> None:
        self.prep, self.scorer, self.bounds, self.words, self.gen, self.plan = prep, scorer, bounds, words, gen, plan
        device = prep.mask.device
        copies = len(prep.rows) * plan.samples * prep.batch_size
        self.g_idx = torch.arange(copies, device=device) // (plan.samples * prep.batch_size)
        self.b_idx = torch.arange(copies, device=device) % prep.batch_size
        self.log_max = math.log(prep.noise_scale)
        self.recon = torch.zeros(len(prep.rows), device=device)

    def draw(self, shape: tuple[int, ...]) -> Tensor:
        """One step's standard normal noise for every copy, ``[copies, T, K]``, from the private generator
        (copies are ordered layer, sample, sentence)."""
        return torch.randn(shape, generator=self.gen, device=self.prep.mask.device)

    def gradient(self, log_sigma: Tensor) -> Tensor:
        """One step's clipped gradient of Eq. 7 in ``log sigma`` from ``samples`` fresh draws ``[L, B, T]``;
        sets ``recon`` to this step's reconstruction term per row."""
        prep, plan = self.prep, self.plan
        dim = prep.embedding_dim
        grad = -self.words.float()
        recon = torch.zeros(len(prep.rows), device=log_sigma.device)
        real = prep.mask.float()
        z_all = self.draw((len(self.g_idx), prep.seq_len, dim))
        for a, b in self.bounds:
            g_idx, b_idx = self.g_idx[a:b], self.b_idx[a:b]
            with torch.enable_grad():
                sig = log_sigma.exp()[g_idx, b_idx]
                noise = (sig * real[b_idx]).unsqueeze(-1) * z_all[a:b]
                err = self.scorer.errors(a, b, prep.x[b_idx] + noise)
                loss = err.sum() / (dim * plan.lam * plan.samples)
                grad += torch.autograd.grad(loss, log_sigma)[0]
            recon.index_add_(0, g_idx, err.detach() / (dim * plan.lam * plan.samples))
        self.recon = recon
        return grad.clamp_(-1.0, MAX_GRAD)

    def run(self, log_sigma: Tensor, step_noise: StepNoise,
            on_step: Optional[Callable[[int, int], None]]) -> Outcome:
        """Optimise ``log sigma`` (a leaf tensor with ``requires_grad``) in place."""
        plan = self.plan
        conv = Convergence(self.words)
        error: Optional[list[float]] = None
        done, update = 0, 0
        measuring = plan.auto and plan.warm  # a warm automatic start measures before it moves
        while done < plan.limit:
            grad = self.gradient(log_sigma)
            free = log_sigma.detach() < self.log_max - 1e-4
            eta = 0.0 if measuring else plan.eta(update)
            conv.record(grad, eta, free, room=self.log_max - log_sigma.detach())
            if not measuring:
                step_noise.record(grad, eta, free)
                log_sigma.sub_(eta * grad).clamp_(max=self.log_max)
                update += 1
            done += 1
            if on_step is not None:
                on_step(done, plan.limit)
            if plan.auto and conv.count % plan.check_every == 0:
                error = conv.error().tolist()  # the loop's only synchronisation
                doubt = (1.0 if plan.trusted_start else -1.0) if measuring else 0.0
                if conv.within(plan.target_error, doubt):
                    return Outcome(self.recon, done, error, "target")
                if measuring:  # the start point is off: one Newton step with the window's mean gradient,
                    # then the schedule as if that window's steps had been taken (its draws are in the step)
                    log_sigma.sub_(conv.mean_gradient() / CURVATURE).clamp_(max=self.log_max)
                    measuring, update = False, plan.check_every
                    conv.new_window()
                elif conv.count >= done // 3:  # windows grow with the run: finer targets need quieter checks
                    conv.new_window()
        return Outcome(self.recon, done, error, "max_steps" if plan.auto else "steps")
