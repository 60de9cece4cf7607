"""The tables of a report, built once as data (:class:`Table`) and rendered twice: to the console
(:mod:`lightning_infoflow.reporting.console`) and to HTML (:mod:`lightning_infoflow.reporting.html`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_infoflow.analysis.guidance import Finding
from lightning_infoflow.reporting.runs import Run

INFORMATION = "information (nats/word)"
EFFECTIVE_WORDS = "effective words"
MEASURES: dict[str, str] = {
    INFORMATION: "how much of a word the layer keeps, K log(sigma_max / sigma) nats (Eq. 7: sigma is the noise "
                 "the layer's state tolerates on the word's embedding, K the embedding size; 0 when the layer "
                 "ignores the word), averaged over every word of the probe sentences",
    "peak information": "the highest information (nats/word) of the layer over all analyses of the run",
    "peak step": "the optimizer step of the analysis where the layer's information peaked",
    EFFECTIVE_WORDS: "over how many words of a sentence the layer's information is spread, (sum I)^2 / sum I^2 "
                     "over the sentence's words (the participation ratio), averaged over the probe sentences: "
                     "the sentence length when every word counts the same, 1 when one word holds it all, 0 when "
                     "the layer keeps nothing",
    "mean entropy": "the uncertainty left about a word given the layer's state, H(X_i | s) in nats (Eq. 6), "
                    "averaged over the words; the higher, the less the layer keeps",
}
"""What each measure a report shows means, by its column or axis name."""


def definitions(tables: Sequence[Table]) -> list[tuple[str, str]]:
    """``(measure, definition)`` for every measure of :data:`MEASURES` the tables show, once each."""
    shown = dict.fromkeys(h for t in tables for h in t.header if h in MEASURES)
    return [(name, MEASURES[name]) for name in shown]


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
    """
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
    """Per layer at the last analysis: information, its peak and step, effective words, mean entropy."""
    last, info = run.last, run.aligned_history()
    rows = []
    for i, name in enumerate(last.layer_names):
        peak, peak_step = float("nan"), None
        if info is not None:
            k = int(torch.nan_to_num(info[:, i], nan=-math.inf).argmax())
            peak, peak_step = float(info[k, i]), run.steps[k]
        rows.append([name, float(last.layer_information[i]), peak, peak_step, float(last.effective_words[i]),
                     float(last.mean_entropy[i])])
    header = ["layer", INFORMATION, "peak information", "peak step", EFFECTIVE_WORDS, "mean entropy"]
    return Table(f"Layers at step {run.steps[-1]} (the last analysis)", header, rows)


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
    header = [*(["run"] if runs else []), "layer", "peak step", "peak info", "rise to peak", "peak to last", "phases"]
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


def compare_tables(runs: Sequence[Run]) -> list[Table]:
    """The tables of a comparison: runs (differing hparams, metrics, last layer), and information per layer."""
    keys = sorted(set().union(*(r.hparams for r in runs)))
    differing = [k for k in keys if len({repr(r.hparams.get(k)) for r in runs}) > 1]
    metric_names = sorted(set().union(*(r.final_metrics() for r in runs)))
    header = ["run", *differing, *metric_names, "last layer", INFORMATION, EFFECTIVE_WORDS, "analyses"]
    rows = []
    for r in runs:
        m = r.final_metrics()
        rows.append([r.name, *[r.hparams.get(k) for k in differing], *[m.get(k, float("nan")) for k in metric_names],
                     r.layer_names[-1], float(r.last.layer_information[-1]), float(r.last.effective_words[-1]),
                     f"{len(r.results)} to step {r.steps[-1]}"])
    per_layer = [[layer, *[by_layer(r, layer, "layer_information") for r in runs]] for layer in layer_axis(runs)]
    return [Table("Runs (hyperparameters that differ, final validation metrics, last layer)", header, rows),
            Table("Information per layer at the last analysis (nats per word)", ["layer", *[r.name for r in runs]],
                  per_layer)]
