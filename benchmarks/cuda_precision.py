"""On a CUDA GPU: the estimator under fp16 and bf16 autocast against float32, and the callback in
``precision="16-mixed"`` training. Prints JSON (and writes it to $OUT/cuda_precision.json when OUT is set).

    python benchmarks/cuda_precision.py
"""

from __future__ import annotations

import json
import os
import sys

import lightning.pytorch as L
import torch
from transformers import BertConfig, BertModel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from lit_helpers import TinyClassifier, loaders, probe_ids  # noqa: E402

from lightning_infoflow import EstimatorConfig, InfoFlowCallback, InfoFlowEstimator  # noqa: E402


def median_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    m = torch.isfinite(a) & torch.isfinite(b)
    return float(((a - b).abs() / b)[m].median())


def main() -> dict:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=500, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=256, max_position_embeddings=64)
    model = BertModel(cfg).cuda().eval()
    ids = torch.randint(5, 500, (16, 24), generator=torch.Generator().manual_seed(1)).cuda()
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    est = InfoFlowEstimator(model, steps=20, samples=4, seed=0)
    ref = est.estimate(batch).sigma
    seed_noise = median_rel(InfoFlowEstimator(model, steps=20, samples=4, seed=1).estimate(batch).sigma, ref)
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "float32_seed_vs_seed": seed_noise}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        with torch.autocast("cuda", dtype=dtype):
            sigma = est.estimate(batch).sigma
        out[f"{name}_autocast_vs_float32"] = median_rel(sigma, ref)
        out[f"{name}_finite"] = bool(torch.isfinite(sigma[torch.isfinite(ref)]).all())
    # the callback in 16-mixed training, analysing in float32 and in the training precision
    for precision in ("32", "training"):
        cb = InfoFlowCallback(probe_ids(), every_n_train_steps=3, log_spaced=False, max_overhead=None,
                              estimator=EstimatorConfig(steps=5, warm_steps=2, precision=precision))
        trainer = L.Trainer(accelerator="gpu", devices=1, precision="16-mixed", max_steps=6, callbacks=[cb],
                            logger=CSVLogger("/tmp/cuda_precision"), enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
        tl, vl = loaders()
        trainer.fit(TinyClassifier(), tl, vl)
        out[f"callback_16mixed_{precision}_steps"] = cb.state.steps
        out[f"callback_16mixed_{precision}_finite"] = bool(torch.isfinite(cb.last_result.layer_information).all())
    return out


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=1))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "cuda_precision.json"), "w") as f:
            json.dump(result, f, indent=1)
