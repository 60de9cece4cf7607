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

    _check_reanalyse(runs, records)

    summary = sweep.main(["report", "--runs", runs, "--out", doc])
    assert summary["namespace"] == "reanalysed"  # the default once every run is re-analysed
    with open(doc) as f:
        text = f.read()
    for rule in sweep_report.rule_names():
        assert f"`{rule}`" in text
    assert "`collapsed_layer`" in text
    assert "(a) last layer's mean information per word at ~20%" in text
    assert "judging the result files of the namespace `reanalysed`" in text
    measures = summary["sweeps"]["transformer_wd"]["measures"]
    assert all(0.0 <= m["spread_final"] <= 1.0 for m in measures.values())
    assert all(0.0 <= m["state_spread_final"] <= 1.0 for m in measures.values())
    assert summary["reanalysis"] and summary["reanalysis"][0]["analyses"] == 12
    callback_own = sweep.main(["report", "--runs", runs, "--out", doc, "--namespace", "infoflow"])
    assert callback_own["namespace"] == "infoflow"
    with open(done) as f:
        assert json.load(f)["hparams"]["weight_decay"] == 0.0


def _check_reanalyse(runs, records):
    """``reanalyse`` reproduces the callback's analyses from the checkpoints, with the new fields, and resumes."""
    from examples import sweep, sweep_reanalyse, sweep_report
    from lightning_infoflow import InfoFlowResult

    def results(run_dir, namespace):
        folder = os.path.join(run_dir, "logs", "version_0", namespace, "results")
        return {int(f[5:13]): InfoFlowResult.load(os.path.join(folder, f)) for f in sorted(os.listdir(folder))}

    assert sweep_report.default_namespace(runs) == "infoflow"  # nothing re-analysed yet
    summaries = sweep.main(["reanalyse", "--runs", runs])
    assert [s["analysed"] for s in summaries] == [6, 6]
    for r in records:
        run_dir = os.path.join(runs, "transformer_wd", f"transformer_wd{r['value']:g}_seed0")
        trained, again = results(run_dir, "infoflow"), results(run_dir, "reanalysed")
        assert sorted(again) == r["checkpoint_steps"]
        run_id = next(iter(trained.values())).meta["run_id"]
        for step, result in again.items():
            assert result.meta["name"] == "reanalysed" and result.meta["step"] == step
            assert result.meta["run_id"] == run_id
            assert result.meta["warm_start"] == (step != 0)  # cold at the first checkpoint, warm after it
            assert bool(torch.isfinite(result.state_spread).all()) and bool(torch.isfinite(result.noise_se).all())
            # the same weights, probe, settings and warm-start chain as the callback: the same sigma
            assert torch.allclose(result.sigma, trained[step].sigma, rtol=1e-4, atol=1e-5, equal_nan=True)

    run_dir = os.path.join(runs, "transformer_wd", "transformer_wd0.1_seed0")
    before = results(run_dir, "reanalysed")
    kept = os.path.join(run_dir, "logs", "version_0", "reanalysed", "results", "step_00000010.pt")
    stamp = os.path.getmtime(kept)
    os.remove(kept.replace("step_00000010", "step_00000020"))  # an interrupted re-analysis
    assert sweep_report.default_namespace(runs) == "infoflow"  # incomplete: the callback's own results
    analysed = {s["run"]: s["analysed"] for s in sweep.main(["reanalyse", "--runs", runs])}
    assert analysed == {"transformer_wd0_seed0": 0, "transformer_wd0.1_seed0": 1}
    assert os.path.getmtime(kept) == stamp  # what exists is not analysed again
    resumed = results(run_dir, "reanalysed")[20]
    assert torch.equal(resumed.sigma.nan_to_num(), before[20].sigma.nan_to_num())  # warm from the file read back
    assert sweep_reanalyse.timings(runs)[-1]["analyses"] == 1
