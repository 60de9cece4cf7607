"""Validation of the estimator's settings: each bad value is a ValueError that names it and the valid range."""

from __future__ import annotations

import math
from typing import Any, Optional


def check_settings(lam: float, steps: Any, samples: int, sigma_max: Optional[float], lr: float,
                   warm_lr: Optional[float], chunk: Any, memory_budget: Optional[int], max_steps: int,
                   target_error: float, check_every: int) -> None:
    """Raise a ValueError naming the first bad setting of :class:`~lightning_infoflow.InfoFlowEstimator`."""
    if not (isinstance(lam, (int, float)) and lam > 0 and math.isfinite(lam)):
        raise ValueError(f"`lam` must be a positive number, got {lam!r}")
    check_steps(steps)
    if not (isinstance(samples, int) and samples > 0):
        raise ValueError(f"`samples` must be a positive int, got {samples!r}")
    if sigma_max is not None and not (sigma_max > 0 and math.isfinite(sigma_max)):
        raise ValueError(f"`sigma_max` must be a positive number or None, got {sigma_max!r}")
    if not lr > 0:
        raise ValueError(f"`lr` must be positive, got {lr!r}")
    if warm_lr is not None and not 0 < warm_lr <= lr:
        raise ValueError(f"`warm_lr` must be in (0, lr={lr}] or None, got {warm_lr!r}")
    if chunk != "auto" and not (isinstance(chunk, int) and chunk > 0):
        raise ValueError(f"`chunk_size` must be a positive int or 'auto', got {chunk!r}")
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"`memory_budget` must be a positive number of bytes, got {memory_budget!r}")
    if not (isinstance(check_every, int) and check_every > 0):
        raise ValueError(f"`check_every` must be a positive int, got {check_every!r}")
    check_max_steps(max_steps)
    if not (isinstance(target_error, (int, float)) and 0 < target_error < 1):
        raise ValueError(f"`target_error` must be in (0, 1), e.g. 0.03 for about 3% error of sigma, "
                         f"got {target_error!r}")


def check_steps(steps: Any) -> None:
    """Raise a ValueError unless ``steps`` is ``"auto"`` or a non-negative int."""
    if steps == "auto":
        return
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise ValueError(
            f"`steps` must be 'auto' (stop at target_error) or a non-negative int (0: closed-form start only), "
            f"got {steps!r}")


def check_max_steps(max_steps: Any) -> None:
    """Raise a ValueError unless ``max_steps`` (the cap of ``steps="auto"``) is a positive int."""
    if not (isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps > 0):
        raise ValueError(f"`max_steps` must be a positive int (the cap of steps='auto'), got {max_steps!r}")
