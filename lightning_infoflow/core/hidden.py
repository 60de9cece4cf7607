"""Hidden states of watched modules: find the tensor in an output, locate batch and time axes, normalise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


def first_tensor(output: Any) -> Tensor:
    """The hidden state of a module's output: the tensor itself or the first tensor of a tuple."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    if isinstance(output, Mapping):
        for value in output.values():
            if isinstance(value, Tensor):
                return value
    raise TypeError(f"cannot find a tensor in a module output of type {type(output).__name__}")


def replace_first_tensor(output: Any, new: Tensor) -> Any:
    """Return ``output`` with its hidden state replaced by ``new`` (same container type)."""
    if isinstance(output, Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    raise TypeError(f"cannot replace the tensor of a module output of type {type(output).__name__}")


def find_batch_and_time_dims(
    single: Tensor, double: Tensor, seq_len: int, module: nn.Module | None = None
) -> tuple[int, int | None]:
    """Locate the batch and time dimensions of a hidden state.

    ``single`` is the output for a batch of B sentences and ``double`` for 2B; the dimension that
    doubled is the batch. The time dimension is the other one of length ``seq_len``, or None (e.g.
    pooled states). When several dimensions have that length, a ``Conv1d`` output ``[B, C, T]`` takes
    the last one and any other module the one nearest to the batch dimension (``[B, T, H]``, ``[T, B, H]``).
    """
    if single.dim() != double.dim():
        raise ValueError("a watched module returned outputs of different rank for different batch sizes")
    changed = [d for d in range(single.dim()) if single.shape[d] != double.shape[d]]
    if len(changed) != 1 or double.shape[changed[0]] != 2 * single.shape[changed[0]]:
        raise ValueError(
            f"cannot tell the batch dimension of a hidden state of shape {tuple(single.shape)}; "
            "watch a module whose output has one batch dimension"
        )
    bdim = changed[0]
    candidates = [d for d in range(single.dim()) if d != bdim and single.shape[d] == seq_len]
    if not candidates:
        return bdim, None
    if isinstance(module, nn.Conv1d):
        return bdim, candidates[-1]
    tdim = min(candidates, key=lambda d: abs(d - bdim))
    return bdim, tdim


def layout(t: Tensor, batch_dim: int, time_dim: Any) -> Tensor:
    """A hidden state with batch moved to dim 0 and time to dim 1, the rest flattened: ``[N, T', F]``."""
    n = t.shape[batch_dim]
    if time_dim is None:
        return t.movedim(batch_dim, 0).reshape(n, 1, -1)
    return t.movedim((batch_dim, time_dim), (0, 1)).reshape(n, t.shape[time_dim], -1)


def unit_inv_std(state: Tensor, mask: Any, aligned: bool) -> Tensor:
    """1/std of each hidden unit of ``state`` ``[B, T', F]`` over every real time step of every sentence.

    This package's normalisation (``normalisation="tokens"``). Units whose variance is ~0 (dead units,
    LayerNorm weights near 0) get a floor of 1e-6 x the layer's mean variance so that no unit divides by
    zero. A layer that is constant over the probe (one sentence and a pooled state, or identical
    sentences) is normalised by its mean square (one scalar) instead. ``mask`` ``[B, T]`` selects the real
    time steps where the time axis is the word axis (``aligned``).
    """
    return _inv_std_of(state[mask] if aligned else state.flatten(0, 1))


def sentence_inv_std(state: Tensor, mask: Any, aligned: bool) -> Tensor:
    """1/std of each hidden unit of the sentence-averaged state over the probe's sentences: ``[F]``.

    The normalisation of the paper's authors (``normalisation="sentences"``): each sentence's state is
    averaged over its real time steps (all time steps where the time axis is not the word axis), and each
    unit is divided by the spread of those averages over the sentences. Same floors as
    :func:`unit_inv_std` (one sentence: the mean square).

    >>> state = torch.tensor([[[1.0], [3.0]], [[5.0], [7.0]]])  # two sentences of two words, one unit
    >>> float(sentence_inv_std(state, torch.ones(2, 2, dtype=torch.bool), True))  # averages 2 and 6: std 2
    0.5
    """
    weights = mask.to(state.dtype) if aligned else torch.ones(state.shape[:2], dtype=state.dtype, device=state.device)
    means = (state * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)
    return _inv_std_of(means)


def _inv_std_of(flat: Tensor) -> Tensor:
    """1/std per column of ``flat`` ``[N, F]``, with the floors of :func:`unit_inv_std`."""
    var = flat.var(dim=0, unbiased=False)
    square = flat.pow(2).mean(0)
    if float(var.mean()) <= 1e-6 * float(square.mean()):
        var = square.mean().expand_as(var)
    tiny = torch.finfo(torch.float32).tiny
    return var.clamp_min(1e-6 * float(var.mean()) + tiny).rsqrt()


def state_spread(state: Tensor, weights: Tensor) -> float:
    """How much a layer's state varies between the probe's sentences, relative to its magnitude: in ``[0, 1]``.

    ``sum_e Var_b(s_bte) / sum_e E[s_bte^2]``: the variance over sentences at the same time step (summed
    over units, pooled over time steps weighted by their real sentences), over the mean square of the
    state, both over the time steps that form the state (``weights`` ``[B, T']`` > 0, see
    :func:`state_mask`). Where each sentence has one state (a pooled state, or one selected word), the
    variance is over those states. The share of the state's mean square that depends on the input words:
    near 1 for states centred at 0, near 0 for a collapsed layer that maps every sentence to about the same
    states (what varies with the time step alone, e.g. a recurrent layer fed a constant, does not count).
    A collapsed layer's per-unit normalisation divides by a tiny spread, and the estimator reads the
    collapse as much information. Scale-free: a layer whose states all shrink together keeps its spread.
    NaN with fewer than two sentences; 0 for an all-zero state.

    >>> state = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.2]]])  # [B=2, T'=2, F=2]
    >>> round(state_spread(state, torch.ones(2, 2)), 4)  # only the last unit of the last step differs
    0.005
    """
    w = (weights > 0).to(torch.float64)
    s = state.double()
    if bool((w.sum(1) <= 1).all()):  # one state per sentence: pool the sentences
        w = w.sum(1, keepdim=True)
        s = (state.double() * (weights > 0).unsqueeze(-1)).sum(1, keepdim=True)
    count = w.sum(0)  # [T']: real sentences per time step
    square = float((s.pow(2).sum(-1) * w).sum()) / max(float(w.sum()), 1.0)
    used = count >= 2
    if not bool(used.any()):
        return float("nan")
    mean = (s * w.unsqueeze(-1)).sum(0) / count.clamp_min(1.0).unsqueeze(-1)  # [T', F]
    var = ((s - mean).pow(2).sum(-1) * w).sum(0)  # [T']: count x variance over sentences
    return float(var[used].sum() / count[used].sum()) / square if square > 0 else 0.0


def state_mask(length: int, position: Any, aligned: bool, mask: Tensor) -> Tensor:
    """``[B, T']`` weights of the time steps that form the state ``s``, per sentence.

    ``position`` None: every (real, where ``aligned``) time step. An int, where ``aligned``: one real word
    of each sentence, counted over the real words read off ``mask`` (``0`` the first, ``-1`` the last),
    so that left padding (decoder tokenizers) and right padding select the same word; otherwise that time
    step. A sentence without such a word (fewer real words than the position asks for) gets an all-zero
    row: it has no state there.
    """
    bsz, device = mask.shape[0], mask.device
    if position is None:
        return mask.float() if aligned else torch.ones(bsz, length, device=device)
    if not aligned:
        idx = torch.full((bsz,), position % length, device=device)
        return (torch.arange(length, device=device)[None, :] == idx[:, None]).float()
    real = mask.long()
    if position >= 0:
        rank = real.cumsum(1) - 1  # 0 at each sentence's first real word
        return ((rank == position) & mask).float()
    rank = real.flip(1).cumsum(1).flip(1)  # 1 at each sentence's last real word
    return ((rank == -position) & mask).float()


class StopForward(BaseException):
    """Raised by the hook of the deepest watched layer: the rest of the model's forward is not needed.

    A ``BaseException`` so that a model's own ``except Exception:`` blocks do not swallow it.
    """
