"""Fig. 7 (Sec. 5.2.1): layer-wise information of the four models on one SST-2 sentence.

s is each layer's hidden states at every time step. The paper's finding: for every model but the CNN
(whose four layers are parallel), the information decreases through the layers, and BERT discards
meaningless words ("to", "it") first. ``stop_word_information_ratio`` is, per layer, the mean information of
the sentence's stop words over that of its other words.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from matplotlib.figure import Figure

from examples.analyses import common
from examples.analyses.words import stop_word_ratio
from examples.models import MODEL_NAMES
from lightning_infoflow import InfoFlowEstimator

NAME = "sentence"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, max_steps=1000)
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--sentence", default=common.RARE_BIRD)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = common.prepare(args, NAME)
    per_model: dict[str, dict[str, Any]] = {}
    fig = Figure(figsize=(9, 2.0 * len(args.models) + 0.8), layout="constrained")
    axes = fig.subplots(len(args.models), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, args.models):
        trained = common.train_classifier(args, name, "sst2", out)
        tok = trained.data.tokenizer
        start = time.perf_counter()
        # 16 dev sentences give the normalisation of hidden units (one sentence has no variance).
        reference = tok.encode([args.sentence, *trained.data.dev_data[0][:15]])
        est = InfoFlowEstimator(trained.module, layers=trained.module.infoflow_layers,
                                steps=common.est_steps(args, 200), seed=args.seed)
        res = est.estimate(tok.encode([args.sentence]), reference=reference, tokens=tok.tokens([args.sentence]))
        res.save(f"{out}/result_{name}.pt")
        info = res.sentence_information[:, 0].tolist()
        per_model[name] = {"sentence_information": info,
                           "decreasing": all(b <= a for a, b in zip(info, info[1:])),
                           "stop_word_information_ratio": [stop_word_ratio(res, i) for i in range(len(info))],
                           "val_acc": trained.metrics["val/acc"], "train_seconds": trained.seconds,
                           "estimate_seconds": time.perf_counter() - start}
        labels = [f"K{w}" for w in (1, 3, 5, 7)] if name == "cnn" else [f"L{i + 1}" for i in range(len(info))]
        im = common.heatmap(ax, common.information_rows(res, 0), common.words_of(res, 0), labels,
                            f"{name} (dev acc {trained.metrics['val/acc']:.3f})")
        fig.colorbar(im, ax=ax, fraction=0.02)
    fig.suptitle("Information of each word in each layer (nats)", fontsize=10)
    png = common.save_figure(fig, out, "fig7_sentence")
    summary = {"analysis": NAME, "out": out, "figure": png, "sentence": args.sentence, "models": per_model}
    common.write_summary(out, summary)
    return summary
