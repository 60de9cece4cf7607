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

``collapsed_layer``
    A layer whose state barely varies between the probe's sentences: its state spread
    (:func:`~lightning_infoflow.core.hidden.state_spread`, the share of the state's mean square that varies
    between sentences) is below ``COLLAPSED_SPREAD`` (0.01). Its per-unit normalisation divides by that
    tiny spread, so its information reads high while it carries nothing: collapsed layers are reported
    with their spread and left out of the other rules' comparisons.
``too_little_information`` (Sec. 4.3, Fig. 4 of Guan et al.)
    The last layer focuses on fewer effective words (``exp(entropy)`` of each word's share of the
    precision ``1 / sigma^2``, :func:`lightning_infoflow.core.measures.effective_words`) than the task
    needs. In a sweep the bar is relative to the best run (the best final validation score when every run
    logged one, else the run whose last layer keeps the most effective words; runs whose last layer
    collapsed neither compete nor are judged): flagged below ``TOO_LITTLE_RELATIVE`` (0.5) times the best
    run's effective words. A single run is flagged below ``TOO_LITTLE_ABSOLUTE`` (1.5) effective words.
    Suggestion: lower the regularisation in which the run differs from the best run, naming both values.
``information_collapse`` (usable live: :func:`collapse_finding`)
    Between two consecutive analyses a layer's noise scales grow at least ``COLLAPSE_SIGMA_RATIO`` (2)
    fold in geometric mean (its information falls by at least ``K log 2`` nats per word), by more than
    ``COLLAPSE_Z`` (1.96) combined standard errors where they are known, while the training loss improves
    by less than ``COLLAPSE_MIN_IMPROVEMENT`` (2 %, relative). Suggestion: lower the learning rate or the
    regularisation, or resume from an earlier checkpoint.
``noisy_word_use`` (Sec. 4.4, Figs. 5-6)
    The last layer does not tell stop words from content words: the mean ``log sigma`` of stop-word tokens
    exceeds that of content-word tokens by less than ``NOISY_MIN_GAP`` (0.1 nats, stop words tolerating
    less than about 1.1 x the noise of content words), over the probe (at least ``NOISY_MIN_COUNT`` (3)
    tokens of each kind). ``K`` times the gap is the content words' surplus of information in nats per
    word. Suggestion: if the run raised the regularisation, lower it; else train longer or add data. (The
    paper's reading suggests more regularisation; on the validation sweeps, docs/guidance_validation.md, the
    gap shrank as dropout and weight decay grew, and the rule fired on the over-regularised runs.)
``information_phases`` (Sec. 4.5, Fig. 9)
    Per layer, the changes of its information that exceed their uncertainty
    (:mod:`~lightning_infoflow.analysis.evidence`): between the first, highest, lowest and last analyses,
    a rise (expansion) or fall (compression) larger than ``z`` combined standard errors, ``z`` set for a
    5% false-alarm rate over the curve. A layer without one is stable. Informational; needs 3 analyses.

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
from lightning_infoflow.analysis.stopwords import STOP_WORDS, word_kinds
from lightning_infoflow.analysis.sweep import LastLayers, below_absolute, below_best, last_value
from lightning_infoflow.core.measures import COLLAPSED_SPREAD
from lightning_infoflow.core.result import InfoFlowResult

TOO_LITTLE_RELATIVE = 0.5
TOO_LITTLE_ABSOLUTE = 1.5
COLLAPSE_SIGMA_RATIO = 2.0
COLLAPSE_Z = 1.96
COLLAPSE_MIN_IMPROVEMENT = 0.02
NOISY_MIN_GAP = 0.1
NOISY_MIN_COUNT = 3

History = Union[Tensor, Sequence[Sequence[float]]]


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


def _last_collapsed(result: InfoFlowResult) -> bool:
    return bool(result.collapsed()[-1]) if result.layer_names else False


# --------------------------------------------------------------------------- too little information


def too_little_information(
    results: Mapping[str, InfoFlowResult],
    hparams: Mapping[str, Mapping[str, Any]] | None = None,
    scores: Mapping[str, float] | None = None,
    *,
    score_name: str = "score",
    relative: float = TOO_LITTLE_RELATIVE,
    absolute: float = TOO_LITTLE_ABSOLUTE,
) -> list[Finding]:
    """Runs whose last layer focuses on too few effective words (Sec. 4.3 of the paper).

    Args:
        results: the final analysis of each run, by run name (the last layer of each is judged; a run
            whose last layer collapsed is left out, see :func:`collapsed_layers`).
        hparams: each run's (flat) hyperparameters, to name the regularisation that differs.
        scores: each run's final validation score, higher is better; the best run is the best score when
            every run has one, else the run whose last layer keeps the most effective words.
        score_name: what ``scores`` are (for the message), e.g. ``"val/acc"``.
        relative: with two runs or more, flag a run below ``relative`` x the best run's effective words.
        absolute: with one run, flag it below ``absolute`` effective words.

    Example::

        >>> import torch
        >>> def run(sigma):  # one sentence of 4 words, sigma_max 10, K = 1
        ...     return InfoFlowResult(["last"], torch.tensor(sigma).view(1, 1, 4), torch.ones(1, 4, dtype=torch.bool),
        ...                           10.0, 1)
        >>> found = too_little_information({"wd=0": run([1.0, 1.0, 1.0, 2.0]), "wd=1e-3": run([0.1, 9.0, 9.0, 5.0])},
        ...                                hparams={"wd=0": {"weight_decay": 0.0}, "wd=1e-3": {"weight_decay": 1e-3}})
        >>> [(f.run, round(f.measured["effective_words"], 2)) for f in found]
        [('wd=1e-3', 1.01)]
        >>> "weight_decay" in found[0].suggestion
        True
    """
    if not results:
        return []
    judged = {name: r for name, r in results.items() if not _last_collapsed(r)}
    words = {name: last_value(r.effective_words) for name, r in judged.items()}
    valid = {n: w for n, w in words.items() if math.isfinite(w)}
    last = LastLayers(valid, {name: r for name, r in judged.items()}, hparams or {})
    if len(results) == 1 or len(valid) < 2:
        return [below_absolute(last, name, absolute, named=len(results) > 1) for name, w in valid.items()
                if w < absolute]
    if scores is not None and all(n in scores and math.isfinite(scores[n]) for n in valid):
        best = max(valid, key=lambda n: scores[n])
        why = f"best {score_name} {scores[best]:.4g}"
    else:
        best = max(valid, key=lambda n: valid[n])
        why = "most effective words"
    return [below_best(last, name, best, why, relative, scores) for name, w in valid.items()
            if name != best and w < relative * valid[best]]


# --------------------------------------------------------------------------- information collapse


def collapse_finding(
    steps: Sequence[int],
    information: History,
    loss: Sequence[float],
    layer_names: Sequence[str] | None = None,
    *,
    embedding_dim: int | None = None,
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
        embedding_dim: K (``InfoFlowResult.embedding_dim``), to turn a fall of information into a growth of the
            noise scales; None: the fall cannot be judged and no finding is made.
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
    if len(steps) < 2 or embedding_dim is None:
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


def collapse_findings(steps: Sequence[int], information: History, loss: Sequence[float],
                      layer_names: Sequence[str] | None = None, *, se: History | None = None,
                      **options: Any) -> list[Finding]:
    """Every information collapse of a whole history (offline): :func:`collapse_finding` on each interval.

    ``se`` as for :func:`collapse_finding`; ``options`` are its other keyword arguments (``embedding_dim``,
    thresholds, ``run``).
    """
    info = torch.as_tensor(information, dtype=torch.float64)
    errors = None if se is None else torch.as_tensor(se, dtype=torch.float64)
    out = []
    for k in range(1, len(steps)):
        f = collapse_finding(steps[: k + 1], info[: k + 1], loss[: k + 1], layer_names,
                             se=None if errors is None else errors[: k + 1], **options)
        if f is not None:
            out.append(f)
    return out


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
            rule="noisy_word_use", severity="warning", run=run, layer=name, step=result.meta.get("step"),
            message=f"{name} lets stop words carry {math.exp(gap):.2f}x the noise of content words (mean log sigma "
                    f"{gap:+.3f} nats, {-surplus:+.2f} nats per word of information; {n_stop} stop-word and "
                    f"{n_content} content tokens in the probe).",
            measured={"log_sigma_gap": gap, "sigma_ratio": math.exp(gap), "information_gap": -surplus,
                      "stop_tokens": float(n_stop), "content_tokens": float(n_content)},
            threshold=f"stop words' mean log sigma above content words' by less than {min_gap:g} nats",
            suggestion="the layer does not single out the words that matter; on the validation sweeps this went "
                       "with too much regularisation: lower the weight decay or dropout if you raised them, else "
                       "train longer or add data",
            extra={"direction": "lower"},
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
