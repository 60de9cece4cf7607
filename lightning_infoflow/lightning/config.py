"""The callback's settings: EstimatorConfig (the estimator's, as one typed, immutable value) and the checks of
the callback's own arguments."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
PositionSpec = Union[Literal["all", "each"], int, tuple[int, ...]]


@dataclass(frozen=True)
class EstimatorConfig:
    """How :class:`~lightning_infoflow.InfoFlowCallback` runs :class:`~lightning_infoflow.InfoFlowEstimator`.

    One value instead of eight callback arguments; LightningCLI (jsonargparse) builds it from YAML::

        estimator:
          lam: 0.1
          steps: auto
          target_error: 0.05
          position: all

    Args:
        lam: lambda of Eq. 7; larger values allow more noise (less information everywhere).
        steps: ``"auto"`` (default): each analysis optimises until its estimated error is at most
            ``target_error`` (see :class:`~lightning_infoflow.InfoFlowEstimator`); a warm-started analysis of
            a model that barely changed stops after its first check (``check_every=10`` steps). An int:
            optimisation steps of a cold analysis (the first one, or one after a failure).
        warm_steps: optimisation steps of an analysis warm-started from the previous one; ``None``
            (default): the same as ``steps``.
        target_error: where ``"auto"`` stops: the root-mean-square error of ``log sigma`` (0.05: about 5%
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
    target_error: float = 0.05
    max_steps: int = 200
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

def check_arguments(every_n_train_steps: Any, max_length: Any, num_sentences: Any, max_overhead: Any, name: Any,
                    estimator: Any, heatmaps: Any, hooks: Any, distributed: Any, background: Any) -> None:
    """Raise a ``ValueError`` naming the first argument of :class:`~lightning_infoflow.InfoFlowCallback` that
    is out of range, and what it must be."""
    from lightning_infoflow.lightning.hooks import InfoFlowHook

    checks = [
        ("every_n_train_steps", "a positive int", isinstance(every_n_train_steps, int) and every_n_train_steps > 0),
        ("max_length", "a positive int or None",
         max_length is None or (isinstance(max_length, int) and max_length > 0)),
        ("num_sentences", "a positive int or None",
         num_sentences is None or (isinstance(num_sentences, int) and num_sentences > 0)),
        ("max_overhead", "a positive fraction or None", max_overhead is None or max_overhead > 0),
        ("name", "a non-empty name of letters, digits, '_', '.' or '-' (a metric prefix and a folder)",
         isinstance(name, str) and bool(_NAME.match(name))),
        ("estimator", "an EstimatorConfig(...)", isinstance(estimator, EstimatorConfig)),
        ("heatmaps", "a non-negative int", isinstance(heatmaps, int) and heatmaps >= 0),
        ("hooks", "a list of InfoFlowHook", all(isinstance(h, InfoFlowHook) for h in hooks)),
        ("distributed", "'split' or 'rank_zero'", distributed in ("split", "rank_zero")),
        ("background", "True or False", isinstance(background, bool)),
    ]
    for arg, wanted, ok in checks:
        if not ok:
            value = locals()[arg]
            raise ValueError(f"InfoFlowCallback({arg}={value!r}): `{arg}` must be {wanted}")
