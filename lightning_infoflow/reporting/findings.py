"""The guidance rules (:mod:`lightning_infoflow.analysis.guidance`) applied to loaded runs, and the score
that ranks the runs of a sweep."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_infoflow.analysis import guidance
from lightning_infoflow.analysis.guidance import Finding
from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.reporting.runs import Run, RunError

SCORE_HINTS = ("acc", "mcc", "f1", "auc", "auroc", "precision", "recall", "corr")
"""Substrings of a metric name that say higher is better."""


def run_findings(run: Run, stop_words: Collection[str] = guidance.STOP_WORDS, label: str | None = None,
                 absolute_bar: bool = True, absolute: float = guidance.TOO_LITTLE_ABSOLUTE) -> list[Finding]:
    """The single-run rules (:func:`history_findings`) on one loaded run.

    ``label`` names the run in the findings (``None`` for a report on one run).
    """
    return history_findings(run.steps, run.aligned_history(), run.aligned_history("noise_se"), run.loss_history(),
                            run.last, hparams=run.hparams, stop_words=stop_words, label=label,
                            absolute_bar=absolute_bar, absolute=absolute)


def history_findings(steps: Sequence[int], information: Tensor | None, se: Tensor | None, losses: Sequence[float],
                     last: InfoFlowResult, *, hparams: Mapping[str, Any] | None = None,
                     stop_words: Collection[str] = guidance.STOP_WORDS, label: str | None = None,
                     absolute_bar: bool = True, absolute: float = guidance.TOO_LITTLE_ABSOLUTE) -> list[Finding]:
    """The single-run rules over one run's history: collapsed layers at the last analysis, too little
    information (the absolute bar, when ``absolute_bar``), information collapses over the history, noisy use
    of words at the last analysis, and phases. Used by the reports and by the callback at the end of training.

    Args:
        steps: the analysed steps.
        information: ``[len(steps), L]`` information per layer, ``None`` when the layers changed between
            analyses (no rule over the history then).
        se: ``[len(steps), L]`` standard error of each value from the estimator's noise (``noise_se``), or ``None``.
        losses: training loss at each analysis (NaN where unknown).
        last: the last analysis.
        hparams: the run's flat hyperparameters, to name the regularisation to change.
        label: names the run in the findings (``None`` for one run).
    """
    steps, names = list(steps), list(last.layer_names)
    findings: list[Finding] = guidance.collapsed_layers(last, run=label)
    if absolute_bar:
        key = label or "run"
        findings += guidance.too_little_information({key: last}, {key: dict(hparams or {})}, absolute=absolute)
    if information is not None:
        findings += guidance.collapse_findings(steps, information, list(losses), names, run=label,
                                               embedding_dim=last.embedding_dim, se=se)
    findings += guidance.noisy_word_use(last, stop_words, run=label)
    if information is not None:
        findings += guidance.information_phases(steps, information, names, se=se, run=label)
    return findings


def compare_findings(runs: Sequence[Run], scores: Mapping[str, float] | None = None, score_name: str = "score",
                     stop_words: Collection[str] = guidance.STOP_WORDS,
                     relative: float = guidance.TOO_LITTLE_RELATIVE) -> list[Finding]:
    """Too little information relative to the best run of the sweep, then every run's own rules."""
    findings = guidance.too_little_information({r.name: r.last for r in runs}, {r.name: r.hparams for r in runs},
                                               scores, score_name=score_name, relative=relative)
    for run in runs:
        findings += run_findings(run, stop_words, label=run.name, absolute_bar=False)
    return findings


def pick_score(runs: Sequence[Run], metric: str | None = None,
               mode: str | None = None) -> tuple[dict[str, float] | None, str]:
    """The validation score that ranks runs (higher is better), and its name.

    ``metric`` names a logged scalar; by default the first validation metric every run logged whose name
    suggests higher-is-better (accuracy, MCC, F1, AUC, ...), else a validation loss (negated).

    Raises:
        RunError: ``metric`` is not a validation scalar every run logged.
    """
    finals = [r.final_metrics() for r in runs]
    common = sorted(set.intersection(*(set(f) for f in finals))) if finals else []
    if metric is not None:
        if metric not in common:
            raise RunError(f"not every run logged {metric!r}; metrics all runs logged: {common or 'none'}")
        chosen = metric
    else:
        higher = [m for m in common if any(h in m.lower() for h in SCORE_HINTS)]
        losses = [m for m in common if "loss" in m.lower()]
        if not higher and not losses:
            return None, ""
        chosen = (higher or losses)[0]
    scored = any(h in chosen.lower() for h in SCORE_HINTS)
    lower = mode == "min" if mode else ("loss" in chosen.lower() and not scored)
    sign = -1.0 if lower else 1.0
    return {r.name: sign * f[chosen] for r, f in zip(runs, finals)}, (f"-{chosen}" if lower else chosen)
