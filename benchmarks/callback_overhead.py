"""Training wall time with and without InfoFlowCallback at its default schedule, on the demo model or MiniLM.

    python benchmarks/callback_overhead.py --max-steps 1000 --out benchmarks/results/callback_overhead.json
    python benchmarks/callback_overhead.py --model minilm --max-steps 60 --batch-size 16 --modes none default \
        --out benchmarks/results/callback_overhead_minilm.json

Runs of the demo's BiLSTM (or the pretrained all-MiniLM-L6-v2 fine-tuned) on SST-2, same seed, same data:
``none`` without the callback; ``default``: the callback with its defaults (every 500 steps plus 1, 2, 5,
... 200, and the end, 16 probe sentences, max_overhead=0.1); ``every``: the same schedule with
max_overhead=None (every scheduled analysis runs). Reports wall and CPU seconds, the overhead, the
number of analyses, the cost of one analysis (cold and warm) and the callback's budget warning, if any.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import sys
import time
import warnings

import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.data import GlueDataModule, load_split  # noqa: E402
from examples.models import TextClassifier  # noqa: E402
from lightning_infoflow import InfoFlowCallback  # noqa: E402


def run(args: argparse.Namespace, mode: str) -> dict:
    L.seed_everything(0)
    bert = args.model == "minilm"
    data = GlueDataModule("sst2", tokenizer="bert" if bert else "word", max_length=48, batch_size=args.batch_size,
                          train_size=args.train_size, dev_size=200, seed=0)
    data.setup()
    if bert:
        model = TextClassifier("bert", lr=3e-5)
    else:
        model = TextClassifier("lstm", vocab_size=data.vocab_size, lr=2e-3,
                               model_kwargs={"embed_dim": args.hidden, "hidden": args.hidden})
    callbacks = []
    if mode != "none":
        dev, _ = load_split("sst2", "dev")
        callbacks.append(InfoFlowCallback(probe=dev[:16], tokenizer=data.tokenizer, layers=model.infoflow_layers,
                                          max_overhead=0.1 if mode == "default" else None))
    trainer = L.Trainer(max_steps=args.max_steps, logger=CSVLogger(args.logs, name=mode), callbacks=callbacks,
                        limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    c0, w0 = time.process_time(), time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    out = {"mode": mode, "wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
           "load_after": os.getloadavg()[0],
           "budget_warning": [str(w.message) for w in caught if "cannot hold" in str(w.message)]}
    if callbacks:
        cb = callbacks[0]
        with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as f:
            rows = [r for r in csv.DictReader(f) if r.get("infoflow/analysis_seconds")]
        seconds = [float(r["infoflow/analysis_seconds"]) for r in rows]
        metas = [torch.load(path, map_location="cpu", weights_only=True)["meta"] for path in
                 sorted(glob.glob(os.path.join(trainer.logger.log_dir, "infoflow", "results", "step_*.pt")))]
        out.update(per_analysis=[{k: m.get(k) for k in ("step", "seconds", "steps_run", "stopped", "error")}
                                 for m in sorted(metas, key=lambda m: m["step"])], capped=cb.capped)
        out.update(analyses=len(seconds), steps=cb.state.steps, skipped=cb.skipped,
                   analysis_s=cb.state_dict()["analysis_seconds"], cold_analysis_s=seconds[0],
                   warm_analysis_s_mean=sum(seconds[1:]) / max(1, len(seconds) - 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["lstm", "minilm"], default="lstm")
    modes = ["none", "default", "every"]
    parser.add_argument("--modes", nargs="+", choices=modes, default=modes)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--logs", default="/tmp/infoflow_overhead")
    parser.add_argument("--out", default="benchmarks/results/callback_overhead.json")
    args = parser.parse_args()
    runs = {mode: run(args, mode) for mode in args.modes}
    base = runs["none"]["wall_s"] if "none" in runs else float("nan")
    for mode in [m for m in args.modes if m != "none"]:
        runs[mode]["overhead"] = runs[mode]["wall_s"] / base - 1
        runs[mode]["analysis_share"] = runs[mode]["analysis_s"] / runs[mode]["wall_s"]
    summary = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "torch": torch.__version__, "threads": torch.get_num_threads()},
               "args": vars(args), "runs": runs}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
