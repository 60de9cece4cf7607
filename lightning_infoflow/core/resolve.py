"""Module names to modules: exact names, glob patterns and ``"auto"`` discovery of embeddings and layers."""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Sequence

from torch import nn

log = logging.getLogger(__name__)


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
        found = _auto_layers(model, embedding_name)
        _warn_stacked_rnns(model, found)
        return found
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
