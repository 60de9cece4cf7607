"""Error bars where users read the numbers: bands around the curves (PNG, TensorBoard and W&B images, the
report), ``value ± se`` in the report's tables, the callback's history of standard errors (checkpointed),
and the guidance the callback sends to the dashboards at the end of training."""

from __future__ import annotations

import os

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from lightning.pytorch.loggers import CSVLogger
from lit_helpers import TinyClassifier, loaders, probe_ids
from rich.console import Console

from lightning_infoflow import EstimatorConfig, InfoFlowCallback, InfoFlowResult
from lightning_infoflow.cli import main
from lightning_infoflow.lightning import sinks
from lightning_infoflow.lightning.hooks import HookOutput
from lightning_infoflow.lightning.publish import Publisher
from lightning_infoflow.lightning.state import RunState
from lightning_infoflow.reporting import figures
from lightning_infoflow.reporting.console import render
from lightning_infoflow.reporting.findings import history_findings, run_findings
from lightning_infoflow.reporting.markdown import findings_markdown
from lightning_infoflow.reporting.runs import load_run
from lightning_infoflow.reporting.tables import PLUS_MINUS, Estimate, compare_tables, definitions, layer_table

Z90 = 1.6449


def _result(info: torch.Tensor, step: int, embedding_dim: int = 1) -> InfoFlowResult:
    """A result whose layers keep ``info`` ``[L, B, T]`` nats of each word (sigma_max 10)."""
    sigma = 10.0 * torch.exp(-info / embedding_dim)
    tokens = [[f"w{b}{t}" for t in range(info.shape[2])] for b in range(info.shape[1])]
    return InfoFlowResult([f"enc.{i}" for i in range(info.shape[0])], sigma,
                          torch.ones(info.shape[1:], dtype=torch.bool), 10.0, embedding_dim, tokens=tokens,
                          meta={"step": step, "name": "infoflow", "run_id": "r"})


def _varied(step: int, seed: int = 0) -> InfoFlowResult:
    """Two layers, 6 sentences of 5 words whose information differs between sentences (so the SE is > 0)."""
    gen = torch.Generator().manual_seed(seed + step)
    return _result(1.0 + step / 10 + torch.rand(2, 6, 5, generator=gen), step)


def _save(result: InfoFlowResult, log_dir, step: int) -> None:
    """The result where the callback writes it: ``log_dir/infoflow/results/step_XXXXXXXX.pt``."""
    folder = os.path.join(str(log_dir), "infoflow", "results")
    os.makedirs(folder, exist_ok=True)
    result.save(os.path.join(folder, f"step_{step:08d}.pt"))


def _bands(fig) -> list[np.ndarray]:
    """The vertices of every shaded band of the figure's first axes."""
    return [np.asarray(c.get_paths()[0].vertices) for c in fig.axes[0].collections]


# --------------------------------------------------------------------------- bands in the curves


def test_curves_draw_a_90_percent_band_only_when_given_the_standard_error():
    info = torch.tensor([[10.0, 5.0], [12.0, 4.0], [11.0, 4.5]])
    se = torch.tensor([[0.5, 0.1], [1.0, 0.2], [0.5, 0.1]])
    assert _bands(figures.information_curves([0, 5, 10], info, ["l0", "l1"])) == []
    bands = _bands(figures.information_curves([0, 5, 10], info, ["l0", "l1"], se=se))
    assert len(bands) == 2  # one per layer
    for i, vertices in enumerate(bands):
        at_step5 = sorted(vertices[np.isclose(vertices[:, 0], 5.0), 1])
        low, high = float(info[1, i] - Z90 * se[1, i]), float(info[1, i] + Z90 * se[1, i])
        assert at_step5[0] == pytest.approx(low, rel=1e-4) and at_step5[-1] == pytest.approx(high, rel=1e-4)


def test_the_callback_curves_figure_has_bands_from_the_history_of_standard_errors(tmp_path):
    state = RunState()
    for step in (0, 10, 20):
        state.record(_varied(step), step, trainer=_NoTrainer())
    curves = state.curves()
    assert curves.se.shape == curves.information.shape == (3, 2)
    assert torch.allclose(curves.se[-1], _varied(20).layer_information_se)
    publisher = Publisher("infoflow", heatmaps=1)
    out = publisher.figures(state.previous, curves, HookOutput())  # type: ignore[arg-type]
    fig, caption = out["infoflow/curves"]
    assert len(_bands(fig)) == 2 and "90% interval" in caption


class _NoTrainer:
    """Just enough of a Trainer for ``RunState.record`` (no logged loss)."""

    callback_metrics: dict = {}


def test_run_state_checkpoints_the_standard_errors_and_loads_older_checkpoints():
    state = RunState()
    state.layer_names = ["enc.0", "enc.1"]
    for step in (0, 10):
        state.record(_varied(step), step, trainer=_NoTrainer())
    saved = state.state_dict()
    assert saved["information_se"].shape == (2, 2)
    loaded = RunState()
    loaded.load_state_dict(saved)
    assert torch.equal(loaded.curves().se, state.curves().se)
    del saved["information_se"]  # a checkpoint written before the field
    old = RunState()
    old.load_state_dict(saved)
    assert len(old.information_se) == 2 and torch.isnan(old.curves().se).all()
    old.record(_varied(20), 20, trainer=_NoTrainer())  # and it goes on recording
    assert old.curves().se.shape == (3, 2) and torch.isfinite(old.curves().se[-1]).all()


def test_report_curves_have_bands(tmp_path):
    log_dir = tmp_path / "run" / "version_0"
    for step in (0, 10, 20):
        _save(_varied(step), log_dir, step)
    run = load_run(str(log_dir))
    se = run.history("layer_information_se")
    assert se.shape == (3, 2) and (se > 0).all()
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["report", str(log_dir), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "the band is its 90% interval" in (out / "report.html").read_text()


# --------------------------------------------------------------------------- ± in the tables


def test_layer_table_shows_information_plus_minus_its_standard_error(tmp_path):
    log_dir = tmp_path / "run" / "version_0"
    for step in (0, 10):
        _save(_varied(step), log_dir, step)
    run = load_run(str(log_dir))
    table = layer_table(run)
    estimate = table.rows[1][1]
    assert isinstance(estimate, Estimate)
    assert estimate.value == pytest.approx(float(run.last.layer_information[1]))
    assert estimate.se == pytest.approx(float(run.last.layer_information_se[1])) and estimate.se > 0
    console = Console(width=200, record=True, force_terminal=False)
    console.print(render(table))
    assert f"{estimate.value:.4g} ± {estimate.se:.2g}" in console.export_text()
    assert PLUS_MINUS in dict(definitions([table]))
    assert "bootstrap over the probe sentences" in dict(definitions([table]))[PLUS_MINUS]
    # the HTML report renders the same cells
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["report", str(log_dir), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"<td>{estimate.value:.4g} ± {estimate.se:.2g}</td>" in (out / "report.html").read_text()


def test_compare_tables_show_plus_minus(tmp_path):
    runs = []
    for seed, name in ((0, "a"), (1, "b")):
        log_dir = tmp_path / name / "version_0"
        _save(_varied(0, seed), log_dir, 0)
        runs.append(load_run(str(log_dir), name))
    runs_table, per_layer = compare_tables(runs)
    assert isinstance(runs_table.rows[0][runs_table.header.index("information (nats/word)")], Estimate)
    cell = per_layer.rows[0][2]
    assert isinstance(cell, Estimate) and cell.se == pytest.approx(float(runs[1].last.layer_information_se[0]))
    assert PLUS_MINUS in dict(definitions([runs_table, per_layer]))
    assert PLUS_MINUS not in dict(definitions([per_layer.__class__("t", ["layer"], [["x"]])]))


# --------------------------------------------------------------------------- guidance for the dashboards


def _flat_state() -> RunState:
    """Three analyses of a run whose training loss stays at 0.69 (and that logged no validation loss)."""
    state = RunState()
    for step, level in ((0, 40.0), (50, 39.0), (100, 38.0)):
        info = torch.stack([torch.full((4, 5), 45.0), torch.full((4, 5), level)])
        info = info + 0.01 * torch.arange(5.0)  # a little structure across words
        state.record(_result(info, step, embedding_dim=8), step, trainer=_NoTrainer())
        state.losses[-1] = 0.69
    state.layer_names = ["enc.0", "enc.1"]
    return state


def test_callback_findings_are_the_report_rules_over_its_history(tmp_path):
    state = _flat_state()
    found = state.findings({"weight_decay": 0.1})
    (flat,) = [f for f in found if f.rule == "not_learning"]
    assert flat.extra["loss"] == "training loss" and flat.measured["improvement"] == 0.0
    assert "weight_decay=0.1" in flat.suggestion
    # the same rules as the report on the saved run (one function, history_findings)
    direct = history_findings(state.steps, torch.stack(state.history), torch.stack(state.noise_se), state.losses,
                              state.previous, val_losses=state.val_losses, hparams={"weight_decay": 0.1})
    assert [f.to_dict() for f in found] == [f.to_dict() for f in direct]
    markdown = findings_markdown(found, "infoflow: guidance at step 100 (3 analyses)")
    assert markdown.startswith("### infoflow: guidance at step 100 (3 analyses)")
    assert "\n- **not_learning**: " in markdown and "*Try*: " in markdown
    assert RunState().findings() == []  # nothing before the first analysis
    state.previous = None  # a failed analysis clears the warm start: the rules still read the last result
    assert [f.to_dict() for f in state.findings({"weight_decay": 0.1})] == [f.to_dict() for f in found]


def test_callback_findings_judge_the_validation_loss_it_kept_up_to_the_last_analysis():
    state = _flat_state()  # the training loss is flat
    state.val_losses = [(49, 0.70), (99, 0.60)]  # the validation loss improved: the run learned
    assert not any(f.rule == "not_learning" for f in state.findings())
    state.val_losses = [(49, 0.70), (99, 0.70), (149, 0.40)]  # flat up to the last analysis (step 100)
    (flat,) = [f for f in state.findings() if f.rule == "not_learning"]
    assert flat.extra["loss"] == "validation loss" and flat.measured["last_step"] == 99.0
    loaded = RunState()
    loaded.load_state_dict(state.state_dict())  # checkpointed with the run
    assert loaded.val_losses == state.val_losses


def test_run_findings_still_reads_a_saved_run(tmp_path):
    log_dir = tmp_path / "run" / "version_0"
    for step in (0, 10, 20):
        _save(_varied(step), log_dir, step)
    run = load_run(str(log_dir))
    found = run_findings(run)
    assert [f.to_dict() for f in found] == [f.to_dict() for f in history_findings(
        run.steps, run.aligned_history(), run.aligned_history("noise_se"), run.loss_history(), run.last,
        val_losses=run.val_losses(), hparams=run.hparams)]
    assert any(f.rule == "information_phases" for f in found)


def test_findings_reach_a_csv_logger_as_markdown_and_a_failure_is_a_warning(tmp_path, monkeypatch):
    def run(name: str) -> CSVLogger:
        cb = InfoFlowCallback(probe_ids(), every_n_train_steps=3, log_spaced=False, heatmaps=0, max_overhead=None,
                              estimator=EstimatorConfig(steps=2, warm_steps=1, samples=1))
        logger = CSVLogger(str(tmp_path), name=name)
        trainer = L.Trainer(max_steps=3, logger=logger, callbacks=[cb], enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                            limit_val_batches=0)
        trainer.fit(TinyClassifier(), loaders()[0])
        assert trainer.global_step == 3 and cb.state.steps == [0, 3]
        return logger

    logger = run("ok")
    with open(os.path.join(logger.log_dir, "infoflow", "findings.md"), encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("### infoflow: guidance at step 3 (2 analyses)")

    def full_disk(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sinks, "atomic_write", full_disk)
    with pytest.warns(UserWarning, match=r"could not write the findings to CSVLogger .*No space left"):
        logger = run("full")
    assert not os.path.exists(os.path.join(logger.log_dir, "infoflow", "findings.md"))
