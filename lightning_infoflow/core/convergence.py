"""When an estimate is good enough: the remaining error of ``log sigma``, read off the optimisation's own gradients.

The estimator runs SGD on ``u = log sigma`` (see :mod:`~lightning_infoflow.core.estimator`). Near its
optimum ``u*`` the objective of Eq. 7 is quadratic in each ``u_i`` with curvature ``h = 2`` (exact for a
linear layer: the prior term's gradient is -1 and the reconstruction term's is ``(sigma_i / sigma_i*)^2``),
so a word's expected gradient is ``h (u_i - u_i*)`` and its distance from the optimum is the gradient over
``h``. One step's gradient is that plus noise from the few draws of the step. Over a window of ``n``
steps this module keeps, per word,

- the mean gradient ``g_bar``; ``E[g_bar^2] = h^2 d^2 + V / n`` for the distance ``d`` and the per-step
  noise variance ``V``;
- ``V`` from consecutive steps, ``(g_t - g_{t-1})^2 / 2`` (exact while the iterate barely moves; early,
  while it moves fast, it overstates the noise, but then ``g_bar`` is far larger than its noise anyway);
- the variance ``v`` the steps' own noise leaves in the iterate, ``v <- (1 - h eta)^2 v + eta^2 V``.

The remaining error of a layer is the root mean square over its free words (those below ``sigma_max``;
words at the bound are exact) of ``d`` and the iterate's noise together:

    error^2 = max(0, mean(g_bar^2) - mean(V) / n) / h^2 + mean(v)

The first term is the distance that the noise of the window cannot explain (the mean over words of an
unbiased estimate of ``d^2``); the second is the noise that a window's mean does not show. In ``log sigma``
an error of 0.01 is a relative error of sigma of 1%. An estimate stops when every layer's error is at
most the target (``InfoFlowEstimator(steps="auto", target_error=...)``). It is a statement about the
optimisation of Eq. 7 on this probe, not about another probe or another seed's bias; it assumes the
curvature ``h = 2``, which a saturating layer lowers (its distance is then understated: the tests measure
the stop against long runs on nonlinear models too).

Example::

    >>> import torch
    >>> words = torch.ones(1, 1, 50, dtype=torch.bool)
    >>> gen = torch.Generator().manual_seed(0)
    >>> conv = Convergence(words)
    >>> for _ in range(10):  # at the optimum: pure noise of variance 0.04 per step
    ...     conv.record(0.2 * torch.randn(1, 1, 50, generator=gen), eta=0.0, free=words)
    >>> float(conv.error().max()) < 0.02
    True
    >>> conv = Convergence(words)
    >>> for _ in range(10):  # 0.1 away from it (gradient h * 0.1 = 0.2) under the same noise
    ...     conv.record(0.2 + 0.2 * torch.randn(1, 1, 50, generator=gen), eta=0.0, free=words)
    >>> round(float(conv.error().max()), 1)
    0.1
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lightning_infoflow.core.uncertainty import CURVATURE


class Convergence:
    """Per-word gradient statistics of one window of steps, and the iterate's accumulated noise.

    Args:
        words: bool ``[L, B, T]``, the words being optimised.
    """

    def __init__(self, words: Tensor) -> None:
        self.words = words
        self._last: Tensor | None = None
        self.iterate_var = torch.zeros(words.shape, device=words.device)
        self._free = words
        self._room: Tensor | None = None
        self.new_window()

    def new_window(self) -> None:
        """Start a new window of steps (the iterate's noise ``v`` carries over)."""
        self._sum = torch.zeros(self.words.shape, device=self.words.device)
        self._noise_sum = torch.zeros(self.words.shape, device=self.words.device)
        self._noise_count = 0
        self.count = 0

    def record(self, grad: Tensor, eta: float, free: Tensor, room: Optional[Tensor] = None) -> None:
        """One step's gradient ``[L, B, T]`` (before the update), its step size, the words below the bound and
        (optional) each word's room below the bound in ``log sigma``: a word pushed up (negative gradient) is
        at most that far from its optimum, which lies at the bound or below it."""
        grad = grad.detach()
        self._free = free & self.words
        self._room = room
        self._sum += grad
        self.count += 1
        if self._last is not None:
            noise = (grad - self._last).pow(2) / 2
            self._noise_sum += noise
            self._noise_count += 1
            self.iterate_var = (1.0 - CURVATURE * eta) ** 2 * self.iterate_var + eta**2 * noise
        self._last = grad.clone()

    def error(self) -> Tensor:
        """``[L]`` estimated root-mean-square error of ``log sigma`` over each layer's free words (0 if none);
        ``inf`` before the window has two steps."""
        squared, _ = self.squared_error()
        return squared.clamp_min(0.0).sqrt()

    def squared_error(self) -> tuple[Tensor, Tensor]:
        """``[L]`` the estimated mean squared error of ``log sigma`` over each layer's free words (the
        distance part clamped at 0, plus the iterate's noise), and the standard error of its distance part
        over the words."""
        n_layers = self.words.shape[0]
        if self.count < 2 or self._noise_count < 1:
            inf = torch.full((n_layers,), float("inf"), device=self.words.device)
            return inf, inf
        free = self._free.float()
        count = free.sum(dim=(1, 2)).clamp_min(1.0)
        mean_grad = self._sum / self.count
        noise = self._noise_sum / self._noise_count
        per_word = (mean_grad.pow(2) - noise / self.count) / CURVATURE**2
        if self._room is not None:  # pushed towards the bound: no farther from the optimum than from the bound
            per_word = torch.where(mean_grad < 0, torch.minimum(per_word, self._room.pow(2)), per_word)
        distance = (per_word * free).sum(dim=(1, 2)) / count
        spread = ((per_word - distance[:, None, None]).pow(2) * free).sum(dim=(1, 2)) / (count - 1).clamp_min(1.0)
        iterate = (self.iterate_var * free).sum(dim=(1, 2)) / count
        return distance.clamp_min(0.0) + iterate, (spread / count).sqrt()

    def within(self, target: float, doubt: float = 0.0) -> bool:
        """Whether every layer's estimated error is at most ``target`` (synchronises the device).

        ``doubt``: standard errors of the mean squared error that the check allows (+1) or demands (-1).
        A warm start's measuring window uses them. Its start point is a result: one that already stopped
        at ``target`` gets the benefit of the doubt (+1), since a window of noisy gradients would otherwise
        re-check it as a coin flip, while a change of the model that the window can tell apart still moves
        it; one that stopped at a cap must show it is within (-1), since a window of eta = 0 has no
        iterate noise and a distance it cannot resolve would read as 0.
        """
        squared, se = self.squared_error()
        return bool((squared - doubt * se <= target**2).all())

    def mean_gradient(self) -> Tensor:
        """``[L, B, T]`` the window's mean gradient (a warm start's first, measuring window uses it for one
        Newton step ``u -= g_bar / h``)."""
        return self._sum / max(self.count, 1)
