"""InfoFlowCallback from a LightningCLI YAML config, and under DDP with two CPU processes."""

from __future__ import annotations

import csv
import glob
import os

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from lightning_infoflow import InfoFlowCallback

from lit_helpers import TinyClassifier, TinyDataModule, loaders, probe_ids


def test_configured_from_yaml(tmp_path):
    ids = probe_ids().tolist()
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
        steps: 3
        warm_steps: 1
        samples: 2
        progress: false
        max_overhead: null
"""
    )
    cli = LightningCLI(TinyClassifier, TinyDataModule, run=False, args=["--config", str(config)])
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, InfoFlowCallback)]
    assert cb.every_n_train_steps == 2 and cb.layers == ["model.rnns.*"]
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cb._history_steps == [0, 2, 3]
    assert torch.equal(cb._probe.input_ids, probe_ids())


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_ddp_two_processes_logs_each_analysis_once(tmp_path):
    cb = InfoFlowCallback(probe_ids(), every_n_train_steps=3, log_spaced=False, steps=3, warm_steps=1, samples=2,
                          progress=False, max_overhead=None)
    logger = CSVLogger(tmp_path, name="ddp")
    trainer = L.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=6, logger=logger, callbacks=[cb],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
    )
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    log_dir = os.path.join(tmp_path, "ddp", "version_0")
    rows = list(csv.DictReader(open(os.path.join(log_dir, "metrics.csv"))))
    steps = [int(r["step"]) for r in rows if r.get("infoflow/information/model.rnns.0")]
    assert steps == [0, 3, 6]
    results = sorted(os.path.basename(p) for p in glob.glob(os.path.join(log_dir, "infoflow", "results", "*.pt")))
    assert results == ["step_00000000.pt", "step_00000003.pt", "step_00000006.pt"]
