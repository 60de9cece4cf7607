"""Time of one analysis with the probe split over 2 DDP processes (gloo, CPU) against one process.

    python benchmarks/ddp_scaling.py --out benchmarks/results/ddp_scaling.json

A 2-layer GRU text model (tests/lit_helpers.py), 128 probe sentences of 24 tokens, a cold analysis
of 50 steps x 4 draws at step 0; one torch thread per process, so two processes use the two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import lightning.pytorch as L
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from lit_helpers import TinyClassifier, loaders  # noqa: E402

from lightning_infoflow import EstimatorConfig, InfoFlowCallback  # noqa: E402


class Threads(L.Callback):
    def setup(self, trainer, pl_module, stage):
        torch.set_num_threads(1)


def analysis_seconds(devices: int, out: str) -> float:
    probe = torch.randint(1, 50, (128, 24), generator=torch.Generator().manual_seed(0))
    cb = InfoFlowCallback(probe, num_sentences=128, every_n_train_steps=1000, log_spaced=False, at_end=False,
                          estimator=EstimatorConfig(steps=50, samples=4), heatmaps=0, max_overhead=None)
    trainer = L.Trainer(strategy="ddp_spawn" if devices > 1 else "auto", accelerator="cpu", devices=devices,
                        max_steps=1, logger=CSVLogger(out, name=f"d{devices}"), callbacks=[Threads(), cb],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0)
    L.seed_everything(0)
    tl, vl = loaders()
    trainer.fit(TinyClassifier(), tl, vl)
    data = torch.load(os.path.join(out, f"d{devices}", "version_0", "infoflow", "results", "step_00000000.pt"),
                      weights_only=True)
    return float(data["meta"]["seconds"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/ddp_scaling.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one, two = analysis_seconds(1, tmp), analysis_seconds(2, tmp)
    result = {"one_process_s": one, "two_processes_s": two, "speed_up": one / two, "cores": os.cpu_count(),
              "load_after": os.getloadavg()[0]}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
