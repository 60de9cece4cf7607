"""The guidance rules (:mod:`lightning_infoflow.analysis.guidance`) applied to loaded runs, the runs they
keep out of comparisons of information, and the score that ranks the runs of a sweep."""

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


def run_findings(run: Run, stop_words: Collection[str] = guidance.STOP_WORDS,
                 label: str | None = None) -> list[Finding]:
    """The single-run rules (:func:`history_findings`) on one loaded run, its logged losses included.

    ``label`` names the run in the findings (``None`` for a report on one run).
    """
    return history_findings(run.steps, run.aligned_history(), run.aligned_history("noise_se"), run.loss_history(),
                            run.last, val_losses=run.val_losses(), hparams=run.hparams, stop_words=stop_words,
                            label=label)


def history_findings(steps: Sequence[int], information: Tensor | None, se: Tensor | None, losses: Sequence[float],
                     last: InfoFlowResult, *, val_losses: Sequence[tuple[int, float]] = (),
                     hparams: Mapping[str, Any] | None = None, stop_words: Collection[str] = guidance.STOP_WORDS,
                     label: str | None = None) -> list[Finding]:
    """The single-run rules over one run's history: collapsed layers at the last analysis, whether the run
    learned (validation loss up to the last analysis, else training loss), noisy use of words at the last
    analysis, and phases. Used by the reports and by the callback at the end of training.

    Args:
        steps: the analysed steps.
        information: ``[len(steps), L]`` information per layer, ``None`` when the layers changed between
            analyses (no rule over the history then).
        se: ``[len(steps), L]`` standard error of each value from the estimator's noise (``noise_se``), or ``None``.
        losses: training loss at each analysis (NaN where unknown).
        last: the last analysis.
        val_losses: ``(step, validation loss)`` as logged (values after the last analysis are not read).
        hparams: the run's flat hyperparameters, to name the regularisation to lower.
        label: names the run in the findings (``None`` for one run).
    """
    steps, names = list(steps), list(last.layer_names)
    findings: list[Finding] = guidance.collapsed_layers(last, run=label)
    until = steps[-1] if steps else -1
    findings += guidance.not_learning(list(zip(steps, losses)), [(s, v) for s, v in val_losses if s <= until],
                                      hparams=hparams, run=label)
    findings += guidance.noisy_word_use(last, stop_words, run=label)
    if information is not None:
        findings += guidance.information_phases(steps, information, names, se=se, run=label)
    return findings


def compare_findings(runs: Sequence[Run], stop_words: Collection[str] = guidance.STOP_WORDS) -> list[Finding]:
    """Every run's own rules (:func:`run_findings`), each finding named by its run."""
    return [f for run in runs for f in run_findings(run, stop_words, label=run.name)]


def left_out(runs: Sequence[Run], findings: Sequence[Finding]) -> dict[str, str]:
    """The runs to keep out of every comparison of information between runs, with why: those ``not_learning``
    flagged, and those whose last layer ``collapsed_layer`` flagged (their information describes no learned
    model, or noise). ``findings`` name their runs (:func:`compare_findings`)."""
    out = {}
    for run in runs:
        mine = [f for f in findings if f.run == run.name]
        if any(f.rule == "not_learning" for f in mine):
            out[run.name] = "has not learned (not_learning)"
        elif any(f.rule == "collapsed_layer" and f.layer == run.layer_names[-1] for f in mine):
            out[run.name] = f"its last layer {run.layer_names[-1]} collapsed (collapsed_layer)"
    return out


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
