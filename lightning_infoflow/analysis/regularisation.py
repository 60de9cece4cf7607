"""Regularisation among a run's hyperparameters: which names count as regularisation, and which of a run's
are switched on (to name them in advice that says to lower the regularisation)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Hyperparameter names (matched as substrings, case-insensitive) that count as regularisation.
REGULARISATION_KEYS = ("weight_decay", "l2", "alpha", "dropout", "reg", "penalty", "decay", "smoothing", "wd")


def is_regularisation(name: str) -> bool:
    """Whether a hyperparameter name looks like a regularisation weight (see :data:`REGULARISATION_KEYS`).

    >>> is_regularisation("optimizer.weight_decay"), is_regularisation("model_kwargs.dropout"), is_regularisation("lr")
    (True, True, False)
    """
    leaf = name.lower().rsplit(".", 1)[-1]
    return any(key in leaf for key in REGULARISATION_KEYS)


def active_regularisation(hparams: Mapping[str, Any]) -> list[str]:
    """``name=value`` of every regularisation hyperparameter with a non-zero number, sorted by name.

    >>> active_regularisation({"weight_decay": 0.1, "dropout": 0.0, "lr": 1e-3, "model.dropout": "0.5"})
    ["model.dropout='0.5'", 'weight_decay=0.1']
    """
    return [f"{k}={v!r}" for k, v in sorted(hparams.items()) if is_regularisation(k) and number(v)]


def number(value: Any) -> float | None:
    """``value`` as a float; ``None`` for booleans and what does not read as a number.

    >>> number("1e-3"), number(True), number("high")
    (0.001, None, None)
    """
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
