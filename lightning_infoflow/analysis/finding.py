"""Finding: one triggered guidance rule, with the numbers it measured, its threshold and what to try."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["warning", "info"]

ABSOLUTE_KEYS = frozenset({"information", "peak_information"})
"""Keys of ``Finding.measured`` that hold absolute information per word, ``K log(sigma_max / sigma)`` averaged:
shown for orientation, they move with the arbitrary ``sigma_max``. Every other number of a finding, its
message and whether it fires do not (while no word sits at the bound)."""


@dataclass(frozen=True)
class Finding:
    """One triggered rule: what was measured, the threshold it crossed, and what to try.

    Attributes:
        rule: the rule's name (``collapsed_layer``, ``not_learning``, ``noisy_word_use``,
            ``information_phases``).
        severity: ``"warning"`` (something to change) or ``"info"`` (a description of the dynamics).
        message: one sentence with the measured numbers.
        measured: the numbers behind the message, by name (never empty).
        threshold: the rule's threshold, in words and numbers.
        suggestion: what to try.
        run: the run it concerns, where there are several.
        layer: the layer it concerns.
        step: the optimizer step it concerns.
    """

    rule: str
    severity: Severity
    message: str
    measured: Mapping[str, float]
    threshold: str
    suggestion: str
    run: str | None = None
    layer: str | None = None
    step: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.measured:
            raise ValueError(f"finding {self.rule!r} has no measured numbers; every finding must carry them")

    def __str__(self) -> str:
        where = f"{self.run}: " if self.run else ""
        return (f"[{self.severity}] {self.rule}: {where}{self.message} Threshold: {self.threshold}. "
                f"Try: {self.suggestion}")

    def relative_measured(self) -> dict[str, float]:
        """The measured numbers that do not depend on ``sigma_max`` (all but :data:`ABSOLUTE_KEYS`).

        >>> Finding("r", "info", "m", {"information": 80.0, "fall": 2.5}, "t", "s").relative_measured()
        {'fall': 2.5}
        """
        return {k: float(v) for k, v in self.measured.items() if k not in ABSOLUTE_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return {
            "rule": self.rule, "severity": self.severity, "message": self.message,
            "measured": {k: float(v) for k, v in self.measured.items()}, "threshold": self.threshold,
            "suggestion": self.suggestion, "run": self.run, "layer": self.layer, "step": self.step,
        }
