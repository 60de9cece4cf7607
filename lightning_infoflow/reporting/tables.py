"""The tables of a report, built once as data (:class:`Table`) and rendered twice: to the console
(:mod:`lightning_infoflow.reporting.console`) and to HTML (:mod:`lightning_infoflow.reporting.html`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_infoflow.analysis.guidance import Finding
from lightning_infoflow.reporting.runs import Run

INFORMATION = "information (nats/word)"
EFFECTIVE_WORDS = "effective words"
COMPARED = "compared"
PLUS_MINUS = "±"
INTERVAL_LEVEL = 0.9
"""Probability of the intervals the package states: logged ``information_low/high`` and the curves' bands,
``+/- 1.645`` standard errors."""
MEASURES: dict[str, str] = {
    INFORMATION: "how much of a word the layer keeps, K log(sigma_max / sigma) nats (Eq. 7: sigma is the noise "
                 "the layer's state tolerates on the word's embedding, K the embedding size; 0 when the layer "
                 "ignores the word), averaged over every word of the probe sentences",
    PLUS_MINUS: "after a value: its standard error, from a bootstrap over the probe sentences (how much the value "
                "would move with another probe of as many sentences), which includes the estimator's own noise; "
                "value +/- 1.645 x SE is a 90% interval, the band drawn around the curves",
    "peak information": "the highest information (nats/word) of the layer over all analyses of the run",
    "peak step": "the optimizer step of the analysis where the layer's information peaked",
    EFFECTIVE_WORDS: "over how many words of a sentence the layer's precision is spread: exp of the entropy of each "
                     "word's share of the precision 1 / sigma^2 (a word the layer keeps sharply, small sigma, has a "
                     "large share), averaged over the probe sentences; the sentence length when every word is "
                     "kept alike, 1 when one word holds it all. Free of sigma_max; result files written before this "
                     "definition held the participation ratio of the information instead, not comparable with it",
    COMPARED: "whether the run's information is compared with the other runs': a run that has not learned "
              "(rule not_learning) or whose last layer collapsed (rule collapsed_layer) is left out of every "
              "comparison of information (tables and figures), since its numbers describe no learned model",
    "mean entropy": "the uncertainty left about a word given the layer's state, H(X_i | s) in nats (Eq. 6), "
                    "averaged over the words; the higher, the less the layer keeps",
}
"""What each measure a report shows means, by its column or axis name (``±`` where a cell is an
:class:`Estimate`)."""


def definitions(tables: Sequence[Table]) -> list[tuple[str, str]]:
    """``(measure, definition)`` for every measure of :data:`MEASURES` the tables show, once each."""
    shown = dict.fromkeys(h for t in tables for h in t.header if h in MEASURES)
    if any(isinstance(c, Estimate) for t in tables for row in t.rows for c in row):
        shown[PLUS_MINUS] = None
    return [(name, MEASURES[name]) for name in shown]


@dataclass(frozen=True)
class Estimate:
    """A value with its standard error, shown as ``value ± se`` (:func:`cell`)."""

    value: float
    se: float


@dataclass(frozen=True)
class Table:
    """A titled table of cells (numbers, text or ``None``); :func:`cell` formats each cell."""

    title: str
    header: list[str]
    rows: list[list[Any]]
    css: str = ""


def cell(value: Any) -> str:
    """A cell as text: floats to 4 significant digits, NaN and ``None`` as a dash.

    >>> cell(0.123456), cell(float("nan")), cell(None), cell(3)
    ('0.1235', '—', '—', '3')
    >>> cell(Estimate(251.234, 0.4321)), cell(Estimate(2.5, float("nan")))
    ('251.2 ± 0.43', '2.5')
    """
    if isinstance(value, Estimate):
        return cell(value.value) + ("" if math.isnan(value.se) else f" ± {value.se:.2g}")
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return "—" if value is None else str(value)


def place(finding: Finding) -> str:
    """Where a finding applies: its run and layer, joined by a dot; the layer only when the message does
    not name it already (the place and the message are printed together, the layer once)."""
    layer = finding.layer if finding.layer and finding.layer not in finding.message else None
    return " · ".join(x for x in (finding.run, layer) if x)


def warnings(findings: Sequence[Finding]) -> list[Finding]:
    """The findings that ask for a change."""
    return [f for f in findings if f.severity == "warning"]


def layer_table(run: Run) -> Table:
    """Per layer at the last analysis: information ± its standard error, its peak and step, effective words,
    mean entropy."""
    last, info = run.last, run.aligned_history()
    se = last.layer_information_se
    rows = []
    for i, name in enumerate(last.layer_names):
        peak, peak_step = float("nan"), None
        if info is not None:
            k = int(torch.nan_to_num(info[:, i], nan=-math.inf).argmax())
            peak, peak_step = float(info[k, i]), run.steps[k]
        rows.append([name, Estimate(float(last.layer_information[i]), float(se[i])), peak, peak_step,
                     float(last.effective_words[i]), float(last.mean_entropy[i])])
    header = ["layer", INFORMATION, "peak information", "peak step", EFFECTIVE_WORDS, "mean entropy"]
    return Table(f"Layers at step {run.steps[-1]} (the last analysis)", header, rows)


def estimates_note(run: Run) -> str | None:
    """How good the run's estimates are by their own account: how many stopped at their target error, and
    each one that stopped short of it (at ``max_steps`` or at the callback's overhead budget) with its
    stated error. ``None`` when no analysis stopped automatically (fixed steps, or files from before).

    Example::

        >>> from types import SimpleNamespace
        >>> def result(step, stopped, error):
        ...     meta = {"step": step, "stopped": stopped, "error": error, "steps_run": 10, "target_error": 0.05}
        ...     return SimpleNamespace(meta=meta, stated_error=max(error))
        >>> run = SimpleNamespace(results=[result(0, "target", [0.04]), result(600, "budget", [0.2, 0.29])])
        >>> summary, short = estimates_note(run).split("; ")
        >>> summary
        'Estimates: 1 of 2 analyses stopped at their target error (0.05)'
        >>> short
        'short of it: step 600 (stopped by the overhead budget after 10 steps, stated error 0.290)'
    """
    automatic = [r for r in run.results if r.meta.get("stopped") in ("target", "max_steps", "budget")]
    if not automatic:
        return None
    short = [r for r in automatic if r.meta["stopped"] != "target"]
    targets = sorted({f"{t:g}" if isinstance(t, (int, float)) else "?"
                      for t in (r.meta.get("target_error") for r in automatic)})
    line = (f"Estimates: {len(automatic) - len(short)} of {len(run.results)} analyses stopped at their target "
            f"error ({', '.join(targets)})")
    if not short:
        return line
    why = {"max_steps": "at max_steps", "budget": "by the overhead budget"}
    parts = []
    for r in short:
        stated = "" if math.isnan(r.stated_error) else f", stated error {r.stated_error:.3f}"
        parts.append(f"step {r.meta.get('step')} (stopped {why[r.meta['stopped']]} after "
                     f"{r.meta.get('steps_run')} steps{stated})")
    return f"{line}; short of it: " + ", ".join(parts)


def settings_table(run: Run) -> Table | None:
    """Hyperparameters and final validation metrics; ``None`` when the run logged neither."""
    rows = [[k, v] for k, v in (*sorted(run.hparams.items()), *sorted(run.final_metrics().items()))]
    return Table("Hyperparameters and final validation metrics", ["name", "value"], rows) if rows else None


def phase_name(finding: Finding) -> str:
    """The phases an ``information_phases`` finding describes, in order (``"compression, expansion"``), or
    ``"stable"`` when every change stays within its uncertainty."""
    return str(finding.extra["label"])


def phases_table(findings: Sequence[Finding]) -> Table | None:
    """Per layer (and run), where its information peaks and how much it rose and fell (Fig. 9)."""
    phases = [f for f in findings if f.rule == "information_phases"]
    if not phases:
        return None
    runs = any(f.run for f in phases)
    header = [*(["run"] if runs else []), "layer", "peak step", "peak info", "total rise", "total fall", "phases"]
    rows = [[*([f.run or ""] if runs else []), f.layer or "", int(f.measured["peak_step"]),
             f.measured["peak_information"], f"{f.measured['rise']:+.2f}", f"{-f.measured['fall']:+.2f}",
             phase_name(f)] for f in phases]
    return Table("Information phases (Fig. 9; nats per word; a rise or fall is a phase when it exceeds its "
                 "uncertainty)", header, rows, css="phases")


def layer_axis(runs: Sequence[Run]) -> list[str]:
    """Every layer name of the runs, in first-seen order."""
    return list(dict.fromkeys(name for r in runs for name in r.layer_names))


def by_layer(run: Run, layer: str, measure: str) -> float:
    """A per-layer measure of the run's last analysis at one layer (NaN where the run lacks it)."""
    names = run.layer_names
    return float(getattr(run.last, measure)[names.index(layer)]) if layer in names else float("nan")


def information_of(run: Run, layer: str) -> Estimate:
    """The run's information at one layer of its last analysis, with its standard error (NaN where it lacks it)."""
    return Estimate(by_layer(run, layer, "layer_information"), by_layer(run, layer, "layer_information_se"))


def compare_tables(runs: Sequence[Run], left_out: Mapping[str, str] | None = None) -> list[Table]:
    """The tables of a comparison: runs (differing hparams, metrics, last layer), and information per layer.

    ``left_out`` (run name -> why, :func:`~lightning_infoflow.reporting.findings.left_out`): runs whose
    information is compared with no other run's: their row keeps its hyperparameters and metrics, shows no
    information and says why in a last column; they have no column in the per-layer table.
    """
    left_out = left_out or {}
    keys = sorted(set().union(*(r.hparams for r in runs)))
    differing = [k for k in keys if len({repr(r.hparams.get(k)) for r in runs}) > 1]
    metric_names = sorted(set().union(*(r.final_metrics() for r in runs)))
    header = ["run", *differing, *metric_names, "last layer", INFORMATION, EFFECTIVE_WORDS, "analyses"]
    rows = []
    for r in runs:
        m = r.final_metrics()
        shown = r.name not in left_out
        rows.append([r.name, *[r.hparams.get(k) for k in differing], *[m.get(k, float("nan")) for k in metric_names],
                     r.layer_names[-1], information_of(r, r.layer_names[-1]) if shown else None,
                     float(r.last.effective_words[-1]) if shown else None, f"{len(r.results)} to step {r.steps[-1]}",
                     *([] if not left_out else ["yes" if shown else f"no: {left_out[r.name]}"])])
    if left_out:
        header.append(COMPARED)
    compared = [r for r in runs if r.name not in left_out]
    per_layer = [[layer, *[information_of(r, layer) for r in compared]] for layer in layer_axis(runs)]
    title = "Information per layer at the last analysis (nats per word ± standard error)"
    if left_out:
        title += f"; left out: {', '.join(left_out)}"
    return [Table("Runs (hyperparameters that differ, final validation metrics, last layer)", header, rows),
            Table(title, ["layer", *[r.name for r in compared]], per_layer)]
