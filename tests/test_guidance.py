"""Guidance rules: each triggers on the numbers it documents, stays quiet just short of them, and carries
the measured numbers, the threshold and a suggestion."""

from __future__ import annotations

import doctest
import math
from types import ModuleType

import pytest
import torch

from lightning_infoflow import InfoFlowResult
from lightning_infoflow.analysis import evidence, finding, guidance, stopwords, sweep
from lightning_infoflow.analysis.evidence import curve_phases
from lightning_infoflow.analysis.guidance import (
    Finding,
    collapse_finding,
    collapse_findings,
    collapsed_layers,
    information_phases,
    noisy_word_use,
    stop_word_gap,
    too_little_information,
)
from lightning_infoflow.analysis.stopwords import normalise_token
from lightning_infoflow.reporting import figures, logs, runs, tables

SIGMA_MAX = 10.0


def result(info: list[list[list[float]]], tokens: list[list[str]] | None = None, names: list[str] | None = None,
           spread: list[float] | None = None) -> InfoFlowResult:
    """A result whose per-word information (K = 1) is exactly ``info`` ``[L, B, T]`` (0: at the bound)."""
    values = torch.tensor(info)
    sigma = SIGMA_MAX * torch.exp(-values)
    mask = torch.ones(values.shape[1:], dtype=torch.bool)
    return InfoFlowResult(names or [f"layer{i}" for i in range(values.shape[0])], sigma, mask, SIGMA_MAX, 1,
                          tokens=tokens, meta={"step": 7},
                          state_spread=None if spread is None else torch.tensor(spread))


def perplexity(info: list[float]) -> float:
    """exp(entropy) of the precision shares of words with information ``info`` (K = 1; 0: at the bound)."""
    weights = [math.exp(2 * i) for i in info if i > 0]
    shares = [w / sum(weights) for w in weights]
    return math.exp(-sum(p * math.log(p) for p in shares))


def test_result_helper_reproduces_information():
    r = result([[[1.0, 2.0, 0.0]]])
    assert torch.allclose(r.information, torch.tensor([[[1.0, 2.0, 0.0]]]), atol=1e-5)


def test_finding_requires_numbers():
    with pytest.raises(ValueError, match="no measured numbers"):
        Finding("x", "warning", "message", {}, "threshold", "suggestion")
    f = Finding("x", "warning", "message", {"a": 1.0}, "t", "s", run="r")
    assert "r: message" in str(f) and f.to_dict()["measured"] == {"a": 1.0}


# --------------------------------------------------------------------------- too little information


def _sweep() -> dict[str, InfoFlowResult]:
    even = [[[3.0, 3.0, 3.0, 3.0]]]         # 4 effective words
    half = [[[3.0, 3.0, 0.0, 0.0]]]         # 2 effective words: exactly 0.5 x best, not flagged
    one = [[[5.0, 0.2, 0.0, 0.0]]]          # ~1.0007 effective words
    return {"wd=0": result(even), "wd=1e-4": result(half), "wd=1e-3": result(one)}


HPARAMS = {"wd=0": {"weight_decay": 0.0, "lr": 1e-3}, "wd=1e-4": {"weight_decay": 1e-4, "lr": 1e-3},
           "wd=1e-3": {"weight_decay": 1e-3, "lr": 1e-3}}


def test_too_little_relative_to_best_run_names_the_regularisation():
    found = too_little_information(_sweep(), HPARAMS)
    assert [f.run for f in found] == ["wd=1e-3"]
    f = found[0]
    assert f.rule == "too_little_information" and f.severity == "warning" and f.layer == "layer0"
    assert f.measured["effective_words"] == pytest.approx(perplexity([5.0, 0.2]), rel=1e-4)
    assert f.measured["best_effective_words"] == pytest.approx(4.0, rel=1e-4)
    assert f.extra["best_run"] == "wd=0"
    assert "0.5 x the best run's effective words (2.00)" in f.threshold
    assert "lower weight_decay (now 0.001; run wd=0 uses 0.0)" in f.suggestion
    assert "lr" not in f.suggestion  # lr does not differ


def test_too_little_best_run_by_score():
    # by score the best run is wd=1e-4 (2 words): the bar is then 1.0 and nobody falls below it
    scores = {"wd=0": 0.80, "wd=1e-4": 0.85, "wd=1e-3": 0.70}
    assert too_little_information(_sweep(), HPARAMS, scores, relative=0.5) == []
    found = too_little_information(_sweep(), HPARAMS, scores, score_name="val/acc", relative=0.6)
    assert [f.run for f in found] == ["wd=1e-3"]
    assert "best val/acc 0.85" in found[0].message and found[0].measured["best_score"] == 0.85


def test_too_little_non_regularisation_difference_is_named():
    hp = {"a": {"hidden": 256}, "b": {"hidden": 16}}
    found = too_little_information({"a": result([[[3.0, 3.0, 3.0]]]), "b": result([[[4.0, 0.0, 0.0]]])}, hp)
    assert len(found) == 1 and "hidden=16 (run a: 256)" in found[0].suggestion


def test_too_little_single_run_absolute_bar():
    assert too_little_information({"r": result([[[3.0, 3.0]]])}) == []
    found = too_little_information({"r": result([[[3.0, 0.0]]])}, {"r": {"dropout": 0.5}})
    assert len(found) == 1 and found[0].measured["effective_words"] == pytest.approx(1.0)
    assert "fewer than 1.5 effective words" in found[0].threshold and "dropout=0.5" in found[0].suggestion


def test_collapsed_runs_neither_compete_nor_are_judged():
    """A collapsed last layer would be the best run (most effective words): it is left out, so the bar is set by
    the healthy runs, and a collapsed run is not flagged for too little information either."""
    sweep = _sweep()
    sweep["wd=1"] = result([[[3.0] * 4 + [3.0] * 0]], spread=[1e-4])  # 4 effective words, collapsed
    sweep["wd=10"] = result([[[5.0, 0.0, 0.0, 0.0]]], spread=[1e-5])  # 1 word, collapsed: not judged
    found = too_little_information(sweep, HPARAMS)
    assert [f.run for f in found] == ["wd=1e-3"] and found[0].extra["best_run"] == "wd=0"
    collapsed = collapsed_layers(sweep["wd=10"], run="wd=10")
    assert [(f.rule, f.layer) for f in collapsed] == [("collapsed_layer", "layer0")]
    assert collapsed[0].measured["state_spread"] == pytest.approx(1e-5) and "0.001%" in collapsed[0].message
    assert collapsed_layers(sweep["wd=0"]) == [] and collapsed_layers(result([[[1.0]]], spread=[0.5])) == []


def test_is_regularisation():
    assert sweep.is_regularisation("weight_decay") and sweep.is_regularisation("model_kwargs.dropout")
    assert not sweep.is_regularisation("lr") and not sweep.is_regularisation("hidden")


# --------------------------------------------------------------------------- collapse


def test_collapse_last_interval_only_and_numbers():
    steps = [0, 100, 200]
    info = [[10.0, 10.0], [10.0, 9.0], [9.0, 4.0]]
    f = collapse_finding(steps, info, [0.7, 0.69, 0.69], ["a", "b"], embedding_dim=4)
    assert f is not None and f.layer == "b" and f.step == 200
    assert f.measured["fall"] == pytest.approx(5.0) and f.measured["sigma_ratio"] == pytest.approx(math.exp(5 / 4))
    assert f.measured["loss_improvement"] == pytest.approx(0.0)
    assert "grew 3.49x" in f.message and "fell by 5.00 nats per word" in f.message and "at least 2x" in f.threshold
    assert "step 100" in f.suggestion
    # the earlier interval is not looked at again
    assert collapse_finding(steps[:2], info[:2], [0.7, 0.69], ["a", "b"], embedding_dim=4) is None


def test_collapse_needs_a_flat_loss_a_steep_fall_and_evidence():
    steps, info = [0, 10], [[10.0], [4.0]]  # a fall of 6 nats per word: sigma x 4.5 with K = 4
    assert collapse_finding(steps, info, [0.70, 0.50], embedding_dim=4) is None     # the loss improved by 29 %
    assert collapse_finding(steps, info, [0.70, 0.69], embedding_dim=4) is not None  # by 1.4 %: flat
    # K log 2 = 2.77 nats: a fall of 2.7 is sigma x 1.96, not steep enough
    assert collapse_finding(steps, [[10.0], [7.3]], [0.7, 0.7], embedding_dim=4) is None
    assert collapse_finding(steps, info, [0.70, 0.69], embedding_dim=16) is None  # 6 nats is x 1.45 for K = 16
    assert collapse_finding(steps, info, [float("nan"), 0.7], embedding_dim=4) is None  # loss unknown
    # within its uncertainty (SE 3 at both analyses: 1.96 x 4.24 = 8.3 > 6): no finding; SE 1: a finding
    assert collapse_finding(steps, info, [0.7, 0.7], embedding_dim=4, se=[[3.0], [3.0]]) is None
    assert collapse_finding(steps, info, [0.7, 0.7], embedding_dim=4, se=[[1.0], [1.0]]) is not None
    assert collapse_finding([5], [[1.0]], [0.1], embedding_dim=4) is None
    assert collapse_finding(steps, info, [0.70, 0.69]) is None  # K unknown: the fall cannot be judged


def test_collapse_accepts_tensors_and_checks_shapes():
    f = collapse_finding([0, 1], torch.tensor([[8.0, 8.0], [1.0, 2.0]]), [1.0, 1.0], embedding_dim=1)
    assert f is not None and f.layer == "layer 0" and f.measured["layers_collapsed"] == 2.0
    assert "(also layer 1)" in f.message
    with pytest.raises(ValueError, match="expected information"):
        collapse_finding([0, 1], [[1.0], [2.0], [3.0]], [1.0, 1.0], embedding_dim=1)


def test_collapse_findings_over_history():
    info = [[10.0], [4.0], [4.0], [1.0]]
    found = collapse_findings([0, 1, 2, 3], info, [1.0, 1.0, 0.5, 0.5], embedding_dim=2)
    assert [f.step for f in found] == [1, 3]


# --------------------------------------------------------------------------- noisy words


def test_normalise_token():
    assert normalise_token("##ing") == "ing" and normalise_token("\u2581The") == "the"
    assert normalise_token("[SEP]") is None and normalise_token("<s>") is None and normalise_token("...") is None
    assert normalise_token("n't") == "n't"


TOKENS = [["the", "film", "is", "a", "charming", "journey", "."], ["it", "was", "dull", "and", "slow", "[SEP]", ","]]


def test_noisy_word_use_flags_the_last_layer_when_stop_words_carry_as_much():
    # layer0: everything kept; layer1: stop words and content words 2 nats each: a gap of 0 in log sigma
    l0 = [[3.0] * 7, [3.0] * 7]
    l1 = [[2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 5.0], [2.0, 2.0, 2.0, 2.0, 2.0, 9.0, 9.0]]
    r = result([l0, l1], TOKENS)
    gap, n_stop, n_content = stop_word_gap(r)
    assert (n_stop, n_content) == (6, 5)  # the, is, a, it, was, and / film, charming, journey, dull, slow
    torch.testing.assert_close(gap, torch.tensor([0.0, 0.0]), atol=1e-5, rtol=0)
    found = noisy_word_use(r)
    assert [f.layer for f in found] == ["layer1"] and found[0].measured["log_sigma_gap"] == pytest.approx(0.0, abs=1e-5)
    assert found[0].step == 7 and "6 stop-word and 5 content tokens" in found[0].message
    assert "1.00x the noise of content words" in found[0].message
    assert [f.layer for f in noisy_word_use(r, layers="all")] == ["layer0", "layer1"]
    # the bar is a gap in nats: stop words at 1.9 nats (log sigma 0.1 higher) pass a 0.1 bar only just
    for b, t in ((0, 0), (0, 2), (0, 3), (1, 0), (1, 1), (1, 3)):  # the stop words
        l1[b][t] = 1.9
    assert noisy_word_use(result([l0, l1], TOKENS), min_gap=0.1 - 1e-4) == []
    assert len(noisy_word_use(result([l0, l1], TOKENS), min_gap=0.1 + 1e-4)) == 1


def test_noisy_word_use_quiet_when_content_dominates_or_too_few_words_or_collapsed():
    focused = [[0.5, 4.0, 0.5, 0.5, 4.0, 4.0, 1.0], [0.5, 0.5, 4.0, 0.5, 4.0, 1.0, 1.0]]
    r = result([focused], TOKENS)
    assert float(stop_word_gap(r)[0][0]) == pytest.approx(3.5)
    assert noisy_word_use(r) == []
    assert noisy_word_use(result([[[1.0, 1.0]]], [["the", "film"]])) == []  # one stop word: cannot judge
    # a user list that holds no word of the probe: cannot judge either
    assert noisy_word_use(result([[[1.0] * 7] * 2], TOKENS), stop_words={"zebra"}) == []
    assert math.isnan(float(stop_word_gap(result([[[1.0]]]))[0][0]))  # no tokens
    assert noisy_word_use(result([[[2.0] * 7] * 2], TOKENS, spread=[1e-4])) == []  # a collapsed layer: not judged
    assert len(noisy_word_use(result([[[2.0] * 7] * 2], TOKENS, spread=[0.5]))) == 1


# --------------------------------------------------------------------------- phases


def test_phases_fall_and_recovery_of_the_demo_are_two_phases_with_steps_and_sizes():
    """The demo's layer 2 (260.8 -> 233 by step 100 -> 252.7, SE ~0.5), once read as "stable: within 10% of its
    peak", is a compression and an expansion; the other layers' wiggles within noise are stable."""
    steps = [0, 20, 50, 100, 150, 200, 300, 400]
    layer2 = [260.8, 255.1, 244.0, 233.0, 238.5, 245.2, 250.1, 252.7]
    wiggle = [120.0, 120.4, 119.8, 120.3, 119.9, 120.2, 120.1, 119.7]
    gen = torch.Generator().manual_seed(0)
    se = [[0.5, 0.4]] * len(steps)
    found = {f.layer: f for f in information_phases(steps, list(zip(layer2, wiggle)), ["l2", "l1"], se=se)}
    l2, l1 = found["l2"], found["l1"]
    assert l2.extra["label"] == "compression, expansion"
    assert [(p["kind"], p["start_step"], p["end_step"]) for p in l2.extra["phases"]] == [
        ("compression", 0, 100), ("expansion", 100, 400)]
    assert l2.extra["phases"][0]["change"] == pytest.approx(-27.8) and l2.measured["rise"] == pytest.approx(19.7)
    assert l2.measured["fall"] == pytest.approx(27.8) and l2.measured["phases"] == 2
    assert "compresses from step 0 to 100 (-27.80 nats per word), then expands from step 100 to 400" in l2.message
    assert l1.extra["label"] == "stable" and "stable" in l1.message and l1.measured["phases"] == 0
    # noise-only curves of known SE are stable (here 50 curves of 10 analyses; ~4% would fire by design)
    noise = 100 + 0.5 * torch.randn(10, 50, generator=gen)
    labels = [f.extra["label"] for f in information_phases(list(range(10)), noise, se=torch.full((10, 50), 0.5))]
    assert labels.count("stable") >= 45
    assert all(f.severity == "info" for f in found.values())


def test_phases_need_evidence_not_a_fixed_share():
    steps = [0, 10, 100]
    # a rise of 1 nat per word: a phase with SE 0.1, not with SE 1 (whatever its share of the level)
    assert information_phases(steps, [[5.0], [6.0], [6.0]], se=[[0.1]] * 3)[0].extra["label"] == "expansion"
    assert information_phases(steps, [[5.0], [6.0], [6.0]], se=[[1.0]] * 3)[0].extra["label"] == "stable"
    still = information_phases(steps, [[5.0], [5.5], [9.0]], se=[[0.1]] * 3)[0]
    assert "still" not in still.message and "train longer" in still.suggestion
    assert information_phases([0, 5], [[1.0], [2.0]]) == []
    # without SEs the noise is read off the curve: a clean step up in a flat noisy curve is found
    flat = [10.0, 10.1, 9.9, 10.05, 9.95, 10.0, 14.0, 14.1, 13.9, 14.05]
    assert [p.kind for p in curve_phases(flat)] == ["expansion"]


@pytest.mark.parametrize("module", [guidance, evidence, finding, stopwords, sweep, runs, logs, tables,
                                    figures], ids=lambda m: m.__name__)
def test_docstring_examples_run(module: ModuleType) -> None:
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0, f"{module.__name__} has no docstring example"
    assert failed == 0
