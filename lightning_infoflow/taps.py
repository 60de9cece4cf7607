"""Finding the modules to watch, and the small batch utilities the estimator shares.

Nothing here optimises anything: this module resolves names (exact, glob or ``"auto"``) to modules,
describes how a module's output is laid out (which dimension is the batch, which is time), and
moves and repeats the user's batch.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Iterator, Union

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

Batch = Union[Tensor, Mapping[str, Any]]

_RNN_TYPES = (nn.LSTM, nn.GRU, nn.RNN)


def _close_matches(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    if not close:
        close = [n for n in names if name.split(".")[-1] in n][:5]
    return ", ".join(repr(c) for c in close) if close else "none"


def glob_match(name: str, pattern: str) -> bool:
    """Match a dotted module name against a glob pattern, one name component at a time.

    ``*``, ``?`` and ``[...]`` stay inside one component (``"encoder.layer.*"`` matches the blocks
    ``encoder.layer.0``, ``encoder.layer.1``, ... but not their submodules); a ``**`` component matches
    any number of components (``"**.lstm"``).

    >>> glob_match("encoder.layer.0", "encoder.layer.*"), glob_match("encoder.layer.0.output", "encoder.layer.*")
    (True, False)
    >>> glob_match("encoder.layer.0.output", "encoder.**.output")
    True
    """

    def match(parts: list[str], pats: list[str]) -> bool:
        if not pats:
            return not parts
        if pats[0] == "**":
            return any(match(parts[k:], pats[1:]) for k in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], pats[0]) and match(parts[1:], pats[1:])

    return match(name.split("."), pattern.split("."))


def find_module(model: nn.Module, name: str, what: str) -> nn.Module:
    """Return the submodule called ``name`` or raise a ValueError that lists close matches."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    raise ValueError(
        f"Unknown {what} module {name!r}. Close matches: {_close_matches(name, list(modules))}. "
        f"Pass one of the names in `dict(model.named_modules())`."
    )


def resolve_embedding(model: nn.Module, embedding: str) -> tuple[str, nn.Module]:
    """Resolve the module whose output is the word embeddings ``x`` of the paper.

    ``"auto"`` takes ``model.get_input_embeddings()`` (Hugging Face models) or else the first
    :class:`~torch.nn.Embedding` in registration order.
    """
    names = {id(m): n for n, m in model.named_modules()}
    if embedding != "auto":
        return embedding, find_module(model, embedding, "embedding")
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            module = get()
        except (NotImplementedError, AttributeError):
            module = None
        if isinstance(module, nn.Module) and id(module) in names:
            name = names[id(module)]
            log.info("infoflow: embedding=%r (model.get_input_embeddings(), the token lookup)", name)
            return name, module
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            log.info("infoflow: embedding=%r (first nn.Embedding in the model)", name)
            return name, module
    raise ValueError(
        "embedding='auto' found no nn.Embedding and no get_input_embeddings() in the model. "
        "Pass embedding='<module name>' naming the module whose output is the word embeddings."
    )


def _layer_stack(model: nn.Module) -> tuple[str, list[str]] | None:
    """The largest ModuleList of same-typed blocks (HF encoder layers, nn.TransformerEncoder)."""
    best: tuple[int, str, list[str]] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(m) for m in module}
        if len(kinds) != 1 or isinstance(module[0], (nn.Embedding, nn.Linear, nn.LayerNorm, nn.Dropout)):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            children = [f"{name}.{i}" for i in range(len(module))]
            best = (size, name, children)
    return None if best is None else (best[1], best[2])


def resolve_layers(model: nn.Module, layers: str | Sequence[str], embedding_name: str) -> list[str]:
    """Resolve ``layers`` (``"auto"``, a name, a glob pattern, or a list of them) to module names.

    ``"auto"`` looks, in this order, for: the largest list of identical blocks (Hugging Face
    encoder layers, ``nn.TransformerEncoder.layers``); recurrent modules (``nn.LSTM``, ``nn.GRU``,
    ``nn.RNN``, one module = one layer); ``nn.Conv1d`` modules (each branch of a text CNN a layer).
    """
    names = [n for n, _ in model.named_modules() if n]
    if layers == "auto":
        out = _auto_layers(model, embedding_name)
        _warn_stacked_rnns(model, out)
        return out
    if isinstance(layers, str):
        layers = [layers]
    if len(layers) == 0:
        raise ValueError("`layers` is empty. Pass 'auto', a module name, a glob pattern or a list of them.")
    out: list[str] = []
    for pattern in layers:
        if any(ch in pattern for ch in "*?["):
            hits = [n for n in names if glob_match(n, pattern)]
            if not hits:
                raise ValueError(
                    f"Layer pattern {pattern!r} matches no module. Close matches: "
                    f"{_close_matches(pattern.replace('*', ''), names)}."
                )
            out.extend(h for h in hits if h not in out)
        else:
            find_module(model, pattern, "layer")
            if pattern not in out:
                out.append(pattern)
    _warn_stacked_rnns(model, out)
    return out


def _warn_stacked_rnns(model: nn.Module, layers: Sequence[str]) -> None:
    """Warn for each watched ``nn.LSTM``/``nn.GRU``/``nn.RNN`` with ``num_layers > 1``."""
    modules = dict(model.named_modules())
    for n in layers:
        m = modules[n]
        if isinstance(m, _RNN_TYPES) and m.num_layers > 1:
            log.warning(
                "infoflow: %r is a stacked %s with num_layers=%d; its inner layers are hidden and only "
                "its last layer's output can be watched. Build one module per layer (e.g. an "
                "nn.ModuleList of single-layer %s) to see each layer.",
                n, type(m).__name__, m.num_layers, type(m).__name__,
            )


def _auto_layers(model: nn.Module, embedding_name: str) -> list[str]:
    stack = _layer_stack(model)
    if stack is not None:
        log.info("infoflow: layers=auto chose the %d blocks of %r (largest list of identical blocks)",
                 len(stack[1]), stack[0])
        return stack[1]
    rnns = [(n, m) for n, m in model.named_modules() if isinstance(m, _RNN_TYPES)]
    if rnns:
        log.info("infoflow: layers=auto chose the recurrent modules %s", [n for n, _ in rnns])
        return [n for n, _ in rnns]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv1d)]
    if convs:
        log.info("infoflow: layers=auto chose the Conv1d modules %s (each branch a layer)", convs)
        return convs
    raise ValueError(
        "layers='auto' found no block list, recurrent module or Conv1d in the model. "
        "Pass layers=[...] with module names or glob patterns (see `dict(model.named_modules())`)."
    )


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


def batch_size_of(batch: Batch) -> int:
    return int(input_ids_of(batch).shape[0])


def input_ids_of(batch: Batch) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping) and isinstance(batch.get("input_ids"), Tensor):
        return batch["input_ids"]
    raise ValueError(
        "A probe batch must be a LongTensor [B, T] of token ids or a dict with 'input_ids' "
        f"(and optionally 'attention_mask'); got {type(batch).__name__}."
    )


def map_batch(batch: Batch, fn: Any, batch_size: int) -> Batch:
    """Apply ``fn`` to every tensor of ``batch`` whose first dimension is the batch."""
    if isinstance(batch, Tensor):
        return fn(batch)
    return {k: fn(v) if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == batch_size else v
            for k, v in batch.items()}


def repeat_batch(batch: Batch, times: int, batch_size: int) -> Batch:
    """``times`` copies of the batch stacked along dim 0 (copy c holds sentence c % batch_size)."""
    return map_batch(batch, lambda t: t.repeat(times, *([1] * (t.dim() - 1))), batch_size)


def call_model(model: nn.Module, batch: Batch) -> Any:
    """Call the model exactly as in training: ``model(tensor)`` or ``model(**dict)``."""
    return model(batch) if isinstance(batch, Tensor) else model(**batch)


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


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run ``torch.compile``'d modules and functions eagerly for the duration, compiling nothing.

    The analysis hooks modules, switches them to eval mode and feeds batches of other shapes: under
    a compiled module each of these would fail a guard and trigger a recompilation (and could evict the
    training graph from the cache). With torch>=2.6 this is ``torch.compiler.set_stance("force_eager")``;
    on older versions ``torch._dynamo.config.disable`` is set instead, which skips compilation of new
    frames (already compiled code may still run).
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is not None:
        with set_stance("force_eager"):
            yield
        return
    try:  # torch < 2.6
        import torch._dynamo.config as dynamo_config
    except ImportError:  # pragma: no cover - builds without dynamo
        yield
        return
    with dynamo_config.patch(disable=True):
        yield


@contextlib.contextmanager
def model_untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration; everything restored on exit, also on error.

    Every submodule's ``training`` flag, every parameter's ``requires_grad`` and the global RNG (CPU,
    and the model's CUDA device) are put back. Freezing the parameters keeps autograd from saving what
    weight gradients would need; callers take gradients with :func:`torch.autograd.grad` with respect to
    their own tensors, so no ``.grad`` is written. On CUDA a model with a recurrent module runs with
    cuDNN disabled: cuDNN's RNN backward refuses eval mode ("cudnn RNN backward can only be called in
    training mode"). Compiled modules run eagerly (:func:`eager`): nothing is compiled for the analysis
    and the training graph's compiled code is neither replaced nor recompiled.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    has_rnn = any(isinstance(m, nn.RNNBase) for m in model.modules())
    cudnn = (torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" and has_rnn
             else contextlib.nullcontext())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), cudnn, eager():
        try:
            model.eval()
            for p, _ in grads:
                p.requires_grad_(False)
            yield
        finally:
            for module, mode in modes:
                module.training = mode
            for p, flag in grads:
                p.requires_grad_(flag)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def word_mask(batch: Batch, pad_token_id: Any = None) -> Tensor:
    """Validate the token ids of ``batch`` and return its ``[B, T]`` mask of real (non-padded) words.

    The mask is ``attention_mask`` where the batch has one, else ``ids != pad_token_id``, else all True.

    Raises:
        ValueError: non-integer ids, a shape other than ``[B, T]``, an empty batch, a mask of another
            shape, or a sentence that is all padding (each with the fix).
    """
    ids = input_ids_of(batch)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"token ids must be an integer tensor, got dtype {ids.dtype}; pass ids.long()")
    if ids.dim() != 2:
        raise ValueError(f"token ids must have shape [B, T], got {tuple(ids.shape)}; add a batch dimension")
    if ids.numel() == 0:
        raise ValueError(f"the probe batch is empty (shape {tuple(ids.shape)}); pass at least one sentence")
    attn = batch.get("attention_mask") if isinstance(batch, Mapping) else None  # also BatchEncoding
    if isinstance(attn, Tensor):
        if attn.shape != ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attn.shape)} but input_ids {tuple(ids.shape)}; pass the "
                "tokenizer's [B, T] mask of 1 (word) and 0 (padding)"
            )
        mask = attn.bool()
    elif pad_token_id is not None:
        mask = ids != pad_token_id
    else:
        mask = torch.ones_like(ids, dtype=torch.bool)
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"probe sentence(s) {empty} are all padding; remove them from the batch")
    return mask


def layout(t: Tensor, batch_dim: int, time_dim: Any) -> Tensor:
    """A hidden state with batch moved to dim 0 and time to dim 1, the rest flattened: ``[N, T', F]``."""
    n = t.shape[batch_dim]
    if time_dim is None:
        return t.movedim(batch_dim, 0).reshape(n, 1, -1)
    return t.movedim((batch_dim, time_dim), (0, 1)).reshape(n, t.shape[time_dim], -1)


def unit_inv_std(state: Tensor, mask: Any, aligned: bool) -> Tensor:
    """1/std of each hidden unit of ``state`` ``[B, T', F]`` over every real time step of every sentence.

    Units whose variance is ~0 (dead units, LayerNorm weights near 0) get a floor of 1e-6 x the layer's
    mean variance so that no unit divides by zero. A layer that is constant over the probe (one sentence
    and a pooled state, or identical sentences) is normalised by its mean square (one scalar) instead.
    ``mask`` ``[B, T]`` selects the real time steps where the time axis is the word axis (``aligned``).
    """
    flat = state[mask] if aligned else state.flatten(0, 1)
    var = flat.var(dim=0, unbiased=False)
    square = flat.pow(2).mean(0)
    if float(var.mean()) <= 1e-6 * float(square.mean()):
        var = square.mean().expand_as(var)
    tiny = torch.finfo(torch.float32).tiny
    return var.clamp_min(1e-6 * float(var.mean()) + tiny).rsqrt()


def state_mask(length: int, position: Any, aligned: bool, mask: Tensor) -> Tensor:
    """``[B, T']`` weights of the time steps that form the state ``s``, per sentence.

    ``position`` None: every (real, where ``aligned``) time step; an int: that time step (negative counts
    from each sentence's last real word when ``aligned``). A sentence whose selected time step is padding
    gets an all-zero row: it has no state there.
    """
    bsz, device = mask.shape[0], mask.device
    if position is None:
        return mask.float() if aligned else torch.ones(bsz, length, device=device)
    if aligned and position < 0:
        idx = mask.sum(1) + position  # counted from each sentence's last real word (right padding)
    else:
        idx = torch.full((bsz,), position % length, device=device)
    out = (torch.arange(length, device=device)[None, :] == idx[:, None]).float()
    return out * mask.float() if aligned else out


class StopForward(BaseException):
    """Raised by the hook of the deepest watched layer: the rest of the model's forward is not needed.

    A ``BaseException`` so that a model's own ``except Exception:`` blocks do not swallow it.
    """


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
