"""When the callback analyses: the steps that are due, and the time budget that may thin them."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional


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


#: the wall clock of the budget and of the analyses' timing (a module attribute, so tests can drive it)
clock: Callable[[], float] = time.perf_counter


class OverheadBudget:
    """Keeps the analyses' wall time under ``max_overhead`` of the run's projected training time.

    The training time is the fit's wall time minus the analyses' time, projected from the time per
    step so far to ``trainer.estimated_stepping_batches`` (the time so far when that is unknown). One
    more analysis is over budget when it and the one reserved for the end (each as long as the last one)
    would exceed ``max_overhead`` of it. ``None`` never refuses.

    An analysis that stops when good enough (``steps="auto"``) may cost ten or a hundred times another, so
    the last one's length alone does not bound the next: :meth:`step_cap` caps its optimisation steps at
    its share of what is left of the budget (half, the other half for the one at the end; all of it at
    the end), at the last analysis's seconds per step, and never below ``floor`` steps.

    The first analysis (step 0) runs before its cost is known. :meth:`verdict`, asked once after the
    first training step, says whether the budget can hold at all: when the first analysis and the one
    at the end already exceed it, it returns the numbers and what the callback does instead (the first
    and the last analysis only), for the callback to say once.
    """

    def __init__(self, max_overhead: Optional[float]) -> None:
        self.max_overhead = max_overhead
        self.analysis_seconds = 0.0
        self.last_seconds = 0.0
        self.first_seconds = 0.0
        self.fit_seconds = 0.0
        self.step_seconds = 0.0  # the last analysis's seconds per optimisation step (0: not known yet)
        self.judged = False
        self.cannot_hold = False  # the verdict: the first and the last analysis alone exceed the budget
        self._clock: Optional[float] = None

    def start(self) -> None:
        """The fit starts (or resumes): its wall clock runs from now."""
        self._clock = clock()

    def stop(self) -> None:
        if self._clock is not None:
            self.fit_seconds += clock() - self._clock
            self._clock = None

    def spent(self, seconds: float, new_analysis: bool, steps_run: int = 0) -> None:
        """Count ``seconds`` of analysis work (a new analysis of ``steps_run`` optimisation steps, or the
        logging of the current one)."""
        self.analysis_seconds += seconds
        self.last_seconds = seconds if new_analysis else self.last_seconds + seconds
        if new_analysis and steps_run > 0:
            self.step_seconds = seconds / steps_run
        if not self.judged:
            self.first_seconds = self.last_seconds

    def projected_training(self, global_step: int, estimated_steps: float) -> float:
        """Seconds of training (analyses excluded) projected to the whole run; the time so far if unknown."""
        elapsed = self.fit_seconds + (clock() - self._clock if self._clock is not None else 0.0)
        training = max(elapsed - self.analysis_seconds, 0.0)
        step = max(global_step, 1)
        if math.isfinite(estimated_steps) and estimated_steps >= step:
            training = training / step * estimated_steps
        return training

    def over(self, global_step: int, estimated_steps: float) -> bool:
        if self.max_overhead is None or self.last_seconds == 0.0:
            return False
        upcoming = 2 * self.last_seconds  # this analysis and the one at the end
        return self.analysis_seconds + upcoming > self.max_overhead * self.projected_training(global_step,
                                                                                             estimated_steps)

    def step_cap(self, global_step: int, estimated_steps: float, at_end: bool, floor: int) -> Optional[int]:
        """The most optimisation steps the next analysis may take to stay in the budget (at least ``floor``),
        or ``None`` when nothing bounds it (no budget, or no analysis measured yet)."""
        if self.max_overhead is None or self.step_seconds == 0.0:
            return None
        left = self.max_overhead * self.projected_training(global_step, estimated_steps) - self.analysis_seconds
        share = left if at_end else left / 2  # this one and the one reserved for the end
        return max(floor, int(share / self.step_seconds)) if share > 0 else floor

    def verdict(self, global_step: int, estimated_steps: float) -> Optional[str]:
        """Once, after the first analysis and training step: why the budget cannot hold, or ``None``."""
        if self.judged or self.max_overhead is None or self.first_seconds == 0.0 or global_step < 1:
            return None
        self.judged = True
        if not math.isfinite(estimated_steps):
            return None  # the run's length is unknown: nothing to project
        training = self.projected_training(global_step, estimated_steps)
        budget = self.max_overhead * training
        if 2 * self.first_seconds <= budget:
            return None
        self.cannot_hold = True
        return (
            f"max_overhead={self.max_overhead} cannot hold on this run: its projected training time is "
            f"{training:.1f} s ({int(estimated_steps)} steps at {training / estimated_steps:.2f} s), a budget of "
            f"{budget:.1f} s, and one analysis costs {self.first_seconds:.1f} s (the first one: the time "
            f"training waited). Instead the callback runs only the first analysis and the one at the end of training "
            f"(about {2 * self.first_seconds:.0f} s, +{100 * 2 * self.first_seconds / max(training, 1e-9):.0f}% "
            "if the last costs as much as the first) and skips the others. For more analyses: a longer run, fewer "
            "probe sentences (num_sentences=...), a cheaper EstimatorConfig(steps=..., samples=...), or "
            "max_overhead=None to run every scheduled analysis."
        )

    def reset(self) -> None:
        self.analysis_seconds = self.last_seconds = self.first_seconds = self.fit_seconds = 0.0
        self.step_seconds = 0.0
        self.judged = self.cannot_hold = False
        self._clock = None

    def state_dict(self) -> dict[str, Any]:
        running = clock() - self._clock if self._clock is not None else 0.0
        return {"analysis_seconds": self.analysis_seconds, "fit_seconds": self.fit_seconds + running,
                "step_seconds": self.step_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.analysis_seconds = float(state.get("analysis_seconds", 0.0))
        self.fit_seconds = float(state.get("fit_seconds", 0.0))
        self.step_seconds = float(state.get("step_seconds", 0.0))
        self.judged = self.judged or self.analysis_seconds > 0  # a resumed run was judged before
