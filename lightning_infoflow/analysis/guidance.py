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
``noisy_word_use`` (Sec. 4.4, Figs. 5-6)
    The last layer does not tell stop words from content words: the mean ``log sigma`` of stop-word tokens
    exceeds that of content-word tokens by less than ``NOISY_MIN_GAP`` (0.1 nats, stop words tolerating
    less than about 1.1 x the noise of content words), over the probe (at least ``NOISY_MIN_COUNT`` (3)
    tokens of each kind). ``K`` times the gap is the content words' surplus of information in nats per
    word. Suggestion: more regularisation or data.
The rules over a run's history (information collapse between analyses, expansion and compression
phases) are in :mod:`~lightning_infoflow.analysis.dynamics`.

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
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_infoflow.analysis.finding import Finding
from lightning_infoflow.analysis.stopwords import STOP_WORDS, word_kinds
from lightning_infoflow.core.measures import COLLAPSED_SPREAD
from lightning_infoflow.core.result import InfoFlowResult

TOO_LITTLE_RELATIVE = 0.5
TOO_LITTLE_ABSOLUTE = 1.5
NOISY_MIN_GAP = 0.1
NOISY_MIN_COUNT = 3

#: Hyperparameter names (matched as substrings, case-insensitive) that count as regularisation.
REGULARISATION_KEYS = ("weight_decay", "l2", "alpha", "dropout", "reg", "penalty", "decay", "smoothing", "wd")


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
    words = {name: _last_layer(r.effective_words) for name, r in judged.items()}
    valid = {n: w for n, w in words.items() if math.isfinite(w)}
    last = _LastLayers(valid, {name: r for name, r in judged.items()}, hparams or {})
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
    """The judged runs: their last layer's effective words (finite ones), results and hparams."""

    words: Mapping[str, float]
    results: Mapping[str, InfoFlowResult]
    hparams: Mapping[str, Mapping[str, Any]]

    def layer(self, name: str) -> str:
        return self.results[name].layer_names[-1]

    def numbers(self, name: str, prefix: str = "") -> dict[str, float]:
        r = self.results[name]
        return {f"{prefix}effective_words": self.words[name], f"{prefix}information": _last_layer(r.layer_information),
                f"{prefix}log_sigma": _last_layer(r.layer_log_sigma)}


def _below_absolute(last: _LastLayers, name: str, absolute: float, named: bool) -> Finding:
    w, layer = last.words[name], last.layer(name)
    return Finding(
        rule="too_little_information", severity="warning", run=name if named else None, layer=layer,
        message=f"the last layer ({layer}) focuses on {w:.2f} effective words per sentence.",
        measured=last.numbers(name),
        threshold=f"fewer than {absolute:g} effective words in the last layer",
        suggestion=_lower_regularisation(last.hparams.get(name, {}), None, {}),
    )


def _below_best(last: _LastLayers, name: str, best: str, why: str, relative: float,
                scores: Mapping[str, float] | None) -> Finding:
    w, top, layer = last.words[name], last.words[best], last.layer(name)
    measured = {**last.numbers(name), **last.numbers(best, "best_"), "ratio": w / top if top > 0 else 0.0}
    if scores is not None and name in scores and best in scores:
        measured.update(score=float(scores[name]), best_score=float(scores[best]))
    return Finding(
        rule="too_little_information", severity="warning", run=name, layer=layer,
        message=f"the last layer ({layer}) focuses on {w:.2f} effective words per sentence against {top:.2f} in "
                f"run {best} ({why}).",
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
            suggestion="the layer does not yet single out the words that matter: train longer, add data, or "
                       "raise the regularisation (weight decay, dropout) a little",
        ))
    return findings
