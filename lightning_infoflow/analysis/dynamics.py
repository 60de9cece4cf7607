r"""Guidance over a run's history: information collapse between analyses, and expansion and compression phases.

Rules in the style of :mod:`~lightning_infoflow.analysis.guidance` (pure functions returning
:class:`~lightning_infoflow.analysis.finding.Finding` objects), over ``[N, L]`` histories of
``InfoFlowResult.layer_information`` (only its differences are read: nothing here depends on
``sigma_max``) and, where known, their standard errors (``InfoFlowResult.noise_se`` stacked).

``information_collapse`` (usable live: :func:`collapse_finding`)
    Between two consecutive analyses a layer's noise scales grow at least ``COLLAPSE_SIGMA_RATIO`` (2)
    fold in geometric mean (its information falls by at least ``K log 2`` nats per word), by more than
    ``COLLAPSE_Z`` (1.96) combined standard errors where they are known, while the training loss improves
    by less than ``COLLAPSE_MIN_IMPROVEMENT`` (2 %, relative). Suggestion: lower the learning rate or the
    regularisation, or resume from an earlier checkpoint.
``information_phases`` (Sec. 4.5, Fig. 9)
    Per layer, the changes of its information that exceed their uncertainty
    (:mod:`~lightning_infoflow.analysis.evidence`): between the first, highest, lowest and last analyses,
    a rise (expansion) or fall (compression) larger than ``z`` combined standard errors, ``z`` set for a
    5% false-alarm rate over the curve. A layer without one is stable. Informational; needs 3 analyses.

Example::

    >>> f = collapse_finding([100, 200], [[40.0, 30.0], [38.0, 9.0]], [0.52, 0.53], ["lstm1", "lstm2"],
    ...                      embedding_dim=16)
    >>> f.rule, f.layer, round(f.measured["fall"], 1), round(f.measured["sigma_ratio"], 2)
    ('information_collapse', 'lstm2', 21.0, 3.72)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

from lightning_infoflow.analysis.evidence import Phase, curve_phases
from lightning_infoflow.analysis.finding import Finding

COLLAPSE_SIGMA_RATIO = 2.0
COLLAPSE_Z = 1.96
COLLAPSE_MIN_IMPROVEMENT = 0.02

History = Union[Tensor, Sequence[Sequence[float]]]


def _name(names: Sequence[str] | None, i: int) -> str:
    return names[i] if names is not None else f"layer {i}"


# --------------------------------------------------------------------------- information collapse


def collapse_finding(
    steps: Sequence[int],
    information: History,
    loss: Sequence[float],
    layer_names: Sequence[str] | None = None,
    *,
    embedding_dim: int,
    se: History | None = None,
    sigma_ratio: float = COLLAPSE_SIGMA_RATIO,
    z: float = COLLAPSE_Z,
    min_improvement: float = COLLAPSE_MIN_IMPROVEMENT,
    run: str | None = None,
) -> Finding | None:
    """Information collapse in the last interval of a history: the check a live callback calls.

    Looks only at the two most recent analyses, so that calling it after every analysis reports each
    collapse once.

    Args:
        steps: optimizer steps of the analyses, ascending, ``[N]``.
        information: mean information per word of each layer at each analysis, ``[N, L]`` nats
            (``InfoFlowResult.layer_information`` stacked); only differences are used.
        loss: the training loss at each analysis, ``[N]`` (best smoothed, e.g. the mean over the last
            logged steps); NaN where unknown, and no finding is made for an interval with a NaN loss.
        layer_names: ``L`` names for the message (default ``layer 0``, ``layer 1``, ...).
        embedding_dim: K, to turn a fall of information into a growth of the noise scales.
        se: ``[N, L]`` standard errors of ``information`` (``InfoFlowResult.noise_se`` stacked: the probe
            is the same at every analysis); NaN or None where unknown (then the fall alone decides).
        sigma_ratio: the geometric-mean growth of the layer's sigma that counts as a collapse.
        z: combined standard errors the fall must exceed.
        min_improvement: the relative loss improvement below which the loss "does not improve".
        run: the run's name, for the finding.

    Returns:
        A warning for the layer with the steepest fall (the other collapsed layers in ``measured``), or
        ``None``.
    """
    info = torch.as_tensor(information, dtype=torch.float64)
    if info.dim() != 2 or info.shape[0] != len(steps) or len(loss) != len(steps):
        raise ValueError(
            f"collapse_finding: expected information [N, L] and loss [N] for N={len(steps)} steps, got "
            f"information {tuple(info.shape)} and {len(loss)} losses"
        )
    if len(steps) < 2:
        return None
    errors = torch.full_like(info, math.nan) if se is None else torch.as_tensor(se, dtype=torch.float64)
    k = len(steps) - 1
    loss_before, loss_after = float(loss[k - 1]), float(loss[k])
    if not (math.isfinite(loss_before) and math.isfinite(loss_after)):
        return None
    improvement = (loss_before - loss_after) / max(abs(loss_before), 1e-12)
    if improvement >= min_improvement:
        return None
    falls = (info[k - 1] - info[k]).nan_to_num(nan=-math.inf)
    combined = (errors[k - 1] ** 2 + errors[k] ** 2).sqrt().nan_to_num(nan=0.0)
    collapsed = [i for i in range(len(falls)) if falls[i] >= embedding_dim * math.log(sigma_ratio)
                 and falls[i] > z * combined[i]]
    if not collapsed:
        return None
    worst = max(collapsed, key=lambda i: float(falls[i]))
    return _collapse(list(steps), info, (loss_before, loss_after, improvement), layer_names, worst, collapsed,
                     (float(falls[worst]), float(combined[worst]), embedding_dim, sigma_ratio, min_improvement), run)


def _collapse(steps: list[int], info: Tensor, losses: tuple[float, float, float], names: Sequence[str] | None,
              worst: int, collapsed: list[int], numbers: tuple[float, float, int, float, float],
              run: str | None) -> Finding:
    """The finding of :func:`collapse_finding` (``numbers``: fall, its SE, K, the sigma ratio, the improvement bar)."""
    fall, err, dim, ratio_bar, min_improvement = numbers
    loss_before, loss_after, improvement = losses
    name = _name(names, worst)
    growth = math.exp(fall / dim)
    others = [_name(names, i) for i in collapsed if i != worst]
    also = f" (also {', '.join(others)})" if others else ""
    return Finding(
        rule="information_collapse", severity="warning", run=run, layer=name, step=steps[-1],
        message=f"between steps {steps[-2]} and {steps[-1]} the noise {name} tolerates grew {growth:.2f}x (its "
                f"information fell by {fall:.2f} nats per word){also} while the training loss went "
                f"{loss_before:.4g} -> {loss_after:.4g} ({100 * improvement:+.1f}% improvement).",
        measured={"fall": fall, "fall_se": err, "sigma_ratio": growth, "information_before": float(info[-2, worst]),
                  "information_after": float(info[-1, worst]), "loss_before": loss_before, "loss_after": loss_after,
                  "loss_improvement": improvement, "layers_collapsed": float(len(collapsed))},
        threshold=f"the layer's sigma grows at least {ratio_bar:g}x in geometric mean (a fall of K log {ratio_bar:g} "
                  f"nats per word, beyond its uncertainty) between analyses while the loss improves by less than "
                  f"{100 * min_improvement:g}%",
        suggestion="the layer discards input it has not learned to do without: lower the learning rate or the "
                   f"regularisation, or resume from the checkpoint of step {steps[-2]}",
    )


def collapse_findings(
    steps: Sequence[int],
    information: History,
    loss: Sequence[float],
    layer_names: Sequence[str] | None = None,
    *,
    embedding_dim: int,
    se: History | None = None,
    sigma_ratio: float = COLLAPSE_SIGMA_RATIO,
    z: float = COLLAPSE_Z,
    min_improvement: float = COLLAPSE_MIN_IMPROVEMENT,
    run: str | None = None,
) -> list[Finding]:
    """Every information collapse of a whole history (offline): :func:`collapse_finding` on each interval."""
    info = torch.as_tensor(information, dtype=torch.float64)
    errors = None if se is None else torch.as_tensor(se, dtype=torch.float64)
    out = []
    for k in range(1, len(steps)):
        f = collapse_finding(steps[: k + 1], info[: k + 1], loss[: k + 1], layer_names, embedding_dim=embedding_dim,
                             se=None if errors is None else errors[: k + 1], sigma_ratio=sigma_ratio, z=z,
                             min_improvement=min_improvement, run=run)
        if f is not None:
            out.append(f)
    return out


# --------------------------------------------------------------------------- expansion and compression


def information_phases(
    steps: Sequence[int],
    information: History,
    layer_names: Sequence[str] | None = None,
    *,
    se: History | None = None,
    z: float | None = None,
    run: str | None = None,
) -> list[Finding]:
    """Per layer, the expansion and compression phases its information goes through (one finding per layer).

    Args:
        steps: optimizer steps of the analyses, ascending, ``[N]`` (at least 3).
        information: ``[N, L]`` mean information per word (nats); only its changes are read.
        layer_names: ``L`` names.
        se: ``[N, L]`` standard errors of ``information`` (``InfoFlowResult.noise_se`` stacked, for one
            fixed probe); NaN or None: estimated from each curve (:func:`.evidence.curve_noise`).
        z: standard errors a change must exceed; default set by the number of analyses
            (:func:`~lightning_infoflow.analysis.evidence.phase_z`).
        run: the run's name, for the findings.

    Each finding's ``extra["phases"]`` lists the phases as dicts (kind, start and end steps, change in
    nats per word, its SE) and ``extra["label"]`` reads ``"compression, expansion"``, ``"stable"``, ...

    Example::

        >>> found = information_phases([0, 100, 200], [[260.8], [233.0], [252.7]], ["l2"], se=[[0.5]] * 3)
        >>> found[0].extra["label"]
        'compression, expansion'
        >>> found[0].message
        'l2 compresses from step 0 to 100 (-27.80 nats per word), then expands from step 100 to 200 (+19.70).'
    """
    info = torch.as_tensor(information, dtype=torch.float64)
    if len(steps) < 3 or info.dim() != 2 or info.shape[0] != len(steps):
        return []
    errors = None if se is None else torch.as_tensor(se, dtype=torch.float64)
    out = []
    for i in range(info.shape[1]):
        col = info[:, i]
        if not bool(torch.isfinite(col).all()):
            continue
        phases = curve_phases(col, None if errors is None else errors[:, i], z)
        out.append(_phase_finding(_name(layer_names, i), [int(x) for x in steps], col, phases, run))
    return out


_VERBS = {"expansion": ("expands", "then expands"), "compression": ("compresses", "then compresses")}


def _phase_finding(name: str, steps: list[int], col: Tensor, phases: list[Phase], run: str | None) -> Finding:
    k = int(col.argmax())
    parts = [f"{_VERBS[p.kind][j > 0]} from step {steps[p.start]} to {steps[p.end]} ({p.change:+.2f}"
             f"{' nats per word' if j == 0 else ''})" for j, p in enumerate(phases)]
    message = f"{name} " + ", ".join(parts) + "." if phases else (
        f"{name} is stable: no change between its first, highest, lowest and last analyses exceeds its uncertainty.")
    tip = ("the two phases of Fig. 9; if the validation score stopped improving during compression, the checkpoint "
           "before it is a candidate" if [p.kind for p in phases] == ["expansion", "compression"] else
           "no compression yet: train longer before judging how much the layer keeps"
           if phases and phases[-1].kind == "expansion" else "nothing to change on this account" if not phases else
           "compression without a later expansion: if the loss is flat too, try a larger learning rate or less "
           "regularisation")
    return Finding(
        rule="information_phases", severity="info", run=run, layer=name, step=steps[k], message=message,
        measured={"peak_step": float(steps[k]), "peak_information": float(col[k]),
                  "rise": sum(p.change for p in phases if p.change > 0),
                  "fall": -sum(p.change for p in phases if p.change < 0),
                  "phases": float(len(phases)), "max_z": max((p.z for p in phases), default=0.0)},
        threshold="a change between the first, highest, lowest and last analyses larger than z combined standard "
                  "errors (z for a 5% false-alarm rate over the curve)",
        suggestion=tip,
        extra={"label": ", ".join(p.kind for p in phases) or "stable",
               "phases": [{"kind": p.kind, "start_step": steps[p.start], "end_step": steps[p.end],
                           "change": p.change, "se": p.se} for p in phases]},
    )
