"""Comparing the runs of a sweep: their last layers, the too-little-information findings, and which
regularisation a run differs in from the best run (the advice to lower it)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lightning_infoflow.analysis.finding import Finding
from lightning_infoflow.core.result import InfoFlowResult

#: Hyperparameter names (matched as substrings, case-insensitive) that count as regularisation.
REGULARISATION_KEYS = ("weight_decay", "l2", "alpha", "dropout", "reg", "penalty", "decay", "smoothing", "wd")


def is_regularisation(name: str) -> bool:
    """Whether a hyperparameter name looks like a regularisation weight (see :data:`REGULARISATION_KEYS`).

    >>> is_regularisation("optimizer.weight_decay"), is_regularisation("model_kwargs.dropout"), is_regularisation("lr")
    (True, True, False)
    """
    leaf = name.lower().rsplit(".", 1)[-1]
    return any(key in leaf for key in REGULARISATION_KEYS)


def lower_regularisation(mine: Mapping[str, Any], best: str | None, theirs: Mapping[str, Any]) -> str:
    differing = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)] if best else []
    regs = [k for k in differing if is_regularisation(k) and number(mine.get(k)) is not None]
    higher = [k for k in regs if number(theirs.get(k)) is None or number(mine.get(k)) > number(theirs.get(k))]  # type: ignore[operator]
    if higher:
        parts = [f"{k} (now {mine.get(k)!r}; run {best} uses {theirs.get(k)!r})" for k in higher]
        return "lower " + " and ".join(parts) + ", the regularisation in which this run differs from the best run"
    if differing:
        shown = ", ".join(f"{k}={mine.get(k)!r} (run {best}: {theirs.get(k)!r})" for k in differing[:4])
        return (f"this run differs from run {best} in {shown}; move them towards the best run, and lower the "
                "regularisation (weight decay, dropout) if these are not it")
    own = [(k, v) for k, v in sorted(mine.items()) if is_regularisation(k) and number(v) is not None]
    active = [f"{k}={v!r}" for k, v in own if number(v)]
    if active:
        return f"lower the regularisation ({', '.join(active)}): weight decay / L2 penalty first, then dropout"
    if own:
        zeros = ", ".join(f"{k}={v!r}" for k, v in own)
        return (f"this run has no regularisation to lower ({zeros}); the layer keeps few words for another reason: "
                "train longer, or give the model more capacity")
    return "lower the regularisation (weight decay / L2 penalty first, then dropout)"


def number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def last_value(values: Tensor) -> float:
    """The last layer's value of a per-layer summary (NaN for a result without layers)."""
    return float(values[-1]) if values.numel() else math.nan


@dataclass(frozen=True)
class LastLayers:
    """The judged runs: their last layer's effective words (finite ones), results and hparams."""

    words: Mapping[str, float]
    results: Mapping[str, InfoFlowResult]
    hparams: Mapping[str, Mapping[str, Any]]

    def layer(self, name: str) -> str:
        return self.results[name].layer_names[-1]

    def numbers(self, name: str, prefix: str = "") -> dict[str, float]:
        r = self.results[name]
        return {f"{prefix}effective_words": self.words[name], f"{prefix}information": last_value(r.layer_information),
                f"{prefix}log_sigma": last_value(r.layer_log_sigma)}


def below_absolute(last: LastLayers, name: str, absolute: float, named: bool) -> Finding:
    w, layer = last.words[name], last.layer(name)
    return Finding(
        rule="too_little_information", severity="warning", run=name if named else None, layer=layer,
        message=f"the last layer ({layer}) keeps {w:.2f} effective words per sentence.",
        measured=last.numbers(name),
        threshold=f"fewer than {absolute:g} effective words in the last layer",
        suggestion=lower_regularisation(last.hparams.get(name, {}), None, {}),
    )


def below_best(last: LastLayers, name: str, best: str, why: str, relative: float,
                scores: Mapping[str, float] | None) -> Finding:
    w, top, layer = last.words[name], last.words[best], last.layer(name)
    measured = {**last.numbers(name), **last.numbers(best, "best_"), "ratio": w / top if top > 0 else 0.0}
    if scores is not None and name in scores and best in scores:
        measured.update(score=float(scores[name]), best_score=float(scores[best]))
    return Finding(
        rule="too_little_information", severity="warning", run=name, layer=layer,
        message=f"the last layer ({layer}) keeps {w:.2f} effective words per sentence against {top:.2f} in "
                f"run {best} ({why}).",
        measured=measured,
        threshold=f"fewer than {relative:g} x the best run's effective words ({relative * top:.2f})",
        suggestion=lower_regularisation(last.hparams.get(name, {}), best, last.hparams.get(best, {})),
        extra={"best_run": best},
    )
