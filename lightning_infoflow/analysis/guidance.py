r"""Guidance: documented rules that turn measured information into findings, each with its numbers.

Every rule is a pure function over results (:class:`~lightning_infoflow.InfoFlowResult`) or histories
(steps and per-layer information with its standard errors) and returns :class:`Finding` objects: what was
measured, the threshold it crossed and what to try. A rule that cannot measure (too few analyses, a loss
that was not logged, too few stop words in the probe) returns nothing rather than a finding without
numbers. No rule depends on ``sigma_max``: they read ratios of sigma, differences of ``log sigma`` and
differences of information (nats per word), never ratios of information, which share the offset
``K log sigma_max`` (:data:`~lightning_infoflow.analysis.finding.ABSOLUTE_KEYS` lists the absolute values a
finding shows for orientation).

The rules and their default thresholds (module constants, each overridable per call):

``collapsed_layer`` (also live: the callback warns once per layer when an analysis finds one)
    A layer whose state barely varies between the probe's sentences: its state spread
    (:func:`~lightning_infoflow.core.hidden.state_spread`, the share of the state's mean square that varies
    between sentences) is below ``COLLAPSED_SPREAD`` (0.01). Its per-unit normalisation divides by that
    tiny spread, so its information reads high while it carries nothing: collapsed layers are reported
    with their spread, are not judged by ``noisy_word_use``, and a run whose last layer collapsed is left
    out of the comparisons of information between runs (``infoflow compare``).
``not_learning``
    The run's loss barely improved: its validation loss (when it logged one at two steps or more up to
    the last analysis; else its training loss at the analyses) improved by less than
    ``NOT_LEARNING_MIN_IMPROVEMENT`` (2 %, relative) from its first to its last finite value. Its layers'
    information describes a model that has not learned, so the run is left out of the comparisons of
    information between runs. Suggestion: lower the regularisation (or check the learning rate). On the
    validation sweeps (16 runs) it fired on 4 runs, all at the majority class (final dev accuracy
    0.507-0.513; validation loss 0.693 -> 0.692, 0.690 -> 0.728, 0.699 -> 0.695, 0.696 -> 0.697), and on
    none of the others (improvements 6-15%; it was written after seeing these runs, so this is in-sample).
``noisy_word_use`` (Sec. 4.4, Figs. 5-6)
    The last layer does not tell stop words from content words: the mean ``log sigma`` of stop-word tokens
    exceeds that of content-word tokens by less than ``NOISY_MIN_GAP`` (0.1 nats, stop words tolerating
    less than about 1.1 x the noise of content words), over the probe (at least ``NOISY_MIN_COUNT`` (3)
    tokens of each kind). ``K`` times the gap is the content words' surplus of information in nats per
    word. A description, not advice (severity ``info``): the paper's reading suggests more
    regularisation; on the validation sweeps (docs/guidance_validation.md) the gap shrank as dropout and
    weight decay grew, but the rule fired on 13 of 16 runs, both Transformer runs without weight decay
    among them, so it does not tell which way to move a setting.
``information_phases`` (Sec. 4.5, Fig. 9)
    Per layer, the changes of its information that exceed their uncertainty
    (:mod:`~lightning_infoflow.analysis.evidence`): between the first, highest, lowest and last analyses,
    a rise (expansion) or fall (compression) larger than ``z`` combined standard errors, ``z`` set for a
    5% false-alarm rate over the curve. A layer without one is stable. A description (needs 3 analyses):
    on the sweeps, compression without a later expansion held for the best and the worst settings alike.

Removed after the validation sweeps (SST-2, LSTM dropout 0-0.75 and Transformer weight decay 0-0.1, 2 seeds,
250 steps): ``too_little_information`` (the last layer keeps too few effective words) fired on 0 of 16 runs
and its premise ran the other way, the last layer's effective words rising with regularisation (13.9-14.2
at dropout 0 to 15.7-15.9 at 0.75, 17.5 to 18.2 from weight decay 0 to 0.1); ``information_collapse`` (a
fall of at least ``K log 2`` nats per word between analyses while the loss stays flat) fired on 0 of 16,
its bar (88.7 nats per word for the LSTM, 177 for the Transformer) far above the largest real falls
(1.2-24 nats).

Example::

    >>> import torch
    >>> r = InfoFlowResult(["a", "b"], torch.ones(2, 1, 2), torch.ones(1, 2, dtype=torch.bool), 10.0, 4,
    ...                    state_spread=torch.tensor([0.6, 4e-4]))
    >>> [(f.layer, round(f.measured["state_spread"], 6)) for f in collapsed_layers(r)]
    [('b', 0.0004)]
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, Union

import torch
from torch import Tensor

from lightning_infoflow.analysis.evidence import curve_phases, phase_finding
from lightning_infoflow.analysis.finding import Finding
from lightning_infoflow.analysis.regularisation import active_regularisation
from lightning_infoflow.analysis.stopwords import STOP_WORDS, word_kinds
from lightning_infoflow.core.measures import COLLAPSED_SPREAD
from lightning_infoflow.core.result import InfoFlowResult

NOT_LEARNING_MIN_IMPROVEMENT = 0.02
NOISY_MIN_GAP = 0.1
NOISY_MIN_COUNT = 3

History = Union[Tensor, Sequence[Sequence[float]]]
LossRecord = Sequence[tuple[int, float]]
"""``(step, loss)`` pairs, ascending in step; NaN where unknown."""


def _name(names: Sequence[str] | None, i: int) -> str:
    return names[i] if names is not None else f"layer {i}"


# --------------------------------------------------------------------------- collapsed layers


def collapsed_layers(result: InfoFlowResult, *, threshold: float = COLLAPSED_SPREAD,
                     run: str | None = None) -> list[Finding]:
    """One warning per layer whose state spread is below ``threshold`` (see the module docstring)."""
    assert result.state_spread is not None
    found = []
    for i in torch.nonzero(result.collapsed(threshold)).flatten().tolist():
        name, spread = result.layer_names[i], float(result.state_spread[i])
        found.append(Finding(
            rule="collapsed_layer", severity="warning", run=run, layer=name, step=result.meta.get("step"),
            message=f"{name} has collapsed: only {100 * spread:.3g}% of its state's mean square varies between the "
                    f"probe's sentences; its information (high or low) describes noise, not what it keeps.",
            measured={"state_spread": spread, "effective_words": float(result.effective_words[i])},
            threshold=f"state spread below {threshold:g}",
            suggestion="the layer maps every sentence to about the same state: lower the weight decay or the "
                       "learning rate, or resume from a checkpoint before the collapse",
        ))
    return found


# --------------------------------------------------------------------------- not learning


def first_and_last(losses: LossRecord) -> tuple[tuple[int, float], tuple[int, float]] | None:
    """The first and the last finite ``(step, value)`` of a loss record, ``None`` without two finite values at
    different steps.

    >>> first_and_last([(0, float("nan")), (10, 0.7), (20, 0.6), (30, float("inf"))])
    ((10, 0.7), (20, 0.6))
    >>> first_and_last([(10, 0.7), (10, 0.6)]) is None
    True
    """
    finite = [(int(s), float(v)) for s, v in losses if math.isfinite(float(v))]
    if len(finite) < 2 or finite[0][0] == finite[-1][0]:
        return None
    return finite[0], finite[-1]


def not_learning(
    train_losses: LossRecord,
    val_losses: LossRecord = (),
    *,
    hparams: Mapping[str, Any] | None = None,
    min_improvement: float = NOT_LEARNING_MIN_IMPROVEMENT,
    run: str | None = None,
) -> list[Finding]:
    """A run whose loss barely improved over training: its information describes a model that has not learned.

    Args:
        train_losses: ``(step, training loss)`` at each analysis (e.g. the mean over the steps since the
            previous one); NaN where unknown.
        val_losses: ``(step, validation loss)`` as logged, up to the last analysis; judged instead of the
            training loss when it holds two finite values at different steps.
        hparams: the run's flat hyperparameters, to name its regularisation in the suggestion.
        min_improvement: the relative improvement, ``(first - last) / |first|``, below which the run has not
            learned.
        run: the run's name, for the finding.

    Returns:
        One warning, or nothing (the loss improved enough, or fewer than two finite values to compare).

    Example::

        >>> found = not_learning([(0, 0.70), (250, 0.62)], [(50, 0.693), (250, 0.692)])
        >>> [(f.rule, round(f.measured["improvement"], 4), f.extra["loss"]) for f in found]
        [('not_learning', 0.0014, 'validation loss')]
        >>> not_learning([(0, 0.70), (250, 0.62)])  # the training loss improved by 11%
        []
    """
    which, pair = "validation loss", first_and_last(val_losses)
    if pair is None:
        which, pair = "training loss", first_and_last(train_losses)
    if pair is None:
        return []
    (first_step, first), (last_step, last) = pair
    improvement = (first - last) / max(abs(first), 1e-12)
    if improvement >= min_improvement:
        return []
    active = active_regularisation(hparams or {})
    return [Finding(
        rule="not_learning", severity="warning", run=run, step=last_step,
        message=f"the run has not learned: its {which} went from {first:.4g} at step {first_step} to {last:.4g} at "
                f"step {last_step} ({100 * improvement:+.1f}%). Its layers' information describes a model that has "
                "not learned: do not read it as more or less informative than runs that learned.",
        measured={"first_loss": first, "last_loss": last, "improvement": improvement,
                  "first_step": float(first_step), "last_step": float(last_step),
                  "validation": float(which == "validation loss")},
        threshold=f"the {which} improves by less than {100 * min_improvement:g}% (relative) from its first to its "
                  "last value",
        suggestion=(f"lower the regularisation ({', '.join(active)}), or check the learning rate" if active
                    else "lower the regularisation (or check the learning rate)"),
        extra={"direction": "lower", "loss": which},
    )]


# --------------------------------------------------------------------------- noisy use of words


def stop_word_gap(result: InfoFlowResult, stop_words: Collection[str] = STOP_WORDS) -> tuple[Tensor, int, int]:
    """Per layer, mean ``log sigma`` of stop-word tokens minus that of content-word tokens (nats per dimension).

    Positive: stop words tolerate more noise (the layer keeps less of them). ``K`` times the gap is the
    content words' surplus of information in nats per word; free of ``sigma_max``. Returns
    ``(gap [L], n_stop, n_content)``; NaN when either kind is absent. Needs the result's token strings.
    """
    nan = torch.full((len(result.layer_names),), float("nan"))
    if not result.tokens:
        return nan, 0, 0
    stop, content = word_kinds(result.tokens, result.mask, stop_words)
    n_stop, n_content = int(stop.sum()), int(content.sum())
    if n_stop == 0 or n_content == 0:
        return nan, n_stop, n_content
    log_sigma = result.sigma.log()  # [L, B, T]
    return torch.nanmean(log_sigma[:, stop], dim=-1) - torch.nanmean(log_sigma[:, content], dim=-1), n_stop, n_content


def noisy_word_use(
    result: InfoFlowResult,
    stop_words: Collection[str] = STOP_WORDS,
    *,
    min_gap: float = NOISY_MIN_GAP,
    min_count: int = NOISY_MIN_COUNT,
    layers: Literal["last", "all"] | Sequence[str] = "last",
    run: str | None = None,
) -> list[Finding]:
    """Layers that keep stop words about as much as content words (one finding per flagged layer).

    Args:
        result: one analysis, with token strings.
        stop_words: the stop-word list (lower case); :data:`STOP_WORDS` by default.
        min_gap: flag a layer whose stop words' mean ``log sigma`` exceeds its content words' by less than this
            (nats per embedding dimension; 0.1: stop words tolerate less than about 1.1x the noise).
        min_count: the least number of stop-word and of content-word tokens in the probe to judge at all.
        layers: ``"last"`` (the layer the output reads; the default, since layers near the embedding keep
            every word by design), ``"all"`` or a list of layer names. Collapsed layers are never judged.
        run: the run's name, for the finding.
    """
    gaps, n_stop, n_content = stop_word_gap(result, stop_words)
    if n_stop < min_count or n_content < min_count:
        return []
    names = list(result.layer_names)
    chosen = [names[-1]] if layers == "last" else names if layers == "all" else list(layers)
    collapsed = result.collapsed()
    findings = []
    for name in chosen:
        i = names.index(name)
        gap = float(gaps[i])
        if not math.isfinite(gap) or gap >= min_gap or bool(collapsed[i]):
            continue
        surplus = result.embedding_dim * gap
        findings.append(Finding(
            rule="noisy_word_use", severity="info", run=run, layer=name, step=result.meta.get("step"),
            message=f"{name} lets stop words carry {math.exp(gap):.2f}x the noise of content words (mean log sigma "
                    f"{gap:+.3f} nats, {-surplus:+.2f} nats per word of information; {n_stop} stop-word and "
                    f"{n_content} content tokens in the probe).",
            measured={"log_sigma_gap": gap, "sigma_ratio": math.exp(gap), "information_gap": -surplus,
                      "stop_tokens": float(n_stop), "content_tokens": float(n_content)},
            threshold=f"stop words' mean log sigma above content words' by less than {min_gap:g} nats",
            suggestion="a description, not advice: on the validation sweeps the gap shrank as dropout and weight "
                       "decay grew, but the rule fired on 13 of 16 runs, both runs without weight decay among them, "
                       "so it does not tell which way to move a setting",
            extra={"direction": "none"},
        ))
    return findings


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
        out.append(phase_finding(_name(layer_names, i), [int(x) for x in steps], col, phases, run))
    return out
