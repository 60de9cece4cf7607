"""Changes of a curve that exceed their uncertainty: the phases of a layer's information over training.

The rule (:func:`curve_phases`): the turning points of a curve ``c[0..N-1]`` (one layer's mean information
per word at ``N`` analyses) are its first and last analyses and its highest and lowest ones. Between two
consecutive turning points ``a < b`` the change ``c[b] - c[a]`` is a phase when it exceeds ``z`` times its
combined standard error ``sqrt(se[a]^2 + se[b]^2)``: an *expansion* when it rises, a *compression* when it
falls. A curve without such a change is *stable*. The turning points are chosen after seeing the curve, so
``z`` (:func:`phase_z`) is the two-sided normal quantile for a false-alarm rate of :data:`PHASE_ALPHA` (5%)
over all ``N (N - 1) / 2`` pairs of analyses (Bonferroni): 2.39 for 3 analyses, 3.65 for 20, 4.0 for 40.
Measured on pure noise (2000 curves each): with the SE known, a phase is reported for 3-4% of curves of 3 to
40 analyses; with the SE estimated from the curve, for 10-35% (the fewer analyses, the more).

Where the standard errors are unknown (NaN, files written before they were recorded) they are estimated
from the curve's own wiggles: ``1.4826 * median |c[k] - c[k-1]| / sqrt(2)``, the noise of one point when
consecutive analyses differ by noise more often than by trend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_infoflow.analysis.finding import Finding

PHASE_ALPHA = 0.05
"""Chance that a curve of pure noise (of known standard error) is reported with a phase."""


def phase_z(analyses: int, alpha: float = PHASE_ALPHA) -> float:
    """Standard errors a change between two of ``analyses`` points must exceed to be a phase.

    >>> round(phase_z(3), 2), round(phase_z(20), 2)
    (2.39, 3.65)
    """
    pairs = max(analyses * (analyses - 1) // 2, 1)
    return float(torch.special.ndtri(torch.tensor(1.0 - alpha / (2 * pairs), dtype=torch.float64)))


@dataclass(frozen=True)
class Phase:
    """One significant change of a curve between two turning points.

    Attributes:
        kind: ``"expansion"`` (the information rises) or ``"compression"`` (it falls).
        start: index of the analysis where it starts; ``end``: where it ends.
        change: ``c[end] - c[start]`` (nats per word; free of ``sigma_max``).
        se: its combined standard error.
    """

    kind: Literal["expansion", "compression"]
    start: int
    end: int
    change: float
    se: float

    @property
    def z(self) -> float:
        """``|change| / se``: how many standard errors the change is."""
        return abs(self.change) / self.se if self.se > 0 else math.inf


def curve_noise(curve: Tensor) -> float:
    """The noise of one point estimated from a curve's successive differences (robust to a few real jumps).

    >>> round(curve_noise(torch.tensor([1.0, 1.2, 1.0, 1.2, 1.0])), 3)
    0.21
    """
    if curve.numel() < 2:
        return float("nan")
    return 1.4826 * float(curve.diff().abs().median()) / math.sqrt(2.0)


def curve_phases(curve: Sequence[float] | Tensor, se: Sequence[float] | Tensor | None = None,
                 z: float | None = None) -> list[Phase]:
    """The phases of one curve (see the module docstring); empty for a stable curve.

    ``se``: the standard error of each point (NaN or None: estimated from the curve); ``z``: default
    :func:`phase_z` of the curve's length.

    Example (the demo's layer 2: a fall of 27.8 and a recovery of 19.7 nats per word, SE 0.5)::

        >>> phases = curve_phases([260.8, 250.0, 233.0, 240.0, 252.7], [0.5] * 5)
        >>> [(p.kind, p.start, p.end, round(p.change, 1)) for p in phases]
        [('compression', 0, 2, -27.8), ('expansion', 2, 4, 19.7)]
        >>> curve_phases([10.0, 10.3, 9.8, 10.1], [0.5] * 4)
        []
    """
    c = torch.as_tensor(curve, dtype=torch.float64)
    if c.numel() < 2 or not bool(torch.isfinite(c).all()):
        return []
    s = torch.full_like(c, math.nan) if se is None else torch.as_tensor(se, dtype=torch.float64).clone()
    missing = ~torch.isfinite(s)
    if bool(missing.any()):
        s[missing] = curve_noise(c)
    if not bool(torch.isfinite(s).all()):
        return []
    z = phase_z(c.numel()) if z is None else z
    points = sorted({0, int(c.argmax()), int(c.argmin()), c.numel() - 1})
    phases = []
    for a, b in zip(points, points[1:]):
        change = float(c[b] - c[a])
        err = math.sqrt(float(s[a]) ** 2 + float(s[b]) ** 2)
        if abs(change) > z * err:
            phases.append(Phase("expansion" if change > 0 else "compression", a, b, change, err))
    return phases


_VERBS = {"expansion": ("expands", "then expands"), "compression": ("compresses", "then compresses")}


def phase_finding(name: str, steps: list[int], col: Tensor, phases: list[Phase], run: str | None) -> Finding:
    """The ``information_phases`` finding of one layer's curve ``col`` at ``steps`` with its ``phases``."""
    k = int(col.argmax())
    parts = [f"{_VERBS[p.kind][j > 0]} from step {steps[p.start]} to {steps[p.end]} ({p.change:+.2f}"
             f"{' nats per word' if j == 0 else ''})" for j, p in enumerate(phases)]
    message = f"{name} " + ", ".join(parts) + "." if phases else (
        f"{name} is stable: no change between its first, highest, lowest and last analyses exceeds its uncertainty.")
    tip = ("the two phases of Fig. 9; if the validation score stopped improving during compression, the checkpoint "
           "before it is a candidate" if [p.kind for p in phases] == ["expansion", "compression"] else
           "no compression yet: train longer before judging how much the layer keeps"
           if phases and phases[-1].kind == "expansion" else "nothing to change on this account" if not phases else
           "compression without a later expansion: the layer is still discarding input; on the validation sweeps "
           "this held for the best and the worst settings alike, so it is a description, not advice")
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
