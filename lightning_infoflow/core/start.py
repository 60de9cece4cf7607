"""Start points of the estimator's optimisation: the closed-form optimum of the linearised problem, or a
previous result (warm start). See :mod:`~lightning_infoflow.core.estimator`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_infoflow.core.chunks import ChunkScorer
from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.core.runner import PreparedProbe


def closed_form(prep: PreparedProbe, scorer: ChunkScorer, bounds: list[tuple[int, int]], samples: int,
                gen: torch.Generator, lam: float) -> Tensor:
    """``log sigma`` of the linearised optimum ``sigma_i^2 = K lam / (2 ||J_i||_F^2)``: ``[L, B, T]``."""
    device = prep.mask.device
    n_rows, bsz, seq, dim = len(prep.rows), prep.batch_size, prep.seq_len, prep.embedding_dim
    copies = n_rows * samples * bsz
    g_idx = torch.arange(copies, device=device) // (samples * bsz)
    b_idx = torch.arange(copies, device=device) % bsz
    jac = torch.zeros(n_rows, bsz, seq, device=device)
    u_all = torch.randn((copies, *scorer.max_state_shape), generator=gen, device=device)
    for a, b in bounds:
        sq = scorer.vjp_norms(a, b, prep.x[b_idx[a:b]], u_all[a:b])
        jac.index_put_((g_idx[a:b], b_idx[a:b]), sq / samples, accumulate=True)
    return 0.5 * (torch.log(torch.tensor(dim * lam, device=device)) - math.log(2.0)
                  - torch.log(jac.clamp_min(1e-30)))


def warm_start(init: InfoFlowResult, prep: PreparedProbe, device: torch.device) -> Tensor:
    """``log sigma`` of a previous result for the same layers and sentences: ``[L, B, T]`` (0 at padding)."""
    names = [r.name for r in prep.rows]
    mask = prep.mask
    if list(init.layer_names) != names or tuple(init.sigma.shape[1:]) != tuple(mask.shape):
        raise ValueError(
            f"`init` holds layers {init.layer_names} for sentences of shape {tuple(init.sigma.shape[1:])}, "
            f"but this estimate has layers {names} and shape {tuple(mask.shape)}; pass a result of the same "
            "estimator and probe"
        )
    return torch.nan_to_num(init.sigma.to(device).log(), nan=0.0)
