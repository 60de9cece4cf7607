"""Information measures computed from the learned noise scales (Eqs. 1-4 and 6 of Guan et al., 2019).

Every function is pure torch, works on any leading shape and treats NaN (padding) as absent.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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


def effective_words(information: Tensor) -> Tensor:
    """Effective number of words a layer keeps per sentence (participation ratio).

    ``(sum_i I_i)^2 / sum_i I_i^2`` over the words of a sentence: the number of words if the information
    is spread evenly over them, 1 if one word holds it all, 0 if the layer keeps nothing, NaN for a
    sentence without any word.

    >>> effective_words(torch.tensor([[2.0, 2.0, 0.0], [5.0, 0.0, float("nan")]]))
    tensor([2., 1.])
    """
    total = torch.nansum(information, dim=-1)
    squares = torch.nansum(information**2, dim=-1)
    out = torch.where(squares > 0, total**2 / squares.clamp_min(1e-30), torch.zeros_like(total))
    return out.masked_fill(information.isnan().all(dim=-1), float("nan"))
