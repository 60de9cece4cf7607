"""Fig. 3 (Sec. 4.2): the BiLSTM on SST-2, information of each word in each of its 4 layers.

s is a layer's hidden states at every time step concatenated. The paper's finding: the information of
the sentence decreases layer by layer.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from matplotlib.figure import Figure

from examples.analyses import common
from examples.models import PAPER_LSTM
from lightning_infoflow import InfoFlowEstimator

NAME = "layers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, max_steps=1500)
    parser.add_argument("--probe-size", type=int, default=16, help="dev sentences analysed (the first is Fig. 3's)")
    parser.add_argument("--paper-size", action="store_true", help="768 per direction and 768-d embeddings")


def probe_sentences(dev: list[str], n: int) -> list[str]:
    """The paper's sentence first, then the first ``n - 1`` other dev sentences."""
    return [common.RARE_BIRD] + [s for s in dev if s != common.RARE_BIRD][: n - 1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = common.prepare(args, NAME)
    paper = args.paper_size and not args.tiny
    trained = common.train_classifier(args, "lstm", "sst2", out, tag="_paper" if paper else "",
                                      model_kwargs=PAPER_LSTM if paper else None)
    dev_sentences = trained.data.dev_data[0] if trained.data.dev_data else []
    sentences = probe_sentences(dev_sentences, 2 if args.tiny else args.probe_size)
    tok = trained.data.tokenizer
    start = time.perf_counter()
    est = InfoFlowEstimator(trained.module, layers=trained.module.infoflow_layers, steps=common.est_steps(args, 200),
                            seed=args.seed)
    res = est.estimate(tok.encode(sentences), tokens=tok.tokens(sentences))
    est_s = time.perf_counter() - start
    res.save(f"{out}/result.pt")
    per_layer = res.layer_information.tolist()
    first = res.sentence_information[:, 0].tolist()
    decreasing = all(b <= a for a, b in zip(per_layer, per_layer[1:]))

    fig = Figure(figsize=(10, 5), layout="constrained")
    ax_map, ax_line = fig.subplots(1, 2, width_ratios=[3, 1])
    im = common.heatmap(ax_map, common.information_rows(res, 0), common.words_of(res, 0),
                        [f"LSTM layer {i + 1}" for i in range(len(per_layer))], "information per word (nats)")
    fig.colorbar(im, ax=ax_map, fraction=0.04)
    ax_line.plot(range(1, len(per_layer) + 1), per_layer, "o-", label=f"mean over {len(sentences)} sentences")
    ax_line.set_xlabel("layer")
    ax_line.set_ylabel("mean information per word (nats)")
    ax_line.set_xticks(range(1, len(per_layer) + 1))
    ax_line.legend(fontsize=7)
    fig.suptitle(f"BiLSTM on SST-2 (dev acc {trained.metrics['val/acc']:.3f})", fontsize=10)
    png = common.save_figure(fig, out, "fig3_layers", None)
    summary = {"analysis": NAME, "out": out, "figure": png, "val": trained.metrics, "train_seconds": trained.seconds,
               "estimate_seconds": est_s, "layer_information": per_layer, "rare_bird_information": first,
               "decreasing": decreasing, "probe_size": len(sentences)}
    common.write_summary(out, summary)
    return summary
