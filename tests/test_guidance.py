"""Guidance rules: each triggers on the numbers it documents, stays quiet just short of them, and carries
the measured numbers, the threshold and a suggestion."""

from __future__ import annotations

import doctest
import math
from types import ModuleType

import pytest
import torch

from lightning_infoflow import InfoFlowResult
from lightning_infoflow.analysis import guidance
from lightning_infoflow.analysis.guidance import (
    Finding,
    collapse_finding,
    collapse_findings,
    information_phases,
    noisy_word_use,
    normalise_token,
    stop_word_ratio,
    too_little_information,
)
from lightning_infoflow.reporting import figures, logs, runs, tables

SIGMA_MAX = 10.0


def result(info: list[list[list[float]]], tokens: list[list[str]] | None = None, names: list[str] | None = None) -> InfoFlowResult:
    """A result whose per-word information (K = 1) is exactly ``info`` ``[L, B, T]``."""
    values = torch.tensor(info)
    sigma = SIGMA_MAX * torch.exp(-values)
    mask = torch.ones(values.shape[1:], dtype=torch.bool)
    return InfoFlowResult(names or [f"layer{i}" for i in range(values.shape[0])], sigma, mask, SIGMA_MAX, 1,
                          tokens=tokens, meta={"step": 7})


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
    one = [[[5.0, 0.2, 0.0, 0.0]]]          # ~1.08 effective words
    return {"wd=0": result(even), "wd=1e-4": result(half), "wd=1e-3": result(one)}


HPARAMS = {"wd=0": {"weight_decay": 0.0, "lr": 1e-3}, "wd=1e-4": {"weight_decay": 1e-4, "lr": 1e-3},
           "wd=1e-3": {"weight_decay": 1e-3, "lr": 1e-3}}


def test_too_little_relative_to_best_run_names_the_regularisation():
    found = too_little_information(_sweep(), HPARAMS)
    assert [f.run for f in found] == ["wd=1e-3"]
    f = found[0]
    assert f.rule == "too_little_information" and f.severity == "warning" and f.layer == "layer0"
    expected = 5.2**2 / (25 + 0.04)
    assert f.measured["effective_words"] == pytest.approx(expected, rel=1e-4)
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


def test_is_regularisation():
    assert guidance.is_regularisation("weight_decay") and guidance.is_regularisation("model_kwargs.dropout")
    assert not guidance.is_regularisation("lr") and not guidance.is_regularisation("hidden")


# --------------------------------------------------------------------------- collapse


def test_collapse_last_interval_only_and_numbers():
    steps = [0, 100, 200]
    info = [[10.0, 10.0], [10.0, 9.0], [9.0, 4.0]]
    f = collapse_finding(steps, info, [0.7, 0.69, 0.69], ["a", "b"])
    assert f is not None and f.layer == "b" and f.step == 200
    assert f.measured["drop"] == pytest.approx(5 / 9) and f.measured["loss_improvement"] == pytest.approx(0.0)
    assert "9.00 -> 4.00" in f.message and "at least 50%" in f.threshold
    assert "step 100" in f.suggestion
    # the earlier interval is not looked at again
    assert collapse_finding(steps[:2], info[:2], [0.7, 0.69], ["a", "b"]) is None


def test_collapse_needs_a_flat_loss_and_a_steep_drop():
    steps, info = [0, 10], [[10.0], [4.0]]
    assert collapse_finding(steps, info, [0.70, 0.50]) is None              # the loss improved by 29 %
    assert collapse_finding(steps, info, [0.70, 0.69]) is not None          # by 1.4 %: flat
    assert collapse_finding(steps, [[10.0], [5.1]], [0.7, 0.7]) is None      # a 49 % drop is not steep enough
    assert collapse_finding(steps, info, [float("nan"), 0.7]) is None       # loss unknown: no finding
    assert collapse_finding(steps, info, [0.70, 0.69], drop=0.7) is None
    assert collapse_finding([5], [[1.0]], [0.1]) is None


def test_collapse_accepts_tensors_and_checks_shapes():
    f = collapse_finding([0, 1], torch.tensor([[8.0, 8.0], [1.0, 2.0]]), [1.0, 1.0])
    assert f is not None and f.layer == "layer 0" and f.measured["layers_collapsed"] == 2.0
    assert "(also layer 1)" in f.message
    with pytest.raises(ValueError, match="expected information"):
        collapse_finding([0, 1], [[1.0], [2.0], [3.0]], [1.0, 1.0])


def test_collapse_findings_over_history():
    info = [[10.0], [4.0], [4.0], [1.0]]
    found = collapse_findings([0, 1, 2, 3], info, [1.0, 1.0, 0.5, 0.5])
    assert [f.step for f in found] == [1, 3]


# --------------------------------------------------------------------------- noisy words


def test_normalise_token():
    assert normalise_token("##ing") == "ing" and normalise_token("\u2581The") == "the"
    assert normalise_token("[SEP]") is None and normalise_token("<s>") is None and normalise_token("...") is None
    assert normalise_token("n't") == "n't"


TOKENS = [["the", "film", "is", "a", "charming", "journey", "."], ["it", "was", "dull", "and", "slow", "[SEP]", ","]]


def test_noisy_word_use_flags_the_last_layer_when_stop_words_carry_as_much():
    # layer0: everything kept; layer1: stop words 2.0, content words 2.0 -> ratio 1
    l0 = [[3.0] * 7, [3.0] * 7]
    l1 = [[2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 5.0], [2.0, 2.0, 2.0, 2.0, 2.0, 9.0, 9.0]]
    r = result([l0, l1], TOKENS)
    ratio, n_stop, n_content = stop_word_ratio(r)
    assert (n_stop, n_content) == (6, 5)  # the, is, a, it, was, and / film, charming, journey, dull, slow
    assert torch.allclose(ratio, torch.tensor([1.0, 1.0]))
    found = noisy_word_use(r)
    assert [f.layer for f in found] == ["layer1"] and found[0].measured["ratio"] == pytest.approx(1.0)
    assert found[0].step == 7 and "6 stop-word and 5 content tokens" in found[0].message
    assert [f.layer for f in noisy_word_use(r, layers="all")] == ["layer0", "layer1"]


def test_noisy_word_use_quiet_when_content_dominates_or_too_few_words():
    focused = [[0.5, 4.0, 0.5, 0.5, 4.0, 4.0, 1.0], [0.5, 0.5, 4.0, 0.5, 4.0, 1.0, 1.0]]
    r = result([focused], TOKENS)
    assert float(stop_word_ratio(r)[0][0]) == pytest.approx(0.125)
    assert noisy_word_use(r) == []
    assert noisy_word_use(result([[[1.0, 1.0]]], [["the", "film"]])) == []  # one stop word: cannot judge
    # a user list that holds no word of the probe: cannot judge either
    assert noisy_word_use(result([[[1.0] * 7] * 2], TOKENS), stop_words={"zebra"}) == []
    assert math.isnan(float(stop_word_ratio(result([[[1.0]]]))[0][0]))  # no tokens


# --------------------------------------------------------------------------- phases


def test_phases_expansion_then_compression():
    steps = [0, 10, 100, 1000]
    info = [[5.0, 9.0, 9.0], [9.0, 9.1, 9.5], [10.0, 9.0, 9.9], [7.0, 9.0, 10.0]]
    found = {f.layer: f for f in information_phases(steps, info, ["a", "b", "c"])}
    a, b, c = found["a"], found["b"], found["c"]
    assert a.step == 100 and a.measured["rise"] == pytest.approx(0.5) and a.measured["fall"] == pytest.approx(0.3)
    assert "expands until step 100" in a.message and "compresses by 30%" in a.message
    assert "stable" in b.message and b.measured["peak_step"] == 10
    assert "still expanding" in c.message and c.step == 1000
    assert all(f.severity == "info" for f in found.values())


def test_phases_compression_from_the_start_and_too_few_analyses():
    found = information_phases([0, 5, 50], [[10.0], [8.0], [6.0]])
    assert len(found) == 1 and "compresses from the start" in found[0].message
    assert information_phases([0, 5], [[1.0], [2.0]]) == []


@pytest.mark.parametrize("module", [guidance, runs, logs, tables, figures], ids=lambda m: m.__name__)
def test_docstring_examples_run(module: ModuleType) -> None:
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0, f"{module.__name__} has no docstring example"
    assert failed == 0
