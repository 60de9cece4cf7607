"""The regularisation sweep example (examples/sweep.py): its statistics, and a tiny sweep end to end."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples import sweep_stats  # noqa: E402


def test_spearman_matches_the_textbook_value_with_ties():
    # ranks x: 1, 2.5, 2.5, 4, 5; y: 2, 1, 4, 3, 5 -> Pearson of the ranks
    x, y = [1.0, 2.0, 2.0, 3.0, 4.0], [20.0, 10.0, 40.0, 30.0, 50.0]
    rx = torch.tensor([1.0, 2.5, 2.5, 4.0, 5.0], dtype=torch.float64)
    ry = torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0], dtype=torch.float64)
    a, b = rx - rx.mean(), ry - ry.mean()
    expected = float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))
    assert sweep_stats.spearman(x, y) == pytest.approx(expected, abs=1e-12)
    assert sweep_stats.spearman(x, [-v for v in y]) == pytest.approx(-expected, abs=1e-12)
    assert math.isnan(sweep_stats.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # constant: undefined
    assert math.isnan(sweep_stats.spearman([1.0, 2.0, float("nan")], [1.0, 2.0, 3.0]))


def test_exact_permutation_p_of_a_perfect_ranking():
    # of the 24 orderings of 4 runs, only the identity and its reverse reach |rho| = 1
    assert sweep_stats.permutation_p([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(2 / 24)
    assert sweep_stats.permutation_p([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]) == pytest.approx(2 / 720)


def test_state_spread_separates_a_collapsed_layer():
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 5, dtype=torch.bool)
    varied = torch.randn(3, 5, 8, generator=g)
    collapsed = 4.0 + 1e-3 * torch.randn(3, 5, 8, generator=g)  # every word: the same state
    assert sweep_stats.state_spread(varied, mask) > 0.8
    assert sweep_stats.state_spread(collapsed, mask) < 1e-6
    mask[:, 3:] = False  # padding is left out
    padded = varied.clone()
    padded[:, 3:] = 1e6
    assert sweep_stats.state_spread(padded, mask) == pytest.approx(sweep_stats.state_spread(varied[:, :3], mask[:, :3]))


@pytest.mark.parametrize(("suggestion", "direction"), [
    ("lower weight_decay (now 0.1; run b uses 0.0), the regularisation in which this run differs", "lower"),
    ("lower model_kwargs/dropout (now 0.5; run b uses 0.0)", "lower"),
    ("the layer discards input it has not learned to do without: lower the learning rate or the regularisation, "
     "or resume from the checkpoint of step 100", "lower"),
    ("train longer, add data, or raise the regularisation (weight decay, dropout) a little", "raise"),
    ("normal for layers that start with more than they need; if the loss is flat too, try a larger learning rate "
     "or less regularisation", "lower"),
    ("this run has no regularisation to lower (weight_decay=0.0); train longer, or give the model more capacity",
     "none"),
    ("no compression yet: train longer before judging how much the layer keeps", "none"),
    ("increase the weight decay, or lower dropout", "mixed"),
])
def test_advice_direction_reads_each_suggestion(suggestion, direction):
    assert sweep_stats.advice_direction(suggestion) == direction


def test_a_structured_direction_wins_over_the_words():
    assert sweep_stats.advice_direction("raise the regularisation", {"direction": "lower"}) == "lower"


@pytest.mark.integration
def test_tiny_sweep_runs_resumes_and_reports(tmp_path):
    from examples import sweep, sweep_report

    runs, doc = str(tmp_path / "runs"), str(tmp_path / "report.md")
    argv = ["run", "--out", runs, "--sweeps", "transformer_wd", "--wd-values", "0", "0.1", "--seeds", "0",
            "--max-steps", "20", "--tiny", "--train-size", "256", "--dev-size", "32"]
    records = sweep.main(argv)
    assert [r["value"] for r in records] == [0.0, 0.1]
    for r in records:
        run_dir = os.path.join(runs, "transformer_wd", f"transformer_wd{r['value']:g}_seed0")
        assert r["early_step"] == 4 and r["final_val_step"] == 20 and 0.0 <= r["final_val_acc"] <= 1.0
        assert math.isfinite(r["early_val_loss"]) and math.isfinite(r["early_train_loss"])
        assert r["analysis_steps"] == [0, 1, 2, 5, 10, 20]  # the default schedule, cut at 20 steps
        assert r["checkpoint_steps"] == r["analysis_steps"]  # a state_dict at every analysis
        results = os.listdir(os.path.join(run_dir, "logs", "version_0", "infoflow", "results"))
        assert len(results) == len(r["analysis_steps"])
        state = torch.load(os.path.join(run_dir, "checkpoints", "step_20.pt"), weights_only=True)
        assert "model.embedding.weight" in state

    done = os.path.join(runs, "transformer_wd", "transformer_wd0_seed0", "record.json")
    stamp = os.path.getmtime(done)
    assert sweep.main(argv) == records  # finished runs are skipped, their records read back
    assert os.path.getmtime(done) == stamp

    summary = sweep.main(["report", "--runs", runs, "--out", doc])
    with open(doc) as f:
        text = f.read()
    for rule in sweep_report.rule_names():
        assert f"`{rule}`" in text
    assert "(a) last layer's mean information per word at ~20%" in text
    measures = summary["sweeps"]["transformer_wd"]["measures"]
    assert all(0.0 <= m["spread_final"] <= 1.0 for m in measures.values())
    with open(done) as f:
        assert json.load(f)["hparams"]["weight_decay"] == 0.0
