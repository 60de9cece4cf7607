"""InfoFlowCallback from a LightningCLI YAML config, and under DDP with two CPU processes."""

from __future__ import annotations

import copy
import csv
import glob
import inspect
import os

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lit_helpers import TinyClassifier, TinyDataModule, loaders, probe_ids

from lightning_infoflow import EstimatorConfig, InfoFlowCallback


def test_configured_from_yaml(tmp_path):
    ids = probe_ids().tolist()
    vocab = [f"w{i}" for i in range(50)]
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
trainer:
  max_steps: 3
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args:
      save_dir: {tmp_path}
  callbacks:
    - class_path: lightning_infoflow.InfoFlowCallback
      init_args:
        probe: {ids}
        layers: ["model.rnns.*"]
        every_n_train_steps: 2
        log_spaced: false
        max_overhead: null
        name: yaml_probe
        heatmaps: 1
        estimator:
          steps: 3
          warm_steps: 1
          samples: 2
          position: [0, -1]
          seed: 5
        hooks:
          - class_path: lightning_infoflow.SaliencyHook
            init_args:
              methods: [gradient]
              max_figures: 1
          - class_path: lightning_infoflow.AttributesHook
            init_args:
              words: [[0, 1]]
              concepts: {{low: [w1, w2, w3], high: [w40, w41]}}
              vocab: {vocab}
"""
    )
    cli = LightningCLI(TinyClassifier, TinyDataModule, run=False, args=["--config", str(config)])
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, InfoFlowCallback)]
    assert cb.every_n_train_steps == 2 and cb.layers == ["model.rnns.*"] and cb.name == "yaml_probe"
    assert cb.estimator == EstimatorConfig(steps=3, warm_steps=1, samples=2, position=(0, -1), seed=5)
    assert [type(h).__name__ for h in cb.hooks] == ["SaliencyHook", "AttributesHook"]
    assert cb.hooks[0].methods == ["gradient"] and cb.hooks[1].words == [(0, 1)]
    names = inspect.signature(InfoFlowCallback).parameters
    arguments = {k: copy.deepcopy(getattr(cb, k)) for k in names if k != "hooks"}
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cb.state.steps == [0, 2, 3]
    assert torch.equal(cb._probe.input_ids, probe_ids())
    assert {k: getattr(cb, k) for k in names if k != "hooks"} == arguments  # setup rewrote no argument
    assert cb.hooks[1].concepts == {"low": ["w1", "w2", "w3"], "high": ["w40", "w41"]} and cb.hooks[1].vocab == vocab
    results = sorted(glob.glob(os.path.join(cli.trainer.logger.log_dir, "yaml_probe", "results", "*.pt")))
    data = torch.load(results[-1], weights_only=True)
    assert data["layer_names"] == ["model.rnns.0@0", "model.rnns.0@-1", "model.rnns.1@0", "model.rnns.1@-1"]
    assert data["baselines"]["gradient"].shape == data["sigma"].shape and data["meta"]["name"] == "yaml_probe"
    assert len(data["attributes"]) == 1 and "yaml_probe/attribute/s0w1/low/model.rnns.0@0" in cb_metrics(cli)


def cb_metrics(cli: LightningCLI) -> list[str]:
    return list(cli.trainer.callback_metrics)


FAST = EstimatorConfig(steps=3, warm_steps=1, samples=2)


class FailOnRankOne(InfoFlowCallback):
    """Raises inside the estimator on rank 1 at step 3 only."""

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)
        estimate = self._estimator.estimate

        def flaky(batch, **kw):
            if trainer.global_rank == 1 and trainer.global_step == 3:
                raise RuntimeError("simulated failure on rank 1")
            return estimate(batch, **kw)

        self._estimator.estimate = flaky


def _ddp_fit(tmp_path, name, callback, devices=2):
    logger = CSVLogger(tmp_path, name=name)
    trainer = L.Trainer(
        strategy="ddp_spawn" if devices > 1 else "auto", accelerator="cpu", devices=devices, max_steps=6,
        logger=logger, callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0,
    )
    L.seed_everything(3)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    return os.path.join(tmp_path, name, "version_0")


def _logged_steps(log_dir):
    with open(os.path.join(log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return [int(r["step"]) for r in rows if r.get("infoflow/information/model.rnns.0")]


@pytest.mark.ddp
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
@pytest.mark.parametrize("mode", ["split", "rank_zero"])
def test_ddp_two_processes_logs_each_analysis_once(tmp_path, mode):
    kw = dict(every_n_train_steps=3, log_spaced=False, estimator=EstimatorConfig(steps=20, warm_steps=1, samples=4),
              max_overhead=None)
    ddp_dir = _ddp_fit(tmp_path, "ddp", InfoFlowCallback(probe_ids(), distributed=mode, **kw))
    assert _logged_steps(ddp_dir) == [0, 3, 6]
    results = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ddp_dir, "infoflow", "results", "*.pt")))
    assert results == ["step_00000000.pt", "step_00000003.pt", "step_00000006.pt"]
    # step 0 sees the same weights as a single process: the same information within optimiser noise
    one_dir = _ddp_fit(tmp_path, "one", InfoFlowCallback(probe_ids(), **kw), devices=1)
    ddp0 = torch.load(os.path.join(ddp_dir, "infoflow", "results", "step_00000000.pt"), weights_only=True)
    one0 = torch.load(os.path.join(one_dir, "infoflow", "results", "step_00000000.pt"), weights_only=True)
    assert ddp0["sigma"].shape == one0["sigma"].shape == (2, 4, 8)
    if mode == "split":
        assert ddp0["meta"]["world_size"] == 2
    # the ranks draw other noise than one process: compare within optimiser noise (two seeds of one
    # process differ by a few percent per word at these settings)
    rel = ((ddp0["sigma"] - one0["sigma"]).abs() / one0["sigma"]).median()
    assert rel < 0.1, rel
    info = lambda d: d["information"].nanmean(dim=(1, 2))  # noqa: E731
    assert torch.allclose(info(ddp0), info(one0), rtol=0.03), (info(ddp0), info(one0))


@pytest.mark.ddp
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_ddp_failure_on_one_rank_is_known_to_all_and_training_continues(tmp_path):
    cb = FailOnRankOne(probe_ids(), every_n_train_steps=3, log_spaced=False, estimator=FAST, max_overhead=None)
    log_dir = _ddp_fit(tmp_path, "fail", cb)  # a hang here would be the bug
    assert _logged_steps(log_dir) == [0, 6]


@pytest.mark.ddp
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_ddp_resume_continues_without_gap_or_repeat(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    kw = dict(every_n_train_steps=3, log_spaced=False, at_end=False, estimator=FAST, max_overhead=None)

    def fit(name, max_steps, ckpt_path=None):
        logger = CSVLogger(tmp_path, name=name)
        ckpt = ModelCheckpoint(dirpath=tmp_path / f"ckpt_{name}", every_n_train_steps=3, save_top_k=-1)
        trainer = L.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=max_steps, logger=logger,
                            callbacks=[InfoFlowCallback(probe_ids(), **kw), ckpt], enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0)
        tl, vl = loaders()
        trainer.fit(TinyClassifier(), tl, vl, ckpt_path=ckpt_path)
        return os.path.join(tmp_path, name, "version_0")

    first = fit("first", 6)
    assert _logged_steps(first) == [0, 3, 6]
    resumed = fit("resumed", 9, ckpt_path=str(tmp_path / "ckpt_first" / "epoch=0-step=3.ckpt"))
    assert _logged_steps(resumed) == [6, 9]  # step 3 is not repeated; the run goes on from the checkpoint
    (last,) = glob.glob(str(tmp_path / "ckpt_resumed" / "*step=9.ckpt"))
    state = torch.load(last, weights_only=True)
    (cb_state,) = [v for k, v in state["callbacks"].items() if k.startswith("InfoFlowCallback")]
    assert cb_state["history_steps"] == [0, 3, 6, 9]  # the curve has no gap
