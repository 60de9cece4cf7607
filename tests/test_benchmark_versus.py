"""The side-by-side benchmark against the authors' loop (benchmarks/versus_authors.py): its core functions on a
tiny BERT, the matched normalisation, and the ratio and equal-quality selection on hand-made numbers."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import baseline_loop  # noqa: E402
import versus_authors as V  # noqa: E402
import versus_report as R  # noqa: E402

from lightning_infoflow.core import hidden  # noqa: E402
from lightning_infoflow.testing import tiny_bert  # noqa: E402


def _batch(lengths: list[int], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(1, 50, (n,), generator=gen)
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


@pytest.fixture(scope="module")
def probe() -> V.Probe:
    torch.manual_seed(0)
    model = tiny_bert(layers=2, hidden=32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return V.make_probe(model, _batch([7, 5], 1), _batch([7, 5, 9, 6], 2), ["encoder.layer.0", "encoder.layer.1"],
                        "embeddings", "sentences", rate=0.1)


def test_probe_matches_the_objectives(probe: V.Probe) -> None:
    assert probe.lam == pytest.approx(0.1)  # rate * H / K with H == K == 32
    assert probe.sigma_max == pytest.approx(10 * float(probe.model.get_input_embeddings().weight.std()))
    # the baseline's "sentences" reg is the package's sentence normalisation on the same sample sentences
    regs = baseline_loop.layer_regs(probe.model, probe.reference, probe.layers, "sentences")
    with torch.no_grad():
        states = probe.model(**probe.reference, output_hidden_states=True).hidden_states
    mask = probe.reference["attention_mask"].bool()
    for i, name in enumerate(probe.layers):
        ours = hidden.sentence_inv_std(states[i + 1], mask, True)
        torch.testing.assert_close(regs[name], 1 / ours, rtol=1e-5, atol=0)
        tokens = hidden.unit_inv_std(states[i + 1], mask, True)
        assert not torch.allclose(regs[name], 1 / tokens, rtol=1e-2)  # a different normalisation differs


def test_measure_interleaves_and_returns_every_run(probe: V.Probe) -> None:
    settings = {"steps=2": V.parse_setting("steps=2,samples=2"),
                "default": V.Setting("auto", 0.2, 2, max_steps=20)}
    logged: list[str] = []
    raw = V.measure(probe, settings, authors_steps=6, checkpoints=[3], log=logged.append)
    order = [line.split(": ")[1] for line in logged]
    assert order[:4] == ["authors 0", "ours steps=2", "ours default", "authors 1"]
    assert order[4:] == ["authors 1", "ours default", "ours steps=2", "authors 0"]  # reversed on sentence 1
    mask = probe.batch["attention_mask"].bool()
    for run in [*raw["authors"], *raw["ours"].values()]:
        assert run["sigma"].shape == (2, *mask.shape)
        assert torch.isfinite(run["sigma"][:, mask]).all() and torch.isnan(run["sigma"][:, ~mask]).all()
        assert run["cpu_s"] > 0
    assert raw["ours"]["steps=2"]["steps_run"] == [2, 2]
    a = raw["authors"][0]
    assert sorted(a["snapshots"]) == [3, 6]
    torch.testing.assert_close(a["snapshots"][6]["sigma"], a["sigma"], equal_nan=True)
    assert 0 < a["snapshots"][3]["cpu_s"] <= a["snapshots"][6]["cpu_s"]
    assert not torch.equal(raw["authors"][0]["sigma"][:, mask], raw["authors"][1]["sigma"][:, mask])
    raw["reference"] = V.reference_run(probe, steps=4, samples=2, seeds=[101, 102])
    raw["mask"] = mask
    raw["scope"] = V.scope(probe, 2, 6, 1, "tiny")
    summary = R.summarise(raw, "default")
    assert set(summary["ours"]) == {"steps=2", "default"}
    assert summary["authors"]["spread"]["median"] > 0
    assert summary["verdicts"]["default"] == "default"
    table = R.markdown(summary)
    assert "first 2 of the 32 probe sentences" in table and "| ours, default |" in table


def test_parse_setting() -> None:
    d = V.estimator_defaults()
    assert V.parse_setting("default") == d
    assert V.parse_setting("target=0.05") == V.Setting("auto", 0.05, d.samples, d.max_steps)
    assert V.parse_setting("steps=10,samples=8") == V.Setting(10, d.target_error, 8, d.max_steps)
    with pytest.raises(ValueError, match="unknown setting 'tol=0'"):
        V.parse_setting("tol=0")


def test_cheapest_and_ratios_on_hand_made_numbers() -> None:
    ones = torch.ones(1, 1, 4)
    mask = torch.ones(1, 4, dtype=torch.bool)

    def run(value: float, cpu: float) -> dict:
        return {"setting": {}, "sigma": ones * value, "cpu_s": cpu, "wall_s": cpu, "steps_run": [1], "stopped": ["x"]}

    authors = [dict(seed=s, sigma=ones * v, cpu_s=c, wall_s=c, snapshots={}) for s, v, c in ((0, 1.1, 100.0),
                                                                                               (1, 1.0, 200.0))]
    raw = {"authors": authors, "reference": {"sigma": ones, "steps": 1, "samples": 1, "seeds": [1], "cpu_s": 1.0,
                                             "seed_spread": None},
           "ours": {"cheap": run(1.08, 1.0), "default": run(1.03, 2.0), "fine": run(1.01, 5.0), "bad": run(2.0, 0.5)},
           "mask": mask, "scope": {"sentences": 2, "lengths": [3, 1], "words_32": 40, "sentences_32": 32}}
    s = R.summarise(raw, "default")
    assert s["authors"]["cpu_s"] == 150.0
    assert s["authors"]["spread"]["median"] == pytest.approx(0.1)  # |1.1 - 1.0| / 1.0
    assert s["authors"]["error"] == pytest.approx(0.05)  # mean of 0.1 and 0
    v = s["verdicts"]
    assert v["default_ratio"] == 75.0
    spread = v["bars"]["authors' seed-to-seed spread"]
    assert (spread["cheapest"], spread["ratio"], spread["default_over_cheapest"]) == ("cheap", 150.0, 2.0)
    strict = v["bars"]["stricter of spread and authors' error"]
    assert strict["bar"] == pytest.approx(0.05)
    assert (strict["cheapest"], strict["ratio"], strict["default_over_cheapest"]) == ("default", 75.0, 1.0)
    assert R.cheapest_within(s["ours"], 0.005) is None
    x = s["extrapolated_32"]  # 32 / 2 sentences, 40 / 4 words
    assert x["factors"] == {"sentences": 16.0, "words": 10.0}
    assert x["authors_cpu_s"] == {"sentences": 2400.0, "words": 1500.0}
    assert x["default_cpu_s"] == {"sentences": 32.0, "words": 20.0}
    assert R.extrapolation(dict(raw["scope"], sentences=32), 1.0, 1.0) is None
    assert R.rel_errors(ones * 1.2, ones, mask)["rms"] == pytest.approx(0.2)
    assert R.rel_errors(ones * math.nan, ones, mask)["median"] == math.inf
