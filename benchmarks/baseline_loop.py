"""The authors' published estimator, written as a plain loop: one sentence and one layer at a time.

The baseline of the estimator benchmarks (``bench_estimator.py``, ``versus_authors.py``), re-implemented
from the authors' code (Guan et al., ICML 2019, ``Interpreter.py`` and ``Torturial_BERT.ipynb`` of
github.com/icml2019paper2428/Towards-A-Deep-and-Unified-Understanding-of-Deep-Neural-Models-in-NLP):

* ``sigma = scale * sigmoid(ratio)``, one ``ratio`` per word, ``ratio ~ N(0, 1)`` at the start;
* ``scale = 10 x std`` of the word-embedding weights (the value their docstring recommends);
* loss ``mean((Phi(x~) - s)^2 / reg^2) - rate * mean(log sigmoid(ratio))``, ``rate = 0.1``;
* Adam, lr 0.01, ONE noise draw per step, ``s = Phi(x)`` recomputed every step, 5,000 iterations (the
  default of their ``optimize()`` and the value of both tutorials), and the lowest-loss iterate is kept.

``reg``, the per-unit scale (``normalisation``):

* ``"sentences"`` (the authors' ``calculate_regularization`` with the length axis reduced, which is how
  their code handles sentences of different lengths): each sample sentence's state is averaged over its
  words, and ``reg`` is the std of those averages over the sample sentences;
* ``"tokens"``: the std of each unit over every word of every sample sentence (the package's default).

Both get the package's floor for units whose variance is ~0 (``raw_reg=True`` uses the plain std, which
gives ``inf`` on all-MiniLM-L6-v2's last layer, whose LayerNorm weights are ~5e-33).

The noise enters at the output of ``embedding`` (a module name) through a forward hook: the authors'
BERT tutorial perturbs the output of the whole embedding block (``"embeddings"``); ``None`` is the
token lookup (``get_input_embeddings()``). Two choices are generous to the baseline: the forward stops
after the watched layer (the tutorial's ``Phi`` also ends there), and the clean ``Phi(x)`` is recomputed
under ``no_grad`` (it carries no graph).

Algebra (checked against ``lightning_infoflow/core/refine.py``): with ``n`` words, ``E = n * H`` elements
of ``s`` and ``log sigma = log scale + log sigmoid(ratio)``, the baseline loss times ``n / rate`` is
``sum_i -log sigma_i + (1 / (rate * H)) * sum_e err_e / reg_e^2 + const``, and the package's loss is
``sum_i -log sigma_i + (1 / (K * lam)) * sum_e err_e / var_e``. They are the same objective for
``lam = rate * H / K`` and ``var_e = reg_e^2``, i.e. the estimator's ``normalisation`` equal to this
one, with the same sample sentences as its ``reference=`` batch, and ``sigma_max = scale``. For
BERT-style models ``H == K``, so ``lam = rate = 0.1``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn


class _Stop(Exception):
    """Raised after the watched layer: the rest of the model is not needed."""


def per_unit_std(states: list[Tensor], floor: bool = True) -> Tensor:
    """Std of each hidden unit over every row of every tensor of ``states`` (``[n_b, H]`` each).

    With ``floor`` the variance is clamped to ``1e-6 x`` its mean, as the package does.
    """
    s = torch.cat(states, 0)
    var = s.var(dim=0, unbiased=False)
    if floor:
        var = var.clamp_min(1e-6 * float(var.mean()) + torch.finfo(torch.float32).tiny)
    return var.sqrt()


def regularisation(states: list[Tensor], normalisation: str, floor: bool = True) -> Tensor:
    """``reg`` ``[H]`` from each sample sentence's state ``[n_b, H]`` (see the module docstring)."""
    if normalisation == "sentences":
        return per_unit_std([s.mean(0, keepdim=True) for s in states], floor)
    if normalisation == "tokens":
        return per_unit_std(states, floor)
    raise ValueError(f"normalisation must be 'sentences' or 'tokens', got {normalisation!r}")


class LayerPhi:
    """``Phi(x)``: the noise point's output ``[1, n, K]`` of one sentence -> output of one layer ``[n, H]``.

    The model is called as in training (``model(input_ids=..., attention_mask=...)``); a hook on the
    embedding module replaces its output with ``x`` and a hook on the layer captures its output and
    stops the forward.
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


def clean_input(model: nn.Module, embedding: nn.Module, ids: Tensor) -> Tensor:
    """The embedding module's output ``[1, n, K]`` for one unpadded sentence ``ids`` ``[1, n]``."""
    got: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, o: Any) -> None:
        got.append((o[0] if isinstance(o, (tuple, list)) else o).detach())
        raise _Stop

    handle = embedding.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def input_embeddings(model: nn.Module) -> nn.Module:
    """``model.get_input_embeddings()``: the token lookup of a Hugging Face model."""
    module = getattr(model, "get_input_embeddings")()  # noqa: B009 (an nn.Module attribute reads as Tensor | Module)
    if not isinstance(module, nn.Module):
        raise TypeError(f"get_input_embeddings() returned a {type(module).__name__}, not a module")
    return module


def word_embedding_weight(model: nn.Module) -> Tensor:
    """The token-lookup weights ``[V, K]`` (``model.get_input_embeddings().weight``)."""
    weight = getattr(input_embeddings(model), "weight", None)
    if not isinstance(weight, Tensor):
        raise TypeError("the model's input embeddings have no weight matrix")
    return weight.detach()


@dataclass
class Fit:
    """One run of the loop: sigma ``[n]``, the best loss, CPU seconds, and the best-so-far sigma with the
    CPU seconds spent at each checkpoint iteration (``snapshots[it] = (sigma, cpu_s)``)."""

    sigma: Tensor
    loss: float
    cpu_s: float
    snapshots: dict[int, tuple[Tensor, float]] = field(default_factory=dict)


def interpret(
    phi: LayerPhi,
    x: Tensor,
    reg: Tensor,
    scale: float,
    rate: float = 0.1,
    steps: int = 5000,
    lr: float = 0.01,
    seed: int = 0,
    checkpoints: Sequence[int] = (),
) -> Fit:
    """The authors' optimisation for one sentence and one layer (see the module docstring)."""
    c0 = time.process_time()
    gen = torch.Generator().manual_seed(seed)
    n, k = x.shape[1], x.shape[2]
    ratio = torch.randn(n, 1, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([ratio], lr=lr)
    best_loss, best_ratio = math.inf, ratio.detach().clone()
    snapshots: dict[int, tuple[Tensor, float]] = {}
    for it in range(1, steps + 1):
        opt.zero_grad()
        ratios = torch.sigmoid(ratio)
        x_tilde = x + (ratios * torch.randn(n, k, generator=gen) * scale).unsqueeze(0)
        with torch.no_grad():
            s = phi(x)  # recomputed every step, as in the authors' code
        s_tilde = phi(x_tilde)
        loss = torch.mean((s_tilde - s) ** 2 / reg**2) - torch.mean(torch.log(ratios)) * rate
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if value < best_loss:  # keep the lowest-loss iterate
            best_loss = value
            best_ratio = ratio.detach() + 0.0  # read after opt.step(), as the authors read state_dict()
        if it in checkpoints:
            snapshots[it] = ((torch.sigmoid(best_ratio[:, 0]) * scale).detach(), time.process_time() - c0)
    sigma = (torch.sigmoid(best_ratio[:, 0]) * scale).detach()
    return Fit(sigma, best_loss, time.process_time() - c0, snapshots)


def layer_regs(model: nn.Module, reg_batch: dict[str, Tensor], layer_names: Sequence[str],
               normalisation: str = "tokens", raw_reg: bool = False) -> dict[str, Tensor]:
    """``reg`` of each layer from the sample sentences of ``reg_batch`` (padded ids + attention mask)."""
    with torch.no_grad():
        hs = model(**reg_batch, output_hidden_states=True).hidden_states
    names = [f"encoder.layer.{i}" for i in range(len(hs) - 1)]
    real = reg_batch["attention_mask"].bool()
    return {name: regularisation([hs[names.index(name) + 1][b][real[b]] for b in range(real.shape[0])],
                                 normalisation, floor=not raw_reg)
            for name in layer_names}


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
    normalisation: str = "tokens",
    embedding: Optional[str] = None,
    checkpoints: Sequence[int] = (),
    regs: Optional[dict[str, Tensor]] = None,
) -> dict[str, Any]:
    """Run the loop for the given sentences (rows of ``ids``) and layers.

    ``reg_batch`` (padded ``input_ids`` + ``attention_mask``) gives the sample sentences for ``reg``
    (or pass ``regs`` from :func:`layer_regs`); ``embedding``: the noise point (module name; None: the token
    lookup). The run of layer ``li`` on sentence ``b`` is seeded with ``1_000_000 * seed + 1000 * b + li``.
    Returns sigma ``[L, len(sentence_idx), T]`` (NaN at padding), wall and CPU seconds per (layer,
    sentence), losses, and for each checkpoint the best-so-far sigma and the CPU seconds spent.
    """
    model.eval()
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        scale = 10.0 * float(word_embedding_weight(model).std())
        modules = dict(model.named_modules())
        emb = modules[embedding] if embedding else input_embeddings(model)
        if regs is None:
            regs = layer_regs(model, reg_batch, layer_names, normalisation, raw_reg)
        shape = (len(layer_names), len(sentence_idx))
        sigma = torch.full((*shape, ids.shape[1]), float("nan"))
        seconds, cpu, losses = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape)
        snaps = {it: (sigma.clone(), torch.zeros(shape)) for it in checkpoints if it <= steps}
        for j, b in enumerate(sentence_idx):
            row = ids[b : b + 1, : int(mask[b].sum())]  # the sentence alone, no padding
            x = clean_input(model, emb, row)
            for li, name in enumerate(layer_names):
                phi = LayerPhi(model, emb, modules[name], row)
                t0 = time.perf_counter()
                fit = interpret(phi, x, regs[name], scale, rate, steps, lr, seed=1_000_000 * seed + 1000 * b + li,
                                checkpoints=list(snaps))
                seconds[li, j] = time.perf_counter() - t0
                cpu[li, j], losses[li, j] = fit.cpu_s, fit.loss
                sigma[li, j, : fit.sigma.shape[0]] = fit.sigma
                for it, (sig, c) in fit.snapshots.items():
                    snaps[it][0][li, j, : sig.shape[0]] = sig
                    snaps[it][1][li, j] = c
                if log:
                    log(f"baseline sentence {b} {name}: {cpu[li, j]:.1f} CPU s, best loss {fit.loss:.4f}")
        return {"sigma": sigma, "seconds": seconds, "cpu_seconds": cpu, "loss": losses, "scale": scale,
                "snapshots": snaps}
    finally:
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
