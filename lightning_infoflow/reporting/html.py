"""Self-contained HTML reports: one page per run (:func:`write_run_report`) or per sweep
(:func:`write_comparison`), rendered from ``templates/report.html.j2`` by Jinja2 with autoescaping on.

A page is data (sections of text, :class:`~lightning_infoflow.reporting.tables.Table` s, figures and
findings); only the template writes markup. Figures are embedded as base64 PNGs and also saved beside
the page, with ``findings.json`` holding the findings.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import jinja2
from matplotlib.figure import Figure

from lightning_infoflow.analysis.guidance import Finding
from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.reporting import figures
from lightning_infoflow.reporting.findings import left_out
from lightning_infoflow.reporting.runs import Progress, Run, no_progress
from lightning_infoflow.reporting.tables import (
    Table,
    by_layer,
    cell,
    compare_tables,
    definitions,
    estimates_note,
    layer_axis,
    layer_table,
    phases_table,
    place,
    settings_table,
    warnings,
)

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("lightning_infoflow.reporting", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_ENV.filters["cell"] = cell
_ENV.globals["place"] = place


@dataclass
class _Section:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Image:
    data: str
    caption: str


class HtmlPage:
    """Collects sections of a page; :meth:`figure` also writes each figure as a PNG into ``out_dir``."""

    def __init__(self, title: str, out_dir: str, dpi: int = 100) -> None:
        self.title = title
        self.out_dir = out_dir
        self.dpi = dpi
        self.sections = [_Section("")]
        self.pngs: list[str] = []
        os.makedirs(out_dir, exist_ok=True)

    def section(self, title: str) -> None:
        self.sections.append(_Section(title))

    def text(self, text: str) -> None:
        self.sections[-1].blocks.append(("text", text))

    def table(self, table: Table) -> None:
        self.sections[-1].blocks.append(("table", table))

    def definitions(self, tables: Sequence[Table]) -> None:
        """A definition list of the measures the tables show."""
        self.sections[-1].blocks.append(("definitions", definitions(tables)))

    def findings(self, findings: Sequence[Finding]) -> None:
        """The warnings as a list (numbers, threshold, suggestion), then the phases of every layer as a table."""
        block = {"warnings": warnings(findings), "phases": phases_table(findings)}
        self.sections[-1].blocks.append(("findings", block))

    def figure(self, fig: Figure, name: str, caption: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi)
        fig.clear()
        path = os.path.join(self.out_dir, f"{name}.png")
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        self.pngs.append(path)
        self.sections[-1].blocks.append(("figure", _Image(base64.b64encode(buf.getvalue()).decode("ascii"), caption)))

    def render(self) -> str:
        return _ENV.get_template("report.html.j2").render(title=self.title, sections=self.sections)

    def write(self, name: str) -> str:
        path = os.path.join(self.out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.render())
        return path


def _write_findings(out_dir: str, findings: Sequence[Finding]) -> None:
    with open(os.path.join(out_dir, "findings.json"), "w", encoding="utf-8") as f:
        json.dump([x.to_dict() for x in findings], f, indent=1)


def sentence_label(result: InfoFlowResult, b: int, width: int = 90) -> str:
    """The words of one probe sentence as a line of at most ``width`` characters."""
    text = " ".join(result.words(b))
    return text if len(text) <= width else text[: width - 3] + "..."


def write_run_report(run: Run, out_dir: str, findings: Sequence[Finding], heatmap_steps: Sequence[int],
                     progress: Progress = no_progress) -> str:
    """Write ``report.html`` (figures embedded), the PNGs and ``findings.json`` into ``out_dir``; return the
    HTML path. ``heatmap_steps`` are indices into ``run.results``: a heatmap per probe sentence for each."""
    page = HtmlPage(f"infoflow report: {run.name}", out_dir)
    last = run.last
    page.text(f"Log dir: {', '.join(os.path.abspath(d) for d in dict.fromkeys(run.source.log_dirs))} · "
              f"{len(run.results)} analyses at steps {run.steps} · {last.sigma.shape[1]} probe sentences · "
              f"layers: {', '.join(last.layer_names)}")
    superseded = "Superseded by a newer file of the same step"
    for label, notes in (("Skipped files", run.skipped), (superseded, run.superseded)):
        if notes:
            page.text(f"{label}: " + "; ".join(notes))
    quality = estimates_note(run)
    if quality:
        page.text(quality)
    page.section("Findings")
    page.findings(findings)
    tables = [t for t in (layer_table(run), settings_table(run)) if t is not None]
    for table in tables:
        page.section(table.title)
        page.table(table)
    page.section("Measures")
    page.definitions(tables)
    advance = progress("drawing figures", 3 + len(heatmap_steps) * last.sigma.shape[1])
    _run_curves(page, run, advance)
    page.section("Information per word, layers x words")
    for k in heatmap_steps:
        _heatmaps(page, run.results[k], run.steps[k], advance)
    _write_findings(out_dir, findings)
    return page.write("report.html")


def _run_curves(page: HtmlPage, run: Run, advance: Callable[[], None]) -> None:
    page.section("Information against step")
    info = run.aligned_history()
    if len(run.results) < 2:
        page.text(f"One analysis (step {run.steps[0]}): no curves against step, they need two analyses or more.")
    elif info is not None:
        page.figure(figures.information_curves(run.steps, info, run.layer_names,
                                               se=run.history("layer_information_se")), "information_curves",
                    "mean information per word of every layer against step (Fig. 9); the band is its 90% "
                    "interval, +/- 1.645 standard errors (bootstrap over the probe sentences)")
        advance()
        page.figure(figures.information_curves(run.steps, run.history("effective_words"), run.layer_names,
                                               ylabel="effective words"),
                    "effective_words_curves", "effective number of words each layer keeps, against step")
        advance()
    else:
        page.text("The layers changed between analyses; no curves.")
    page.figure(figures.layer_profile(run.last), "layer_profile",
                f"information and effective words per layer at step {run.steps[-1]}")
    advance()


def _heatmaps(page: HtmlPage, result: InfoFlowResult, step: int, advance: Callable[[], None]) -> None:
    maps: Mapping[str, Any] | None = result.meta.get("baselines")
    for b in range(result.sigma.shape[1]):
        fig = figures.comparison_heatmaps(result, maps, b) if maps else figures.information_heatmap(result, b)
        beside = f" (beside {', '.join(maps)})" if maps else ""
        page.figure(fig, f"heatmap_step{step:08d}_sentence{b}",
                    f"step {step}, sentence {b}: {sentence_label(result, b)}{beside}")
        advance()


def write_comparison(runs: Sequence[Run], out_dir: str, findings: Sequence[Finding], notes: Sequence[str],
                     progress: Progress = no_progress) -> str:
    """Write ``compare.html`` (figures embedded), the PNGs and ``findings.json`` into ``out_dir``; return the
    HTML path. Runs that have not learned or whose last layer collapsed
    (:func:`~lightning_infoflow.reporting.findings.left_out`) are marked and kept out of every comparison of
    information, tables and figures alike."""
    page = HtmlPage(f"infoflow comparison of {len(runs)} runs", out_dir)
    page.text("Runs: " + "; ".join(f"{r.name} ({os.path.abspath(r.path)})" for r in runs))
    for note in notes:
        page.text(note)
    page.section("Findings")
    page.findings(findings)
    excluded = left_out(runs, findings)
    tables = compare_tables(runs, excluded)
    for table in tables:
        page.section(table.title)
        page.table(table)
    page.section("Measures")
    page.definitions(tables)
    compared = [r for r in runs if r.name not in excluded]
    if compared:
        _comparison_figures(page, compared, layer_axis(runs), progress)
    else:
        page.text("Every run is left out of the comparison of information (see the Runs table): no figures.")
    _write_findings(out_dir, findings)
    return page.write("compare.html")


def _comparison_figures(page: HtmlPage, runs: Sequence[Run], layers: list[str], progress: Progress) -> None:
    """The figures of a comparison: per-layer profiles, last-layer curves and each sentence's words, one line or
    row per run."""
    sentences = runs[0].last.sigma.shape[1]
    advance = progress("drawing figures", 3 + sentences)
    for measure, name, ylabel, caption in (
        ("layer_information", "information_by_layer", "information per word (nats)", "information"),
        ("effective_words", "effective_words_by_layer", "effective words", "effective words"),
    ):
        values = {r.name: [by_layer(r, layer, measure) for layer in layers] for r in runs}
        page.figure(figures.layers_by_run(values, layers, ylabel=ylabel), name,
                    f"{caption} per layer, one line per run")
        advance()
    if any(len(r.results) > 1 for r in runs):
        page.figure(figures.curves_by_run({r.name: (r.steps, r.history()[:, -1].tolist()) for r in runs},
                                          title="last layer"),
                    "last_layer_curves", "last layer's information against step, one line per run")
    else:
        page.text("One analysis per run: no curves against step, they need two analyses or more.")
    advance()
    page.section("Last layer: information per word of each probe sentence (Fig. 4)")
    for b in range(sentences):
        words = runs[0].last.words(b)
        rows = {r.name: r.last.information[-1, b, : len(words)].nan_to_num(0.0).tolist() for r in runs}
        page.figure(figures.word_information_by_run(rows, words, f"sentence {b}, last layer"), f"saliency_sentence{b}",
                    f"sentence {b}: {sentence_label(runs[0].last, b)}")
        advance()
