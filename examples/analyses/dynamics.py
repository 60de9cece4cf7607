"""Fig. 9 (Sec. 5.3): information per layer against training step, BERT and the LSTM, logged live.

The :class:`lightning_infoflow.InfoFlowCallback` analyses a fixed probe of SST-2 dev sentences at step 0,
at log-spaced early steps and every ``--every`` steps; it logs ``infoflow/...`` scalars and figures to
TensorBoard and saves each analysis under ``<log_dir>/infoflow/results/``, from which the figure is drawn.
The paper's finding: the LSTM's information first expands, then compresses; BERT's stays stable.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from examples.analyses import common
from examples.analyses.layers import probe_sentences
from lightning_infoflow import EstimatorConfig, InfoFlowCallback

NAME = "dynamics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, max_steps=600)
    parser.add_argument("--models", nargs="+", default=["bert", "lstm"], choices=["bert", "transformer", "lstm", "cnn"])
    parser.add_argument("--every", type=int, default=100, help="analyse every N optimizer steps")
    parser.add_argument("--probe-size", type=int, default=8)


def load_curves(log_dir: str) -> tuple[list[int], list[str], np.ndarray]:
    """Steps, layer names and ``[steps, layers]`` mean information per word, from the saved raw results."""
    paths = sorted(glob.glob(os.path.join(log_dir, "**", "infoflow", "results", "step_*.pt"), recursive=True))
    if not paths:
        raise RuntimeError(f"no infoflow results under {log_dir}; did the callback run?")
    steps, rows, names = [], [], []
    for path in paths:
        data = torch.load(path, weights_only=True)
        info, mask = data["information"], data["mask"]
        rows.append([float(info[layer][mask].mean()) for layer in range(info.shape[0])])
        steps.append(int(os.path.basename(path)[5:-3]))
        names = list(data["layer_names"])
    order = np.argsort(steps)
    return [steps[i] for i in order], names, np.asarray(rows)[order]


def shape_of_curve(curve: np.ndarray) -> dict[str, Any]:
    """Expansion (rise above the start) and compression (fall from the peak by the end) of a curve."""
    start, peak, end = float(curve[0]), float(curve.max()), float(curve[-1])
    return {"start": start, "peak": peak, "end": end, "peak_index": int(curve.argmax()),
            "expansion": peak - start, "compression": peak - end,
            "relative_range": (float(curve.max() - curve.min()) / max(abs(start), 1e-9))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = common.prepare(args, NAME)
    per_model: dict[str, dict[str, Any]] = {}
    curves: dict[str, tuple[list[int], list[str], np.ndarray]] = {}
    for name in args.models:
        dm = common.datamodule(args, name, "sst2")
        tok = dm.tokenizer
        sentences = probe_sentences(dm.dev_data[0], 2 if args.tiny else args.probe_size)
        # layers="auto" picks each model's layer stack (``TextClassifier.infoflow_layers``).
        callback = InfoFlowCallback(probe=sentences, tokenizer=getattr(tok, "hf", tok), layers="auto",
                                    every_n_train_steps=args.every, num_sentences=len(sentences),
                                    estimator=EstimatorConfig(steps=common.est_steps(args, 100),
                                                              warm_steps=common.est_steps(args, 20), seed=args.seed),
                                    max_overhead=None)  # the curve is the point: run every scheduled analysis
        run_out = os.path.join(out, f"{name}_sst2")
        shutil.rmtree(run_out, ignore_errors=True)  # one run per folder: the curves are read back from it
        cache, args.cache = args.cache, None  # the callback must watch the training itself
        try:
            trained = common.train_classifier(args, name, "sst2", out, callbacks=[callback])
        finally:
            args.cache = cache
        steps, names, info = load_curves(run_out)
        curves[name] = (steps, names, info)
        total = info.mean(1)
        per_model[name] = {"steps": steps, "layer_names": names, "information": info.tolist(),
                           "val_acc": trained.metrics["val/acc"], "train_seconds": trained.seconds,
                           "mean_over_layers": shape_of_curve(total),
                           "per_layer": [shape_of_curve(info[:, i]) for i in range(info.shape[1])]}

    fig = Figure(figsize=(5 * len(curves), 3.8), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (name, (steps, names, info)) in zip(axes, curves.items()):
        xs = [max(s, 0.5) for s in steps]
        for i, layer in enumerate(common.short_layer_names(names)):
            ax.plot(xs, info[:, i], "o-", markersize=3, label=layer)
        ax.set_xscale("log")
        ax.set_xlabel("training step (log; step 0 drawn at 0.5)")
        ax.set_ylabel("mean information per word (nats)")
        ax.set_title(f"{name} (dev acc {per_model[name]['val_acc']:.3f})", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("Information per layer during training on SST-2 (InfoFlowCallback)", fontsize=10)
    png = common.save_figure(fig, out, "fig9_dynamics")
    summary = {"analysis": NAME, "out": out, "figure": png, "models": per_model}
    common.write_summary(out, summary)
    return summary

