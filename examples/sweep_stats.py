"""The numbers behind the sweep report: Spearman rank correlation (torch only), the spread of a layer's
states over the probe recomputed from a saved checkpoint, and the direction a finding's advice points."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor

# --------------------------------------------------------------------------- rank correlation


def ranks(values: Sequence[float]) -> Tensor:
    """1-based ranks, ties sharing their mean rank.

    >>> ranks([3.0, 1.0, 3.0, 2.0]).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    x = torch.as_tensor(values, dtype=torch.float64)
    out = torch.empty_like(x)
    out[torch.argsort(x, stable=True)] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for v in torch.unique(x):
        tied = x == v
        out[tied] = out[tied].mean()
    return out


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(torch.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of the tie-averaged ranks); NaN when either is constant or has NaN.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3, 4], [4, 3, 2, 1])
    (1.0, -1.0)
    """
    if len(x) != len(y) or len(x) < 3 or any(math.isnan(float(v)) for v in (*x, *y)):
        return float("nan")
    return _pearson(ranks(x), ranks(y))


def permutation_p(x: Sequence[float], y: Sequence[float], exact_up_to: int = 8, draws: int = 20000) -> float:
    """Two-sided p-value of Spearman's rho under random pairing: exact (every permutation) for up to
    ``exact_up_to`` runs, else from ``draws`` random permutations (seed 0)."""
    rho = spearman(x, y)
    if math.isnan(rho):
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    if len(x) <= exact_up_to:
        perms: Any = (torch.tensor(p) for p in itertools.permutations(range(len(x))))
        total = math.factorial(len(x))
    else:
        g = torch.Generator().manual_seed(0)
        perms = (torch.randperm(len(x), generator=g) for _ in range(draws))
        total = draws
    hits = sum(abs(_pearson(rx, ry[p])) >= abs(rho) - 1e-12 for p in perms)
    return hits / total


# --------------------------------------------------------------------------- state spread


def state_spread(states: Tensor, mask: Tensor) -> float:
    """How much a layer's state varies across the probe's words, relative to its own magnitude:
    ``sum_u Var(h_u) / sum_u E[h_u^2]`` over the real words (1: no shared offset, 0: every word the same).

    >>> state_spread(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    0.0
    """
    h = states[mask.bool()].double()  # [words, units]
    energy = float((h * h).mean(0).sum())
    return float(h.var(0, unbiased=False).sum()) / energy if energy > 0 else float("nan")


def layer_states(module: torch.nn.Module, layer: str, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``[B, T, C]`` output of ``layer`` (a submodule name) for a batch, in eval mode, without gradients."""
    captured: list[Tensor] = []

    def keep(_mod: Any, _inp: Any, out: Any) -> None:
        captured.append(out[0] if isinstance(out, (tuple, list)) else out)

    handle = module.get_submodule(layer).register_forward_hook(keep)
    try:
        with torch.no_grad():
            module.eval()(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    return captured[-1]


# --------------------------------------------------------------------------- advice direction

_TERMS = re.compile(r"regulari[sz]ation|weight[ _]?decay|dropout|\bl2\b|penalty", re.IGNORECASE)
_NO_TERM = re.compile(r"\bno\s+(?:regulari[sz]ation|weight[ _]?decay|dropout)", re.IGNORECASE)
_VERBS = re.compile(r"\b(lower|less|reduce|decrease|smaller|weaker|raise|more|increase|larger|stronger|add)\b",
                    re.IGNORECASE)
_DOWN = {"lower", "less", "reduce", "decrease", "smaller", "weaker"}
TOWARD_BEST_RUN = re.compile(r"towards? the best run", re.IGNORECASE)


def advice_direction(suggestion: str, extra: Optional[dict[str, Any]] = None) -> str:
    """``"lower"``, ``"raise"``, ``"mixed"`` or ``"none"``: where a finding's advice moves the regularisation.

    A structured ``extra["direction"]`` wins; otherwise the text is read: for each mention of
    regularisation (weight decay, dropout, L2, penalty), the nearest direction word before it in the same
    clause ("lower the learning rate or the regularisation" -> lower; "raise the regularisation" -> raise).

    >>> advice_direction("train longer, add data, or raise the regularisation (weight decay, dropout) a little")
    'raise'
    >>> advice_direction("if the loss is flat too, try a larger learning rate or less regularisation")
    'lower'
    >>> advice_direction("nothing to change on this account")
    'none'
    """
    if extra and extra.get("direction") in ("lower", "raise", "none"):
        return str(extra["direction"])
    found = set()
    for clause in re.split(r"[.;:]\s", suggestion):
        if _NO_TERM.search(clause):  # "this run has no regularisation to lower (weight_decay=0)"
            continue
        for term in _TERMS.finditer(clause):
            verbs = list(_VERBS.finditer(clause[: term.start()]))
            if verbs:
                found.add("lower" if verbs[-1].group(1).lower() in _DOWN else "raise")
    if len(found) == 2:
        return "mixed"
    return found.pop() if found else "none"
