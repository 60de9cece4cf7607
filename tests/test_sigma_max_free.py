"""Nothing but the absolute information depends on the arbitrary bound ``sigma_max``: the same model analysed
by two estimators that differ only in ``sigma_max`` gives the same findings and summaries."""

from __future__ import annotations

from typing import Any

import torch

from examples.sweep_report import rule_names
from lightning_infoflow import InfoFlowEstimator, InfoFlowResult
from lightning_infoflow.analysis.finding import Finding
from lightning_infoflow.analysis.guidance import collapsed_layers, information_phases, noisy_word_use, not_learning
from lightning_infoflow.testing import GRUStack, random_ids

TOKENS = [["the", "film", "is", "a", "charming", "journey"], ["it", "was", "dull", "and", "slow", "too"],
          ["a", "bird", "has", "more", "than", "charm"]]


def _snapshots() -> list[GRUStack]:
    """Three "training steps" of one model: the weights drift, the last step shrinks the second layer."""
    torch.manual_seed(0)
    base = GRUStack(layers=2)
    models = []
    for k in range(3):
        model = GRUStack(layers=2)
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * k * torch.randn_like(p))
            if k == 2:
                model.grus[1].weight_ih_l0.mul_(0.3)
        models.append(model)
    return models


def _analyses(sigma_max: float) -> list[InfoFlowResult]:
    ids = random_ids(3, 6, generator=torch.Generator().manual_seed(1))
    return [InfoFlowEstimator(m, layers="grus.*", sigma_max=sigma_max, steps=20, seed=0).estimate(ids, tokens=TOKENS)
            for m in _snapshots()]


def _findings(results: list[InfoFlowResult]) -> list[Finding]:
    """Every rule, with bars set so that each of them fires on these analyses."""
    steps = [0, 10, 20]
    info = torch.stack([r.layer_information for r in results])
    se = torch.stack([r.noise_se for r in results])
    last = results[-1]
    return [
        *noisy_word_use(last, min_gap=10.0, layers="all"),
        *information_phases(steps, info, last.layer_names, se=se),
        *collapsed_layers(last, threshold=1.1),
        *not_learning(list(zip(steps, [0.7, 0.7, 0.7]))),  # reads the losses alone, never the information
    ]


def _comparable(f: Finding) -> dict[str, Any]:
    return {"rule": f.rule, "severity": f.severity, "message": f.message, "measured": f.relative_measured(),
            "threshold": f.threshold, "suggestion": f.suggestion, "run": f.run, "layer": f.layer, "step": f.step,
            "extra": f.extra}


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_changing_sigma_max_changes_only_the_absolute_information() -> None:
    small, large = _analyses(60.0), _analyses(600.0)
    for a, b in zip(small, large):
        assert not a.at_bound.any() and not b.at_bound.any()  # the bound is never reached: it is arbitrary
        torch.testing.assert_close(a.sigma, b.sigma, rtol=1e-6, atol=0)
        gap = b.layer_information - a.layer_information  # the offset K log(600 / 60), nothing else
        torch.testing.assert_close(gap, torch.full_like(gap, a.embedding_dim * torch.log(torch.tensor(10.0)).item()))
        for summary in ("effective_words", "layer_log_sigma", "layer_information_se", "noise_se", "state_spread"):
            torch.testing.assert_close(getattr(a, summary), getattr(b, summary), rtol=1e-4, atol=1e-5, msg=summary)
        widths = [hi - lo for lo, hi in (a.layer_information_interval(), b.layer_information_interval())]
        torch.testing.assert_close(widths[0], widths[1], rtol=1e-4, atol=1e-4)
    found_small, found_large = _findings(small), _findings(large)
    assert {f.rule for f in found_small} == set(rule_names())  # every rule of the guidance module
    assert [_rounded(_comparable(f)) for f in found_small] == [_rounded(_comparable(f)) for f in found_large]
    # the absolute values shown for orientation do move (so the comparison above had something to ignore)
    assert any(f.measured != g.measured for f, g in zip(found_small, found_large))
