"""The authors' published estimator, written as a plain loop: one sentence and one layer at a time.

This is the baseline of the estimator benchmark (``bench_estimator.py``), re-implemented from the description
of the authors' code (Guan et al., ICML 2019, ``Interpreter``):

* ``sigma = scale * sigmoid(ratio)``, one ``ratio`` per word, ``ratio ~ N(0, 1)`` at the start;
* ``scale = 10 x std`` of the word-embedding weights;
* loss ``mean((Phi(x~) - s)^2 / reg^2) - rate * mean(log sigmoid(ratio))``, ``rate = 0.1``, where
  ``reg`` is the per-element (per hidden unit) std of ``s`` over sample sentences;
* Adam, lr 0.01, ONE noise draw per step, ``s = Phi(x)`` recomputed every step, 5,000 steps, and the
  lowest-loss iterate is kept.

The noise enters at the output of ``embeddings.word_embeddings`` through a forward hook, as in the
package. Two choices are generous to the baseline and are documented here: the forward stops after the
watched layer (the authors ran the whole model), and the clean ``Phi(x)`` is recomputed under
``no_grad`` (it carries no graph). ``reg`` uses the package's floor for units whose variance is ~0
(``--raw-reg`` uses the plain std, which gives NaN on all-MiniLM-L6-v2's last layer).

Algebra (checked against ``lightning_infoflow/estimator.py``): with ``n`` words, ``E = n * H``
elements of ``s`` and ``log sigma = log scale + log sigmoid(ratio)``, the baseline loss times
``n / rate`` is ``sum_i -log sigma_i + (1 / (rate * H)) * sum_e err_e / reg_e^2 + const``, and the
package's loss is ``sum_i -log sigma_i + (1 / (K * lam)) * sum_e err_e / var_e``. They are the same
objective for ``lam = rate * E / (n * K) = rate * H / K``; for BERT-style models ``H == K``, so
``lam = rate = 0.1``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import torch
from torch import Tensor, nn


class _Stop(Exception):
    """Raised after the watched layer: the rest of the model is not needed."""


def per_unit_std(states: list[Tensor], floor: bool = True) -> Tensor:
    """Std of each hidden unit over every word of every sample sentence (``states``: ``[n_b, H]`` each).

    With ``floor`` the variance is clamped to ``1e-6 x`` its mean, as the package does.
    """
    s = torch.cat(states, 0)
    var = s.var(dim=0, unbiased=False)
    if floor:
        var = var.clamp_min(1e-6 * float(var.mean()) + torch.finfo(torch.float32).tiny)
    return var.sqrt()


class LayerPhi:
    """``Phi(x)``: word embeddings ``[1, n, K]`` of one sentence -> output of one layer ``[n, H]``.

    The model is called as in training (``model(input_ids=..., attention_mask=...)``); a hook on the
    word-embedding module replaces its output with ``x`` and a hook on the layer captures its output
    and stops the forward.
    """

    def __init__(self, model: nn.Module, embedding: nn.Module, layer: nn.Module, ids: Tensor) -> None:
        self.model, self.embedding, self.layer, self.ids = model, embedding, layer, ids

    def __call__(self, x: Tensor) -> Tensor:
        out: list[Tensor] = []

        def emb_hook(_m: nn.Module, _i: Any, _o: Tensor) -> Tensor:
            return x

        def layer_hook(_m: nn.Module, _i: Any, o: Any) -> None:
            out.append(o[0] if isinstance(o, (tuple, list)) else o)
            raise _Stop

        h1 = self.embedding.register_forward_hook(emb_hook)
        h2 = self.layer.register_forward_hook(layer_hook)
        try:
            self.model(input_ids=self.ids, attention_mask=torch.ones_like(self.ids))
        except _Stop:
            pass
        finally:
            h1.remove()
            h2.remove()
        return out[0][0]


def interpret(
    phi: LayerPhi,
    x: Tensor,
    reg: Tensor,
    scale: float,
    rate: float = 0.1,
    steps: int = 5000,
    lr: float = 0.01,
    seed: int = 0,
) -> tuple[Tensor, float]:
    """The authors' optimisation for one sentence and one layer; returns (sigma ``[n]``, best loss)."""
    gen = torch.Generator().manual_seed(seed)
    n, k = x.shape[1], x.shape[2]
    ratio = torch.randn(n, 1, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([ratio], lr=lr)
    best_loss, best_ratio = math.inf, ratio.detach().clone()
    for _ in range(steps):
        opt.zero_grad()
        ratios = torch.sigmoid(ratio)
        x_tilde = x + (ratios * torch.randn(n, k, generator=gen) * scale).unsqueeze(0)
        with torch.no_grad():
            s = phi(x)  # recomputed every step, as in the authors' code
        s_tilde = phi(x_tilde)
        loss = torch.mean((s_tilde - s) ** 2 / reg**2) - torch.mean(torch.log(ratios)) * rate
        loss.backward()
        opt.step()
        value = float(loss)
        if value < best_loss:  # keep the lowest-loss iterate
            best_loss = value
            best_ratio = ratio.detach() + 0.0  # read after opt.step(), as the authors read state_dict()
    return (torch.sigmoid(best_ratio[:, 0]) * scale).detach(), best_loss


def run_baseline(
    model: nn.Module,
    ids: Tensor,
    mask: Tensor,
    sentence_idx: list[int],
    layer_names: list[str],
    reg_batch: dict[str, Tensor],
    steps: int = 5000,
    rate: float = 0.1,
    lr: float = 0.01,
    raw_reg: bool = False,
    seed: int = 0,
    log: Optional[Any] = print,
) -> dict[str, Any]:
    """Run the loop for the given sentences (rows of ``ids``) and layers.

    ``reg_batch`` (padded ``input_ids`` + ``attention_mask``) gives the sample sentences for ``reg``.
    Returns sigma ``[L, len(sentence_idx), T]`` (NaN at padding), seconds per (layer, sentence), losses.
    """
    model.eval()
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        emb = model.get_input_embeddings()
        scale = 10.0 * float(emb.weight.std())
        modules = dict(model.named_modules())
        with torch.no_grad():
            hs = model(**reg_batch, output_hidden_states=True).hidden_states
        names = [f"encoder.layer.{i}" for i in range(len(hs) - 1)]
        regs = {}
        for name in layer_names:
            h = hs[names.index(name) + 1]
            regs[name] = per_unit_std([h[b][reg_batch["attention_mask"][b].bool()]
                                       for b in range(h.shape[0])], floor=not raw_reg)
        seq = ids.shape[1]
        sigma = torch.full((len(layer_names), len(sentence_idx), seq), float("nan"))
        seconds = torch.zeros(len(layer_names), len(sentence_idx))
        losses = torch.zeros(len(layer_names), len(sentence_idx))
        for j, b in enumerate(sentence_idx):
            row = ids[b : b + 1, : int(mask[b].sum())]  # the sentence alone, no padding
            with torch.no_grad():
                x = emb(row)
            for li, name in enumerate(layer_names):
                phi = LayerPhi(model, emb, modules[name], row)
                t0 = time.perf_counter()
                sig, best = interpret(phi, x, regs[name], scale, rate, steps, lr, seed=seed + 1000 * b + li)
                seconds[li, j] = time.perf_counter() - t0
                sigma[li, j, : sig.shape[0]] = sig
                losses[li, j] = best
                if log:
                    log(f"baseline sentence {b} {name}: {seconds[li, j]:.1f} s, best loss {best:.4f}")
        return {"sigma": sigma, "seconds": seconds, "loss": losses, "scale": scale}
    finally:
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
