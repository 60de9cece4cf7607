"""Reports never lose, mix or double results: runs on disk as a hostile user (or a resumed run) leaves them.

Each case writes the folder layout the callback writes (``<log_dir>/<name>/results/step_%08d.pt`` with
``meta`` holding ``name``, ``step`` and ``run_id``) by hand, so the cases are exact and fast.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner, Result
from lit_helpers import tiny_checkpoint

from lightning_infoflow import InfoFlowResult
from lightning_infoflow.cli import main
from lightning_infoflow.reporting.logs import read_scalars
from lightning_infoflow.reporting.runs import find_runs, load_run

TOKENS = [["a", "fine", "film"], ["dull", "and", "slow"]]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--no-progress"])


def flat(result: Result) -> str:
    return " ".join(result.output.split())


def ids_tokenizer():
    """A tokenizer factory for `analyze --tokenizer test_faults_report:ids_tokenizer`: words are token ids."""
    return lambda texts: [[int(w) for w in t.split()] for t in texts]


def result(step: int, level: float, run_id: str | None = "run-a", name: str = "infoflow") -> InfoFlowResult:
    """Two layers, two 3-word sentences; the first layer keeps ``level`` nats of every word, the second half."""
    info = torch.stack([torch.full((2, 3), level), torch.full((2, 3), level / 2)])
    meta = {"step": step, "name": name, **({"run_id": run_id} if run_id is not None else {})}
    return InfoFlowResult(["enc.0", "enc.1"], 10.0 * torch.exp(-info), torch.ones(2, 3, dtype=torch.bool), 10.0, 1,
                          tokens=[list(t) for t in TOKENS], meta=meta)


def save(log_dir: str, step: int, level: float, run_id: str | None = "run-a", name: str = "infoflow") -> str:
    path = os.path.join(log_dir, name, "results", f"step_{step:08d}.pt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    result(step, level, run_id, name).save(path)
    return path


def write_metrics(log_dir: str, rows: list[tuple[int, float]]) -> None:
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "train_loss"])
        writer.writerows([0, step, value] for step, value in rows)


# --------------------------------------------------------------------------- analyze --out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A checkpoint of the tiny classifier after one optimizer step (global_step 1)."""
    return tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"))


def analyze(ckpt: str, probe: str, out: str, *extra: str) -> Result:
    return invoke("analyze", "--module", "lit_helpers:TinyClassifier", "--ckpt", ckpt, "--probe", probe,
                  "--tokenizer", "test_faults_report:ids_tokenizer", "--out", out, "--steps", "1", "--samples", "1",
                  "--layers", "model.rnns.*", *extra)


def test_analyze_refuses_a_folder_that_holds_a_run_unless_forced(ckpt, tmp_path):
    probe = tmp_path / "probe.txt"
    probe.write_text("3 14 15 9 26\n5 35 8 9 7\n")
    out = tmp_path / "run"
    old = save(str(out), 1, 3.0, run_id="kept-id")  # the step the checkpoint will be filed under
    other = save(str(out), 0, 2.0, run_id="kept-id")
    (out / "hparams.yaml").write_text("lr: 0.5\n")
    before = Path(old).read_bytes()

    res = analyze(ckpt, str(probe), str(out))
    assert res.exit_code == 2, res.output
    assert "already holds a run" in flat(res) and "--force" in flat(res) and "new --out folder" in flat(res)
    assert Path(old).read_bytes() == before and (out / "hparams.yaml").read_text() == "lr: 0.5\n"

    res = analyze(ckpt, str(probe), str(out), "--force")
    assert res.exit_code == 0, res.output
    data = torch.load(old, weights_only=True)
    assert data["layer_names"] == ["model.rnns.0", "model.rnns.1"]  # replaced on purpose
    assert data["meta"]["run_id"] == "kept-id" and data["meta"]["name"] == "infoflow" and data["meta"]["step"] == 1
    assert yaml.safe_load((out / "hparams.yaml").read_text())["dropout"] == 0.0
    assert os.path.exists(other)  # other steps stay

    fresh = tmp_path / "fresh"
    fresh.mkdir()  # an existing but empty folder is not a run
    res = analyze(ckpt, str(probe), str(fresh), "--name", "probe_b")
    assert res.exit_code == 0, res.output
    meta = torch.load(fresh / "probe_b" / "results" / "step_00000001.pt", weights_only=True)["meta"]
    assert meta["name"] == "probe_b" and meta["step"] == 1 and meta["run_id"]


# --------------------------------------------------------------------------- a file with inconsistent shapes


@pytest.mark.parametrize("damage", ["mask", "layer_names", "at_bound"])
def test_result_file_with_inconsistent_shapes_is_skipped_with_a_note(tmp_path, damage):
    log = str(tmp_path / "run")
    for step, level in ((0, 2.0), (5, 3.0), (10, 4.0)):
        save(log, step, level)
    data = result(7, 9.0).to_dict()
    if damage == "mask":
        data["mask"] = torch.ones(2, 5, dtype=torch.bool)  # sigma is [2, 2, 3]
    elif damage == "layer_names":
        data["layer_names"] = ["enc.0", "enc.1", "enc.2"]
    else:
        data["at_bound"] = torch.zeros(2, 1, 3, dtype=torch.bool)
    torch.save(data, os.path.join(log, "infoflow", "results", "step_00000007.pt"))

    res = invoke("report", log)
    assert res.exit_code == 0, res.output
    text = flat(res)
    assert "3 analyses at steps [0, 5, 10]" in text
    assert "skipped step_00000007.pt: ValueError:" in text and damage in text
    assert "Traceback" not in res.output
    run = load_run(log)
    assert run.steps == [0, 5, 10] and len(run.skipped) == 1


# --------------------------------------------------------------------------- namespaces


def test_two_namespaces_are_found_and_reported_separately(tmp_path):
    log = str(tmp_path / "lightning_logs" / "version_0")
    for step, level in ((0, 2.0), (5, 3.0), (10, 4.0)):
        save(log, step, level, name="infoflow")
    for step, level in ((0, 1.0), (10, 6.0)):
        save(log, step, level, name="probe_b")

    sources = find_runs(str(tmp_path))
    assert [s.namespace for s in sources] == ["infoflow", "probe_b"]
    assert {s.log_dir for s in sources} == {os.path.abspath(log)}

    res = invoke("report", log)
    assert res.exit_code == 0, res.output
    text = flat(res)
    assert "(namespace infoflow): 3 analyses at steps [0, 5, 10]" in text
    assert "(namespace probe_b): 2 analyses at steps [0, 10]" in text
    for name in ("infoflow", "probe_b"):
        assert os.path.isfile(os.path.join(log, name, "report", "report.html"))
    page_b = Path(log, "probe_b", "report", "report.html").read_text()
    assert "2 analyses at steps [0, 10]" in page_b and "[0, 5, 10]" not in page_b

    out = tmp_path / "reports"
    res = invoke("report", log, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "infoflow" / "report.html").is_file() and (out / "probe_b" / "report.html").is_file()
    with pytest.raises(Exception, match="holds 2 runs"):  # one log dir, one result: name the namespace folder
        load_run(log)
    assert load_run(os.path.join(log, "probe_b")).steps == [0, 10]
    res = invoke("compare", log, "--out", str(tmp_path / "cmp"))  # the namespaces side by side
    assert res.exit_code == 0, res.output
    assert "2 runs, 2 shared probe sentences" in flat(res) and "version_0:probe_b" in flat(res)


# --------------------------------------------------------------------------- resumed runs


def resumed(root: str) -> tuple[str, str]:
    """A run trained to step 6 in version_0, resumed from the step-3 checkpoint into version_1 (steps 4-9 again)."""
    v0, v1 = os.path.join(root, "version_0"), os.path.join(root, "version_1")
    for step in (0, 3, 6):
        save(v0, step, 1.0 + step)
    write_metrics(v0, [(s, 1.0 - 0.01 * s) for s in range(7)])
    for step in (6, 9):
        save(v1, step, 20.0 + step)  # step 6 analysed again after the resume: the newer file wins
    write_metrics(v1, [(s, 2.0 - 0.01 * s) for s in range(4, 10)])
    return v0, v1


def test_run_resumed_into_a_new_version_is_one_continuous_run(tmp_path):
    root = str(tmp_path / "logs")
    v0, v1 = resumed(root)
    for path in (root, v1):  # the parent folder, or the newest version alone
        (source,) = find_runs(path)
        assert source.log_dirs == (os.path.abspath(v0), os.path.abspath(v1))
        run = load_run(path)
        assert run.steps == [0, 3, 6, 9]
        assert [round(float(r.layer_information[0]), 4) for r in run.results] == [1.0, 4.0, 26.0, 29.0]
        assert run.superseded == [os.path.join("version_0", "step_00000006.pt")]
        loss = run.scalars["train_loss"]
        assert [s for s, _ in loss] == list(range(10))  # each step once
        assert dict(loss)[3] == pytest.approx(0.97) and dict(loss)[5] == pytest.approx(1.95)  # version_1 wins
    res = invoke("report", v1)
    assert res.exit_code == 0, res.output
    assert "4 analyses at steps [0, 3, 6, 9]" in flat(res)
    assert "superseded by newer files of the same step" in flat(res)


def test_other_runs_beside_a_resumed_run_stay_apart(tmp_path):
    root = str(tmp_path / "logs")
    _v0, v1 = resumed(root)
    v2 = os.path.join(root, "version_2")
    save(v2, 0, 5.0, run_id="run-b")
    assert load_run(v1).steps == [0, 3, 6, 9]  # version_2 is another run
    assert load_run(v2).steps == [0]
    res = invoke("report", root)
    assert res.exit_code == 1 and "holds 2 runs; pass one of them" in flat(res)


def test_same_version_rewritten_logs_keep_each_step_once(tmp_path):
    """Resumed into the same version: the logs repeat steps, the result files are the source of truth."""
    log = str(tmp_path / "version_0")
    for step in (0, 3, 6, 9):
        save(log, step, 1.0 + step)
    # metrics.csv as a resumed run leaves it: steps 4-6 logged before the interruption and again after it
    write_metrics(log, [(s, 1.0 - 0.01 * s) for s in range(7)] + [(s, 2.0 - 0.01 * s) for s in range(4, 10)])
    from torch.utils.tensorboard import SummaryWriter

    for offset, steps in ((0.0, range(7)), (1.0, range(4, 10))):  # a second event file after the resume
        writer = SummaryWriter(log)
        for s in steps:
            writer.add_scalar("val_loss", offset + s, s)
        writer.close()

    scalars = read_scalars(log)
    for tag in ("train_loss", "val_loss"):
        assert [s for s, _ in scalars[tag]] == list(range(10)), tag
    assert dict(scalars["train_loss"])[5] == pytest.approx(1.95) and dict(scalars["val_loss"])[5] == 6.0
    run = load_run(log)
    assert run.steps == [0, 3, 6, 9]
    # the loss at each analysis is the mean since the previous one, each step counted once
    assert run.loss_history()[2] == pytest.approx((1.96 + 1.95 + 1.94) / 3)
    res = invoke("report", log)
    assert res.exit_code == 0 and "4 analyses at steps [0, 3, 6, 9]" in flat(res)


def test_event_files_whose_names_do_not_sort_by_time_keep_the_last_value_of_each_step(tmp_path):
    """TensorBoard names event files ``...<pid>.<counter>``; counter 10 sorts before 9 as text. The reader
    orders events by the time they were written, and purges nothing when a step goes back."""
    from torch.utils.tensorboard import SummaryWriter

    log = str(tmp_path / "version_0")
    for offset, steps, counter in ((0.0, range(7), "9"), (1.0, range(4, 10), "10")):
        writer = SummaryWriter(log)
        for s in steps:
            writer.add_scalar("val_loss", offset + s, s)
        writer.close()
        newest = max((os.path.join(log, f) for f in os.listdir(log) if ".host." not in f), key=os.path.getmtime)
        os.rename(newest, os.path.join(log, f"events.out.tfevents.1700000000.host.1.{counter}"))
    points = dict(read_scalars(log)["val_loss"])
    assert sorted(points) == list(range(10)) and points[3] == 3.0 and points[5] == 6.0
