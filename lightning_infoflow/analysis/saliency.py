"""Baseline saliency maps of hidden states with respect to input words, for comparison with Eq. 7.

Sec. 4 of Guan et al. (2019) compares the information measure with three families of saliency methods.
:func:`saliency` computes them for the same layers, probe sentences and time steps as
:class:`~lightning_infoflow.InfoFlowEstimator` and returns the same ``[L, B, T]`` layout:

``"gradient"`` (Li et al., 2015)
    mean over the embedding dimensions of ``|d f(s) / d x_i|``.
``"integrated_gradients"`` (Sundararajan et al., 2017; Captum's ``IntegratedGradients``)
    ``|sum_k IG_ik|`` from an all-zero embedding to ``x`` (padding held fixed).
``"perturbation"`` (Fong & Vedaldi, 2017, the sentence treated as a 1-D image)
    a per-word mask ``m`` in [0, 1] is learned so that the embeddings, each mixed with a blurred (or
    zeroed) version as ``x0 + m * (x - x0)``, still produce the layer's clean state, with an L1 price on
    ``m`` and a total-variation term along the sentence. The saliency is ``m`` (the preservation game).
``"lrp"`` (Bach et al., 2015, as visualised by Ding et al., 2017; Captum's ``LRP``)
    ``|sum_k R_ik|`` with Captum's epsilon rule. Captum's LRP has rules for ``Linear``, ``Conv2d``,
    pooling and ``BatchNorm2d`` and passes through ``ReLU``, ``Tanh`` and ``Dropout``; a model with any
    other parametrised module run between the embedding and the layer (LSTM, LayerNorm, attention,
    Conv1d, ...) is refused with a ValueError naming it. Functional operations in ``forward`` (masking,
    residual sums, pooling by indexing) pass plain gradients, as in Captum.

**Target.** Gradient, integrated gradients and LRP need one scalar per sentence; the paper visualises
the saliency of a hidden *state* (a vector) with respect to words. ``target="norm"`` (default) uses the
Euclidean norm of the state ``s`` (the layer's output at the chosen time steps, padding excluded),
``target="sum"`` the sum of its entries, and a callable ``f(state [B, T', F], mask [B, T']) -> [B]``
anything else. With ``"norm"``, LRP starts from relevance ``s_j`` at every unit of the state (Captum
scales the propagated relevance by the output, and ``d||s||/ds_j * ||s|| = s_j``): the relevance of the
whole state, conserved down to the words. The perturbation method needs no scalar: it preserves the
whole state (squared error per hidden unit, normalised by the unit's variance over the probe, as in
Eq. 7).

**One hooked forward.** Every method runs through :class:`~lightning_infoflow.core.runner.ProbeRunner`,
the estimator's own: the same layers, time axes (a ``Conv1d``'s time axis even when it has as many
channels as words), rows and checks (embedding and layers called once, finite, depending on the input).

**Leaving the model alone.** The model runs in eval mode under
:func:`~lightning_infoflow.core.guard.model_untouched`: every submodule's ``training`` flag, every
``requires_grad`` and every buffer are restored; gradients are taken with ``torch.autograd.grad`` with
respect to the embedding output only, so no parameter's ``.grad`` changes; hooks are removed in
``finally`` blocks; the global RNG is untouched; another thread's use of the model meanwhile is refused.
cuDNN refuses the backward of an RNN in eval mode, so on CUDA, for a model containing ``nn.LSTM`` /
``nn.GRU`` / ``nn.RNN``, the computation runs under ``torch.backends.cudnn.flags(enabled=False)`` (slower
native kernels, same numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import Tensor, nn

from lightning_infoflow.core import guard, inputs
from lightning_infoflow.core.runner import Position, PreparedProbe, ProbeRunner

Method = Literal["gradient", "integrated_gradients", "perturbation", "lrp"]
METHODS: tuple[str, ...] = ("gradient", "integrated_gradients", "perturbation", "lrp")
Target = Union[Literal["norm", "sum"], Callable[[Tensor, Tensor], Tensor]]


@dataclass
class SaliencyResult:
    """Saliency of every watched layer's state with respect to every input word.

    Attributes:
        layer_names: one name per row, named as in :class:`~lightning_infoflow.InfoFlowResult`
            (a module name, or ``"name@t"`` for one time step).
        values: float32 ``[L, B, T]`` on the CPU, non-negative, NaN at padded positions.
        mask: bool ``[B, T]``, True at real words.
        method: one of :data:`METHODS`.
        target: ``"norm"``, ``"sum"``, ``"callable"`` or, for the perturbation method, ``"state"``.
        meta: settings used (steps, regularisation weights, ...).
    """

    layer_names: list[str]
    values: Tensor
    mask: Tensor
    method: str
    target: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sentence_total(self) -> Tensor:
        """Sum of the saliency over the words of each sentence, ``[L, B]``."""
        return torch.nansum(self.values, dim=-1)

    @property
    def layer_total(self) -> Tensor:
        """Mean over sentences of the summed saliency per sentence, ``[L]``."""
        return self.sentence_total.mean(dim=-1)


# ---------------------------------------------------------------------------------------------- probe


@dataclass
class _Probe:
    """The hooked forward and the prepared probe that every method runs on."""

    runner: ProbeRunner
    prep: PreparedProbe

    def states(self, x: Tensor, modules: Optional[Sequence[str]] = None,
               extra_hooks: Sequence[tuple[nn.Module, Any]] = ()) -> dict[str, Tensor]:
        """States ``[N, T', F]`` for ``N`` rows of embeddings ``x`` (row ``r`` is sentence ``r % B``)."""
        return self.runner.states(self.prep, x, modules, extra_hooks)

    def select(self, g: int, states: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Row ``g``'s state ``[N, T', F]`` and its mask ``[N, T']``."""
        s = states[self.prep.rows[g].module_name]
        sentences = torch.arange(s.shape[0], device=s.device) % self.prep.batch_size
        return s, self.prep.row_mask(g, sentences)


# ---------------------------------------------------------------------------------------------- targets


def _scalar(target: Target) -> Callable[[Tensor, Tensor], Tensor]:
    if callable(target):
        return target
    if target == "norm":
        return lambda s, m: ((s.pow(2) * m.unsqueeze(-1)).sum(dim=(1, 2)) + 1e-12).sqrt()
    if target == "sum":
        return lambda s, m: (s * m.unsqueeze(-1)).sum(dim=(1, 2))
    raise ValueError(f"`target` must be 'norm', 'sum' or a callable(state, mask) -> [B], got {target!r}")


# ---------------------------------------------------------------------------------------------- methods


def _captum_attr() -> Any:
    """``captum.attr``, or an ImportError that says how to get it (only IG and LRP need Captum)."""
    try:
        import captum.attr
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("method='integrated_gradients' and method='lrp' use Captum: pip install captum") from err
    return captum.attr


def _gradient(probe: _Probe, f: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    x = probe.prep.x.detach().clone().requires_grad_(True)
    rows = probe.prep.rows
    out = []
    with torch.enable_grad():
        states = probe.states(x)
        for g in range(len(rows)):
            value = f(*probe.select(g, states)).sum()
            (grad,) = torch.autograd.grad(value, x, retain_graph=g < len(rows) - 1, allow_unused=True)
            grad = torch.zeros_like(x) if grad is None else grad
            out.append(grad.abs().float().mean(-1))
    return torch.stack(out)


def _integrated_gradients(probe: _Probe, f: Callable[[Tensor, Tensor], Tensor], steps: int,
                          internal_batch_size: Optional[int]) -> Tensor:
    IntegratedGradients = _captum_attr().IntegratedGradients
    x = probe.prep.x.detach()
    baseline = x * (~probe.prep.mask).unsqueeze(-1).to(x.dtype)  # zero at real words, padding held fixed
    out = []
    for g, row in enumerate(probe.prep.rows):
        def forward(xs: Tensor, g: int = g, module: str = row.module_name) -> Tensor:
            return f(*probe.select(g, probe.states(xs, [module])))

        ig = IntegratedGradients(forward)
        with torch.enable_grad():
            attr = ig.attribute(x, baselines=baseline, n_steps=steps, internal_batch_size=internal_batch_size)
        out.append(attr.detach().float().sum(-1).abs())
    return torch.stack(out)


def _blurred(x: Tensor, mask: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of the embeddings along the sentence, over real words only: ``[B, T, K]``."""
    t = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)
    w = torch.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma) ** 2)  # [T, T]
    w = w.unsqueeze(0) * mask.float().unsqueeze(1)  # only real words contribute
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("bij,bjk->bik", w, x.float()).to(x.dtype)


def _perturbation(probe: _Probe, steps: int, lr: float, l1: float, tv: float,
                  fill: str, blur_sigma: float, seed: int) -> Tensor:
    prep = probe.prep
    x = prep.x.detach()
    mask = prep.mask
    real = mask.float()
    if fill == "blur":
        x0 = _blurred(x, mask, blur_sigma)
    elif fill == "zero":
        x0 = torch.zeros_like(x)
    elif fill == "mean":
        x0 = ((x * real.unsqueeze(-1)).sum(1, keepdim=True) / real.sum(1).view(-1, 1, 1)).expand_as(x)
    else:
        raise ValueError(f"`mask_fill` must be 'blur', 'zero' or 'mean', got {fill!r}")
    x0 = torch.where(mask.unsqueeze(-1), x0, x)  # padding is never perturbed
    n_rows, bsz, seq = len(prep.rows), prep.batch_size, prep.seq_len
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = (0.01 * torch.randn(n_rows, bsz, seq, generator=gen)).to(x.device).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    pairs = real[:, 1:] * real[:, :-1]
    words = real.sum(1)
    xr, x0r = x.repeat(n_rows, 1, 1), x0.repeat(n_rows, 1, 1)
    for _ in range(steps):
        with torch.enable_grad():
            m = torch.sigmoid(logits) * real + (1 - real)  # [G, B, T]
            xm = x0r + m.reshape(-1, seq, 1).to(x.dtype) * (xr - x0r)
            states = probe.states(xm)
            loss = logits.new_zeros(())
            for g, row in enumerate(prep.rows):
                s = states[row.module_name][g * bsz:(g + 1) * bsz]
                sm = prep.state_masks[g]
                diff = (s - prep.clean(g)) * prep.inv_std[row.module_name]
                distortion = (diff.pow(2).sum(-1) * sm).sum(-1) / (sm.sum(-1) * s.shape[-1]).clamp_min(1.0)
                sparsity = (m[g] * real).sum(-1) / words
                smooth = ((m[g, :, 1:] - m[g, :, :-1]).abs() * pairs).sum(-1) / words
                loss = loss + (distortion + l1 * sparsity + tv * smooth).sum()
            (grad,) = torch.autograd.grad(loss, logits)
        logits.grad = grad
        opt.step()
    return (torch.sigmoid(logits.detach()) * real).float()


_LRP_TRANSPARENT = (nn.Identity, nn.Flatten, nn.Unflatten)  # no arithmetic: relevance passes unchanged


def _lrp_supported(module: nn.Module) -> bool:
    _captum_attr()
    from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS

    return (hasattr(module, "rule") or type(module) in SUPPORTED_LAYERS_WITH_RULES
            or type(module) in SUPPORTED_NON_LINEAR_LAYERS)


def _lrp_path(probe: _Probe, module_name: str) -> list[nn.Module]:
    """Leaf modules run between the embedding output and the layer's output; refuses unsupported ones."""
    model, embedding = probe.runner.model, probe.runner.embedding
    names = {id(m): n for n, m in model.named_modules()}
    emb_subtree = {id(m) for m in embedding.modules()}
    called: list[nn.Module] = []
    started = [False]

    def record(module: nn.Module) -> Any:
        def fn(_m: nn.Module, _i: Any, _o: Any) -> None:
            if module is embedding:
                started[0] = True
            elif started[0] and id(module) not in emb_subtree and module not in called:
                called.append(module)
        return fn

    hooks = [(m, record(m)) for m in model.modules()]
    with torch.no_grad():
        probe.states(probe.prep.x, [module_name], extra_hooks=hooks)
    bad = []
    called = [m for m in called if not isinstance(m, _LRP_TRANSPARENT)]
    for m in called:
        leaf = next(m.children(), None) is None
        own_params = next(m.parameters(recurse=False), None) is not None
        if (leaf and not _lrp_supported(m)) or (not leaf and own_params and not hasattr(m, "rule")):
            bad.append(f"{names.get(id(m), '?')} ({type(m).__name__})")
    if bad:
        raise ValueError(
            f"method='lrp' cannot propagate relevance from layer {module_name!r} to the embeddings: Captum's LRP "
            f"has no rule for {', '.join(bad)}. It supports Linear, Conv2d, MaxPool, AvgPool, BatchNorm2d and "
            "passes through ReLU, Tanh and Dropout (or set `module.rule = captum.attr._utils.lrp_rules.EpsilonRule()` "
            "on a module you know it is valid for). Use method='gradient', 'integrated_gradients' or 'perturbation'."
        )
    return [m for m in called if next(m.children(), None) is None]


class _LRPNet(nn.Module):
    """Captum's LRP needs a Module from the embeddings to one scalar: this one borrows the model's layers.

    Its children are the leaf modules on the path (so Captum attaches its rules there and nowhere else);
    the model itself is kept out of the module tree.
    """

    def __init__(self, probe: _Probe, g: int, f: Callable[[Tensor, Tensor], Tensor],
                 path: list[nn.Module]) -> None:
        super().__init__()
        self.path = nn.ModuleList(path)
        object.__setattr__(self, "_probe", probe)
        self._g = g
        self._f = f

    def forward(self, x: Tensor) -> Tensor:
        probe: _Probe = self._probe  # type: ignore[assignment]
        states = probe.states(x, [probe.prep.rows[self._g].module_name])
        return self._f(*probe.select(self._g, states))


def _lrp(probe: _Probe, f: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    LRP = _captum_attr().LRP
    out = []
    paths = {n: _lrp_path(probe, n) for n in {r.module_name for r in probe.prep.rows}}
    for g, row in enumerate(probe.prep.rows):
        path = paths[row.module_name]
        saved = {id(m): m.__dict__["rule"] for m in path if "rule" in m.__dict__}
        try:
            net = _LRPNet(probe, g, f, path)
            with torch.enable_grad():
                attr = LRP(net).attribute(probe.prep.x.detach().clone().requires_grad_(True))
        finally:
            for m in path:  # Captum deletes `rule` and leaves `activations` on the modules
                m.__dict__.pop("activations", None)
                m.__dict__.pop("rule", None)
                if id(m) in saved:
                    m.rule = saved[id(m)]
        out.append(attr.detach().float().sum(-1).abs())
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------- public


def saliency(
    model: nn.Module,
    batch: inputs.Batch,
    layers: Union[str, Sequence[str]] = "auto",
    method: Method = "gradient",
    *,
    embedding: str = "auto",
    position: Position = "all",
    target: Target = "norm",
    pad_token_id: Optional[int] = None,
    ig_steps: int = 32,
    internal_batch_size: Optional[int] = None,
    mask_steps: int = 150,
    mask_lr: float = 0.1,
    mask_l1: float = 0.1,
    mask_tv: float = 0.01,
    mask_fill: Literal["blur", "zero", "mean"] = "blur",
    blur_sigma: float = 1.0,
    seed: int = 0,
) -> SaliencyResult:
    """Saliency of each watched layer's state with respect to each input word, ``[L, B, T]``.

    The layers, embedding module, batch format, padding and ``position`` are interpreted exactly as by
    :class:`~lightning_infoflow.InfoFlowEstimator`, so rows and columns line up with its result.

    Args:
        model: the network, called as in training (``model(ids)`` or ``model(**batch)``).
        batch: a LongTensor ``[B, T]`` or a dict with ``input_ids`` (and ``attention_mask``).
        layers: ``"auto"``, a module name, a glob pattern or a list of them.
        method: ``"gradient"``, ``"integrated_gradients"``, ``"perturbation"`` or ``"lrp"`` (see the module
            docstring for what each computes).
        embedding: the module whose output is the word embeddings (``"auto"`` as in the estimator).
        position: ``"all"`` (every real time step), an int, a list of ints or ``"each"``.
        target: the scalar of the state that gradient, IG and LRP explain: ``"norm"`` (default), ``"sum"``
            or ``f(state [N, T', F], mask [N, T']) -> [N]``. Ignored by ``"perturbation"``. Keep ``"norm"`` for
            ``"lrp"``: it starts the relevance at the state's own values.
        pad_token_id: marks padding when the batch is a bare tensor.
        ig_steps: integration steps of integrated gradients.
        internal_batch_size: rows per forward of integrated gradients (default: all ``ig_steps x B``).
        mask_steps, mask_lr: Adam steps and learning rate of the perturbation mask.
        mask_l1, mask_tv: weights of the mean mask value (keep few words) and of its total variation
            along the sentence, relative to the normalised state distortion.
        mask_fill: what a masked word becomes: ``"blur"`` (Gaussian blur along the sentence, Fong &
            Vedaldi's default), ``"zero"`` or ``"mean"`` (the sentence's mean embedding).
        blur_sigma: width of the blur in words.
        seed: seed of the mask initialisation (the global RNG is not used).

    Returns:
        A :class:`SaliencyResult` with ``values`` ``[L, B, T]`` (CPU float32, NaN at padding).

    Raises:
        ValueError: an unknown method or target, bad batch, unknown module names, or ``method="lrp"`` on a
            model whose layers Captum's LRP has no rule for.

    Example::

        >>> import torch
        >>> from lightning_infoflow.testing import GRUStack
        >>> out = saliency(GRUStack(), torch.randint(1, 50, (3, 5)), layers="grus.*", method="gradient")
        >>> out.layer_names, tuple(out.values.shape)
        (['grus.0', 'grus.1'], (2, 3, 5))
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    f = _scalar(target)
    if method == "integrated_gradients" and not (isinstance(ig_steps, int) and ig_steps > 0):
        raise ValueError(f"`ig_steps` must be a positive int, got {ig_steps!r}")
    if method == "perturbation":
        if not (isinstance(mask_steps, int) and mask_steps > 0):
            raise ValueError(f"`mask_steps` must be a positive int, got {mask_steps!r}")
        if mask_l1 < 0 or mask_tv < 0 or not blur_sigma > 0 or not mask_lr > 0:
            raise ValueError("`mask_l1` and `mask_tv` must be >= 0, `blur_sigma` and `mask_lr` > 0")
    device = guard.device_of(model)
    mask = inputs.word_mask(batch, pad_token_id).to(device)
    batch = inputs.to_device(batch, device)
    runner = ProbeRunner.resolve(model, layers, embedding)
    with guard.model_untouched(model, device):
        probe = _Probe(runner, runner.prepare(batch, mask, position, seed=seed + 1))
        if method == "gradient":
            values = _gradient(probe, f)
        elif method == "integrated_gradients":
            values = _integrated_gradients(probe, f, ig_steps, internal_batch_size)
        elif method == "perturbation":
            values = _perturbation(probe, mask_steps, mask_lr, mask_l1, mask_tv, mask_fill, blur_sigma, seed)
        else:
            values = _lrp(probe, f)
    values = values.cpu().masked_fill(~mask.cpu().expand_as(values), math.nan)
    meta: dict[str, Any] = {"embedding": runner.embedding_name}
    if method == "integrated_gradients":
        meta.update(ig_steps=ig_steps, baseline="zero")
    if method == "perturbation":
        meta.update(mask_steps=mask_steps, mask_lr=mask_lr, mask_l1=mask_l1, mask_tv=mask_tv,
                    mask_fill=mask_fill, blur_sigma=blur_sigma)
    target_name = "state" if method == "perturbation" else (target if isinstance(target, str) else "callable")
    return SaliencyResult([r.name for r in probe.prep.rows], values, mask.cpu(), method, target_name, meta)
