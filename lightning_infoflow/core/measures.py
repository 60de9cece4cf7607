"""Information measures computed from the learned noise scales (Eqs. 1-4 and 6 of Guan et al., 2019).

Every function is pure torch, works on any leading shape and treats NaN (padding) as absent.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

COLLAPSED_SPREAD = 0.01
"""A layer whose state spread (:func:`~lightning_infoflow.core.hidden.state_spread`) is below this is collapsed:
less than 1% of its states' mean square varies between the probe's sentences (measured: 4e-4 for a layer of a
run that learned nothing under a far too large weight decay, 0.2-0.8 for the same model trained healthily)."""


def word_entropy(sigma: Tensor, dim: int) -> Tensor:
    """H(X_i | s) in nats for a Gaussian with covariance ``sigma**2 * I`` in ``dim`` dimensions (Eq. 6).

    >>> round(float(word_entropy(torch.tensor(1.0), dim=2)), 4)
    2.8379
    """
    return 0.5 * dim * math.log(2 * math.pi * math.e) + dim * torch.log(sigma)


def word_information(sigma: Tensor, sigma_max: float, dim: int) -> Tensor:
    """Information of each word kept by the hidden state, in nats.

    Defined as ``H_max - H(X_i | s) = dim * log(sigma_max / sigma_i)``: the entropy a word would have if
    the layer had discarded it (noise at the bound ``sigma_max``) minus its entropy given the state.
    A word at the bound carries exactly 0; it is never negative.

    >>> word_information(torch.tensor([1.0, 10.0]), sigma_max=10.0, dim=3)
    tensor([6.9078, 0.0000])
    """
    return (dim * (math.log(sigma_max) - torch.log(sigma))).clamp_min(0.0)


def sentence_information(information: Tensor) -> Tensor:
    """Sentence-level information: the sum over the words of a sentence (last dimension, NaN skipped).

    NaN for a sentence without any word (a row with no state, e.g. ``position`` past its end).

    >>> sentence_information(torch.tensor([[1.0, 2.0, float("nan")], [float("nan")] * 3]))
    tensor([3., nan])
    """
    total = torch.nansum(information, dim=-1)
    return total.masked_fill(information.isnan().all(dim=-1), float("nan"))


def mean_word_information(information: Tensor) -> Tensor:
    """Average information per real word over the last two dimensions (sentences and words).

    This is ``layer_information``: the corpus-level quantity of Eq. 2 divided by the number of words,
    so that probe sets of different sentence lengths compare.
    """
    flat = information.flatten(-2)
    return torch.nanmean(flat, dim=-1)


def mean_log_sigma(sigma: Tensor) -> Tensor:
    """Mean ``log sigma`` over the last two dimensions (sentences and words), NaN skipped: nats per dimension.

    Free of ``sigma_max`` (as long as no word sits at the bound): ``-K`` times the difference of two such
    means is the difference of their mean information per word, ``K log(sigma_max / sigma)`` averaged.

    >>> mean_log_sigma(torch.tensor([[1.0, math.e, float("nan")]]))
    tensor(0.5000)
    """
    return torch.nanmean(torch.log(sigma).flatten(-2), dim=-1)


def precision_shares(sigma: Tensor, at_bound: Tensor) -> Tensor:
    """Each word's share of its sentence's precision ``1 / sigma_i^2`` (last dimension): sums to 1 per sentence.

    ``p_i = sigma_i^-2 / sum_j sigma_j^-2``, the softmax of ``-2 log sigma`` over the sentence's words. At
    the linearised optimum of Eq. 7, ``1 / sigma_i^2 = 2 ||J_i||^2 / (K lam)``, so ``p_i`` is word ``i``'s
    share of the layer's (normalised) sensitivity to the sentence: free of ``sigma_max``, of ``lam`` (to
    first order) and of the embedding width ``K``. A word at the bound (``at_bound``) has share 0; NaN at
    padding, and for every word of a sentence whose words are all at the bound.

    >>> precision_shares(torch.tensor([[1.0, 2.0, 10.0]]), torch.tensor([[False, False, True]]))
    tensor([[0.8000, 0.2000, 0.0000]])
    """
    precision = sigma.pow(-2.0).masked_fill(at_bound, 0.0)
    total = torch.nansum(precision, dim=-1, keepdim=True)
    return precision / total.masked_fill(total == 0, float("nan"))


def effective_words(sigma: Tensor, at_bound: Tensor) -> Tensor:
    """Effective number of words a layer focuses on per sentence: ``exp(entropy)`` of the precision shares.

    ``exp(-sum_i p_i log p_i)`` with ``p_i`` from :func:`precision_shares`: the number of words if the
    sensitivity is spread evenly over them, 1 if one word holds it all, 0 if the layer keeps nothing (every
    word at the bound), NaN for a sentence without any word. Free of ``sigma_max``: it depends on ratios of
    sigma only. (Before this definition, the participation ratio of the per-word information, which
    shares the large offset ``K log sigma_max`` and stayed near the sentence length whatever the model did.)

    >>> bound = torch.zeros(3, 4, dtype=torch.bool)
    >>> effective_words(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 100.0, 100.0, 100.0],
    ...                               [2.0, 2.0, float("nan"), float("nan")]]), bound)
    tensor([4.0000, 1.0031, 2.0000])
    """
    shares = precision_shares(sigma, at_bound)
    entropy = -torch.nansum(torch.where(shares > 0, shares * shares.log(), torch.zeros_like(shares)), dim=-1)
    out = entropy.exp()
    out = out.masked_fill((at_bound | sigma.isnan()).all(dim=-1), 0.0)
    return out.masked_fill(sigma.isnan().all(dim=-1), float("nan"))
