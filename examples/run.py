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


class _DefaultsFormatter(argparse.HelpFormatter):
    """Adds ``(default: ...)`` to an option's help unless it says its default already or has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _one_line_help() -> dict[str, str]:
    """Each analysis's line of the table above (so that ``--help`` imports no analysis)."""
    lines = [line.split(None, 1) for line in (__doc__ or "").splitlines()]
    return {parts[0]: parts[1].strip() for parts in lines if len(parts) == 2 and parts[0] in ANALYSES}


def main(argv: Optional[list[str]] = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m examples.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="analysis", required=True)
    chosen = next((a for a in argv if a in ANALYSES), None)  # only its module is imported
    modules = {}
    for name, line in _one_line_help().items():
        p = sub.add_parser(name, help=line, description=line, formatter_class=_DefaultsFormatter)
        if name == chosen:
            modules[name] = importlib.import_module(f"examples.analyses.{name}")
            modules[name].add_arguments(p)
            for action in p._actions:  # options without a help line still show their default
                if action.help is None and action.option_strings and action.default not in (None, False):
                    action.help = "(default: %(default)s)"
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
