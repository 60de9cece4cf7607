"""Uncertainty of the mean information per word of a layer: over probe sentences and over the estimator's noise.

Two standard errors of ``InfoFlowResult.layer_information`` (nats per word), each answering one question:

``probe`` (:func:`bootstrap_se`, ``InfoFlowResult.layer_information_se``)
    How much the number would move with another probe of as many sentences from the same source, and
    another seed. A bootstrap over sentences of the per-sentence estimates: resample the ``B`` sentences
    with replacement, recompute the mean information per word (total information over total words), and
    take the standard deviation over replicates, scaled by ``sqrt(B / (B - 1))`` (the bootstrap's
    small-sample bias). Each sentence's sigma is optimised from its own noise draws and projections (the
    objective is a sum over sentences), so the estimator's noise is independent across sentences and the
    per-sentence values carry it: this one bootstrap covers both the choice of sentences and the
    estimator's noise. Seeded; the global RNG is never used. NaN with a single sentence.
``seed`` (:class:`StepNoise`, ``InfoFlowResult.noise_se``)
    How much the number would move with another seed on the same probe (the sentence choice held
    fixed): what separates a real change between two analyses of a fixed probe from the estimator's
    wobble. Read off the optimisation itself, at no extra forward: the last step's ``log sigma`` is,
    to first order, a filtered sum of the per-step gradient noise, ``e_T = sum_t w_t xi_t`` with
    ``w_t = eta_t prod_{s>t} (1 - h eta_s)`` for the step sizes ``eta_t`` and the curvature ``h = 2`` of
    the objective in ``log sigma`` near its optimum (see the estimator's docstring). The variance of the
    gradient noise is estimated per layer, sentence and step from the difference of consecutive steps'
    gradients summed over the sentence's words (``Var(xi_t) = (g_t - g_{t-1})^2 / 2`` while the iterate
    barely moves; early steps, where it moves, have decayed out of the last iterate), which keeps the
    correlation between words of one sentence. ``noise_se = K / N * sqrt(sum_b Var(e_b))`` over the
    layer's ``N`` words. It does not cover the estimator's bias (too few steps to converge: compare with a
    longer run), and it is NaN when no optimisation step ran (``steps=0``). Its cost: one sum over the
    words per step, within timing noise (under 1% of an analysis) on the test models.

Example::

    >>> import torch
    >>> sums = torch.tensor([[10.0, 12.0, 8.0, 10.0]])  # [L=1, B=4]: information summed per sentence
    >>> words = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    >>> se = bootstrap_se(sums, words)
    >>> round(float(se[0]), 2)  # the textbook SE of the mean of 2.0, 2.4, 1.6, 2.0 per word: 0.163
    0.17
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BOOTSTRAP_REPLICATES = 1000
"""Bootstrap replicates of :func:`bootstrap_se` (the SE's own relative error is about ``1 / sqrt(2 R)``: 2%)."""

CURVATURE = 2.0
"""Curvature of Eq. 7 in ``log sigma`` at its optimum (exact for a linear layer, see the estimator)."""


def normal_quantile(level: float) -> float:
    """``z`` such that ``mean +/- z * se`` is a two-sided interval of probability ``level`` under a normal.

    >>> round(normal_quantile(0.9), 3), round(normal_quantile(0.95), 3)
    (1.645, 1.96)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1), e.g. 0.9, got {level!r}")
    return math.sqrt(2.0) * float(torch.erfinv(torch.tensor(level, dtype=torch.float64)))


def bootstrap_se(sums: Tensor, words: Tensor, replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0) -> Tensor:
    """Bootstrap standard error over sentences of ``sum(sums) / sum(words)`` per layer: ``[L]``.

    Args:
        sums: ``[L, B]`` a quantity summed over each sentence's words (e.g. information).
        words: ``[L, B]`` the number of words it sums over (0 for a sentence without a state).
        replicates: bootstrap replicates.
        seed: seed of the private generator that draws the resamples.
    """
    n_layers, bsz = sums.shape
    if bsz < 2:
        return torch.full((n_layers,), float("nan"))
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, bsz, (replicates, bsz), generator=gen)
    weights = torch.zeros(replicates, bsz, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(replicates, bsz, dtype=torch.float64))
    totals = weights @ sums.double().T  # [R, L]
    counts = weights @ words.double().T
    means = totals / counts  # a replicate without words for a layer is NaN there
    centred = means - torch.nanmean(means, dim=0)
    std = torch.nanmean(centred.pow(2), dim=0).sqrt()
    return (std * math.sqrt(bsz / (bsz - 1))).float()


class StepNoise:
    """The estimator's own noise, read off the gradients of its steps (see the module docstring).

    Args:
        words: bool ``[L, B, T]``, the words being optimised.
    """

    def __init__(self, words: Tensor) -> None:
        self.words = words
        self.last: Tensor | None = None  # the previous step's gradient summed over each sentence's free words
        self.variance = torch.zeros(words.shape[:2], dtype=torch.float64, device=words.device)  # [L, B]
        self.steps = 0

    def record(self, grad: Tensor, eta: float, free: Tensor) -> None:
        """One step: the (clipped) gradient ``[L, B, T]``, its step size, and the words not at the bound.

        Propagates the variance of each sentence's summed ``log sigma`` error through the step,
        ``Var <- (1 - h eta)^2 Var + eta^2 Var(xi_t)``, with ``Var(xi_t) = (g_t - g_{t-1})^2 / 2``.
        """
        total = (grad * free).sum(-1).detach().double()
        if self.last is not None:
            self.variance = (1.0 - CURVATURE * eta) ** 2 * self.variance + eta**2 * (total - self.last).pow(2) / 2
        self.last = total
        self.steps += 1

    def information_se(self, dim: int, free: Tensor) -> Tensor:
        """``[L]`` standard error of the mean information per word from the estimator's noise (nats).

        ``free``: bool ``[L, B, T]`` words that ended below the bound (the others carry exactly 0 nats).
        NaN before two steps.
        """
        if self.steps < 2:
            return torch.full((self.words.shape[0],), float("nan"))
        count = free.sum(dim=(1, 2)).clamp_min(1).double()
        return (dim * self.variance.sum(-1).sqrt() / count).float().cpu()
