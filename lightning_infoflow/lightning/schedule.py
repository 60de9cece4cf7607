"""When the callback analyses: the steps that are due, and the time budget that may thin them."""

from __future__ import annotations

import math
import time
from typing import Any, Optional


def log_spaced_steps(limit: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... below ``limit``: the early steps the regular schedule would miss.

    >>> log_spaced_steps(150)
    [1, 2, 5, 10, 20, 50, 100]
    """
    out, decade = [], 1
    while decade < limit:
        out += [s for s in (decade, 2 * decade, 5 * decade) if s < limit]
        decade *= 10
    return out


class Schedule:
    """The optimizer steps at which an analysis is due: 0, log-spaced early steps, every N steps.

    Example::

        >>> s = Schedule(every_n_train_steps=10, log_spaced=True)
        >>> [step for step in range(25) if s.due(step)]
        [0, 1, 2, 5, 10, 20]
    """

    def __init__(self, every_n_train_steps: int, log_spaced: bool) -> None:
        self.every_n_train_steps = every_n_train_steps
        self.early = set(log_spaced_steps(every_n_train_steps)) if log_spaced else set()

    def due(self, step: int) -> bool:
        return step == 0 or step in self.early or step % self.every_n_train_steps == 0

    def describe(self) -> str:
        early = f", {sorted(self.early)}" if self.early else ""
        return f"steps 0{early}, every {self.every_n_train_steps}"


class OverheadBudget:
    """Keeps the analyses' wall time under ``max_overhead`` of the run's projected training time.

    The training time is the fit's wall time minus the analyses' time, projected from the time per
    step so far to ``trainer.estimated_stepping_batches`` (the time so far when that is unknown). One
    more analysis is over budget when it and the one reserved for the end (each as long as the last one)
    would exceed ``max_overhead`` of it. ``None`` never refuses.
    """

    def __init__(self, max_overhead: Optional[float]) -> None:
        self.max_overhead = max_overhead
        self.analysis_seconds = 0.0
        self.last_seconds = 0.0
        self.fit_seconds = 0.0
        self._clock: Optional[float] = None

    def start(self) -> None:
        """The fit starts (or resumes): its wall clock runs from now."""
        self._clock = time.perf_counter()

    def stop(self) -> None:
        if self._clock is not None:
            self.fit_seconds += time.perf_counter() - self._clock
            self._clock = None

    def spent(self, seconds: float, new_analysis: bool) -> None:
        """Count ``seconds`` of analysis work (a new analysis, or the logging of the current one)."""
        self.analysis_seconds += seconds
        self.last_seconds = seconds if new_analysis else self.last_seconds + seconds

    def over(self, global_step: int, estimated_steps: float) -> bool:
        if self.max_overhead is None or self.last_seconds == 0.0:
            return False
        elapsed = self.fit_seconds + (time.perf_counter() - self._clock if self._clock is not None else 0.0)
        training = elapsed - self.analysis_seconds
        step = max(global_step, 1)
        if math.isfinite(estimated_steps) and estimated_steps >= step:
            training = training / step * estimated_steps
        upcoming = 2 * self.last_seconds  # this analysis and the one at the end
        return self.analysis_seconds + upcoming > self.max_overhead * max(training, 0.0)

    def reset(self) -> None:
        self.analysis_seconds = self.last_seconds = self.fit_seconds = 0.0
        self._clock = None

    def state_dict(self) -> dict[str, Any]:
        running = time.perf_counter() - self._clock if self._clock is not None else 0.0
        return {"analysis_seconds": self.analysis_seconds, "fit_seconds": self.fit_seconds + running}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.analysis_seconds = float(state.get("analysis_seconds", 0.0))
        self.fit_seconds = float(state.get("fit_seconds", 0.0))
