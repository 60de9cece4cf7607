"""Matplotlib figures of information flow: layer x word heatmaps and information-against-step curves.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot state; the caller logs or
saves it and may drop it (no figure manager holds a reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import torch
from matplotlib.figure import Figure
from torch import Tensor

from lightning_infoflow.core.result import InfoFlowResult


def information_heatmap(result: InfoFlowResult, sentence: int, title: Optional[str] = None) -> Figure:
    """Layers x words heatmap of the information each layer keeps of each word (Figs. 3 and 7).

    Example::

        >>> import torch
        >>> r = InfoFlowResult(["l0", "l1"], torch.tensor([[[1.0, 5.0]], [[2.0, 9.0]]]),
        ...                    torch.ones(1, 2, dtype=torch.bool), sigma_max=10.0, embedding_dim=4,
        ...                    tokens=[["good", "film"]])
        >>> information_heatmap(r, 0).axes[0].get_xticklabels()[1].get_text()
        'film'
    """
    real = result.mask[sentence]
    info = result.information[:, sentence][:, real].numpy()
    words = result.tokens[sentence][: int(real.sum())] if result.tokens else [str(i) for i in range(info.shape[1])]
    width = max(4.0, 0.45 * len(words) + 2.5)
    fig = Figure(figsize=(width, 0.45 * len(result.layer_names) + 1.6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(info, aspect="auto", cmap="viridis")  # colour range: this sentence's min..max
    ax.set_xticks(range(len(words)), labels=words, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(result.layer_names)), labels=result.layer_names, fontsize=8)
    ax.set_xlabel("word")
    ax.set_ylabel("layer")
    step = result.meta.get("step")
    ax.set_title(title or (f"information per word (nats), step {step}" if step is not None else "information per word (nats)"),
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return fig


def information_curves(steps: Sequence[int], information: Tensor, layer_names: Sequence[str],
                       ylabel: str = "mean information per word (nats)") -> Figure:
    """Information of every layer against training step (Fig. 9): ``information`` is ``[len(steps), L]``."""
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    info = torch.as_tensor(information)
    for layer, name in enumerate(layer_names):
        ax.plot(list(steps), info[:, layer].tolist(), marker="o", markersize=3, label=name)
    if len(steps) > 2 and min(steps) >= 0 and max(steps) > 10:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def layer_profile(result: InfoFlowResult) -> Figure:
    """Mean information per word against layer depth, with the effective number of words kept."""
    fig = Figure(figsize=(5.0, 3.2), layout="constrained")
    ax = fig.subplots()
    x = range(len(result.layer_names))
    ax.plot(x, result.layer_information.tolist(), marker="o", color="tab:blue")
    ax.set_ylabel("information per word (nats)", color="tab:blue")
    ax.set_xticks(list(x), labels=result.layer_names, rotation=45, ha="right", fontsize=8)
    twin = ax.twinx()
    twin.plot(x, result.effective_words.tolist(), marker="s", color="tab:orange")
    twin.set_ylabel("effective words", color="tab:orange")
    return fig


def layers_by_run(values: Mapping[str, Sequence[float]], layer_names: Sequence[str],
                  ylabel: str = "information per word (nats)") -> Figure:
    """One line per run of a per-layer measure against layer depth (runs of a sweep side by side).

    ``values`` maps a run name to ``L`` numbers (NaN where a run lacks a layer).

    Example::

        >>> fig = layers_by_run({"wd=0": [9.0, 7.0], "wd=1e-3": [8.0, 2.0]}, ["l0", "l1"])
        >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        ['wd=0', 'wd=1e-3']
    """
    fig = Figure(figsize=(max(5.0, 0.7 * len(layer_names) + 3.0), 3.8), layout="constrained")
    ax = fig.subplots()
    x = list(range(len(layer_names)))
    for name, row in values.items():
        ax.plot(x, [float(v) for v in row], marker="o", markersize=4, label=name)
    ax.set_xticks(x, labels=list(layer_names), rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def saliency_by_run(rows: Mapping[str, Sequence[float]], words: Sequence[str], title: str = "") -> Figure:
    """Runs x words heatmap of the information one layer keeps of each word of one sentence (Fig. 4).

    ``rows`` maps a run name to one value per word; one colour scale for all runs, so rows compare.

    Example::

        >>> fig = saliency_by_run({"a": [1.0, 0.0], "b": [0.5, 0.5]}, ["good", "film"])
        >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
        ['a', 'b']
    """
    data = torch.tensor([[float(v) for v in row] for row in rows.values()]).numpy()
    fig = Figure(figsize=(max(4.0, 0.45 * len(words) + 3.0), 0.4 * len(rows) + 1.7), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(words)), labels=list(words), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
    ax.set_title(title or "information per word (nats)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return fig


def curves_by_run(histories: Mapping[str, tuple[Sequence[int], Sequence[float]]],
                  ylabel: str = "mean information per word (nats)", title: str = "") -> Figure:
    """One measure against training step, one line per run: ``histories`` maps a run to (steps, values)."""
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    top = 0
    for name, (steps, values) in histories.items():
        ax.plot(list(steps), [float(v) for v in values], marker="o", markersize=3, label=name)
        top = max([top, *steps])
    if top > 10:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def comparison_heatmaps(result: InfoFlowResult, others: dict[str, Tensor], sentence: int) -> Figure:
    """The information heatmap of one sentence beside other saliency maps of the same layers and words.

    ``others`` maps a method name to ``[L, B, T]`` values (e.g. :class:`~lightning_infoflow.SaliencyResult`
    ``.values``). Each panel has its own colour range: the methods have different units.
    """
    real = result.mask[sentence]
    words = result.tokens[sentence][: int(real.sum())] if result.tokens else [str(i) for i in range(int(real.sum()))]
    panels = {"information (ours)": result.information[:, sentence][:, real], **{
        name: torch.as_tensor(values)[:, sentence][:, real] for name, values in others.items()}}
    width = max(4.0, 0.4 * len(words) + 2.0)
    fig = Figure(figsize=(width * len(panels), 0.45 * len(result.layer_names) + 1.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, values) in zip(axes, panels.items()):
        im = ax.imshow(values.numpy(), aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(words)), labels=words, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(result.layer_names)), labels=result.layer_names, fontsize=7)
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04)
    return fig
