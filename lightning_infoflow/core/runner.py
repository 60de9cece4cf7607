"""The hooked forward shared by every analysis: embeddings in at the embedding module, states out at the layers.

:class:`ProbeRunner` is the one place where hooks are registered on a model. :meth:`ProbeRunner.prepare`
runs the checks every analysis relies on and returns a :class:`PreparedProbe`: the clean word embeddings,
each watched layer's clean state laid out ``[B, T', F]`` (batch and time axes located by comparing a
forward on ``B`` sentences with one on ``2B``), the per-unit normalisation, and the result rows.
:meth:`ProbeRunner.forward` then runs copies of the probe with the embedding output replaced (by noisy
embeddings, a mask mixture, integration points, candidate words, ...) and hands each watched layer's
state to a callback, stopping after the deepest layer needed. The estimator, the saliency baselines and
the state likelihood of the word attributes all run through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import Tensor, nn

from lightning_infoflow.core import hidden, inputs, resolve

Position = Union[Literal["all", "each"], int, Sequence[int]]
"""Which time steps of a layer's output form the state: ``"all"``, ``"each"``, an int or a list of ints."""

Hook = Callable[[nn.Module, Any, Any], Any]

NORMALISATIONS = ("tokens", "sentences")
"""How each hidden unit is scaled before the reconstruction error: by its spread over every real token of
the probe (``"tokens"``, :func:`hidden.unit_inv_std`) or over the probe's sentence-averaged states
(``"sentences"``, the paper's authors, :func:`hidden.sentence_inv_std`)."""

_INV_STD = {"tokens": hidden.unit_inv_std, "sentences": hidden.sentence_inv_std}


def check_normalisation(normalisation: Any) -> None:
    """Raise a ValueError unless ``normalisation`` is one of :data:`NORMALISATIONS`."""
    if normalisation not in _INV_STD:
        raise ValueError(f"`normalisation` must be 'tokens' (per-token spread, the default) or 'sentences' "
                         f"(the spread of sentence-averaged states, the paper's authors), got {normalisation!r}")


def check_position(position: Any) -> None:
    """Raise a ValueError unless ``position`` is a :data:`Position`."""
    if position in ("all", "each") or isinstance(position, int):
        return
    if isinstance(position, Sequence) and not isinstance(position, str) and position and all(
        isinstance(p, int) for p in position
    ):
        return
    raise ValueError(f"`position` must be 'all', 'each', an int or a list of ints, got {position!r}")


@dataclass
class StateRow:
    """One row of a result: a watched module and which of its time steps make up the state ``s``."""

    name: str
    module_name: str
    position: Optional[int]  # None: every real time step concatenated


@dataclass
class LayerState:
    """Clean hidden state of one watched module, laid out ``[B, T', F]`` (float32)."""

    state: Tensor
    batch_dim: int
    time_dim: Optional[int]
    aligned: bool  # the time axis is the input's word axis (the padding mask applies)


@dataclass
class PreparedProbe:
    """A checked probe batch and everything the analyses need from its clean forward.

    Attributes:
        batch: the model inputs, on the model's device.
        mask: bool ``[B, T]``, True at real words.
        x: the clean word embeddings ``[B, T, K]``, float32 (whatever the model's dtype).
        states: each watched module's clean state.
        inv_std: each watched module's ``1 / std`` per hidden unit ``[F]`` over the probe (or the reference).
        rows: the result rows (one per module, or per module and time step).
        state_masks: per row, ``[B, T']`` weights of the time steps that form the state.
        order: each watched module's call order in the forward.
        noise_scale: the noise scale of the check forward (the estimator's ``sigma_max``).
    """

    batch: inputs.Batch
    mask: Tensor
    x: Tensor
    states: dict[str, LayerState]
    inv_std: dict[str, Tensor]
    rows: list[StateRow]
    state_masks: list[Tensor]
    order: dict[str, int]
    noise_scale: float

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.mask.shape[1])

    @property
    def embedding_dim(self) -> int:
        return int(self.x.shape[-1])

    def clean(self, g: int) -> Tensor:
        """The clean state ``[B, T', F]`` of row ``g``'s module."""
        return self.states[self.rows[g].module_name].state

    def row_mask(self, g: int, sentences: Tensor) -> Tensor:
        """State mask of row ``g`` for rows of the given sentences: ``[N, T']``."""
        return self.state_masks[g][sentences]

    def state_spread(self) -> Tensor:
        """``[rows]`` each row's clean state spread over the probe (:func:`hidden.state_spread`), float32 CPU."""
        return torch.tensor([hidden.state_spread(self.clean(g), self.state_masks[g]) for g in range(len(self.rows))])


def _discard(_t: Tensor) -> None:
    """Pack hook of forwards that are never differentiated: keep nothing."""
    return None


def _unreachable(_packed: None) -> Tensor:
    raise RuntimeError("internal error: backward through a clean forward of the probe")


@dataclass
class _Captured:
    """What one check forward saw: the embedding outputs, each layer's first output and its call count."""

    embeddings: list[Tensor]
    outputs: dict[str, Tensor]
    calls: dict[str, int]
    order: list[str]


class ProbeRunner:
    """Runs a model with its embedding output replaced and reads the watched layers' states.

    Args:
        model: the network, called as in training (``model(ids)`` or ``model(**batch)``).
        embedding_name: name of the module whose output is the word embeddings.
        layer_names: resolved names of the watched modules.
    """

    def __init__(self, model: nn.Module, embedding_name: str, layer_names: Sequence[str]) -> None:
        if embedding_name in layer_names:
            raise ValueError(f"the embedding module {embedding_name!r} cannot also be a watched layer")
        self.model = model
        self.embedding_name = embedding_name
        self.embedding = resolve.find_module(model, embedding_name, "embedding")
        self.layer_names = list(layer_names)
        self.modules = {n: resolve.find_module(model, n, "layer") for n in self.layer_names}

    @classmethod
    def resolve(cls, model: nn.Module, layers: Union[str, Sequence[str]], embedding: str) -> ProbeRunner:
        """Resolve ``"auto"``, names and glob patterns (:mod:`~lightning_infoflow.core.resolve`) into a runner."""
        embedding_name, _ = resolve.resolve_embedding(model, embedding)
        return cls(model, embedding_name, resolve.resolve_layers(model, layers, embedding_name))

    # ------------------------------------------------------------------ preparation

    def prepare(self, batch: inputs.Batch, mask: Tensor, position: Position, *,
                noise_scale: Optional[float] = None, reference: Optional[inputs.Batch] = None,
                reference_mask: Optional[Tensor] = None, seed: int = 0,
                normalisation: str = "tokens") -> PreparedProbe:
        """Check the batch against the model and collect what every analysis needs (see :class:`PreparedProbe`).

        Two forwards: the clean batch (``B`` sentences), then the batch twice with the second copy's
        embeddings perturbed by noise of scale ``noise_scale`` (default: 10 x the std of the clean
        embeddings). They locate each layer's batch and time axes and show that it depends on its input.
        ``normalisation`` chooses the per-unit spread that ``inv_std`` holds (see :data:`NORMALISATIONS`).

        Raises:
            ValueError: the embedding or a layer not called exactly once, an embedding output that is not
                ``[B, T, K]``, a non-finite layer output, a layer independent of the embeddings, a model
                that fails on the batch or on copies of it; each with the fix.
        """
        bsz, seq = mask.shape
        clean = self._check_forward(batch, bsz)
        x = clean.embeddings[0].float()
        if noise_scale is None:
            noise_scale = default_noise_scale(x, mask)
        gen = torch.Generator(device=x.device).manual_seed(seed)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        scale = torch.zeros(2 * bsz, 1, 1, device=x.device)
        scale[bsz:] = noise_scale
        doubled = self._check_forward(inputs.repeat_batch(batch, 2, bsz), 2 * bsz,
                                      replace=torch.cat([x, x]) + scale * torch.cat([noise, noise]))
        states = {n: self._layer_state(n, clean.outputs[n], doubled.outputs[n], bsz, seq) for n in self.layer_names}
        inv_std = self._inv_std(states, mask, reference, reference_mask, _INV_STD[normalisation])
        rows = self.rows(states, position)
        state_masks = [hidden.state_mask(states[r.module_name].state.shape[1], r.position,
                                         states[r.module_name].aligned, mask) for r in rows]
        order = {n: i for i, n in enumerate(clean.order)}
        return PreparedProbe(batch, mask, x, states, inv_std, rows, state_masks, order, float(noise_scale))

    def _layer_state(self, name: str, out: Tensor, doubled: Tensor, bsz: int, seq: int) -> LayerState:
        if not torch.isfinite(out).all():
            raise ValueError(
                f"layer {name!r} returned non-finite values on the probe batch; check the model and inputs"
            )
        bdim, tdim = hidden.find_batch_and_time_dims(out, doubled, seq, self.modules[name])
        if torch.equal(doubled.narrow(bdim, bsz, bsz), doubled.narrow(bdim, 0, bsz)):
            raise ValueError(
                f"layer {name!r} does not depend on the input embeddings of {self.embedding_name!r}; "
                "watch a layer downstream of the embedding (or pass the right `embedding=`)"
            )
        state = hidden.layout(out, bdim, tdim).float()
        return LayerState(state, bdim, tdim, tdim is not None and state.shape[1] == seq)

    def _inv_std(self, states: dict[str, LayerState], mask: Tensor, reference: Optional[inputs.Batch],
                 reference_mask: Optional[Tensor], inv_std: Callable[[Tensor, Tensor, bool], Tensor]
                 ) -> dict[str, Tensor]:
        """1/std per hidden unit over the probe, or over ``reference`` (``inv_std``: the normalisation)."""
        if reference is None or reference_mask is None:
            return {n: inv_std(s.state, mask, s.aligned) for n, s in states.items()}
        ref = self._check_forward(reference, int(reference_mask.shape[0])).outputs
        bad = [n for n in self.layer_names if not torch.isfinite(ref[n]).all()]
        if bad:
            raise ValueError(f"layer(s) {bad} returned non-finite values on the `reference` batch; "
                             "check the reference inputs")
        out = {}
        for n, s in states.items():
            state = hidden.layout(ref[n], s.batch_dim, s.time_dim).float()
            aligned = s.aligned and ref[n].shape[s.time_dim] == reference_mask.shape[1]  # type: ignore[index]
            out[n] = inv_std(state, reference_mask, aligned)
        return out

    def rows(self, states: dict[str, LayerState], position: Position) -> list[StateRow]:
        """The result rows: one per watched module (``"all"``), or one per module and selected time step."""
        rows = []
        for name in self.layer_names:
            if position == "all":
                rows.append(StateRow(name, name, None))
                continue
            length = states[name].state.shape[1]
            if position == "each":
                positions: Sequence[int] = range(length)
            elif isinstance(position, int):
                positions = [position]
            else:
                positions = list(position)
            for p in positions:
                if not -length <= p < length:
                    raise ValueError(f"position {p} is outside layer {name!r}'s {length} time steps")
                rows.append(StateRow(f"{name}@{p}", name, p))
        return rows

    def _check_forward(self, batch: inputs.Batch, bsz: int, replace: Optional[Tensor] = None) -> _Captured:
        """One forward on the autograd code path of the analyses, with every check of the module calls.

        The embedding output becomes a leaf that requires grad (``replace`` when given), so the forward
        takes the same code path as the differentiated ones (e.g. no nested-tensor fast path in
        ``nn.TransformerEncoder``), while nothing is saved for a backward that never comes.
        """
        seen = _Captured([], {}, {}, [])

        def emb_hook(_m: nn.Module, _i: Any, output: Any) -> Any:
            out = hidden.first_tensor(output)
            if out.dim() != 3 or out.shape[0] != bsz:
                raise ValueError(
                    f"the embedding module {self.embedding_name!r} returned shape {tuple(out.shape)}; "
                    "expected [B, T, K] word embeddings. Pass embedding='<token lookup module>'"
                )
            seen.embeddings.append(out.detach())
            new = (out if replace is None else replace.to(out.dtype)).detach().requires_grad_(True)
            return hidden.replace_first_tensor(output, new)

        def layer_hook(name: str) -> Hook:
            def hook(_m: nn.Module, _i: Any, output: Any) -> None:
                seen.calls[name] = seen.calls.get(name, 0) + 1
                if name not in seen.outputs:
                    seen.order.append(name)
                    seen.outputs[name] = hidden.first_tensor(output).detach()
            return hook

        hooks = [(self.embedding, emb_hook)] + [(m, layer_hook(n)) for n, m in self.modules.items()]
        try:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_discard, _unreachable):
                self._call(batch, hooks)
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - reported with the fix
            raise ValueError(self._failure(batch, bsz, replace is not None, err)) from err
        self._check_calls(seen)
        return seen

    def _failure(self, batch: inputs.Batch, bsz: int, copies: bool, err: Exception) -> str:
        """The message for a model that failed on the probe (or on copies of it)."""
        msg = f"the model failed on the probe batch: {type(err).__name__}: {err}"
        kept = inputs.unchanged_entries(batch, bsz)
        if copies and kept:
            msg = (f"the model failed on copies of the probe batch ({bsz} rows): {type(err).__name__}: {err}. "
                   f"The batch entries {kept} hold no item per sentence and are passed unchanged to every copy; "
                   "pass per-sentence values as a tensor (or a list) with one item per sentence")
        return msg

    def _check_calls(self, seen: _Captured) -> None:
        if not seen.embeddings:
            raise ValueError(
                f"the embedding module {self.embedding_name!r} was not called by the forward; pass embedding=..."
            )
        if len(seen.embeddings) > 1:
            raise ValueError(
                f"the embedding module {self.embedding_name!r} is called {len(seen.embeddings)} times per forward; "
                "the noise must enter once. Embed the whole input in one call (and split afterwards), or pass "
                "embedding=..."
            )
        missing = [n for n in self.layer_names if n not in seen.outputs]
        if missing:
            raise ValueError(f"layer(s) {missing} were not called by the model's forward; check `layers`")
        repeated = [n for n, c in seen.calls.items() if c > 1]
        if repeated:
            raise ValueError(f"layer(s) {repeated} are called more than once per forward; watch modules called once")

    # ------------------------------------------------------------------ running

    def _call(self, batch: inputs.Batch, hooks: Sequence[tuple[nn.Module, Hook]]) -> None:
        """Call the model with forward hooks registered for this call only (removed also on error)."""
        with ExitStack() as stack:
            for module, fn in hooks:
                stack.callback(module.register_forward_hook(fn).remove)
            with suppress(hidden.StopForward):
                inputs.call_model(self.model, batch)

    def copies(self, prep: PreparedProbe, sentences: Tensor) -> inputs.Batch:
        """Model inputs whose row ``r`` is probe sentence ``sentences[r]``."""
        if sentences.numel() == prep.batch_size and torch.equal(sentences.cpu(), torch.arange(prep.batch_size)):
            return prep.batch
        return inputs.select_rows(prep.batch, sentences, prep.batch_size)

    def forward(self, prep: PreparedProbe, batch_rows: inputs.Batch, x_rows: Tensor, modules: Sequence[str],
                on_state: Callable[[str, Tensor], None], extra_hooks: Sequence[tuple[nn.Module, Hook]] = (),
                done: Optional[dict[str, Tensor]] = None) -> None:
        """Run ``batch_rows`` with the embedding output replaced by ``x_rows`` ``[N, T, K]``.

        ``on_state(name, state)`` receives each of ``modules``' states laid out ``[N, T', F]`` (float32,
        differentiable with respect to ``x_rows``); the forward stops after the deepest of them.
        ``extra_hooks`` are ``(module, forward_hook)`` pairs registered for this call only. ``done`` maps a
        module to the bool ``[N]`` rows whose state is read there and no further: downstream of it they
        are detached (same values), so a later module that is not finite for them (``0 * inf`` in its
        backward) cannot turn their gradients into NaN.
        """
        deepest = max(modules, key=lambda n: prep.order[n])

        def emb_hook(_m: nn.Module, _i: Any, output: Any) -> Any:
            return hidden.replace_first_tensor(output, x_rows.to(hidden.first_tensor(output).dtype))

        def layer_hook(name: str) -> Hook:
            ls = prep.states[name]

            def hook(_m: nn.Module, _i: Any, output: Any) -> Any:
                out = hidden.first_tensor(output)
                on_state(name, hidden.layout(out, ls.batch_dim, ls.time_dim).float())
                if name == deepest:
                    raise hidden.StopForward
                rows = None if done is None else done.get(name)
                if rows is None or not out.requires_grad or not isinstance(output, (Tensor, tuple, list)):
                    return None
                shape = [1] * out.dim()
                shape[ls.batch_dim] = -1
                return hidden.replace_first_tensor(output, torch.where(rows.view(shape), out.detach(), out))
            return hook

        hooks = [(self.embedding, emb_hook), *extra_hooks]
        hooks += [(self.modules[n], layer_hook(n)) for n in modules]
        self._call(batch_rows, hooks)

    def states(self, prep: PreparedProbe, x: Tensor, modules: Optional[Sequence[str]] = None,
               extra_hooks: Sequence[tuple[nn.Module, Hook]] = ()) -> dict[str, Tensor]:
        """States ``[N, T', F]`` of ``modules`` (default: all) for ``N`` rows, row ``r`` being sentence ``r % B``."""
        n = x.shape[0]
        if n % prep.batch_size:
            raise ValueError(f"{n} rows is not a multiple of the probe's {prep.batch_size} sentences")
        names = self.layer_names if modules is None else list(modules)
        got: dict[str, Tensor] = {}
        sentences = torch.arange(n, device=prep.mask.device) % prep.batch_size
        self.forward(prep, self.copies(prep, sentences), x, names, got.__setitem__, extra_hooks)
        return got


def default_noise_scale(x: Tensor, mask: Tensor) -> float:
    """10 x the standard deviation of the real words' embeddings (``sigma_max`` without an embedding matrix)."""
    return 10.0 * float(x[mask].float().std())
