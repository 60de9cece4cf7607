"""Offline reports: load the runs InfoFlowCallback wrote and turn them into self-contained HTML pages.

A *run* is a logger's log dir (``TensorBoardLogger.log_dir``, ``CSVLogger.log_dir``, ...) that holds
``infoflow/results/step_XXXXXXXX.pt`` files; its hyperparameters come from the logger's ``hparams.yaml``
and its other scalars (training loss, validation metrics) from ``metrics.csv`` or the TensorBoard event
files. :func:`write_run_report` and :func:`write_comparison` draw the figures with
:mod:`lightning_infoflow.reporting.figures`, embed them as base64 PNGs in one HTML file and save the PNGs beside it.
"""

from __future__ import annotations

import base64
import csv
import glob
import html
import io
import json
import math
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import yaml
from matplotlib.figure import Figure
from torch import Tensor

from lightning_infoflow.reporting import figures

from lightning_infoflow.analysis import guidance
from lightning_infoflow.analysis.guidance import Finding
from lightning_infoflow.core.result import InfoFlowResult

RESULTS_DIR = os.path.join("infoflow", "results")
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
_SCORE_HINTS = ("acc", "mcc", "f1", "auc", "auroc", "precision", "recall", "corr")

Progress = Callable[[str, int], Callable[[], None]]
"""``progress(description, total)`` returns ``advance()``; report code calls it around long loops."""


class RunError(Exception):
    """A directory that is not a run, or a run that cannot be reported (the message says why and what to do)."""


def _no_progress(_description: str, _total: int) -> Callable[[], None]:
    return lambda: None


# --------------------------------------------------------------------------- loading runs


def find_runs(path: str) -> list[str]:
    """Log dirs at or under ``path`` that hold an ``infoflow/results`` folder, sorted.

    Raises:
        RunError: ``path`` is not a directory, or nothing under it was written by InfoFlowCallback.
    """
    if not os.path.isdir(path):
        raise RunError(f"{path!r} is not a directory; pass the log dir of a run (the logger's log_dir)")
    if os.path.isdir(os.path.join(path, RESULTS_DIR)):
        return [os.path.normpath(path)]
    found = sorted(
        os.path.normpath(os.path.dirname(os.path.dirname(d)))
        for d in glob.glob(os.path.join(path, "**", RESULTS_DIR), recursive=True)
        if os.path.isdir(d)
    )
    if not found:
        raise RunError(
            f"{path!r} holds no InfoFlowCallback output (no {RESULTS_DIR}{os.sep} folder at or below it). "
            "Pass the log dir of a run trained with InfoFlowCallback(save_results=True), or write one with "
            "`infoflow analyze`."
        )
    return found


@dataclass
class Run:
    """One run's analyses (sorted by step), hyperparameters and logged scalars."""

    path: str
    name: str
    results: list[InfoFlowResult]
    hparams: dict[str, Any] = field(default_factory=dict)
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def last(self) -> InfoFlowResult:
        return self.results[-1]

    @property
    def layer_names(self) -> list[str]:
        return list(self.last.layer_names)

    @property
    def steps(self) -> list[int]:
        return [int(r.meta.get("step", i)) for i, r in enumerate(self.results)]

    def history(self, measure: str = "layer_information") -> Tensor:
        """``[N, L]``: a per-layer measure (``layer_information``, ``effective_words``, ``mean_entropy``) per analysis."""
        return torch.stack([getattr(r, measure).float() for r in self.results])

    def final_metrics(self) -> dict[str, float]:
        """Last logged value of every validation scalar (tags starting with ``val``)."""
        out = {}
        for tag, points in self.scalars.items():
            leaf = tag.lower()
            if (leaf.startswith("val") or "/val" in leaf) and points:
                out[tag] = points[-1][1]
        return out

    def loss_tag(self) -> Optional[str]:
        """The training-loss scalar (a tag with ``loss`` and ``train`` in it, else any non-validation loss)."""
        tags = [t for t in self.scalars if "loss" in t.lower() and not t.startswith("infoflow/")
                and "val" not in t.lower() and "test" not in t.lower()]
        trained = [t for t in tags if "train" in t.lower()]
        chosen = sorted(trained or tags, key=lambda t: ("epoch" in t, len(t)))
        return chosen[0] if chosen else None

    def loss_history(self) -> list[float]:
        """Training loss at each analysis: the mean of the values logged since the previous analysis (NaN if none)."""
        tag = self.loss_tag()
        points = self.scalars.get(tag, []) if tag else []
        out, previous = [], -1
        for step in self.steps:
            window = [v for s, v in points if previous < s <= step]
            out.append(sum(window) / len(window) if window else float("nan"))
            previous = step
        return out


def load_run(path: str, name: Optional[str] = None, progress: Progress = _no_progress) -> Run:
    """Load a run from its log dir (see :func:`find_runs` for a parent folder).

    Raises:
        RunError: not a run dir, or a run with no readable analyses.
    """
    runs = find_runs(path)
    if len(runs) > 1:
        listing = "\n  ".join(runs)
        raise RunError(f"{path!r} holds {len(runs)} runs; pass one of them:\n  {listing}")
    log_dir = runs[0]
    files = sorted(
        (int(m.group(1)), os.path.join(log_dir, RESULTS_DIR, f))
        for f in os.listdir(os.path.join(log_dir, RESULTS_DIR))
        if (m := _STEP_FILE.match(f))
    )
    if not files:
        raise RunError(
            f"run {log_dir!r} has no analyses yet ({os.path.join(log_dir, RESULTS_DIR)} is empty): the callback "
            "writes step_XXXXXXXX.pt there at each analysis; train longer or check save_results=True"
        )
    results, skipped = [], []
    advance = progress(f"loading {os.path.basename(log_dir) or log_dir}", len(files))
    for step, file in files:
        try:
            data = torch.load(file, map_location="cpu", weights_only=True)
            result = InfoFlowResult.from_dict(data)
            result.meta.setdefault("step", step)
            if isinstance(data.get("baselines"), dict):  # saliency maps the callback saved beside the result
                result.meta["baselines"] = data["baselines"]
            results.append(result)
        except Exception as err:  # noqa: BLE001 - a foreign or broken file is skipped and reported
            skipped.append(f"{os.path.basename(file)}: {type(err).__name__}: {err}")
        advance()
    if not results:
        raise RunError(f"run {log_dir!r}: none of its {len(files)} result files could be read ({skipped[0]})")
    results.sort(key=lambda r: int(r.meta["step"]))
    return Run(log_dir, name or _default_name(log_dir), results, read_hparams(log_dir), read_scalars(log_dir), skipped)


def _default_name(log_dir: str) -> str:
    parts = os.path.normpath(os.path.abspath(log_dir)).split(os.sep)
    return "/".join(parts[-2:])


def run_names(paths: Sequence[str]) -> list[str]:
    """Short distinct names: the paths relative to their common folder, without a last folder they all share
    (``version_0``); the last two folders of a path alone.

    >>> run_names(["runs/wd0/version_0", "runs/wd0.1/version_0"]), run_names(["a/x/version_0", "a/x/version_1"])
    (['wd0', 'wd0.1'], ['version_0', 'version_1'])
    """
    if len(paths) == 1:
        return [_default_name(paths[0])]
    absolute = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath(absolute)
    parts = [os.path.relpath(p, common).split(os.sep) if p != common else [os.path.basename(p)] for p in absolute]
    if all(len(x) > 1 for x in parts) and len({x[-1] for x in parts}) == 1:
        trimmed = [x[:-1] for x in parts]
        if len({tuple(x) for x in trimmed}) == len(trimmed):
            parts = trimmed
    return ["/".join(x) for x in parts]


class _LenientLoader(yaml.SafeLoader):
    """Safe YAML loading that turns Python-object tags (non-primitive hparams) into their text."""


def _unknown_tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


_LenientLoader.add_multi_constructor("", _unknown_tag)


def read_hparams(log_dir: str) -> dict[str, Any]:
    """The logger's ``hparams.yaml`` flattened to ``{"a.b": value}``; empty when there is none."""
    path = os.path.join(log_dir, "hparams.yaml")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_LenientLoader)  # a SafeLoader subclass
        except yaml.YAMLError:
            return {}
    return flatten(data) if isinstance(data, Mapping) else {}


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``.

    >>> flatten({"lr": 0.1, "model": {"dropout": 0.2}})
    {'lr': 0.1, 'model.dropout': 0.2}
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars the run logged besides infoflow's: from ``metrics.csv`` (CSVLogger) and TensorBoard events.

    Returns ``{tag: [(step, value), ...]}`` sorted by step.
    """
    out: dict[str, list[tuple[int, float]]] = {}
    csv_path = os.path.join(log_dir, "metrics.csv")
    if os.path.isfile(csv_path):
        with open(csv_path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                step = _number(row.get("step"))
                for key, value in row.items():
                    v = _number(value)
                    if key in ("step", "epoch") or key.startswith("infoflow/") or v is None or step is None:
                        continue
                    out.setdefault(key, []).append((int(step), v))
    if glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "images": 1, "tensors": 1, "histograms": 1,
                                                        "audio": 1, "compressedHistograms": 1})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith("infoflow/") or tag in ("epoch", "hp_metric") or tag in out:
                continue
            out[tag] = [(int(e.step), float(e.value)) for e in acc.Scalars(tag)]
    return {k: sorted(v, key=lambda p: p[0]) for k, v in out.items()}


def _number(value: Any) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------- probes that match


def subset(result: InfoFlowResult, sentences: Sequence[int]) -> InfoFlowResult:
    """The result restricted to some probe sentences (in that order)."""
    idx = torch.as_tensor(list(sentences), dtype=torch.long)
    return InfoFlowResult(
        layer_names=list(result.layer_names), sigma=result.sigma[:, idx], mask=result.mask[idx],
        sigma_max=result.sigma_max, embedding_dim=result.embedding_dim,
        at_bound=result.at_bound[:, idx] if result.at_bound is not None else None, loss=result.loss,
        tokens=[result.tokens[i] for i in idx.tolist()] if result.tokens else None, meta=dict(result.meta),
    )


def probe_keys(result: InfoFlowResult) -> list[tuple[str, ...]]:
    """One key per probe sentence: its token strings (its length where the result has no tokens)."""
    lengths = result.mask.sum(1).tolist()
    if result.tokens:
        return [tuple(words[: int(n)]) for words, n in zip(result.tokens, lengths)]
    return [("#words", str(int(n))) for n in lengths]


@dataclass
class Matched:
    """Runs restricted to the probe sentences they share; ``notes`` say what was skipped."""

    runs: list[Run]
    notes: list[str]
    sentences: int


def match_probes(runs: Sequence[Run]) -> Matched:
    """Restrict runs to the probe sentences all of them analysed (by token strings).

    A run that shares no sentence with the first run is left out. Every analysis of a kept run is
    restricted to the shared sentences, in the first run's order.

    Raises:
        RunError: fewer than two runs share a probe sentence.
    """
    reference = probe_keys(runs[0].last)
    notes: list[str] = []
    kept = [runs[0]]
    for run in runs[1:]:
        if set(probe_keys(run.last)) & set(reference):
            kept.append(run)
        else:
            notes.append(f"skipped run {run.name}: its probe shares no sentence with run {runs[0].name}'s")
    if len(kept) < 2:
        raise RunError("nothing to compare: " + "; ".join(notes))
    common = [k for k in dict.fromkeys(reference) if all(k in probe_keys(r.last) for r in kept)]
    out = []
    for run in kept:
        keys = probe_keys(run.last)
        if keys == common:
            out.append(run)
            continue
        index = [keys.index(k) for k in common]
        left_out = len(keys) - len(index)
        notes.append(f"run {run.name}: compared on the {len(common)} probe sentences all runs share; "
                     f"{left_out} of its {len(keys)} sentences skipped")
        out.append(Run(run.path, run.name, [subset(r, index) for r in run.results if len(probe_keys(r)) == len(keys)],
                       run.hparams, run.scalars, run.skipped))
    return Matched(out, notes, len(common))


# --------------------------------------------------------------------------- findings


def run_findings(run: Run, stop_words: Collection[str] = guidance.STOP_WORDS, label: Optional[str] = None,
                 absolute_bar: bool = True, absolute: float = guidance.TOO_LITTLE_ABSOLUTE) -> list[Finding]:
    """The single-run rules on one run: too little information (the absolute bar, when ``absolute_bar``),
    information collapses over the history, noisy use of words at the last analysis, and phases.

    ``label`` names the run in the findings (``None`` for a report on one run).
    """
    names = run.layer_names
    info = _aligned_history(run)
    findings: list[Finding] = []
    if absolute_bar:
        findings += guidance.too_little_information({label or run.name: run.last}, {label or run.name: run.hparams},
                                                    absolute=absolute)
    if info is not None:
        findings += guidance.collapse_findings(run.steps, info, run.loss_history(), names, run=label)
    findings += guidance.noisy_word_use(run.last, stop_words, run=label)
    if info is not None:
        findings += guidance.information_phases(run.steps, info, names, run=label)
    return findings


def compare_findings(runs: Sequence[Run], scores: Optional[Mapping[str, float]] = None, score_name: str = "score",
                     stop_words: Collection[str] = guidance.STOP_WORDS,
                     relative: float = guidance.TOO_LITTLE_RELATIVE) -> list[Finding]:
    """Too little information relative to the best run of the sweep, then every run's own rules."""
    findings = guidance.too_little_information({r.name: r.last for r in runs}, {r.name: r.hparams for r in runs},
                                               scores, score_name=score_name, relative=relative)
    for run in runs:
        findings += run_findings(run, stop_words, label=run.name, absolute_bar=False)
    return findings


def _aligned_history(run: Run) -> Optional[Tensor]:
    names = run.layer_names
    same = [r for r in run.results if list(r.layer_names) == names]
    if len(same) != len(run.results):
        return None
    return run.history()


def pick_score(runs: Sequence[Run], metric: Optional[str] = None, mode: Optional[str] = None) -> tuple[Optional[dict[str, float]], str]:
    """The validation score that ranks runs (higher is better), and its name.

    ``metric`` names a logged scalar; by default the first validation metric every run logged whose name
    suggests higher-is-better (accuracy, MCC, F1, AUC, ...), else a validation loss (negated).
    """
    finals = [r.final_metrics() for r in runs]
    common = sorted(set.intersection(*(set(f) for f in finals))) if finals else []
    if metric is not None:
        if metric not in common:
            raise RunError(f"not every run logged {metric!r}; metrics all runs logged: {common or 'none'}")
        chosen = metric
    else:
        higher = [m for m in common if any(h in m.lower() for h in _SCORE_HINTS)]
        losses = [m for m in common if "loss" in m.lower()]
        if not higher and not losses:
            return None, ""
        chosen = (higher or losses)[0]
    lower = mode == "min" if mode else ("loss" in chosen.lower() and not any(h in chosen.lower() for h in _SCORE_HINTS))
    sign = -1.0 if lower else 1.0
    return {r.name: sign * f[chosen] for r, f in zip(runs, finals)}, (f"-{chosen}" if lower else chosen)


# --------------------------------------------------------------------------- HTML


def parse_steps(spec: str, steps: Sequence[int], peak: Optional[int] = None) -> list[int]:
    """Indices of the analyses a spec picks: ``first``, ``last``, ``peak``, ``all`` or step numbers, comma-separated.

    ``peak`` is the index of the analysis where the last layer keeps the most information (given by the
    caller). Raises ValueError for a step that was not analysed.

    >>> parse_steps("first,last", [0, 5, 10]), parse_steps("5", [0, 5, 10]), parse_steps("all,peak", [0, 5], peak=1)
    ([0, 2], [1], [0, 1])
    """
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "all":
            out += range(len(steps))
        elif part == "first":
            out.append(0)
        elif part == "last":
            out.append(len(steps) - 1)
        elif part == "peak":
            out.append(len(steps) - 1 if peak is None else peak)
        else:
            try:
                step = int(part)
            except ValueError:
                raise ValueError(f"cannot read step {part!r}: use first, last, peak, all or step numbers") from None
            if step not in steps:
                raise ValueError(f"step {step} was not analysed; analysed steps: {list(steps)}")
            out.append(list(steps).index(step))
    return list(dict.fromkeys(out))


def peak_index(run: Run) -> int:
    """Index of the analysis where the last layer keeps the most information."""
    info = _aligned_history(run)
    if info is None:
        return len(run.results) - 1
    return int(torch.nan_to_num(info[:, -1], nan=-math.inf).argmax())


class _Page:
    """Collects HTML sections and figures; writes each figure as a PNG and embeds it as base64."""

    def __init__(self, title: str, out_dir: str, dpi: int = 100) -> None:
        self.title = title
        self.out_dir = out_dir
        self.dpi = dpi
        self.parts: list[str] = []
        self.pngs: list[str] = []
        os.makedirs(out_dir, exist_ok=True)

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def heading(self, text: str, level: int = 2) -> None:
        self.add(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.add(f"<p>{html.escape(text)}</p>")

    def figure(self, fig: Figure, name: str, caption: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi)
        fig.clear()
        data = buf.getvalue()
        path = os.path.join(self.out_dir, f"{name}.png")
        with open(path, "wb") as f:
            f.write(data)
        self.pngs.append(path)
        encoded = base64.b64encode(data).decode("ascii")
        self.add(f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
                 f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]], css: str = "") -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
        klass = f' class="{css}"' if css else ""
        self.add(f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def findings(self, findings: Sequence[Finding]) -> None:
        """Warnings as a list (numbers, threshold, suggestion); the phases of every layer as a table."""
        warnings = [f for f in findings if f.severity == "warning"]
        phases = [f for f in findings if f.rule == "information_phases"]
        items = []
        for f in warnings:
            numbers = ", ".join(f"{k} = {_cell(v)}" for k, v in f.measured.items())
            where = " · ".join(x for x in (f.run, f.layer) if x)
            items.append(
                f'<li class="warning"><b>{html.escape(f.rule)}</b>'
                f'{" — " + html.escape(where) if where else ""}: {html.escape(f.message)}'
                f"<br><small>measured: {html.escape(numbers)}<br>threshold: {html.escape(f.threshold)}</small>"
                f"<br>try: {html.escape(f.suggestion)}</li>"
            )
        if items:
            self.add("<ul class='findings'>" + "".join(items) + "</ul>")
        else:
            self.text("No rule triggered a warning.")
        if phases:
            self.add(f"<h3>Information peaks (Fig. 9; {html.escape(phases[0].threshold)})</h3>")
            runs = any(f.run for f in phases)
            header = [*(["run"] if runs else []), "layer", "peak step", "peak information", "rise to peak",
                      "peak to last", "reading"]
            self.table(header, [[*([f.run] if runs else []), f.layer, int(f.measured["peak_step"]),
                                 f.measured["peak_information"], f"{100 * f.measured['rise']:+.1f}%",
                                 f"{-100 * f.measured['fall']:+.1f}%", f.message] for f in phases], css="phases")

    def write(self, name: str = "report.html") -> str:
        path = os.path.join(self.out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(_TEMPLATE.format(title=html.escape(self.title), body="\n".join(self.parts)))
        return path


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; font-size: 0.9em; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }} img {{ max-width: 100%; }}
figcaption {{ font-size: 0.85em; color: #555; }}
li.warning {{ color: #8a3b00; margin-bottom: 0.6em; }} table.phases td:last-child {{ text-align: left; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _sentence_label(result: InfoFlowResult, b: int) -> str:
    words = result.tokens[b] if result.tokens else []
    text = " ".join(words[: int(result.mask[b].sum())])
    return text if len(text) <= 90 else text[:87] + "..."


def layer_table(run: Run) -> tuple[list[str], list[list[Any]]]:
    """Per layer: final information, its peak and step, effective words, mean entropy."""
    last = run.last
    info = _aligned_history(run)
    rows = []
    for i, name in enumerate(last.layer_names):
        peak, peak_step = (float("nan"), None)
        if info is not None:
            k = int(torch.nan_to_num(info[:, i], nan=-math.inf).argmax())
            peak, peak_step = float(info[k, i]), run.steps[k]
        rows.append([name, float(last.layer_information[i]), peak, peak_step, float(last.effective_words[i]),
                     float(last.mean_entropy[i])])
    header = ["layer", "information (nats/word)", "peak information", "peak step", "effective words", "mean entropy"]
    return header, rows


def write_run_report(run: Run, out_dir: str, findings: Sequence[Finding], heatmap_steps: Sequence[int],
                     progress: Progress = _no_progress) -> str:
    """Write ``report.html`` (figures embedded) and the PNGs into ``out_dir``; return the HTML path.

    ``heatmap_steps`` are indices into ``run.results``: a layers x words heatmap per probe sentence for each.
    """
    page = _Page(f"infoflow report: {run.name}", out_dir)
    last = run.last
    page.text(f"Log dir: {os.path.abspath(run.path)} · {len(run.results)} analyses at steps {run.steps} · "
              f"{last.sigma.shape[1]} probe sentences · layers: {', '.join(last.layer_names)}")
    if run.skipped:
        page.text("Skipped files: " + "; ".join(run.skipped))
    page.heading("Findings")
    page.findings(findings)
    page.heading("Layers at the last analysis")
    page.table(*layer_table(run))
    metrics = run.final_metrics()
    if metrics or run.hparams:
        page.heading("Hyperparameters and final validation metrics")
        page.table(["name", "value"], [*sorted(run.hparams.items()), *sorted(metrics.items())])
    n_heat = len(heatmap_steps) * last.sigma.shape[1]
    advance = progress("drawing figures", 3 + n_heat)
    page.heading("Information against step")
    info = _aligned_history(run)
    if info is not None:
        page.figure(figures.information_curves(run.steps, info, last.layer_names), "information_curves",
                    "mean information per word of every layer against step (Fig. 9)")
        advance()
        page.figure(figures.information_curves(run.steps, run.history("effective_words"), last.layer_names,
                                               ylabel="effective words"),
                    "effective_words_curves", "effective number of words each layer keeps, against step")
        advance()
    else:
        page.text("The layers changed between analyses; no curves.")
    page.figure(figures.layer_profile(last), "layer_profile",
                f"information and effective words per layer at step {run.steps[-1]}")
    advance()
    page.heading("Information per word, layers x words")
    for k in heatmap_steps:
        result = run.results[k]
        maps = result.meta.get("baselines")
        for b in range(result.sigma.shape[1]):
            fig = (figures.comparison_heatmaps(result, maps, b) if maps
                   else figures.information_heatmap(result, b))
            page.figure(fig, f"heatmap_step{run.steps[k]:08d}_sentence{b}",
                        f"step {run.steps[k]}, sentence {b}: {_sentence_label(result, b)}"
                        + (f" (beside {', '.join(maps)})" if maps else ""))
            advance()
    path = page.write()
    with open(os.path.join(out_dir, "findings.json"), "w", encoding="utf-8") as f:
        json.dump([x.to_dict() for x in findings], f, indent=1)
    return path


def compare_tables(runs: Sequence[Run], scores: Optional[Mapping[str, float]]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The tables of a comparison: runs (differing hparams, metrics, last layer), and information per layer."""
    keys = sorted(set().union(*(r.hparams for r in runs)))
    differing = [k for k in keys if len({repr(r.hparams.get(k)) for r in runs}) > 1]
    metric_names = sorted(set().union(*(r.final_metrics() for r in runs)))
    header = ["run", *differing, *metric_names, "last layer", "info/word", "eff. words", "analyses"]
    rows = []
    for r in runs:
        m = r.final_metrics()
        rows.append([r.name, *[r.hparams.get(k) for k in differing], *[m.get(k, float("nan")) for k in metric_names],
                     r.layer_names[-1], float(r.last.layer_information[-1]), float(r.last.effective_words[-1]),
                     f"{len(r.results)} to step {r.steps[-1]}"])
    layers = _layer_axis(runs)
    per_layer = [[layer, *[_by_layer(r, layer, "layer_information") for r in runs]] for layer in layers]
    return {"runs": (header, rows), "information": (["layer", *[r.name for r in runs]], per_layer)}


def _layer_axis(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(name for r in runs for name in r.layer_names))


def _by_layer(run: Run, layer: str, measure: str) -> float:
    names = run.layer_names
    return float(getattr(run.last, measure)[names.index(layer)]) if layer in names else float("nan")


def write_comparison(runs: Sequence[Run], out_dir: str, findings: Sequence[Finding], notes: Sequence[str],
                     scores: Optional[Mapping[str, float]], progress: Progress = _no_progress) -> str:
    """Write ``compare.html`` (figures embedded) and the PNGs into ``out_dir``; return the HTML path."""
    page = _Page(f"infoflow comparison of {len(runs)} runs", out_dir)
    page.text("Runs: " + "; ".join(f"{r.name} ({os.path.abspath(r.path)})" for r in runs))
    for note in notes:
        page.text(note)
    tables = compare_tables(runs, scores)
    page.heading("Findings")
    page.findings(findings)
    page.heading("Runs")
    page.table(*tables["runs"])
    page.heading("Information per layer at the last analysis (nats per word)")
    page.table(*tables["information"])
    layers = _layer_axis(runs)
    sentences = runs[0].last.sigma.shape[1]
    advance = progress("drawing figures", 3 + sentences)
    page.figure(figures.layers_by_run({r.name: [_by_layer(r, l, "layer_information") for l in layers] for r in runs},
                                      layers), "information_by_layer", "information per layer, one line per run")
    advance()
    page.figure(figures.layers_by_run({r.name: [_by_layer(r, l, "effective_words") for l in layers] for r in runs},
                                      layers, ylabel="effective words"),
                "effective_words_by_layer", "effective words per layer, one line per run")
    advance()
    page.figure(figures.curves_by_run({r.name: (r.steps, r.history()[:, -1].tolist()) for r in runs},
                                      title="last layer"),
                "last_layer_curves", "last layer's information against step, one line per run")
    advance()
    page.heading("Last layer: information per word of each probe sentence (Fig. 4)")
    for b in range(sentences):
        words = list(runs[0].last.tokens[b][: int(runs[0].last.mask[b].sum())]) if runs[0].last.tokens else \
            [str(i) for i in range(int(runs[0].last.mask[b].sum()))]
        rows = {r.name: r.last.information[-1, b, : len(words)].nan_to_num(0.0).tolist() for r in runs}
        page.figure(figures.saliency_by_run(rows, words, f"sentence {b}, last layer"), f"saliency_sentence{b}",
                    f"sentence {b}: {_sentence_label(runs[0].last, b)}")
        advance()
    path = page.write("compare.html")
    with open(os.path.join(out_dir, "findings.json"), "w", encoding="utf-8") as f:
        json.dump([x.to_dict() for x in findings], f, indent=1)
    return path
