"""Train one model on one task from the command line (kept in ``--cache`` for the other analyses)."""

from __future__ import annotations

import argparse
from typing import Any

from examples.analyses import common
from examples.models import MODEL_NAMES, PAPER_LSTM

NAME = "train"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, max_steps=1000)
    parser.add_argument("--model", default="lstm", choices=MODEL_NAMES)
    parser.add_argument("--task", default="sst2", choices=["sst2", "cola"])
    parser.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight alpha")
    parser.add_argument("--paper-size", action="store_true", help="the paper's 768-d LSTM")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = common.prepare(args, NAME)
    paper = args.paper_size and args.model == "lstm" and not args.tiny
    tag = ("_paper" if paper else "") + (f"_alpha{args.weight_decay:g}" if args.weight_decay else "")
    trained = common.train_classifier(args, args.model, args.task, out, weight_decay=args.weight_decay, tag=tag,
                                      model_kwargs=PAPER_LSTM if paper else None)
    summary = {"analysis": NAME, "out": out, "model": args.model, "task": args.task, "val": trained.metrics,
               "train_seconds": trained.seconds}
    common.write_summary(out, summary)
    return summary
