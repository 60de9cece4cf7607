r"""Guidance: documented rules that turn measured information into findings, each with its numbers.

Every rule is a pure function over results (:class:`~lightning_infoflow.InfoFlowResult`) or histories
(steps and per-layer information) and returns :class:`Finding` objects: what was measured, the threshold
it crossed and what to try. A rule that cannot measure (too few analyses, a loss that was not logged,
too few stop words in the probe) returns nothing rather than a finding without numbers.

The rules and their default thresholds (module constants, each overridable per call):

``too_little_information`` (Sec. 4.3, Fig. 4 of Guan et al.)
    The last layer keeps fewer effective words (participation ratio of the per-word information,
    :func:`lightning_infoflow.core.measures.effective_words`) than the task needs. In a sweep the bar is
    relative to the best run (the best final validation score when every run logged one, else the run
    whose last layer keeps the most effective words): a run is flagged when it keeps fewer than
    ``TOO_LITTLE_RELATIVE`` (0.5) times the best run's effective words. A single run is flagged when its
    last layer keeps fewer than ``TOO_LITTLE_ABSOLUTE`` (1.5) effective words, i.e. about one word per
    sentence. Suggestion: lower the regularisation hyperparameter in which the run differs from the best
    run (weight decay, dropout, ...), naming it and both values.
``information_collapse`` (usable live: :func:`collapse_finding`)
    Between two consecutive analyses a layer loses at least ``COLLAPSE_DROP`` (50 %) of its mean
    information per word while the training loss improves by less than ``COLLAPSE_MIN_IMPROVEMENT``
    (2 %, relative). Compression that buys no loss means the layer is throwing away input it still
    needs: suggestion, lower the learning rate or the regularisation, or resume from an earlier checkpoint.
``noisy_word_use`` (Sec. 4.4, Figs. 5-6)
    The last layer (the one the output reads) keeps stop words as much as content words: the mean
    information of stop-word tokens is at least ``NOISY_RATIO`` (0.8) times that of content-word tokens,
    over the probe (at least ``NOISY_MIN_COUNT`` (3) tokens of each kind). :data:`STOP_WORDS` is a
    default English list; pass your own. Suggestion: more regularisation or data, the model does not
    yet single out the words that matter.
``information_phases`` (Sec. 4.5, Fig. 9)
    Per layer, the step where its information peaks. An expansion phase is a rise of at least
    ``PHASE_CHANGE`` (10 %) of the peak from the first analysis to the peak, a compression phase a fall of
    at least ``PHASE_CHANGE`` from the peak to the last analysis. Informational; needs 3 analyses.

Example::

    >>> f = collapse_finding([100, 200], [[40.0, 30.0], [38.0, 9.0]], [0.52, 0.53], ["lstm1", "lstm2"])
    >>> f.rule, f.layer, round(f.measured["drop"], 2)
    ('information_collapse', 'lstm2', 0.7)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor

from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.core.tokens import is_special_token

TOO_LITTLE_RELATIVE = 0.5
TOO_LITTLE_ABSOLUTE = 1.5
COLLAPSE_DROP = 0.5
COLLAPSE_MIN_IMPROVEMENT = 0.02
NOISY_RATIO = 0.8
NOISY_MIN_COUNT = 3
PHASE_CHANGE = 0.1

#: Hyperparameter names (matched as substrings, case-insensitive) that count as regularisation.
REGULARISATION_KEYS = ("weight_decay", "l2", "alpha", "dropout", "reg", "penalty", "decay", "smoothing", "wd")

#: A default English stop-word list (function words); replace it with your own for other languages.
STOP_WORDS: frozenset[str] = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers
herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more
most mustn't my myself no nor not of off on once only or other ought our ours ourselves out over own same
shan't she she'd she'll she's should shouldn't so some such than that that's the their theirs them
themselves then there there's these they they'd they'll they're they've this those through to too under
until up very was wasn't we we'd we'll we're we've were weren't what what's when when's where where's which
while who who's whom why why's with won't would wouldn't you you'd you'll you're you've your yours yourself
yourselves 's 're 've 'll 'd n't 'm
""".split())  # noqa: SIM905 - the list reads as text

_SUBWORD_MARKS = ("##", "\u0120", "\u2581")  # WordPiece, byte-level BPE (Ġ), SentencePiece (▁)

Severity = Literal["warning", "info"]
History = Union[Tensor, Sequence[Sequence[float]]]


@dataclass(frozen=True)
class Finding:
    """One triggered rule: what was measured, the threshold it crossed, and what to try.

    Attributes:
        rule: the rule's name (``too_little_information``, ``information_collapse``, ``noisy_word_use``,
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
        return f"[{self.severity}] {self.rule}: {where}{self.message} Threshold: {self.threshold}. Try: {self.suggestion}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return {
            "rule": self.rule, "severity": self.severity, "message": self.message,
            "measured": {k: float(v) for k, v in self.measured.items()}, "threshold": self.threshold,
            "suggestion": self.suggestion, "run": self.run, "layer": self.layer, "step": self.step,
        }


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
    """Runs whose last layer keeps too few effective words (Sec. 4.3 of the paper).

    Args:
        results: the final analysis of each run, by run name (the last layer of each is judged).
        hparams: each run's (flat) hyperparameters, to name the regularisation that differs.
        scores: each run's final validation score, higher is better; the best run is the best score when
            every run has one, else the run whose last layer keeps the most effective words.
        score_name: what ``scores`` are (for the message), e.g. ``"val/acc"``.
        relative: with two runs or more, flag a run below ``relative`` x the best run's effective words.
        absolute: with one run, flag it below ``absolute`` effective words.

    Example::

        >>> import torch
        >>> def run(info):  # one sentence of 4 words, sigma_max 10, K = 1
        ...     sigma = 10 * torch.exp(-torch.tensor(info)).view(1, 1, 4)
        ...     return InfoFlowResult(["last"], sigma, torch.ones(1, 4, dtype=torch.bool), 10.0, 1)
        >>> found = too_little_information({"wd=0": run([2.0, 2.0, 2.0, 1.0]), "wd=1e-3": run([3.0, 0.0, 0.0, 0.1])},
        ...                                hparams={"wd=0": {"weight_decay": 0.0}, "wd=1e-3": {"weight_decay": 1e-3}})
        >>> [(f.run, round(f.measured["effective_words"], 2)) for f in found]
        [('wd=1e-3', 1.07)]
        >>> "weight_decay" in found[0].suggestion
        True
    """
    if not results:
        return []
    words = {name: _last_layer(r.effective_words) for name, r in results.items()}
    valid = {n: w for n, w in words.items() if math.isfinite(w)}
    last = _LastLayers(valid, {name: _last_layer(r.layer_information) for name, r in results.items()},
                       {name: r.layer_names[-1] for name, r in results.items()}, hparams or {})
    if len(results) == 1 or len(valid) < 2:
        return [_below_absolute(last, name, absolute, named=len(results) > 1) for name, w in valid.items()
                if w < absolute]
    if scores is not None and all(n in scores and math.isfinite(scores[n]) for n in valid):
        best = max(valid, key=lambda n: scores[n])
        why = f"best {score_name} {scores[best]:.4g}"
    else:
        best = max(valid, key=lambda n: valid[n])
        why = "most effective words"
    return [_below_best(last, name, best, why, relative, scores) for name, w in valid.items()
            if name != best and w < relative * valid[best]]


@dataclass(frozen=True)
class _LastLayers:
    """The last layer of each run: its effective words (finite ones), information, name; the runs' hparams."""

    words: Mapping[str, float]
    info: Mapping[str, float]
    layer: Mapping[str, str]
    hparams: Mapping[str, Mapping[str, Any]]


def _below_absolute(last: _LastLayers, name: str, absolute: float, named: bool) -> Finding:
    w, info, layer = last.words[name], last.info[name], last.layer[name]
    return Finding(
        rule="too_little_information", severity="warning", run=name if named else None, layer=layer,
        message=f"the last layer ({layer}) keeps {w:.2f} effective words per sentence ({info:.2f} nats per word).",
        measured={"effective_words": w, "information": info},
        threshold=f"fewer than {absolute:g} effective words in the last layer",
        suggestion=_lower_regularisation(last.hparams.get(name, {}), None, {}),
    )


def _below_best(last: _LastLayers, name: str, best: str, why: str, relative: float,
                scores: Mapping[str, float] | None) -> Finding:
    w, top, layer = last.words[name], last.words[best], last.layer[name]
    measured = {"effective_words": w, "best_effective_words": top, "information": last.info[name],
                "best_information": last.info[best], "ratio": w / top if top > 0 else 0.0}
    if scores is not None and name in scores and best in scores:
        measured.update(score=float(scores[name]), best_score=float(scores[best]))
    return Finding(
        rule="too_little_information", severity="warning", run=name, layer=layer,
        message=f"the last layer ({layer}) keeps {w:.2f} effective words per sentence against {top:.2f} in run "
                f"{best} ({why}); {last.info[name]:.2f} against {last.info[best]:.2f} nats per word.",
        measured=measured,
        threshold=f"fewer than {relative:g} x the best run's effective words ({relative * top:.2f})",
        suggestion=_lower_regularisation(last.hparams.get(name, {}), best, last.hparams.get(best, {})),
        extra={"best_run": best},
    )


def is_regularisation(name: str) -> bool:
    """Whether a hyperparameter name looks like a regularisation weight (see :data:`REGULARISATION_KEYS`).

    >>> is_regularisation("optimizer.weight_decay"), is_regularisation("model_kwargs.dropout"), is_regularisation("lr")
    (True, True, False)
    """
    leaf = name.lower().rsplit(".", 1)[-1]
    return any(key in leaf for key in REGULARISATION_KEYS)


def _lower_regularisation(mine: Mapping[str, Any], best: str | None, theirs: Mapping[str, Any]) -> str:
    differing = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)] if best else []
    regs = [k for k in differing if is_regularisation(k) and _number(mine.get(k)) is not None]
    higher = [k for k in regs if _number(theirs.get(k)) is None or _number(mine.get(k)) > _number(theirs.get(k))]  # type: ignore[operator]
    if higher:
        parts = [f"{k} (now {mine.get(k)!r}; run {best} uses {theirs.get(k)!r})" for k in higher]
        return "lower " + " and ".join(parts) + ", the regularisation in which this run differs from the best run"
    if differing:
        shown = ", ".join(f"{k}={mine.get(k)!r} (run {best}: {theirs.get(k)!r})" for k in differing[:4])
        return (f"this run differs from run {best} in {shown}; move them towards the best run, and lower the "
                "regularisation (weight decay, dropout) if these are not it")
    own = [(k, v) for k, v in sorted(mine.items()) if is_regularisation(k) and _number(v) is not None]
    active = [f"{k}={v!r}" for k, v in own if _number(v)]
    if active:
        return f"lower the regularisation ({', '.join(active)}): weight decay / L2 penalty first, then dropout"
    if own:
        zeros = ", ".join(f"{k}={v!r}" for k, v in own)
        return (f"this run has no regularisation to lower ({zeros}); the layer keeps few words for another reason: "
                "train longer, or give the model more capacity")
    return "lower the regularisation (weight decay / L2 penalty first, then dropout)"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _last_layer(values: Tensor) -> float:
    return float(values[-1]) if values.numel() else float("nan")


# --------------------------------------------------------------------------- information collapse


def collapse_finding(
    steps: Sequence[int],
    information: History,
    loss: Sequence[float],
    layer_names: Sequence[str] | None = None,
    *,
    drop: float = COLLAPSE_DROP,
    min_improvement: float = COLLAPSE_MIN_IMPROVEMENT,
    run: str | None = None,
) -> Finding | None:
    """Information collapse in the last interval of a history: the check a live callback calls.

    Looks only at the two most recent analyses, so that calling it after every analysis reports each
    collapse once.

    Args:
        steps: optimizer steps of the analyses, ascending, ``[N]``.
        information: mean information per word of each layer at each analysis, ``[N, L]`` nats
            (``InfoFlowResult.layer_information`` stacked).
        loss: the training loss at each analysis, ``[N]`` (best smoothed, e.g. the mean over the last
            logged steps); NaN where unknown, and no finding is made for an interval with a NaN loss.
        layer_names: ``L`` names for the message (default ``layer 0``, ``layer 1``, ...).
        drop: the relative fall of a layer's information that counts as a collapse.
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
    if len(steps) < 2:
        return None
    return _collapse_at(list(steps), info, [float(v) for v in loss], layer_names, len(steps) - 1, drop,
                        min_improvement, run)


def collapse_findings(
    steps: Sequence[int],
    information: History,
    loss: Sequence[float],
    layer_names: Sequence[str] | None = None,
    *,
    drop: float = COLLAPSE_DROP,
    min_improvement: float = COLLAPSE_MIN_IMPROVEMENT,
    run: str | None = None,
) -> list[Finding]:
    """Every information collapse of a whole history (offline): :func:`collapse_finding` on each interval."""
    info = torch.as_tensor(information, dtype=torch.float64)
    out = []
    for k in range(1, len(steps)):
        f = collapse_finding(steps[: k + 1], info[: k + 1], loss[: k + 1], layer_names, drop=drop,
                             min_improvement=min_improvement, run=run)
        if f is not None:
            out.append(f)
    return out


def _collapse_at(steps: list[int], info: Tensor, loss: list[float], names: Sequence[str] | None, k: int,
                 drop: float, min_improvement: float, run: str | None) -> Finding | None:
    before, after = info[k - 1], info[k]
    loss_before, loss_after = loss[k - 1], loss[k]
    if not (math.isfinite(loss_before) and math.isfinite(loss_after)):
        return None
    improvement = (loss_before - loss_after) / max(abs(loss_before), 1e-12)
    if improvement >= min_improvement:
        return None
    valid = torch.isfinite(before) & torch.isfinite(after) & (before > 1e-6)
    falls = torch.where(valid, (before - after) / before.clamp_min(1e-6), torch.full_like(before, -math.inf))
    collapsed = [i for i in range(len(falls)) if falls[i] >= drop]
    if not collapsed:
        return None
    worst = max(collapsed, key=lambda i: float(falls[i]))
    name = names[worst] if names is not None else f"layer {worst}"
    measured = {"drop": float(falls[worst]), "information_before": float(before[worst]),
                "information_after": float(after[worst]), "loss_before": loss_before, "loss_after": loss_after,
                "loss_improvement": improvement, "layers_collapsed": float(len(collapsed))}
    others = [names[i] if names is not None else f"layer {i}" for i in collapsed if i != worst]
    also = f" (also {', '.join(others)})" if others else ""
    return Finding(
        rule="information_collapse", severity="warning", run=run, layer=name, step=steps[k],
        message=f"between steps {steps[k - 1]} and {steps[k]} the information of {name} fell by "
                f"{100 * float(falls[worst]):.0f}% ({float(before[worst]):.2f} -> {float(after[worst]):.2f} nats per word)"
                f"{also} while the training loss went {loss_before:.4g} -> {loss_after:.4g} "
                f"({100 * improvement:+.1f}% improvement).",
        measured=measured,
        threshold=f"information falls by at least {100 * drop:g}% between analyses while the loss improves by "
                  f"less than {100 * min_improvement:g}%",
        suggestion="the layer discards input it has not learned to do without: lower the learning rate or the "
                   f"regularisation, or resume from the checkpoint of step {steps[k - 1]}",
    )


# --------------------------------------------------------------------------- noisy use of words


def normalise_token(token: str) -> Optional[str]:
    """A token as a lower-case word for stop-word matching; ``None`` for special tokens and punctuation.

    >>> normalise_token("The"), normalise_token("\u0120the"), normalise_token("[CLS]"), normalise_token(",")
    ('the', 'the', None, None)
    """
    if is_special_token(token):
        return None
    for mark in _SUBWORD_MARKS:
        token = token.removeprefix(mark)
    word = token.strip().lower()
    if not any(ch.isalnum() for ch in word):
        return None
    return word


def stop_word_ratio(result: InfoFlowResult, stop_words: Collection[str] = STOP_WORDS) -> tuple[Tensor, int, int]:
    """Per layer, mean information of stop-word tokens over mean information of content tokens.

    Returns ``(ratio [L], n_stop, n_content)``; the ratio is NaN when either kind is absent or the content
    words carry no information. Needs the result's token strings.
    """
    if not result.tokens:
        return torch.full((len(result.layer_names),), float("nan")), 0, 0
    stops = {w.lower() for w in stop_words}
    stop = torch.zeros_like(result.mask)
    content = torch.zeros_like(result.mask)
    for b, words in enumerate(result.tokens):
        for t, token in enumerate(words[: result.mask.shape[1]]):
            if not bool(result.mask[b, t]):
                continue
            word = normalise_token(token)
            if word is None:
                continue
            if word in stops:
                stop[b, t] = True
            else:
                content[b, t] = True
    info = result.information  # [L, B, T]
    n_stop, n_content = int(stop.sum()), int(content.sum())
    if n_stop == 0 or n_content == 0:
        return torch.full((len(result.layer_names),), float("nan")), n_stop, n_content
    mean_stop = torch.nanmean(info[:, stop], dim=-1)
    mean_content = torch.nanmean(info[:, content], dim=-1)
    ratio = torch.where(mean_content > 0, mean_stop / mean_content.clamp_min(1e-12),
                        torch.full_like(mean_stop, float("nan")))
    return ratio, n_stop, n_content


def noisy_word_use(
    result: InfoFlowResult,
    stop_words: Collection[str] = STOP_WORDS,
    *,
    ratio: float = NOISY_RATIO,
    min_count: int = NOISY_MIN_COUNT,
    layers: Literal["last", "all"] | Sequence[str] = "last",
    run: str | None = None,
) -> list[Finding]:
    """Layers that keep stop words as much as content words (one finding per flagged layer).

    Args:
        result: one analysis, with token strings.
        stop_words: the stop-word list (lower case); :data:`STOP_WORDS` by default.
        ratio: flag a layer whose stop-word information is at least ``ratio`` x its content-word information.
        min_count: the least number of stop-word and of content-word tokens in the probe to judge at all.
        layers: ``"last"`` (the layer the output reads; the default, since layers near the embedding keep
            every word by design), ``"all"`` or a list of layer names.
        run: the run's name, for the finding.
    """
    values, n_stop, n_content = stop_word_ratio(result, stop_words)
    if n_stop < min_count or n_content < min_count:
        return []
    names = list(result.layer_names)
    chosen = [names[-1]] if layers == "last" else names if layers == "all" else list(layers)
    info = result.information
    findings = []
    for name in chosen:
        i = names.index(name)
        r = float(values[i])
        if not math.isfinite(r) or r < ratio:
            continue
        findings.append(Finding(
            rule="noisy_word_use", severity="warning", run=run, layer=name, step=result.meta.get("step"),
            message=f"{name} keeps stop words at {r:.2f} x the information of content words "
                    f"({n_stop} stop-word and {n_content} content tokens in the probe; "
                    f"{float(torch.nanmean(info[i])):.2f} nats per word on average).",
            measured={"ratio": r, "stop_tokens": float(n_stop), "content_tokens": float(n_content)},
            threshold=f"stop-word information at least {ratio:g} x content-word information",
            suggestion="the layer does not yet single out the words that matter: train longer, add data, or "
                       "raise the regularisation (weight decay, dropout) a little",
        ))
    return findings


# --------------------------------------------------------------------------- expansion and compression


def information_phases(
    steps: Sequence[int],
    information: History,
    layer_names: Sequence[str] | None = None,
    *,
    min_change: float = PHASE_CHANGE,
    run: str | None = None,
) -> list[Finding]:
    """Per layer, the step where its information peaks, and the expansion/compression phases around it.

    Args:
        steps: optimizer steps of the analyses, ascending, ``[N]`` (at least 3).
        information: ``[N, L]`` mean information per word (nats).
        layer_names: ``L`` names.
        min_change: the relative rise (before the peak) or fall (after it), as a fraction of the peak,
            that counts as a phase.
        run: the run's name, for the findings.

    Example::

        >>> [f.measured["peak_step"] for f in information_phases([0, 10, 100], [[5.0], [9.0], [6.0]], ["l"])]
        [10.0]
    """
    info = torch.as_tensor(information, dtype=torch.float64)
    if len(steps) < 3 or info.dim() != 2 or info.shape[0] != len(steps):
        return []
    out = []
    for i in range(info.shape[1]):
        col = info[:, i]
        if not bool(torch.isfinite(col).all()) or float(col.max()) <= 0:
            continue
        k = int(col.argmax())
        peak, first, last = float(col[k]), float(col[0]), float(col[-1])
        rise, fall = (peak - first) / peak, (peak - last) / peak
        name = layer_names[i] if layer_names is not None else f"layer {i}"
        msg, tip = _phase_reading(name, [int(x) for x in steps], k, peak, rise, fall, min_change)
        out.append(Finding(
            rule="information_phases", severity="info", run=run, layer=name, step=int(steps[k]), message=msg,
            measured={"peak_step": float(steps[k]), "peak_information": peak, "first_information": first,
                      "last_information": last, "rise": rise, "fall": fall},
            threshold=f"a phase is a change of at least {100 * min_change:g}% of the peak",
            suggestion=tip,
        ))
    return out


def _phase_reading(name: str, steps: list[int], k: int, peak: float, rise: float, fall: float,
                   min_change: float) -> tuple[str, str]:
    """The message and the suggestion of a layer whose information peaks at analysis ``k``."""
    expands, compresses = rise >= min_change, fall >= min_change
    if expands and compresses:
        msg = (f"{name} expands until step {steps[k]} (+{100 * rise:.0f}% from step {steps[0]}, peak "
               f"{peak:.2f} nats per word), then compresses by {100 * fall:.0f}% to step {steps[-1]}.")
        tip = (f"the two phases of Fig. 9; if the validation score stopped improving during compression, "
               f"the checkpoint near step {steps[k]} or later is a candidate")
    elif expands:
        msg = (f"{name} is still expanding: its information peaks at the last analysis (step {steps[k]}, "
               f"+{100 * rise:.0f}% since step {steps[0]})." if k == len(steps) - 1 else
               f"{name} expands until step {steps[k]} (+{100 * rise:.0f}%) and stays within "
               f"{100 * fall:.0f}% of its peak since.")
        tip = "no compression yet: train longer before judging how much the layer keeps"
    elif compresses:
        msg = (f"{name} compresses from the start: {100 * fall:.0f}% below its peak at step {steps[k]} "
               f"by step {steps[-1]}, without an expansion phase.")
        tip = ("normal for layers that start with more than they need; if the loss is flat too, try a larger "
               "learning rate or less regularisation")
    else:
        msg = (f"{name} is stable: within {100 * min_change:g}% of its peak (step {steps[k]}, "
               f"{peak:.2f} nats per word) throughout.")
        tip = "nothing to change on this account"
    return msg, tip
