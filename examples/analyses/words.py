"""Figs. 5 and 6 (Sec. 5.1): the words each model's output layer reads.

s is the state the output layer reads: the last layer's [CLS] state for BERT, the first-token state for
the Transformer, the max-pooled state for the LSTM and the CNN (``infoflow_readout``). Over sampled dev
sentences, the words a sentence's state keeps the most information of (its top ``--top-k``) are counted.
The paper's finding: BERT uses meaningful words (film, little, comedy), the others often stop words.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from typing import Any

from matplotlib.figure import Figure

from examples.analyses import common
from examples.models import MODEL_NAMES
from lightning_infoflow import InfoFlowEstimator, InfoFlowResult

NAME = "words"

SPECIAL = {"[CLS]", "[SEP]", "[PAD]", "[UNK]"}
STOP_WORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its it's 's "
    "this that these those there here he she they we you i me my your his her their our them him us "
    "do does did done have has had not no n't so too very can could will would should than then just "
    "about into over such what which who whom when where why how all any both each more most other some "
    ". , ! ? ; : - -- ' ` `` '' ... ( ) -lrb- -rrb-"
    # pieces of contractions in BERT's vocabulary: n't -> n ' t, 's -> ' s, 're -> ' re, ...
    " n t s re ve ll d m".split()
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, max_steps=1000)
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--sentences", type=int, default=100, help="dev sentences sampled")
    parser.add_argument("--top-k", type=int, default=2, help="words counted per sentence")
    parser.add_argument("--show", type=int, default=15, help="most frequent words shown per model")


def used_words(res: InfoFlowResult, top_k: int) -> list[list[str]]:
    """Per sentence, the ``top_k`` words (specials excluded) the readout keeps the most information of."""
    out = []
    for b in range(res.sigma.shape[1]):
        words = common.words_of(res, b)
        info = common.information_rows(res, b)[0]
        ranked = [i for i in info.argsort()[::-1] if words[i] not in SPECIAL]
        out.append([words[i] for i in ranked[:top_k]])
    return out


def stop_word_ratio(res: InfoFlowResult, layer: int = 0) -> float:
    """Mean information of stop-word tokens over that of the other words (specials left out) in ``layer``."""
    stop, other = [], []
    for b in range(res.sigma.shape[1]):
        for word, info in zip(common.words_of(res, b), common.information_rows(res, b)[layer]):
            if word not in SPECIAL:
                (stop if word in STOP_WORDS else other).append(float(info))
    return (sum(stop) / len(stop)) / (sum(other) / len(other)) if stop and other else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = common.prepare(args, NAME)
    per_model: dict[str, dict[str, Any]] = {}
    examples: dict[str, InfoFlowResult] = {}
    for name in args.models:
        trained = common.train_classifier(args, name, "sst2", out)
        dev = trained.data.dev_data[0]
        n = 3 if args.tiny else args.sentences
        sentences = [common.RARE_BIRD] + random.Random(args.seed).sample([s for s in dev if s != common.RARE_BIRD],
                                                                         min(n, len(dev) - 1))[: n - 1]
        tok = trained.data.tokenizer
        start = time.perf_counter()
        est = InfoFlowEstimator(trained.module, layers=trained.module.infoflow_readout,
                                steps=common.est_steps(args, 20), seed=args.seed)
        res = est.estimate(tok.encode(sentences), tokens=tok.tokens(sentences))
        res.save(f"{out}/result_{name}.pt")
        examples[name] = res
        used = used_words(res, args.top_k)
        counts = Counter(w for ws in used for w in ws)
        flat = [w for ws in used for w in ws]
        per_model[name] = {
            "top_words": counts.most_common(args.show),
            "stop_word_fraction": sum(w in STOP_WORDS for w in flat) / max(len(flat), 1),
            "stop_word_information_ratio": stop_word_ratio(res),
            "val_acc": trained.metrics["val/acc"], "train_seconds": trained.seconds,
            "estimate_seconds": time.perf_counter() - start, "sentences": len(sentences),
        }

    fig6 = Figure(figsize=(3.2 * len(per_model), 4.5), layout="constrained")
    axes = fig6.subplots(1, len(per_model), squeeze=False)[0]
    for ax, (name, r) in zip(axes, per_model.items()):
        words = [w for w, _ in r["top_words"]][::-1]
        ax.barh(range(len(words)), [c for _, c in r["top_words"]][::-1],
                color=["tab:red" if w in STOP_WORDS else "tab:blue" for w in words])
        ax.set_yticks(range(len(words)), labels=words, fontsize=8)
        ax.set_title(f"{name}: stop words {r['stop_word_fraction']:.0%}", fontsize=9)
        ax.set_xlabel(f"sentences (top {args.top_k} words)", fontsize=8)
    fig6.suptitle(f"Words used for prediction over {per_model[args.models[0]]['sentences']} SST-2 dev sentences "
                  "(red: stop words)", fontsize=10)
    png6 = common.save_figure(fig6, out, "fig6_words")

    fig5 = Figure(figsize=(10, 1.3 * len(examples) + 1), layout="constrained")
    axes = fig5.subplots(len(examples), 1, squeeze=False)[:, 0]
    for ax, (name, res) in zip(axes, examples.items()):
        im = common.heatmap(ax, common.information_rows(res, 0), common.words_of(res, 0), [name], "")
        fig5.colorbar(im, ax=ax, fraction=0.02)
    fig5.suptitle("Information of each word in the state the output layer reads (nats)", fontsize=10)
    png5 = common.save_figure(fig5, out, "fig5_readout")
    fractions = {n: r["stop_word_fraction"] for n, r in per_model.items()}
    summary = {"analysis": NAME, "out": out, "figure": png6, "figure5": png5, "models": per_model,
               "stop_word_fraction": fractions,
               "stop_word_information_ratio": {n: r["stop_word_information_ratio"] for n, r in per_model.items()},
               "bert_fewest_stop_words": "bert" in fractions and fractions["bert"] == min(fractions.values())}
    common.write_summary(out, summary)
    return summary
