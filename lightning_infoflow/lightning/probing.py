"""The callback's probe: built once at setup, cut to ``max_length``, and checked against the model."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from torch import Tensor

from lightning_infoflow.core.estimator import InfoFlowEstimator
from lightning_infoflow.core.probe import Probe, ProbeLike, build_probe


def build_checked_probe(
    source: ProbeLike,
    tokenizer: Optional[Union[str, Callable[..., Any]]],
    estimator: InfoFlowEstimator,
    *,
    num_sentences: Optional[int],
    max_length: Optional[int],
) -> tuple[Probe, list[str]]:
    """The probe and the result's row names, after one check of the model on it.

    Raises:
        ValueError: the probe cannot be built, or the model fails on it; when the model runs on a
            shorter probe, the message names ``max_length``.
    """
    # build_probe also loads a tokenizer given as a folder path
    probe = build_probe(source, tokenizer, num_sentences=num_sentences, max_length=max_length)  # type: ignore[arg-type]
    if max_length is not None:
        probe = truncate(probe, max_length)
    try:
        return probe, estimator.check(probe.batch)
    except ValueError as err:
        length = probe.input_ids.shape[1]
        runs = _longest_that_runs(estimator, probe)
        if runs is None:
            raise
        raise ValueError(
            f"InfoFlowCallback: the model fails on the probe's {length} tokens per sentence but runs on its first "
            f"{runs}: the probe is longer than the model takes. Pass max_length=<the model's maximum number of "
            f"positions> (e.g. max_length={runs}) to cut the probe. The model's error: {err}"
        ) from err


def truncate(probe: Probe, max_length: int) -> Probe:
    """The probe cut to its first ``max_length`` tokens (every ``[B, T, ...]`` entry of the batch, and the words)."""
    ids = probe.input_ids
    if ids.shape[1] <= max_length:
        return probe

    def cut(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() >= 2 and value.shape[:2] == ids.shape[:2]:
            return value[:, :max_length]
        return value

    batch = cut(probe.batch) if isinstance(probe.batch, Tensor) else {k: cut(v) for k, v in probe.batch.items()}
    return Probe(batch, [words[:max_length] for words in probe.tokens])


def _longest_that_runs(estimator: InfoFlowEstimator, probe: Probe) -> Optional[int]:
    """The first of T/2, T/4, ..., 1 tokens on which the model runs; ``None`` when it fails on every length."""
    length = probe.input_ids.shape[1] // 2
    while length >= 1:
        try:
            estimator.check(truncate(probe, length).batch)
            return length
        except ValueError:
            length //= 2
    return None

