"""Table 2 (Sec. 5): dev accuracy on SST-2 and Matthews correlation on CoLA of the four models.

Metrics come from torchmetrics (``BinaryAccuracy``, ``BinaryMatthewsCorrCoef``) in ``TextClassifier``'s
validation loop, on the full dev sets. The paper's numbers are printed next to them.
"""

from __future__ import annotations

import argparse
from typing import Any

from matplotlib.figure import Figure

from examples.analyses import common
from examples.models import MODEL_NAMES

NAME = "accuracy"

# Table 2 of the paper: SST-2 accuracy and CoLA MCC.
PAPER = {"bert": (0.9323, 0.6110), "transformer": (0.8245, 0.1560), "lstm": (0.8486, 0.1296), "cnn": (0.8200, 0.0985)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, max_steps=600)
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cola"], choices=["sst2", "cola"])


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| model | SST-2 acc (ours) | SST-2 acc (paper) | CoLA MCC (ours) | CoLA MCC (paper) |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        sst, cola = r.get("sst2"), r.get("cola")
        lines.append(f"| {name} | {'-' if sst is None else f'{sst:.4f}'} | {PAPER[name][0]:.4f} | "
                     f"{'-' if cola is None else f'{cola:.4f}'} | {PAPER[name][1]:.4f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = common.prepare(args, NAME)
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for name in args.models:
        rows[name] = {}
        for task in args.tasks:
            trained = common.train_classifier(args, name, task, out)
            rows[name][task] = trained.metrics["val/acc" if task == "sst2" else "val/mcc"]
            seconds[f"{name}_{task}"] = trained.seconds
    table = markdown_table(rows)
    with open(f"{out}/table2.md", "w") as f:
        f.write(table + "\n")
    print(table)

    fig = Figure(figsize=(4.5 * len(args.tasks), 3.5), layout="constrained")
    axes = fig.subplots(1, len(args.tasks), squeeze=False)[0]
    for ax, task in zip(axes, args.tasks):
        col = 0 if task == "sst2" else 1
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [rows[n][task] for n in rows], width=0.4, label="ours")
        ax.bar([x + 0.2 for x in xs], [PAPER[n][col] for n in rows], width=0.4, label="paper")
        ax.set_xticks(list(xs), labels=list(rows))
        ax.set_title("SST-2 accuracy" if task == "sst2" else "CoLA MCC", fontsize=9)
        ax.legend(fontsize=7)
    png = common.save_figure(fig, out, "table2_accuracy")
    summary = {"analysis": NAME, "out": out, "figure": png, "results": rows, "paper": PAPER,
               "train_seconds": seconds, "table": table}
    common.write_summary(out, summary)
    return summary
