"""Fig. 8 (Sec. 5.2.2): which attributes of "unhappiness" each layer of the four models keeps.

For the word "unhappiness" in the SST-2 phrase "domestic tension and unhappiness", the estimator learns
sigma in every layer (s = the layer's states at every time step), then
:func:`lightning_infoflow.word_attributes` computes ``r_{i,c} = A_i - A_c`` (Eqs. 8-9) for the concepts of
the shipped ``sst2_example`` set (or ``--concepts FILE``). A small ``r_{i,c}`` means the layer keeps the
part of the word that concept ``c`` shares. The paper's findings: ``r`` decreases through the layers for
every model; the models other than the Transformer keep "negative emotion" the most (smallest ``r``) and the
unrelated concepts ("noun", "all words") the least.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from examples.analyses import common
from examples.models import MODEL_NAMES
from lightning_infoflow import InfoFlowEstimator, WordAttributes, attribute_figure, word_attributes

NAME = "attributes"
UNRELATED = ("noun", "all words")  # the concepts of the shipped set that say nothing of "unhappiness"
PHRASE = "domestic tension and unhappiness"


def word_positions(tokens: Sequence[str], word: str) -> list[int]:
    """Positions of ``word`` in ``tokens``: one token, or the run of word pieces (``un ##hap ...``) it splits into."""
    for start, tok in enumerate(tokens):
        text = tok
        for end in range(start, len(tokens)):
            if end > start:
                if not tokens[end].startswith("##"):
                    break
                text += tokens[end][2:]
            if text == word:
                return list(range(start, end + 1))
            if not word.startswith(text):
                break
    raise ValueError(f"{word!r} is not in the tokens {list(tokens)} (an unknown word cannot be analysed)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, max_steps=1000)
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--sentence", default=PHRASE)
    parser.add_argument("--word", default="unhappiness")
    parser.add_argument("--concepts", default="sst2_example", help="a JSON/YAML concept file or a shipped set's name")
    parser.add_argument("--likelihoods", nargs="+", default=["gaussian", "state"], choices=["gaussian", "state"],
                        help="the paper's Gaussian p(x~|s), and/or how well the layer's state is reproduced")
    parser.add_argument("--num-random", type=int, default=2000, help="vocabulary words for the expectation over X_i")


def monotone_decreasing(values: Sequence[float]) -> bool:
    return all(b <= a for a, b in zip(values, values[1:]))


def summarise(attrs: WordAttributes) -> dict[str, Any]:
    """What the summary keeps of one model's attributes: ``r`` and the paper's three checks."""
    r = attrs.remaining  # [L, C]
    last, names = r[-1], attrs.concepts
    unrelated = [c for c in names if c in UNRELATED]
    related = [c for c in names if c not in UNRELATED]
    return {
        "concepts": names, "remaining": r.tolist(), "word_attribute": attrs.word_attribute.tolist(),
        "decreasing": {c: monotone_decreasing(r[:, j].tolist()) for j, c in enumerate(names)},
        "first_above_last": {c: bool(r[0, j] > r[-1, j]) for j, c in enumerate(names)},
        "most_kept_last_layer": names[int(last.argmin())],
        "least_kept_last_layer": names[int(last.argmax())],
        "max_over_min_last_layer": float(last.max() / last.min()) if float(last.min()) > 0 else None,
        "related_below_unrelated_last_layer": bool(
            max(float(last[names.index(c)]) for c in related) < min(float(last[names.index(c)]) for c in unrelated))
        if related and unrelated else None,
        "missing": attrs.missing, "split": attrs.split, "num_random": attrs.num_random,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = common.prepare(args, NAME)
    per_model: dict[str, dict[str, Any]] = {}
    panels: dict[str, list[WordAttributes]] = {k: [] for k in args.likelihoods}
    titles: dict[str, list[str]] = {k: [] for k in args.likelihoods}
    for name in args.models:
        trained = common.train_classifier(args, name, "sst2", out)
        tok = trained.data.tokenizer
        start = time.perf_counter()
        batch = tok.encode([args.sentence])
        tokens = tok.tokens([args.sentence])
        positions = word_positions(tokens[0], args.word)
        # 16 dev sentences give the normalisation of hidden units (one sentence has no variance).
        reference = tok.encode([args.sentence, *trained.data.dev_data[0][:15]])
        est = InfoFlowEstimator(trained.module, layers=trained.module.infoflow_layers,
                                steps=common.est_steps(args, 200), seed=args.seed)
        res = est.estimate(batch, reference=reference, tokens=tokens)
        vocab = getattr(tok, "hf", None) or tok.vocab
        row: dict[str, Any] = {"positions": positions, "tokens": tokens[0], "val_acc": trained.metrics["val/acc"],
                               "train_seconds": trained.seconds}
        for likelihood in args.likelihoods:
            if likelihood == "state" and len(positions) > 1:
                row[likelihood] = {"skipped": f"{args.word!r} is {len(positions)} word pieces; the state "
                                              "likelihood replaces one position"}
                continue
            attrs = word_attributes(est, res, 0, positions, args.concepts, vocab, batch=batch, reference=reference,
                                    num_random=args.num_random, seed=args.seed, likelihood=likelihood)
            common.log.info("%s\n%s", name, attrs.report())
            row[likelihood] = summarise(attrs)
            panels[likelihood].append(attrs)
            titles[likelihood].append(f"{name} (dev acc {trained.metrics['val/acc']:.3f})")
        row["estimate_seconds"] = time.perf_counter() - start
        per_model[name] = row
    figures = {}
    for likelihood in args.likelihoods:
        if not panels[likelihood]:
            continue
        fig = attribute_figure(panels[likelihood], titles=titles[likelihood])
        fig.suptitle(f"Remaining attributes r(i,c) of {args.word!r} in {args.sentence!r} "
                     f"({likelihood} likelihood; nats; smaller = kept)", fontsize=10)
        suffix = "" if likelihood == "gaussian" else f"_{likelihood}"
        figures[likelihood] = common.save_figure(fig, out, f"fig8_attributes{suffix}")
    summary = {"analysis": NAME, "out": out, "figure": next(iter(figures.values()), None), "figures": figures,
               "sentence": args.sentence, "word": args.word, "models": per_model}
    common.write_summary(out, summary)
    return summary
