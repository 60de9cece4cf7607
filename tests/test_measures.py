"""Information measures (Eqs. 1-4, 6), InfoFlowResult's derived fields and on-disk format, and the
docstring examples of the estimator modules."""

from __future__ import annotations

import doctest
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

import lightning_infoflow.core.estimator
import lightning_infoflow.core.measures
import lightning_infoflow.core.resolve
import lightning_infoflow.core.result
from lightning_infoflow import InfoFlowResult
from lightning_infoflow.core import measures

NAN = float("nan")


def test_word_entropy_is_the_gaussian_entropy() -> None:
    sigma = torch.tensor([0.5, 1.0, 3.0])
    k = 7
    expected = torch.distributions.Normal(0.0, sigma).entropy() * k  # K independent dimensions
    torch.testing.assert_close(measures.word_entropy(sigma, k), expected)


def test_word_information_is_zero_at_the_bound_and_never_negative() -> None:
    info = measures.word_information(torch.tensor([0.1, 1.0, 2.0, 5.0, NAN]), sigma_max=2.0, dim=4)
    torch.testing.assert_close(info[:2], torch.tensor([4 * math.log(20.0), 4 * math.log(2.0)]))
    assert info[2] == 0 and info[3] == 0  # at and above the bound: 0, not negative
    assert torch.isnan(info[4])  # padding stays NaN


def test_information_is_the_entropy_gap_to_the_bound() -> None:
    sigma = torch.tensor([0.2, 0.7])
    gap = measures.word_entropy(torch.tensor(1.5), 5) - measures.word_entropy(sigma, 5)
    torch.testing.assert_close(measures.word_information(sigma, 1.5, 5), gap)


def test_sentence_and_layer_aggregates_skip_padding() -> None:
    info = torch.tensor([[[1.0, 2.0, NAN], [4.0, NAN, NAN]]])  # [L=1, B=2, T=3]
    torch.testing.assert_close(measures.sentence_information(info), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(measures.mean_word_information(info), torch.tensor([7.0 / 3.0]))


def test_effective_words() -> None:
    """exp(entropy) of the precision shares: even sigma -> every word, one word below the bound -> 1, all at the
    bound -> 0; free of sigma_max (ratios of sigma only), unlike the participation ratio of information."""
    info = torch.tensor([[3.0, 3.0, 3.0, 3.0], [8.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, NAN, NAN]])
    sigma = 10.0 * torch.exp(-info)  # K = 1, sigma_max = 10
    at_bound = info == 0
    torch.testing.assert_close(measures.effective_words(sigma, at_bound), torch.tensor([4.0, 1.0, 0.0, 2.0]))
    # sigma ratio 2 between two words: shares 0.8 / 0.2 whatever the common scale (and sigma_max)
    two = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    words = measures.effective_words(two, torch.zeros(2, 2, dtype=torch.bool))
    expected = math.exp(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)))
    torch.testing.assert_close(words, torch.tensor([expected, expected]))


def test_mean_log_sigma_differences_are_information_differences() -> None:
    a, b = torch.tensor([[0.5, 1.0]]), torch.tensor([[1.0, 4.0]])
    for sigma_max in (10.0, 1000.0):
        gap = measures.mean_word_information(measures.word_information(a, sigma_max, 3)[None]) - \
            measures.mean_word_information(measures.word_information(b, sigma_max, 3)[None])
        torch.testing.assert_close(gap, -3 * (measures.mean_log_sigma(a) - measures.mean_log_sigma(b))[None])


def test_sentence_without_words_is_nan_not_zero() -> None:
    """A row with no state (position past the sentence's end) is absent, not "keeps nothing"."""
    info = torch.tensor([[2.0, 2.0, NAN], [NAN, NAN, NAN]])
    assert torch.isnan(measures.sentence_information(info)[1])
    assert torch.isnan(measures.effective_words(10.0 * torch.exp(-info), info == 0)[1])
    res = InfoFlowResult(["l@2"], torch.tensor([[[1.0, 1.0, NAN], [NAN, NAN, NAN]]]),
                         torch.tensor([[True, True, False], [True, False, False]]), sigma_max=10.0, embedding_dim=2)
    torch.testing.assert_close(res.effective_words, torch.tensor([2.0]))
    torch.testing.assert_close(res.layer_information, torch.tensor([2 * math.log(10.0)]))


def _result() -> InfoFlowResult:
    sigma = torch.tensor([[[1.0, 10.0, NAN], [0.5, 2.0, 4.0]],
                          [[10.0, 10.0, NAN], [10.0, 10.0, 10.0]]])  # [L=2, B=2, T=3]
    mask = torch.tensor([[True, True, False], [True, True, True]])
    return InfoFlowResult(["a", "b"], sigma, mask, sigma_max=10.0, embedding_dim=2,
                          tokens=[["x", "y"], ["p", "q", "r"]], meta={"step": 3})


def test_result_derived_fields() -> None:
    res = _result()
    assert res.at_bound.tolist() == [[[False, True, False], [False, False, False]],
                                     [[True, True, False], [True, True, True]]]
    info = res.information
    assert torch.isnan(info[:, 0, 2]).all()
    torch.testing.assert_close(info[1, res.mask], torch.zeros(5))  # a layer that keeps nothing
    expected = torch.tensor([2 * math.log(10), 0.0, 2 * math.log(20), 2 * math.log(5), 2 * math.log(2.5)])
    torch.testing.assert_close(info[0, res.mask], expected)
    torch.testing.assert_close(res.layer_information, torch.stack([expected.mean(), torch.tensor(0.0)]))
    torch.testing.assert_close(res.sentence_information[0], torch.stack([expected[:2].sum(), expected[2:].sum()]))
    assert torch.isnan(res.entropy[:, 0, 2]).all() and torch.isfinite(res.entropy[:, res.mask]).all()
    assert res.effective_words.shape == (2,) and res.effective_words[1] == 0
    assert torch.isnan(res.loss).all() and res.loss.shape == (2,)


def test_result_save_load_without_the_package(tmp_path: Path) -> None:
    res = _result()
    res.save(tmp_path / "r.pt")
    raw = torch.load(tmp_path / "r.pt", weights_only=True)  # a plain dict of tensors and primitives
    assert raw["format"] == "lightning_infoflow.result/v1" and raw["layer_names"] == ["a", "b"]
    torch.testing.assert_close(raw["information"], res.information, equal_nan=True)
    back = InfoFlowResult.load(tmp_path / "r.pt")
    torch.testing.assert_close(back.sigma, res.sigma, equal_nan=True)
    assert back.tokens == res.tokens and back.meta == res.meta and back.sigma_max == 10.0


def test_loading_something_else_is_an_error(tmp_path: Path) -> None:
    torch.save({"format": "other"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an infoflow result"):
        InfoFlowResult.load(tmp_path / "x.pt")


@pytest.mark.parametrize(
    "module",
    [lightning_infoflow.core.estimator, lightning_infoflow.core.measures, lightning_infoflow.core.result,
     lightning_infoflow.core.resolve],
    ids=lambda m: m.__name__,
)
def test_docstring_examples_run(module: ModuleType) -> None:
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0, f"{module.__name__} has no docstring example"
    assert failed == 0
