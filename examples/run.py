"""Command line for the paper's analyses: ``python -m examples.run <analysis> [options]``.

Each analysis trains what it needs on the CPU (CPU-friendly defaults), writes TensorBoard logs and PNG
figures under ``--out`` (default ``runs/examples/<analysis>``) and a ``summary.json`` with what it
measured. ``python -m examples.run <analysis> --help`` lists the options.

==============  ============================================================================
timestamps      Fig. 2: reverse task, last hidden layer per decoder step (reverse diagonal)
layers          Fig. 3: BiLSTM on SST-2, information per word in each of the 4 layers
regularization  Fig. 4: Transformer on SST-2 with several L2 weights
words           Figs. 5-6: words the output layer reads, four models, 100 dev sentences
sentence        Fig. 7: layer-wise information of the four models on one sentence
attributes      Fig. 8: which attributes of "unhappiness" each layer of the four models keeps
dynamics        Fig. 9: information per layer against training step (BERT, LSTM), via the callback
accuracy        Table 2: dev accuracy (SST-2) and MCC (CoLA) of the four models
train           train one model on one task (and keep it in --cache for the other analyses)
==============  ============================================================================
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Optional

ANALYSES = ("timestamps", "layers", "regularization", "words", "sentence", "attributes", "dynamics", "accuracy",
            "train")


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m examples.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="analysis", required=True)
    modules = {}
    for name in ANALYSES:
        module = importlib.import_module(f"examples.analyses.{name}")
        modules[name] = module
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = modules[args.analysis].run(args)
    summary["wall_seconds"] = time.perf_counter() - start
    if "out" in summary:
        from examples.analyses.common import write_summary

        write_summary(summary["out"], summary)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (list, dict)) or k == "figure"},
                     indent=1, default=float))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
