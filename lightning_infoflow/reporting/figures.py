"""Matplotlib figures of information flow: layer x word heatmaps and information-against-step curves.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot state; the caller logs or
saves it and may drop it (no figure manager holds a reference). Functions that draw one panel take
``ax=`` (as torchmetrics' ``plot`` methods do): given an axes they draw into it and return its figure,
otherwise they make a figure of a size that suits the data. Two private helpers draw every panel:
:func:`_heatmap` (rows x words, one colour bar) and :func:`_lines` (one line per series).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.core.uncertainty import normal_quantile
from lightning_infoflow.reporting.tables import INTERVAL_LEVEL

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]
"""Lines to draw: a label to its ``(x, y)`` values."""


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """The given axes and its figure, or a new constrained-layout figure of ``figsize`` with one axes."""
    if ax is not None:
        fig = ax.get_figure()
        assert isinstance(fig, Figure)
        return fig, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


def _heatmap(ax: Axes, values: Tensor, words: Sequence[str], rows: Sequence[str], title: str,
             row_fontsize: int = 8) -> None:
    """Rows x words heatmap with its own colour range (the data's min..max) and a colour bar."""
    im = ax.imshow(torch.as_tensor(values, dtype=torch.float32).numpy(), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(words)), labels=list(words), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=row_fontsize)
    ax.set_title(title, fontsize=9)
    fig = ax.get_figure()
    assert fig is not None
    fig.colorbar(im, ax=ax, fraction=0.04)


def _from_zero(ax: Axes, values: Sequence[float]) -> None:
    """Start the y axis at 0 when no value is negative: every measure drawn is a size (nats, words), and an
    axis cut close to the data makes a change of 0.6% look like a fall to nothing."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) >= 0:
        ax.set_ylim(bottom=0, top=max(max(finite) * 1.05, 1e-9))


def _lines(ax: Axes, series: Series, ylabel: str, markersize: float = 3, title: str = "",
           bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> None:
    """One line with markers per series, a grid and a legend; the y axis from 0 (:func:`_from_zero`).

    ``bands`` maps a series to ``(low, high)`` per point: a shaded band in the line's colour (points where
    either end is NaN leave a gap)."""
    bands = bands or {}
    for name, (x, y) in series.items():
        (line,) = ax.plot(list(x), [float(v) for v in y], marker="o", markersize=markersize, label=name)
        if name in bands:
            low, high = ([float(v) for v in b] for b in bands[name])
            ax.fill_between(list(x), low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    _from_zero(ax, [float(v) for _x, y in series.values() for v in y])
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _step_axis(ax: Axes, steps: Sequence[int]) -> None:
    """Optimizer steps on the x axis; symmetric-log when they span more than a decade from 0."""
    if len(steps) > 2 and min(steps) >= 0 and max(steps) > 10:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=min(steps), right=max(steps) * 1.15)  # autoscale margins would show negative steps
    ax.set_xlabel("optimizer step")


def information_heatmap(result: InfoFlowResult, sentence: int, title: str | None = None,
                        ax: Axes | None = None) -> Figure:
    """Layers x words heatmap of the information each layer keeps of each word (Figs. 3 and 7).

    Example::

        >>> import torch
        >>> r = InfoFlowResult(["l0", "l1"], torch.tensor([[[1.0, 5.0]], [[2.0, 9.0]]]),
        ...                    torch.ones(1, 2, dtype=torch.bool), sigma_max=10.0, embedding_dim=4,
        ...                    tokens=[["good", "film"]])
        >>> information_heatmap(r, 0).axes[0].get_xticklabels()[1].get_text()
        'film'
    """
    words = result.words(sentence)
    fig, ax = _axes(ax, (max(4.0, 0.45 * len(words) + 2.5), 0.45 * len(result.layer_names) + 1.6))
    step = result.meta.get("step")
    default = "information per word (nats)" + (f", step {step}" if step is not None else "")
    _heatmap(ax, result.information[:, sentence][:, result.mask[sentence]], words, result.layer_names,
             title or default)
    ax.set_xlabel("word")
    ax.set_ylabel("layer")
    return fig


def comparison_heatmaps(result: InfoFlowResult, others: Mapping[str, Tensor], sentence: int) -> Figure:
    """The information heatmap of one sentence beside other saliency maps of the same layers and words.

    ``others`` maps a method name to ``[L, B, T]`` values (e.g. :class:`~lightning_infoflow.SaliencyResult`
    ``.values``). Each panel has its own colour range: the methods have different units.

    Example::

        >>> r = InfoFlowResult(["l0"], torch.tensor([[[1.0, 5.0]]]), torch.ones(1, 2, dtype=torch.bool), 10.0, 4)
        >>> [a.get_title() for a in comparison_heatmaps(r, {"gradient": torch.ones(1, 1, 2)}, 0).axes[:2]]
        ['information (ours)', 'gradient']
    """
    real = result.mask[sentence]
    words = result.words(sentence)
    panels = {"information (ours)": result.information[:, sentence][:, real],
              **{name: torch.as_tensor(values)[:, sentence][:, real] for name, values in others.items()}}
    width = max(4.0, 0.4 * len(words) + 2.0)
    fig = Figure(figsize=(width * len(panels), 0.45 * len(result.layer_names) + 1.8), layout="constrained")
    for ax, (name, values) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        _heatmap(ax, values, words, result.layer_names, name, row_fontsize=7)
    return fig


def word_information_by_run(rows: Mapping[str, Sequence[float]], words: Sequence[str], title: str = "",
                            ax: Axes | None = None) -> Figure:
    """Runs x words heatmap of the information one layer keeps of each word of one sentence (Fig. 4).

    ``rows`` maps a run name to one value per word; one colour scale for all runs, so rows compare.

    Example::

        >>> fig = word_information_by_run({"a": [1.0, 0.0], "b": [0.5, 0.5]}, ["good", "film"])
        >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
        ['a', 'b']
    """
    fig, ax = _axes(ax, (max(4.0, 0.45 * len(words) + 3.0), 0.4 * len(rows) + 1.7))
    values = torch.tensor([[float(v) for v in row] for row in rows.values()])
    _heatmap(ax, values, words, list(rows), title or "information per word (nats)")
    return fig


def information_curves(steps: Sequence[int], information: Tensor, layer_names: Sequence[str],
                       se: Tensor | None = None, ax: Axes | None = None,
                       ylabel: str = "mean information per word (nats)") -> Figure:
    """Information of every layer against training step (Fig. 9): ``information`` is ``[len(steps), L]``.

    ``se`` (``[len(steps), L]``, e.g. ``layer_information_se`` per analysis) adds a shaded band of
    ``+/- z * se`` around each line, the :data:`~lightning_infoflow.reporting.tables.INTERVAL_LEVEL` (90%)
    normal interval (``z = 1.645``); a NaN standard error leaves a gap in the band.

    Example::

        >>> fig = information_curves([0, 5], torch.tensor([[1.0, 2.0], [3.0, 1.0]]), ["l0", "l1"],
        ...                          se=torch.tensor([[0.1, 0.2], [0.1, 0.2]]))
        >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()], len(fig.axes[0].collections)
        (['l0', 'l1'], 2)
    """
    fig, ax = _axes(ax, (6.0, 3.6))
    info = torch.as_tensor(information, dtype=torch.float32)
    series = {name: (list(steps), info[:, i].tolist()) for i, name in enumerate(layer_names)}
    bands = {}
    if se is not None:
        half = normal_quantile(INTERVAL_LEVEL) * torch.as_tensor(se, dtype=torch.float32)
        bands = {name: ((info[:, i] - half[:, i]).tolist(), (info[:, i] + half[:, i]).tolist())
                 for i, name in enumerate(layer_names)}
    _lines(ax, series, ylabel, bands=bands)
    _step_axis(ax, steps)
    return fig


def curves_by_run(histories: Mapping[str, tuple[Sequence[int], Sequence[float]]],
                  ylabel: str = "mean information per word (nats)", title: str = "",
                  ax: Axes | None = None) -> Figure:
    """One measure against training step, one line per run: ``histories`` maps a run to (steps, values)."""
    fig, ax = _axes(ax, (6.0, 3.6))
    _lines(ax, {name: (list(steps), values) for name, (steps, values) in histories.items()}, ylabel, title=title)
    _step_axis(ax, sorted({s for steps, _ in histories.values() for s in steps}))
    return fig


def layers_by_run(values: Mapping[str, Sequence[float]], layer_names: Sequence[str],
                  ylabel: str = "information per word (nats)", ax: Axes | None = None) -> Figure:
    """One line per run of a per-layer measure against layer depth (runs of a sweep side by side).

    ``values`` maps a run name to ``L`` numbers (NaN where a run lacks a layer).

    Example::

        >>> fig = layers_by_run({"wd=0": [9.0, 7.0], "wd=1e-3": [8.0, 2.0]}, ["l0", "l1"])
        >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        ['wd=0', 'wd=1e-3']
    """
    fig, ax = _axes(ax, (max(5.0, 0.7 * len(layer_names) + 3.0), 3.8))
    x = list(range(len(layer_names)))
    _lines(ax, {name: (x, row) for name, row in values.items()}, ylabel, markersize=4)
    ax.set_xticks(x, labels=list(layer_names), rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("layer")
    return fig


def layer_profile(result: InfoFlowResult, ax: Axes | None = None) -> Figure:
    """Mean information per word against layer depth, with the effective number of words kept (right axis);
    both axes from 0."""
    fig, ax = _axes(ax, (5.0, 3.2))
    x = list(range(len(result.layer_names)))
    ax.plot(x, result.layer_information.tolist(), marker="o", color="tab:blue")
    _from_zero(ax, result.layer_information.tolist())
    ax.set_ylabel("information per word (nats)", color="tab:blue")
    ax.set_xticks(x, labels=result.layer_names, rotation=45, ha="right", fontsize=8)
    twin = ax.twinx()
    twin.plot(x, result.effective_words.tolist(), marker="s", color="tab:orange")
    _from_zero(twin, result.effective_words.tolist())
    twin.set_ylabel("effective words", color="tab:orange")
    return fig
