"""Guidance rules: each triggers on the numbers it documents, stays quiet just short of them, and carries
the measured numbers, the threshold and a suggestion."""

from __future__ import annotations

import doctest
import math
from types import ModuleType

import pytest
import torch

from lightning_infoflow import InfoFlowResult
from lightning_infoflow.analysis import evidence, finding, guidance, regularisation, stopwords
from lightning_infoflow.analysis.evidence import curve_phases
from lightning_infoflow.analysis.guidance import (
    Finding,
    collapsed_layers,
    information_phases,
    noisy_word_use,
    not_learning,
    stop_word_gap,
)
from lightning_infoflow.analysis.stopwords import normalise_token
from lightning_infoflow.reporting import figures, logs, losses, runs, tables

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


def test_result_helper_reproduces_information():
    r = result([[[1.0, 2.0, 0.0]]])
    assert torch.allclose(r.information, torch.tensor([[[1.0, 2.0, 0.0]]]), atol=1e-5)


def test_finding_requires_numbers():
    with pytest.raises(ValueError, match="no measured numbers"):
        Finding("x", "warning", "message", {}, "threshold", "suggestion")
    f = Finding("x", "warning", "message", {"a": 1.0}, "t", "s", run="r")
    assert "r: message" in str(f) and f.to_dict()["measured"] == {"a": 1.0}


# --------------------------------------------------------------------------- collapsed layers


def test_collapsed_layers_are_flagged_with_their_spread():
    collapsed = collapsed_layers(result([[[5.0, 0.0, 0.0, 0.0]]], spread=[1e-5]), run="wd=10")
    assert [(f.rule, f.layer, f.run) for f in collapsed] == [("collapsed_layer", "layer0", "wd=10")]
    assert collapsed[0].measured["state_spread"] == pytest.approx(1e-5) and "0.001%" in collapsed[0].message
    assert collapsed_layers(result([[[3.0] * 4]])) == [] and collapsed_layers(result([[[1.0]]], spread=[0.5])) == []


def test_is_regularisation():
    assert regularisation.is_regularisation("weight_decay") and regularisation.is_regularisation("model_kwargs.dropout")
    assert not regularisation.is_regularisation("lr") and not regularisation.is_regularisation("hidden")


# --------------------------------------------------------------------------- not learning

# the validation losses of the sweeps' runs that ended at the majority class, and of two that learned
FLAT, WORSE, LEARNED = [(50, 0.693), (250, 0.692)], [(50, 0.690), (250, 0.728)], [(50, 0.687), (250, 0.622)]


def test_not_learning_fires_on_a_flat_or_rising_loss_with_its_numbers():
    (f,) = not_learning([], FLAT, run="wd0.01")
    assert f.rule == "not_learning" and f.severity == "warning" and f.run == "wd0.01" and f.step == 250
    assert f.measured["first_loss"] == 0.693 and f.measured["last_loss"] == 0.692
    assert f.measured["improvement"] == pytest.approx(0.001 / 0.693) and f.measured["validation"] == 1.0
    assert (f.measured["first_step"], f.measured["last_step"]) == (50.0, 250.0)
    assert "has not learned: its validation loss went from 0.693 at step 50 to 0.692 at step 250 (+0.1%)" in f.message
    assert "not read it as more or less informative than runs that learned" in f.message
    assert "less than 2%" in f.threshold and f.extra["loss"] == "validation loss"
    assert f.suggestion == "lower the regularisation (or check the learning rate)" and f.extra["direction"] == "lower"
    (worse,) = not_learning([], WORSE)
    assert worse.measured["improvement"] == pytest.approx(-0.038 / 0.690) and "(-5.5%)" in worse.message


def test_not_learning_is_quiet_when_the_loss_improved_by_the_bar():
    assert not_learning([], LEARNED) == []  # 9.5%
    assert not_learning([], [(0, 1.0), (10, 0.98)]) == []  # exactly 2%
    assert len(not_learning([], [(0, 1.0), (10, 0.9801)])) == 1  # just short of it
    assert not_learning([], [(0, 1.0), (10, 0.9801)], min_improvement=0.01) == []


def test_not_learning_needs_two_finite_values_at_different_steps():
    nan, inf = float("nan"), float("inf")
    assert not_learning([]) == [] and not_learning([(0, 0.7)], [(5, 0.7)]) == []
    assert not_learning([(0, nan), (10, 0.7), (20, nan)]) == []  # one finite value
    assert not_learning([(10, 0.7), (10, 0.7)]) == []  # two values, one step
    # NaN and inf values are skipped: the first and the last finite values are compared
    (f,) = not_learning([(0, nan), (10, 0.70), (20, 0.50), (30, 0.70), (40, inf)])
    assert (f.measured["first_step"], f.measured["last_step"], f.measured["improvement"]) == (10.0, 30.0, 0.0)
    assert f.extra["loss"] == "training loss" and f.measured["validation"] == 0.0


def test_not_learning_prefers_the_validation_loss():
    train_flat, train_learned = [(0, 0.7), (250, 0.7)], [(0, 0.7), (250, 0.5)]
    assert not_learning(train_flat, LEARNED) == []  # the validation loss improved: the run learned
    assert [f.extra["loss"] for f in not_learning(train_learned, FLAT)] == ["validation loss"]
    # one validation value cannot be judged: the training loss is
    assert not_learning(train_learned, FLAT[:1]) == []
    assert [f.extra["loss"] for f in not_learning(train_flat, FLAT[:1])] == ["training loss"]


def test_not_learning_names_the_runs_regularisation():
    hp = {"weight_decay": 0.1, "dropout": 0.0, "lr": 1e-3}
    (f,) = not_learning([], FLAT, hparams=hp)
    assert f.suggestion == "lower the regularisation (weight_decay=0.1), or check the learning rate"
    assert regularisation.active_regularisation({"dropout": 0.0, "flag": True}) == []


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
    # a description, not advice: the sweeps did not show which way it should move a setting
    assert found[0].severity == "info" and found[0].extra["direction"] == "none"
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
    # compression alone is described, with no advice on the regularisation (the sweeps showed it for the best
    # and the worst settings alike)
    falling = information_phases(steps, [[9.0], [7.0], [5.0]], se=[[0.1]] * 3)[0]
    assert falling.extra["label"] == "compression" and "description, not advice" in falling.suggestion
    assert "regularisation" not in falling.suggestion
    # without SEs the noise is read off the curve: a clean step up in a flat noisy curve is found
    flat = [10.0, 10.1, 9.9, 10.05, 9.95, 10.0, 14.0, 14.1, 13.9, 14.05]
    assert [p.kind for p in curve_phases(flat)] == ["expansion"]


@pytest.mark.parametrize("module", [guidance, evidence, finding, stopwords, regularisation, runs, logs, losses,
                                    tables, figures], ids=lambda m: m.__name__)
def test_docstring_examples_run(module: ModuleType) -> None:
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0, f"{module.__name__} has no docstring example"
    assert failed == 0
