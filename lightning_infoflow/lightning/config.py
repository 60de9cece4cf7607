"""EstimatorConfig: the estimator's settings for the callback, as one typed, immutable value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

PositionSpec = Union[Literal["all", "each"], int, tuple[int, ...]]


@dataclass(frozen=True)
class EstimatorConfig:
    """How :class:`~lightning_infoflow.InfoFlowCallback` runs :class:`~lightning_infoflow.InfoFlowEstimator`.

    One value instead of eight callback arguments; LightningCLI (jsonargparse) builds it from YAML::

        estimator:
          lam: 0.1
          steps: auto
          target_error: 0.03
          position: all

    Args:
        lam: lambda of Eq. 7; larger values allow more noise (less information everywhere).
        steps: ``"auto"`` (default): each analysis optimises until its estimated error is at most
            ``target_error`` (see :class:`~lightning_infoflow.InfoFlowEstimator`); a warm-started analysis of
            a model that barely changed stops after its first check (``check_every=10`` steps). An int:
            optimisation steps of a cold analysis (the first one, or one after a failure).
        warm_steps: optimisation steps of an analysis warm-started from the previous one; ``None``
            (default): the same as ``steps``.
        target_error: where ``"auto"`` stops: the root-mean-square error of ``log sigma`` (0.03: about 3%
            relative error of each word's sigma; a layer's mean information averages it down further).
        max_steps: the cap of ``"auto"``.
        samples: noise draws per optimisation step.
        position: which time steps of a layer's output form its state: ``"all"``, ``"each"``, an int or
            a list of ints (see :class:`~lightning_infoflow.InfoFlowEstimator`).
        sigma_max: upper bound of sigma; ``None``: 10 x the std of the embedding weights.
        seed: seed of the estimator's private noise generator.
        precision: ``"32"`` analyses in float32 with autocast off; ``"training"`` analyses under the
            Trainer's precision context (``trainer.precision_plugin.forward_context()``, e.g. bf16 autocast).

    Raises:
        ValueError: a setting out of range, naming it.

    Example::

        >>> EstimatorConfig(steps=10, position=[0, 1]).position
        (0, 1)
        >>> EstimatorConfig(samples=0)
        Traceback (most recent call last):
        ...
        ValueError: EstimatorConfig(samples=0): `samples` must be a positive int
    """

    lam: float = 0.1
    steps: Union[int, Literal["auto"]] = "auto"
    warm_steps: Union[int, Literal["auto"], None] = None
    target_error: float = 0.03
    max_steps: int = 300
    samples: int = 4
    position: PositionSpec = "all"
    sigma_max: Optional[float] = None
    seed: int = 0
    precision: Literal["32", "training"] = "32"

    def __post_init__(self) -> None:
        if isinstance(self.position, list):
            object.__setattr__(self, "position", tuple(self.position))
        problems = [
            ("lam", "a positive number", _positive_number(self.lam)),
            ("steps", "'auto' or a non-negative int", self.steps == "auto" or _int_at_least(self.steps, 0)),
            ("warm_steps", "'auto', a non-negative int or None",
             self.warm_steps in (None, "auto") or _int_at_least(self.warm_steps, 0)),
            ("target_error", "a number in (0, 1)", _positive_number(self.target_error) and self.target_error < 1),
            ("max_steps", "a positive int", _int_at_least(self.max_steps, 1)),
            ("samples", "a positive int", _int_at_least(self.samples, 1)),
            ("sigma_max", "a positive number or None", self.sigma_max is None or _positive_number(self.sigma_max)),
            ("seed", "an int", isinstance(self.seed, int)),
            ("precision", "'32' or 'training'", self.precision in ("32", "training")),
            ("position", "'all', 'each', an int or a list of ints", _valid_position(self.position)),
        ]
        for field, wanted, ok in problems:
            if not ok:
                raise ValueError(f"EstimatorConfig({field}={getattr(self, field)!r}): `{field}` must be {wanted}")

    def estimator_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~lightning_infoflow.InfoFlowEstimator` that this config fixes."""
        position = list(self.position) if isinstance(self.position, tuple) else self.position
        return {"lam": self.lam, "steps": self.steps, "samples": self.samples, "position": position,
                "sigma_max": self.sigma_max, "seed": self.seed, "target_error": self.target_error,
                "max_steps": self.max_steps}

    @property
    def warm(self) -> Union[int, Literal["auto"]]:
        """The steps of a warm-started analysis: ``warm_steps``, or ``steps`` when that is None."""
        return self.steps if self.warm_steps is None else self.warm_steps


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)


def _int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _valid_position(value: Any) -> bool:
    if value in ("all", "each") or (isinstance(value, int) and not isinstance(value, bool)):
        return True
    return isinstance(value, tuple) and bool(value) and all(isinstance(p, int) for p in value)
