"""The perturbation estimator of Eq. 7 (Guan et al., ICML 2019), batched over layers, sentences and noise.

Pure torch: no Lightning, no plotting. For a probe batch the estimator learns one noise scale
``sigma[l, b, i]`` per watched layer ``l``, sentence ``b`` and word ``i`` by minimising

    L(sigma) = sum_i -log sigma_i + 1/(K*lam) * E_eps sum_e (Phi_e(x + eps) - s_e)^2 / var_e

with ``eps_i ~ N(0, sigma_i^2 I_K)`` added to the word embeddings ``x`` and ``var_e`` the variance of
hidden unit ``e`` over the probe (or a reference) batch. One optimisation serves every layer and
sentence: each step is one forward over ``layers x samples x sentences`` copies of the batch (split
into chunks that fit a memory budget), each copy perturbed with its own layer's sigma and scored only
on its own layer's state, and the gradient reaches only ``log sigma``.

The start point is the closed-form optimum of the linearised problem: for small noise
``E||Phi(x+eps) - s||^2 ~ sum_i sigma_i^2 ||J_i||_F^2`` (``J_i`` the Jacobian of the normalised state
with respect to word ``i``), whose minimiser is ``sigma_i^2 = K*lam / (2 ||J_i||_F^2)``. ``||J_i||_F^2``
is estimated with ``samples`` random vector-Jacobian products. Stochastic gradient descent on
``log sigma`` then refines the nonlinear objective from there (or from a previous result:
``estimate(batch, init=previous)``).

The optimiser: plain SGD on ``u = log sigma`` with the step ``eta_t = lr / (1 + t / 5)`` and the
gradient clipped to ``[-1, 2]``. In ``u`` the problem is well scaled: the prior term's gradient is
exactly -1 per word and, near the optimum, the reconstruction term's is ``(sigma / sigma*)^2``, so the
curvature is about 2 everywhere and one step size fits every word, layer and model; the decaying step
averages the noise of the few draws per step away. (Adam, used before, moves every word by about
``lr`` in its first steps whatever its gradient, which spoils a good start point.) A warm start enters
the same schedule where the step has fallen to ``warm_lr``. Precision: the estimator's own tensors
(sigma, noise, errors, normalisation) are float32; the model runs as the caller runs it (under
``torch.autocast`` its matmuls run in the autocast dtype; see the README for the measured agreement).
Compiled modules run eagerly during an estimate (:func:`guard.eager`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import Tensor, nn

from lightning_infoflow.core import guard, hidden, inputs, resolve
from lightning_infoflow.core.result import InfoFlowResult

log = logging.getLogger(__name__)

Position = Union[Literal["all", "each"], int, Sequence[int]]

_CPU_MEMORY_BUDGET = 2 * 1024**3
_TAU = 5.0  # steps over which the step size halves (eta_t = lr / (1 + t / _TAU))
_MAX_GRAD = 2.0  # gradient clip on log sigma from above (from below it is -1, the prior term alone)


_StopForward = hidden.StopForward


def _discard(_t: Tensor) -> None:
    """Pack hook of forwards that are never differentiated: keep nothing."""
    return None


def _unreachable(_packed: None) -> Tensor:
    raise RuntimeError("internal error: backward through a clean forward of the estimator")


def _human(n: float) -> str:
    """Bytes as text: ``'1.5 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass
class _Target:
    """One row of the result: a watched module and which of its time steps make up the state ``s``."""

    name: str
    module_name: str
    position: Optional[int]  # None: every real time step concatenated


@dataclass
class _LayerState:
    """Clean hidden state of one watched module, laid out ``[B, T', F]``."""

    state: Tensor
    batch_dim: int
    time_dim: Optional[int]
    aligned: bool  # the time axis is the input's word axis (padding mask applies)


_layout = hidden.layout


class InfoFlowEstimator:
    """Estimate how much information of each input word every watched layer keeps (Guan et al., 2019).

    Args:
        model: the network, called as in training: ``model(input_ids)`` or ``model(**batch)``.
        layers: ``"auto"``, a module name, a glob pattern (``"encoder.layer.*"``) or a list of them.
            A layer's hidden state is its output (the first tensor of a tuple).
        embedding: the module whose output is the word embeddings ``x`` that the noise perturbs.
            ``"auto"``: ``model.get_input_embeddings()`` or the first ``nn.Embedding`` (the token lookup,
            before position embeddings and LayerNorm). Name a whole block (e.g. ``"embeddings"`` of a
            BERT) to perturb after it instead.
        lam: lambda of Eq. 7; larger values allow more noise (less information everywhere).
        steps: optimisation steps after the closed-form start; 0 returns the linearised optimum.
        samples: noise draws per step (and random projections for the start point).
        sigma_max: upper bound of sigma. Default: 10 x the std of the embedding weights.
        position: which time steps of a layer's output form ``s``: ``"all"`` (every real time step
            concatenated, Sec. 4.2), an int (one time step, e.g. ``0`` for BERT's [CLS]; negative counts
            from each sentence's last real word, assuming right padding), a list of ints or ``"each"``
            (one result row per time step, named ``"layer@t"``, Sec. 4.1). A sentence for which the
            selected time step is padding has no state there: its row is NaN. A layer whose output has
            no time axis of the input's length (pooled, or a decoder's own length) is one state: "all".
        lr: first step size of SGD on ``log sigma`` (decays as ``lr / (1 + t / 5)``).
        warm_lr: first step size of a warm start (``init=``): the schedule is entered where it has
            decayed to this value, so a good start point is refined rather than shaken. Default
            ``0.4 * lr``; larger values follow bigger changes of the model faster but keep more noise.
        chunk_size: copies per forward, or ``"auto"`` to fit ``memory_budget``.
        memory_budget: bytes for one chunk's activations plus one step's noise for all copies; default:
            60% of free memory on CUDA, 2 GiB on CPU. The chunking never changes the noise drawn.
        pad_token_id: id that marks padding when the batch is a bare tensor without ``attention_mask``.
        tol: stop early when no ``log sigma`` moved more than this over ``check_every`` steps.
        check_every: steps between convergence checks (the only host-device synchronisations).
        seed: seed of the estimator's private noise generator; the global RNG is never used.

    Raises:
        ValueError: bad arguments, unknown module names (with close matches).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = nn.Embedding(20, 8)
        ...         self.rnn = nn.ModuleList([nn.GRU(8, 8, batch_first=True) for _ in range(2)])
        ...     def forward(self, ids):
        ...         h = self.emb(ids)
        ...         for rnn in self.rnn:
        ...             h, _ = rnn(h)
        ...         return h
        >>> est = InfoFlowEstimator(Net(), layers="rnn.*", steps=20)
        >>> res = est.estimate(torch.randint(0, 20, (3, 5)))
        >>> res.layer_names, tuple(res.sigma.shape)
        (['rnn.0', 'rnn.1'], (2, 3, 5))
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Union[str, Sequence[str]] = "auto",
        embedding: str = "auto",
        *,
        lam: float = 0.1,
        steps: int = 100,
        samples: int = 4,
        sigma_max: Optional[float] = None,
        position: Position = "all",
        lr: float = 0.25,
        warm_lr: Optional[float] = None,
        chunk_size: Union[int, Literal["auto"]] = "auto",
        memory_budget: Optional[int] = None,
        pad_token_id: Optional[int] = None,
        tol: float = 1e-3,
        check_every: int = 25,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"`model` must be an nn.Module, got {type(model).__name__}")
        if not (isinstance(lam, (int, float)) and lam > 0 and math.isfinite(lam)):
            raise ValueError(f"`lam` must be a positive number, got {lam!r}")
        if not (isinstance(steps, int) and steps >= 0):
            raise ValueError(f"`steps` must be a non-negative int (0: closed-form start only), got {steps!r}")
        if not (isinstance(samples, int) and samples > 0):
            raise ValueError(f"`samples` must be a positive int, got {samples!r}")
        if sigma_max is not None and not (sigma_max > 0 and math.isfinite(sigma_max)):
            raise ValueError(f"`sigma_max` must be a positive number or None, got {sigma_max!r}")
        if not lr > 0:
            raise ValueError(f"`lr` must be positive, got {lr!r}")
        if warm_lr is not None and not 0 < warm_lr <= lr:
            raise ValueError(f"`warm_lr` must be in (0, lr={lr}] or None, got {warm_lr!r}")
        if chunk_size != "auto" and not (isinstance(chunk_size, int) and chunk_size > 0):
            raise ValueError(f"`chunk_size` must be a positive int or 'auto', got {chunk_size!r}")
        if memory_budget is not None and memory_budget <= 0:
            raise ValueError(f"`memory_budget` must be a positive number of bytes, got {memory_budget!r}")
        if not (isinstance(check_every, int) and check_every > 0):
            raise ValueError(f"`check_every` must be a positive int, got {check_every!r}")
        if not tol >= 0:
            raise ValueError(f"`tol` must be >= 0 (0: never stop early), got {tol!r}")
        self._check_position(position)
        self.model = model
        self.lam = float(lam)
        self.steps = steps
        self.samples = samples
        self.position = position
        self.lr = float(lr)
        self.warm_lr = float(warm_lr) if warm_lr is not None else 0.4 * self.lr
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.pad_token_id = pad_token_id
        self.tol = float(tol)
        self.check_every = check_every
        self.seed = int(seed)
        self.embedding_name, self._embedding = resolve.resolve_embedding(model, embedding)
        self.layer_names = resolve.resolve_layers(model, layers, self.embedding_name)
        if self.embedding_name in self.layer_names:
            raise ValueError(f"the embedding module {self.embedding_name!r} cannot also be a watched layer")
        self._modules = {n: resolve.find_module(model, n, "layer") for n in self.layer_names}
        self.sigma_max = float(sigma_max) if sigma_max is not None else self._default_sigma_max()
        self.embedding_dim: Optional[int] = None  # K, known after the first check() or estimate()

    @property
    def embedding_module(self) -> nn.Module:
        """The module whose output is the word embeddings that the noise perturbs."""
        return self._embedding

    @staticmethod
    def _check_position(position: Any) -> None:
        if position in ("all", "each") or isinstance(position, int):
            return
        if isinstance(position, Sequence) and not isinstance(position, str) and position and all(
            isinstance(p, int) for p in position
        ):
            return
        raise ValueError(f"`position` must be 'all', 'each', an int or a list of ints, got {position!r}")

    def _default_sigma_max(self) -> float:
        weight = getattr(self._embedding, "weight", None)
        if isinstance(weight, Tensor) and weight.dim() == 2:
            return 10.0 * float(weight.detach().float().std())
        return float("nan")  # resolved from the first batch's embeddings

    # ------------------------------------------------------------------ public

    @torch.no_grad()
    def estimate(
        self,
        batch: inputs.Batch,
        *,
        steps: Optional[int] = None,
        init: Optional[InfoFlowResult] = None,
        reference: Optional[inputs.Batch] = None,
        tokens: Optional[list[list[str]]] = None,
        on_step: Optional[Callable[[int, int], None]] = None,
    ) -> InfoFlowResult:
        """Learn sigma for every watched layer, sentence and word of ``batch``.

        Args:
            batch: what ``model.forward`` takes: a LongTensor ``[B, T]`` of token ids or a dict with
                ``input_ids`` (and ``attention_mask``; other entries are passed through).
            steps: optimisation steps for this call; default: the estimator's ``steps``.
            init: a previous result for the same sentences and layers to start from (warm start).
            reference: a batch whose hidden states give the normalisation ``var_e``; default: ``batch``.
            tokens: word strings per sentence, stored in the result for labels.
            on_step: called as ``on_step(step, steps)`` after every optimisation step (for progress bars).

        Returns:
            An :class:`InfoFlowResult` with tensors on the CPU.

        Raises:
            ValueError: an empty batch, an all-padding sentence, non-integer ids, a layer whose output
                does not depend on the input or is not finite; raised before any optimisation.
        """
        if steps is None:
            steps = self.steps
        elif not (isinstance(steps, int) and steps >= 0):
            raise ValueError(f"`steps` must be a non-negative int (0: closed-form start only), got {steps!r}")
        device = self._device()
        mask = self._validate_batch(batch).to(device)
        batch = self._to(batch, device)
        with guard.model_untouched(self.model, device):
            prep = self._prepare(batch, mask, reference, device)
            return self._optimise(batch, mask, prep, init, tokens, device, on_step, steps)

    @torch.no_grad()
    def check(self, batch: inputs.Batch) -> list[str]:
        """Validate ``batch`` against the model without optimising anything; return the result's row names.

        Runs the checks :meth:`estimate` runs first (ids, padding, every watched layer called once,
        finite, and depending on the embeddings) with two plain forwards. Use it to fail early.

        Raises:
            ValueError: the problem and the fix, as in :meth:`estimate`.
        """
        device = self._device()
        mask = self._validate_batch(batch).to(device)
        batch = self._to(batch, device)
        with guard.model_untouched(self.model, device):
            prep = self._prepare(batch, mask, None, device)
        return [t.name for t in prep["targets"]]

    # ------------------------------------------------------------------ validation

    def _device(self) -> torch.device:
        return guard.device_of(self.model)

    @staticmethod
    def _to(batch: inputs.Batch, device: torch.device) -> inputs.Batch:
        return inputs.to_device(batch, device)

    def _validate_batch(self, batch: inputs.Batch) -> Tensor:
        return inputs.word_mask(batch, self.pad_token_id)

    # ------------------------------------------------------------------ preparation

    def _targets(self, states: dict[str, _LayerState]) -> list[_Target]:
        targets = []
        for name in self.layer_names:
            if self.position == "all":
                targets.append(_Target(name, name, None))
                continue
            length = states[name].state.shape[1]
            if self.position == "each":
                positions: Sequence[int] = range(length)
            elif isinstance(self.position, int):
                positions = [self.position]
            else:
                positions = list(self.position)  # type: ignore[arg-type]
            for p in positions:
                if not -length <= p < length:
                    raise ValueError(f"position {p} is outside layer {name!r}'s {length} time steps")
                targets.append(_Target(f"{name}@{p}", name, p))
        return targets

    def _prepare(self, batch: inputs.Batch, mask: Tensor, reference: Optional[inputs.Batch], device: torch.device) -> dict:
        bsz, seq = mask.shape
        # Forward on B sentences (clean) and on 2B (second half noisy): locates batch and time
        # dimensions, and shows whether each layer depends on its input at all.
        x, raw = self._clean_forward(batch, bsz)
        self.embedding_dim = int(x.shape[-1])
        if not math.isfinite(self.sigma_max):
            self.sigma_max = 10.0 * float(x[mask].std())
        scale = torch.zeros(2 * bsz, 1, 1, device=device)
        scale[bsz:] = self.sigma_max
        gen = torch.Generator(device=device).manual_seed(self.seed + 1)
        noise = torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype)
        x2 = torch.cat([x, x]) + scale * torch.cat([noise, noise])
        _, raw2 = self._clean_forward(inputs.repeat_batch(batch, 2, bsz), 2 * bsz, replace=x2)
        states: dict[str, _LayerState] = {}
        for name in self.layer_names:
            out, out2 = raw[name], raw2[name]
            if not torch.isfinite(out).all():
                raise ValueError(
                    f"layer {name!r} returned non-finite values on the probe batch; check the model and inputs"
                )
            bdim, tdim = hidden.find_batch_and_time_dims(out, out2, seq, self._modules[name])
            clean_again = out2.narrow(bdim, 0, bsz)
            noisy = out2.narrow(bdim, bsz, bsz)
            if torch.equal(noisy, clean_again):
                raise ValueError(
                    f"layer {name!r} does not depend on the input embeddings of {self.embedding_name!r}; "
                    "watch a layer downstream of the embedding (or pass the right `embedding=`)"
                )
            state = _layout(out, bdim, tdim).float()
            aligned = tdim is not None and state.shape[1] == seq
            states[name] = _LayerState(state, bdim, tdim, aligned)
        ref_states = states
        if reference is not None:
            ref_mask = self._validate_batch(reference).to(device)
            ref_batch = self._to(reference, device)
            _, ref_raw = self._clean_forward(ref_batch, ref_mask.shape[0])
            bad = [n for n in self.layer_names if not torch.isfinite(ref_raw[n]).all()]
            if bad:
                raise ValueError(f"layer(s) {bad} returned non-finite values on the `reference` batch; "
                                 "check the reference inputs")
            ref_states = {
                n: _LayerState(_layout(ref_raw[n], s.batch_dim, s.time_dim).float(), s.batch_dim, s.time_dim,
                               s.aligned and ref_raw[n].shape[s.time_dim] == ref_mask.shape[1])  # type: ignore[index]
                for n, s in states.items()
            }
        else:
            ref_mask = mask
        inv_std = {n: self._inv_std(ref_states[n], ref_mask) for n in self.layer_names}
        targets = self._targets(states)
        order = {n: i for i, n in enumerate(self._order)}
        state_masks = [self._state_mask(t, states[t.module_name], mask) for t in targets]
        return {"x": x, "states": states, "inv_std": inv_std, "targets": targets, "order": order,
                "state_masks": state_masks}

    @staticmethod
    def _inv_std(ls: _LayerState, mask: Tensor) -> Tensor:
        """1/std per hidden unit over the probe (see :func:`hidden.unit_inv_std`); pass ``reference=`` with
        more sentences for a proper variance when the probe is a single sentence and the state pooled."""
        return hidden.unit_inv_std(ls.state, mask, ls.aligned)

    @staticmethod
    def _state_mask(target: _Target, ls: _LayerState, mask: Tensor) -> Tensor:
        """``[B, T']`` weights of the time steps that form ``s`` for ``target`` (see :func:`hidden.state_mask`);
        a sentence without a state for the target has an all-zero row and a NaN result row."""
        return hidden.state_mask(ls.state.shape[1], target.position, ls.aligned, mask)

    def _clean_forward(
        self, batch: inputs.Batch, bsz: int, replace: Optional[Tensor] = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        captured: dict[str, Tensor] = {}
        calls: dict[str, int] = {}
        order: list[str] = []
        emb: list[Tensor] = []

        def emb_hook(_m: nn.Module, _i: Any, output: Any) -> Any:
            out = hidden.first_tensor(output)
            if out.dim() != 3 or out.shape[0] != bsz:
                raise ValueError(
                    f"the embedding module {self.embedding_name!r} returned shape {tuple(out.shape)}; "
                    "expected [B, T, K] word embeddings. Pass embedding='<token lookup module>'"
                )
            emb.append(out.detach())
            # A leaf that requires grad: the forward takes the same (autograd) code path as the noisy
            # forwards of the optimisation, e.g. no nested-tensor fast path in nn.TransformerEncoder.
            new = (out if replace is None else replace.to(out.dtype)).detach().requires_grad_(True)
            return hidden.replace_first_tensor(output, new)

        def layer_hook(name: str) -> Any:
            def hook(_m: nn.Module, _i: Any, output: Any) -> None:
                calls[name] = calls.get(name, 0) + 1
                if name not in captured:
                    order.append(name)
                    captured[name] = hidden.first_tensor(output).detach()
            return hook

        with ExitStack() as stack:
            handles = [self._embedding.register_forward_hook(emb_hook)]
            handles += [m.register_forward_hook(layer_hook(n)) for n, m in self._modules.items()]
            for h in handles:
                stack.callback(h.remove)
            try:
                # Grad mode for the training code path, but nothing saved for a backward that never
                # comes: without this the clean forwards of 2B sentences held every layer's activations.
                with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_discard, _unreachable):
                    inputs.call_model(self.model, batch)
            except ValueError:
                raise
            except Exception as err:  # noqa: BLE001 - reported with the fix
                raise ValueError(f"the model failed on the probe batch: {type(err).__name__}: {err}") from err
        if not emb:
            raise ValueError(
                f"the embedding module {self.embedding_name!r} was not called by the forward; pass embedding=..."
            )
        if len(emb) > 1:
            raise ValueError(
                f"the embedding module {self.embedding_name!r} is called {len(emb)} times per forward; the noise "
                "must enter once. Embed the whole input in one call (and split afterwards), or pass embedding=..."
            )
        missing = [n for n in self.layer_names if n not in captured]
        if missing:
            raise ValueError(f"layer(s) {missing} were not called by the model's forward; check `layers`")
        repeated = [n for n, c in calls.items() if c > 1]
        if repeated:
            raise ValueError(f"layer(s) {repeated} are called more than once per forward; watch modules called once")
        self._order = order
        return emb[0], captured

    # ------------------------------------------------------------------ optimisation

    def _chunk_size(self, copies: int, per_copy_bytes: float, fixed_bytes: float, device: torch.device) -> int:
        """Copies per forward: ``chunk_size``, or as many as fit the budget left after ``fixed_bytes``."""
        if self.chunk_size != "auto":
            return min(int(self.chunk_size), copies)
        budget = self.memory_budget
        if budget is None:
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                budget = int(0.6 * free)
            else:
                budget = _CPU_MEMORY_BUDGET
        fit = int((budget - fixed_bytes) // max(per_copy_bytes, 1.0))
        if fit < 1:
            raise ValueError(
                f"one perturbed copy of the probe needs about {_human(per_copy_bytes)} of activations "
                f"(plus {_human(fixed_bytes)} of noise for all copies), more than memory_budget={_human(budget)}; "
                "raise `memory_budget`, or probe fewer or shorter sentences (a fixed `chunk_size` skips this check)"
            )
        return min(fit, copies)

    def _optimise(
        self,
        batch: inputs.Batch,
        mask: Tensor,
        prep: dict,
        init: Optional[InfoFlowResult],
        tokens: Optional[list[list[str]]],
        device: torch.device,
        on_step: Optional[Callable[[int, int], None]] = None,
        steps: int = 0,
    ) -> InfoFlowResult:
        x: Tensor = prep["x"]
        targets: list[_Target] = prep["targets"]
        bsz, seq, dim = x.shape
        n_targets, m = len(targets), self.samples
        copies = n_targets * m * bsz
        g_idx = torch.arange(copies, device=device) // (m * bsz)
        b_idx = torch.arange(copies, device=device) % bsz
        real = mask.float()
        # Words that have a state to explain: real words of sentences whose target has any time step
        # (``position`` past a sentence's end leaves that sentence without a state: NaN rows).
        has_state = torch.stack([sm.sum(1) > 0 for sm in prep["state_masks"]])  # [L, B]
        words = mask.unsqueeze(0) & has_state.unsqueeze(-1)  # [L, B, T]
        log_max = math.log(self.sigma_max)
        gen = torch.Generator(device=device).manual_seed(self.seed)

        run = _ChunkRunner(self, batch, prep, bsz, m, device)
        if self.chunk_size == "auto":
            per_copy = run.bytes_per_copy(x, rows=min(copies, 4))
        else:
            per_copy = 0.0
        # Every step draws the noise of all copies at once, so the draws do not depend on the chunking.
        state_numel = run.max_state_shape[0] * run.max_state_shape[1]
        noise_bytes = 4.0 * copies * max(seq * dim, state_numel)
        chunk = self._chunk_size(copies, per_copy, noise_bytes, device)
        bounds = [(a, min(a + chunk, copies)) for a in range(0, copies, chunk)]

        # Start point: the previous result, or the closed-form optimum of the linearised objective.
        if init is not None:
            log_sigma = self._warm_start(init, targets, mask, device)
        else:
            jac = torch.zeros(n_targets, bsz, seq, device=device)
            u_all = torch.randn((copies, *run.max_state_shape), generator=gen, device=device)
            for a, b in bounds:
                sq = run.vjp_norms(a, b, x[b_idx[a:b]], u_all[a:b])
                jac.index_put_((g_idx[a:b], b_idx[a:b]), sq / m, accumulate=True)
            log_sigma = 0.5 * (torch.log(torch.tensor(dim * self.lam, device=device)) - math.log(2.0)
                               - torch.log(jac.clamp_min(1e-30)))
        log_sigma = log_sigma.clamp(max=log_max).masked_fill(~words, 0.0)
        log_sigma = log_sigma.contiguous().requires_grad_(True)

        # Step size schedule eta_t = lr / (1 + t / tau): a warm start enters the schedule where the step
        # is ``warm_lr`` (a good start point is kept, not shaken by the first steps).
        offset = _TAU * (self.lr / self.warm_lr - 1.0) if init is not None else 0.0
        recon = torch.zeros(n_targets, device=device)
        prior_grad = -words.float()
        last_check = log_sigma.detach().clone()
        steps_run = 0
        for step in range(steps):
            grad = prior_grad.clone()
            recon = torch.zeros(n_targets, device=device)
            z_all = torch.randn((copies, seq, dim), generator=gen, device=device)
            for a, b in bounds:
                z = z_all[a:b]
                with torch.enable_grad():
                    sig = log_sigma.exp()[g_idx[a:b], b_idx[a:b]]
                    noise = (sig * real[b_idx[a:b]]).unsqueeze(-1) * z
                    err = run.errors(a, b, x[b_idx[a:b]] + noise)
                    loss = err.sum() / (dim * self.lam * m)
                    grad += torch.autograd.grad(loss, log_sigma)[0]
                recon.index_add_(0, g_idx[a:b], err.detach() / (dim * self.lam * m))
            eta = self.lr / (1.0 + (step + offset) / _TAU)
            log_sigma.sub_(eta * grad.clamp_(-1.0, _MAX_GRAD))
            log_sigma.clamp_(max=log_max)
            steps_run = step + 1
            if on_step is not None:
                on_step(steps_run, steps)
            if steps_run % self.check_every == 0 and steps_run < steps:
                moved = float((log_sigma - last_check).abs().max())  # the loop's only synchronisation
                if moved < self.tol:
                    break
                last_check = log_sigma.detach().clone()
        sigma = log_sigma.detach().exp().masked_fill(~words, float("nan"))
        # Final loss per layer: prior term plus the last step's reconstruction term, per sentence.
        prior = -(log_sigma.detach() * words).sum(dim=(1, 2))
        loss_val = (prior + recon) / bsz if steps_run else torch.full((n_targets,), float("nan"))
        return InfoFlowResult(
            layer_names=[t.name for t in targets],
            sigma=sigma.float().cpu(),
            mask=mask.cpu(),
            sigma_max=self.sigma_max,
            embedding_dim=dim,
            at_bound=((log_sigma.detach() >= log_max - 1e-4) & words).cpu(),
            loss=loss_val.float().cpu(),
            tokens=tokens,
            meta={"lam": self.lam, "steps_run": steps_run, "samples": m, "chunk_size": chunk,
                  "embedding": self.embedding_name, "warm_start": init is not None},
        )

    def _warm_start(self, init: InfoFlowResult, targets: list[_Target], mask: Tensor, device: torch.device) -> Tensor:
        names = [t.name for t in targets]
        if list(init.layer_names) != names or tuple(init.sigma.shape[1:]) != tuple(mask.shape):
            raise ValueError(
                f"`init` holds layers {init.layer_names} for sentences of shape {tuple(init.sigma.shape[1:])}, "
                f"but this estimate has layers {names} and shape {tuple(mask.shape)}; pass a result of the same "
                "estimator and probe"
            )
        return torch.nan_to_num(init.sigma.to(device).log(), nan=0.0)


class _ChunkRunner:
    """Runs one chunk of perturbed copies through the model and scores each copy on its own layer.

    Copy ``c`` belongs to target ``c // (samples * B)`` and sentence ``c % B``; copies of one target are
    contiguous, so a chunk touches few targets and the forward stops after the deepest one it needs.
    """

    def __init__(self, est: InfoFlowEstimator, batch: inputs.Batch, prep: dict, bsz: int, m: int,
                 device: torch.device) -> None:
        self.est = est
        self.batch = batch
        self.bsz = bsz
        self.per_target = m * bsz
        self.targets: list[_Target] = prep["targets"]
        self.states: dict[str, _LayerState] = prep["states"]
        self.inv_std: dict[str, Tensor] = prep["inv_std"]
        self.state_masks: list[Tensor] = prep["state_masks"]
        self.order: dict[str, int] = prep["order"]
        self.device = device
        self._batches: dict[tuple[int, int], inputs.Batch] = {}
        shapes = [s.state.shape[1:] for s in self.states.values()]
        self.max_state_shape = (max(s[0] for s in shapes), max(s[1] for s in shapes))

    def _plan(self, a: int, b: int) -> dict[str, list[tuple[int, int, int]]]:
        """For each module: (target, first row, last row) of the chunk's copies that score on it."""
        plan: dict[str, list[tuple[int, int, int]]] = {}
        first, last = a // self.per_target, (b - 1) // self.per_target
        for g in range(first, last + 1):
            lo, hi = max(a, g * self.per_target) - a, min(b, (g + 1) * self.per_target) - a
            plan.setdefault(self.targets[g].module_name, []).append((g, lo, hi))
        return plan

    def _run(self, a: int, b: int, x_rows: Tensor, score: Any) -> None:
        plan = self._plan(a, b)
        deepest = max(plan, key=lambda n: self.order[n])
        copies_of_batch = self._chunk_batch(a, b)

        def emb_hook(_m: nn.Module, _i: Any, output: Any) -> Any:
            out = hidden.first_tensor(output)
            return hidden.replace_first_tensor(output, x_rows.to(out.dtype))

        def layer_hook(name: str) -> Any:
            def hook(_m: nn.Module, _i: Any, output: Any) -> None:
                ls = self.states[name]
                out = _layout(hidden.first_tensor(output), ls.batch_dim, ls.time_dim).float()
                for g, lo, hi in plan[name]:
                    score(g, lo, hi, out[lo:hi], ls)
                if name == deepest:
                    raise _StopForward
            return hook

        with ExitStack() as stack:
            handles = [self.est._embedding.register_forward_hook(emb_hook)]
            handles += [self.est._modules[n].register_forward_hook(layer_hook(n)) for n in plan]
            for h in handles:
                stack.callback(h.remove)
            try:
                inputs.call_model(self.est.model, copies_of_batch)
            except _StopForward:
                pass

    def _chunk_batch(self, a: int, b: int) -> inputs.Batch:
        """The model inputs of copies ``a:b`` (copy ``c`` holds sentence ``c % B``), built once per chunk."""
        if (a, b) not in self._batches:
            idx = torch.arange(a, b, device=self.device) % self.bsz
            self._batches[(a, b)] = inputs.map_batch(self.batch, lambda t: t.index_select(0, idx.to(t.device)),
                                                   self.bsz)
        return self._batches[(a, b)]

    def errors(self, a: int, b: int, x_rows: Tensor) -> Tensor:
        """Normalised squared error of each copy's state against the clean state of its target: ``[b - a]``."""
        parts: list[tuple[int, Tensor]] = []
        sentences = torch.arange(a, b, device=self.device) % self.bsz

        def score(g: int, lo: int, hi: int, out: Tensor, ls: _LayerState) -> None:
            t = self.targets[g]
            b_rows = sentences[lo:hi]
            diff = (out - ls.state[b_rows]) * self.inv_std[t.module_name]
            parts.append((lo, (diff.pow(2).sum(-1) * self.state_masks[g][b_rows]).sum(-1)))

        self._run(a, b, x_rows, score)
        parts.sort(key=lambda p: p[0])
        return torch.cat([p[1] for p in parts])

    def vjp_norms(self, a: int, b: int, x_rows: Tensor, u: Tensor) -> Tensor:
        """``||u^T J_i||^2`` per copy and word for random ``u`` in the normalised state space: ``[b - a, T]``."""
        parts: list[tuple[int, Tensor]] = []
        sentences = torch.arange(a, b, device=self.device) % self.bsz
        with torch.enable_grad():
            x_rows = x_rows.detach().requires_grad_(True)

            def score(g: int, lo: int, hi: int, out: Tensor, ls: _LayerState) -> None:
                t = self.targets[g]
                w = u[lo:hi, : out.shape[1], : out.shape[2]] * self.inv_std[t.module_name]
                w = w * self.state_masks[g][sentences[lo:hi]].unsqueeze(-1)
                parts.append((lo, (out * w).sum()))

            self._run(a, b, x_rows, score)
            total = torch.stack([p[1] for p in parts]).sum()
            (grad,) = torch.autograd.grad(total, x_rows)
        return grad.pow(2).sum(-1)

    def bytes_per_copy(self, x: Tensor, rows: int) -> float:
        """Activation bytes autograd saves per perturbed copy, measured on a few copies of the deepest layer.

        Each saved storage counts once; the model's parameters (saved by every layer but shared by all
        copies) do not count.
        """
        params = {p.untyped_storage().data_ptr() for p in self.est.model.parameters()}
        params |= {b.untyped_storage().data_ptr() for b in self.est.model.buffers()}
        seen: set[int] = set()
        saved = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal saved
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params and ptr not in seen:
                seen.add(ptr)
                saved += t.untyped_storage().nbytes()
            # Detached: the storage stays alive (pointers stay unique) but the packed tensor holds no
            # grad_fn. Returning ``t`` itself would tie a saved output to its own graph node, a cycle
            # the garbage collector cannot see, and leak the graph of every analysis.
            return t.detach()

        deepest = max(range(len(self.targets)), key=lambda g: self.order[self.targets[g].module_name])
        a = int(deepest * self.per_target)
        b = min(a + rows, len(self.targets) * self.per_target)
        x_rows = x[torch.arange(a, b, device=x.device) % self.bsz].requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self.errors(a, b, x_rows * 1.0)
        return saved / (b - a)
