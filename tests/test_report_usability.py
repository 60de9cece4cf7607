"""Reports a new user reads without guessing: layers of a callback run and an `analyze` run line up, every
measure is defined, axes start at zero, one analysis draws no curves, piped tables keep their rows on one
line, a finding names its layer once, and `analyze` runs the estimator's own steps behind a progress bar."""

from __future__ import annotations

import doctest
import io
import os
import re

import pytest
import torch
from click.testing import CliRunner, Result
from lit_helpers import tiny_checkpoint
from rich.console import Console

from lightning_infoflow import InfoFlowResult
from lightning_infoflow.analysis.guidance import Finding
from lightning_infoflow.cli import main
from lightning_infoflow.core.estimator import InfoFlowEstimator
from lightning_infoflow.reporting import alignment, figures, tables
from lightning_infoflow.reporting.alignment import align_layers, droppable
from lightning_infoflow.reporting.console import print_findings
from lightning_infoflow.reporting.html import HtmlPage
from lightning_infoflow.reporting.runs import load_run

TOKENS = [["a", "fine", "film"], ["dull", "and", "slow"]]
DEEP = "model.bert.encoder.layer.{}.attention.output.dense"  # long names: a 6-column table is wider than 80


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def write_run(log_dir: str, layers: list[str], steps: tuple[int, ...] = (0, 10), level: float = 2.0) -> str:
    """A run as the callback writes it: ``layers`` keep ``level`` nats of every word, less with depth."""
    for k, step in enumerate(steps):
        info = torch.stack([torch.full((2, 3), level * (1 + k / 10) / (1 + i)) for i in range(len(layers))])
        result = InfoFlowResult(list(layers), 10.0 * torch.exp(-info), torch.ones(2, 3, dtype=torch.bool), 10.0, 1,
                                tokens=[list(t) for t in TOKENS],
                                meta={"step": step, "name": "infoflow", "run_id": "r"})
        path = os.path.join(log_dir, "infoflow", "results", f"step_{step:08d}.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        result.save(path)
    return log_dir


# --------------------------------------------------------------------------- compare: layer alignment


def test_compare_aligns_callback_and_analyze_layer_names(tmp_path):
    callback = write_run(str(tmp_path / "callback" / "version_0"), [f"model.bert.encoder.layer.{i}" for i in range(3)])
    analyzed = write_run(str(tmp_path / "analyzed" / "version_0"), [f"encoder.layer.{i}" for i in range(3)], level=1.0)
    res = invoke("compare", callback, analyzed, "--out", str(tmp_path / "cmp"), "--no-progress")
    assert res.exit_code == 0, res.output
    assert "dropped 'model.bert.': model.bert.encoder.layer.0 -> encoder.layer.0" in res.output
    rows = {line.split("│")[1].strip(): line for line in res.output.splitlines() if line.count("│") == 4}
    # one row per layer, both runs' numbers in it (no dash for a layer one run lacks)
    assert [k for k in rows if k.startswith("encoder.layer.")] == [f"encoder.layer.{i}" for i in range(3)]
    assert not any(k.startswith("model.bert") for k in rows)
    assert all("—" not in rows[f"encoder.layer.{i}"] for i in range(3))
    assert "longest common dotted suffix" in invoke("compare", "--help").output


def test_alignment_rule():
    """The prefixes a run may drop: shared by all its layer names, leaving at least the last part."""
    assert droppable(["model.bert.layer.0", "model.bert.layer.1"]) == ["", "model.", "model.bert.", "model.bert.layer."]
    assert droppable(["embeddings", "encoder.layer.0"]) == [""]
    assert droppable(["encoder.layer.5"]) == ["", "encoder.", "encoder.layer."]


@pytest.mark.parametrize("module", [alignment, tables])
def test_docstring_examples_run(module):
    failed, attempted = doctest.testmod(module)
    assert attempted > 0 and failed == 0


@pytest.mark.parametrize(("first", "second", "expected", "note"), [
    # the same names: nothing renamed, nothing noted
    (["enc.0", "enc.1"], ["enc.0", "enc.1"], (["enc.0", "enc.1"], ["enc.0", "enc.1"]), None),
    # a LightningModule's attribute path against the bare model: the longest common suffix, not `0`
    (["model.rnns.0", "model.rnns.1"], ["rnns.0", "rnns.1"], (["rnns.0", "rnns.1"], ["rnns.0", "rnns.1"]),
     "dropped 'model.'"),
    # two different models share only layer indices: no alignment
    (["model.rnns.0", "model.rnns.1"], ["encoder.layer.0", "encoder.layer.1"],
     (["model.rnns.0", "model.rnns.1"], ["encoder.layer.0", "encoder.layer.1"]), None),
    # m.z pairs with n.m.z, or m.x.y with n.x.y: as many either way, so the note says it is ambiguous
    (["m.x.y", "m.z"], ["n.m.z", "n.x.y"], (["m.x.y", "m.z"], ["m.z", "x.y"]), "pair with run a's in 2 ways"),
])
def test_align_layers(tmp_path, first, second, expected, note):
    runs = [load_run(write_run(str(tmp_path / name / "version_0"), layers), name)
            for name, layers in (("a", first), ("b", second))]
    aligned = align_layers(runs)
    assert tuple(r.layer_names for r in aligned.runs) == expected
    assert all(list(res.layer_names) == r.layer_names for r in aligned.runs for res in r.results)  # every analysis
    if note is None:
        assert aligned.notes == []
    else:
        assert any(note in n for n in aligned.notes), aligned.notes


# --------------------------------------------------------------------------- report: measures, axes, curves


def test_measures_are_defined_on_the_console_and_in_html(tmp_path):
    run = write_run(str(tmp_path / "run" / "version_0"), ["enc.0", "enc.1"])
    out = tmp_path / "report"
    res = invoke("report", run, "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "effective words: over how many words of a sentence the layer's precision is spread: exp of the entropy" \
        in text
    assert "mean entropy: the uncertainty left about a word" in text
    assert "±: after a value: its standard error, from a bootstrap over the probe sentences" in text
    page = (out / "report.html").read_text()
    for measure in ("information (nats/word)", "effective words", "mean entropy", "peak step", "±"):
        assert f"<dt>{measure}</dt>" in page


def test_axes_start_at_zero():
    """A 0.6% change stays a 0.6% change: every axis of a size starts at zero."""
    info = torch.tensor([[100.0, 50.0], [100.6, 50.2]])
    for fig in (figures.information_curves([0, 10], info, ["l0", "l1"]),
                figures.curves_by_run({"a": ([0, 10], [100.0, 100.6])}),
                figures.layers_by_run({"a": [100.0, 100.6]}, ["l0", "l1"])):
        assert fig.axes[0].get_ylim()[0] == 0.0
    result = InfoFlowResult(["l0", "l1"], torch.tensor([[[1.0, 1.01]], [[1.0, 1.02]]]),
                            torch.ones(1, 2, dtype=torch.bool),
                            10.0, 4)
    assert [ax.get_ylim()[0] for ax in figures.layer_profile(result).axes] == [0.0, 0.0]


def test_one_analysis_draws_no_curves_against_step(tmp_path):
    run = write_run(str(tmp_path / "run" / "version_0"), ["enc.0", "enc.1"], steps=(5,))
    out = tmp_path / "report"
    res = invoke("report", run, "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    assert sorted(p for p in os.listdir(out) if p.endswith(".png") and not p.startswith("heatmap_")) == [
        "layer_profile.png"]
    assert "One analysis (step 5): no curves against step" in (out / "report.html").read_text()
    other = write_run(str(tmp_path / "other" / "version_0"), ["enc.0", "enc.1"], steps=(5,))
    res = invoke("compare", run, other, "--out", str(tmp_path / "cmp"), "--no-progress")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "cmp" / "last_layer_curves.png").exists()
    assert "One analysis per run: no curves against step" in (tmp_path / "cmp" / "compare.html").read_text()


# --------------------------------------------------------------------------- console: width, findings


def test_piped_tables_keep_each_row_on_one_line(tmp_path):
    layers = [DEEP.format(i) for i in range(3)]
    run = write_run(str(tmp_path / "run" / "version_0"), layers)
    res = CliRunner().invoke(main, ["report", run, "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    rows = [line for line in lines if line.startswith("│")]
    assert {line.count("│") for line in rows} == {7}  # 6 columns, no folded continuation lines
    assert all(any(line.startswith(f"│ {name} ") for line in rows) for name in layers)  # each name whole, in its row
    assert max(map(len, lines)) > 80


def test_a_finding_names_its_layer_once():
    layer = "model.layers.3"
    named = Finding(rule="noisy_word_use", severity="warning", message=f"{layer} keeps stop words at 1.2 x ...",
                    measured={"ratio": 1.2}, threshold="t", suggestion="s", run="wd0", layer=layer)
    unnamed = Finding(rule="collapsed_layer", severity="warning", message="the layer has collapsed.",
                      measured={"state_spread": 0.001}, threshold="t", suggestion="s", layer=layer)
    buffer = io.StringIO()
    print_findings(Console(file=buffer, width=200), [named, unnamed])
    text = buffer.getvalue()
    assert "! noisy_word_use (wd0): model.layers.3 keeps stop words" in text
    assert "! collapsed_layer (model.layers.3): the layer has collapsed" in text
    assert text.count(layer) == 2
    page = HtmlPage("t", "/tmp/unused-infoflow-page")
    page.findings([named, unnamed])
    items = re.findall(r"<li class=\"warning\">(.*?)</li>", page.render(), flags=re.DOTALL)
    assert [item.count(layer) for item in items] == [1, 1]


# --------------------------------------------------------------------------- analyze: steps and progress


def ids_tokenizer():
    """A tokenizer factory for `analyze --tokenizer test_report_usability:ids_tokenizer`: words are token ids."""
    return lambda texts: [[int(w) for w in t.split()] for t in texts]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"))


def analyze(ckpt: str, tmp_path, out: str, *extra: str) -> Result:
    probe = tmp_path / "probe.txt"
    probe.write_text("1 2 3\n4 5 6\n")
    return invoke("analyze", "--module", "lit_helpers:TinyClassifier", "--ckpt", ckpt, "--probe", str(probe),
                  "--tokenizer", "test_report_usability:ids_tokenizer", "--out", str(tmp_path / out),
                  "--samples", "1", "--layers", "model.rnns.*", *extra)


def test_analyze_follows_the_estimators_default_steps(ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(InfoFlowEstimator.__init__.__kwdefaults__, "steps", 3)
    res = analyze(ckpt, tmp_path, "a", "--no-progress")
    assert res.exit_code == 0, res.output
    data = torch.load(tmp_path / "a" / "infoflow" / "results" / "step_00000001.pt", weights_only=True)
    assert data["meta"]["steps"] == 3 and data["meta"]["steps_run"] == 3


def test_analyze_takes_auto_steps_and_a_target(ckpt, tmp_path):
    res = analyze(ckpt, tmp_path, "auto", "--no-progress", "--steps", "auto", "--target-error", "0.2")
    assert res.exit_code == 0, res.output
    meta = torch.load(tmp_path / "auto" / "infoflow" / "results" / "step_00000001.pt", weights_only=True)["meta"]
    assert meta["steps"] == "auto" and meta["target_error"] == 0.2 and meta["stopped"] in ("target", "max_steps")
    assert max(meta["error"]) <= 0.2 or meta["stopped"] == "max_steps"
    res = analyze(ckpt, tmp_path, "bad", "--steps", "many")
    assert res.exit_code == 2 and "'many' is neither 'auto' nor a non-negative int" in res.output


def test_analyze_progress_bar_on_a_terminal_only(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich takes stderr for a terminal
    res = analyze(ckpt, tmp_path, "tty", "--steps", "4")
    assert res.exit_code == 0, res.output
    assert "estimating 2 layers x 2 sentences" in res.stderr and "4/4" in res.stderr
    res = analyze(ckpt, tmp_path, "quiet", "--steps", "4", "--quiet")
    assert res.exit_code == 0 and res.stderr == ""
    assert res.stdout.strip() == os.path.join(str(tmp_path / "quiet"), "infoflow", "results", "step_00000001.pt")
    monkeypatch.delenv("TTY_COMPATIBLE")
    res = analyze(ckpt, tmp_path, "piped", "--steps", "4")
    assert res.exit_code == 0 and res.stderr == ""


def test_curves_against_step_show_no_negative_steps():
    steps = [0, 1, 2, 5, 10, 20, 50, 100, 200, 400, 600]
    fig = figures.information_curves(steps, torch.rand(len(steps), 2) + 1, ["a", "b"])
    left, right = fig.axes[0].get_xlim()
    assert fig.axes[0].get_xscale() == "symlog" and left == 0 and right >= 600
