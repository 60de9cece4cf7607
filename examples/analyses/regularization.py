"""Fig. 4 (Sec. 4.3): the Transformer on SST-2 trained with several L2 weights alpha.

s is the last layer's hidden states (all time steps). The paper's finding: the larger alpha, the less
information the last layer keeps (alpha = 1e-4 keeps little more than "rare"), and accuracy drops with it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from examples.analyses import common
from examples.analyses.layers import probe_sentences
from lightning_infoflow import InfoFlowEstimator

NAME = "regularization"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, max_steps=1000)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 1e-5, 5e-5, 1e-4],
                        help="L2 weights (coupled L2 penalty in Adam)")
    parser.add_argument("--probe-size", type=int, default=16)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = common.prepare(args, NAME)
    rows: list[dict[str, Any]] = []
    rare_bird: list[np.ndarray] = []
    words: list[str] = []
    for alpha in args.alphas:
        common.L.seed_everything(args.seed, verbose=False)  # same initialisation and batches for every alpha
        trained = common.train_classifier(args, "transformer", "sst2", out, weight_decay=alpha, tag=f"_alpha{alpha:g}")
        sentences = probe_sentences(trained.data.dev_data[0], 2 if args.tiny else args.probe_size)
        tok = trained.data.tokenizer
        last = trained.module.infoflow_layers[-1]
        start = time.perf_counter()
        est = InfoFlowEstimator(trained.module, layers=[last], steps=common.est_steps(args, 200), seed=args.seed)
        res = est.estimate(tok.encode(sentences), tokens=tok.tokens(sentences))
        res.save(f"{out}/result_alpha{alpha:g}.pt")
        rare_bird.append(common.information_rows(res, 0)[0])
        words = common.words_of(res, 0)
        rows.append({"alpha": alpha, "last_layer_information": float(res.layer_information[0]),
                     "rare_bird_information": float(res.sentence_information[0, 0]),
                     "effective_words": float(res.effective_words[0]), "val_acc": trained.metrics["val/acc"],
                     "train_seconds": trained.seconds, "estimate_seconds": time.perf_counter() - start})
    info = [r["last_layer_information"] for r in rows]
    decreasing = all(b <= a for a, b in zip(info, info[1:]))

    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_map, ax_alpha, ax_acc = fig.subplots(1, 3, width_ratios=[2.2, 1, 1])
    im = common.heatmap(ax_map, np.stack(rare_bird), words, [f"α={a:g}" for a in args.alphas],
                        "last layer: information per word (nats)")
    fig.colorbar(im, ax=ax_map, fraction=0.04)
    xs = np.arange(len(rows))
    ax_alpha.plot(xs, info, "o-")
    ax_alpha.set_xticks(xs, labels=[f"{a:g}" for a in args.alphas], fontsize=7)
    ax_alpha.set_xlabel("L2 weight α")
    ax_alpha.set_ylabel("mean information per word, last layer (nats)")
    ax_acc.scatter([r["val_acc"] for r in rows], info)
    for r, y in zip(rows, info):
        ax_acc.annotate(f"α={r['alpha']:g}", (r["val_acc"], y), fontsize=7)
    ax_acc.set_xlabel("dev accuracy")
    ax_acc.set_ylabel("information (nats)")
    fig.suptitle("Transformer on SST-2: information in the last layer against the L2 weight", fontsize=10)
    png = common.save_figure(fig, out, "fig4_regularization")
    summary = {"analysis": NAME, "out": out, "figure": png, "runs": rows, "decreasing_with_alpha": decreasing}
    common.write_summary(out, summary)
    return summary
