"""Fig. 2 (Sec. 4.1): information across timestamps of the reverse model's last hidden layer.

For each decoder step t the state s is the last hidden layer at that step; the estimator gives the
information of every input word (encoder inputs, <EOS>, <SOS>, decoder inputs). The reverse pattern is
measured: at decoder step t (which predicts y_t = x_{L+1-t}) the encoder word carrying the most
information should be x_{L+1-t}.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from examples.analyses import common
from examples.models import ReverseTask, make_reverse_data, reverse_tokens
from lightning_infoflow import InfoFlowEstimator

NAME = "timestamps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, max_steps=1500)
    parser.add_argument("--seq-len", type=int, default=8, help="length L of the sequences to reverse")
    parser.add_argument("--probe-size", type=int, default=16, help="validation sequences analysed")


def reverse_diagonal(info: torch.Tensor, seq_len: int) -> dict[str, Any]:
    """Measure the reverse diagonal in ``info`` ``[L dec steps, B, T]``.

    Returns the hit rate (how often the encoder word with the most information at decoder step t is
    x_{L+1-t}), the argmax position per step (majority over sentences) and the chance rate 1/L.
    """
    enc = info[:, :, :seq_len]  # encoder words x_1..x_L
    best = enc.argmax(-1)  # [L, B]
    expected = torch.arange(seq_len - 1, -1, -1).unsqueeze(1)  # step t (0-based) -> x index L-1-t
    hits = (best == expected).float()
    majority = best.mode(dim=1).values.tolist()
    return {"hit_rate": float(hits.mean()), "hit_rate_per_step": hits.mean(1).tolist(),
            "argmax_per_step": majority, "expected_per_step": expected.squeeze(1).tolist(),
            "chance": 1.0 / seq_len}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = common.prepare(args, NAME)
    seq_len = 4 if args.tiny else args.seq_len
    sizes = {"embed_dim": 8, "hidden": 16, "train_size": 64, "val_size": 32} if args.tiny else {}
    module = ReverseTask(seq_len=seq_len, batch_size=args.batch_size * 2, seed=args.seed, **sizes)
    logger = TensorBoardLogger(out, name="reverse", default_hp_metric=False)
    start = time.perf_counter()
    trainer = common.trainer(args, logger, val_every=min(args.max_steps, 500))
    trainer.fit(module)
    train_s = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.validate(module, verbose=False)[0].items()}

    data = make_reverse_data(args.probe_size if not args.tiny else 4, seq_len, seed=args.seed + 2)
    probe = {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}
    n_enc = seq_len + 1
    dec_positions = list(range(n_enc, 2 * seq_len + 1))  # time index of decoder steps 1..L
    start = time.perf_counter()
    est = InfoFlowEstimator(module.eval(), layers=module.infoflow_layers, position=dec_positions,
                            steps=common.est_steps(args, 200), seed=args.seed)
    res = est.estimate(probe, tokens=reverse_tokens(data["input_ids"]))
    est_s = time.perf_counter() - start
    res.save(f"{out}/result.pt")
    info = res.information  # [L dec steps, B, T]
    measured = reverse_diagonal(info, seq_len)

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    words = res.tokens[0]
    steps = [f"t={t + 1} ({words[p]}→{'abcd'[int(data['labels'][0, t]) - 1]})" for t, p in enumerate(dec_positions)]
    im = common.heatmap(axes[0], info[:, 0].numpy(), words, steps, "one sequence: information (nats)")
    fig.colorbar(im, ax=axes[0], fraction=0.04)
    mean = info.nanmean(1)[:, :seq_len].numpy()
    im = common.heatmap(axes[1], mean, [f"x{i + 1}" for i in range(seq_len)], [f"t={t + 1}" for t in range(seq_len)],
                        f"mean over {info.shape[1]} sequences, encoder words\nreverse hit rate "
                        f"{measured['hit_rate']:.2f} (chance {measured['chance']:.2f})")
    axes[1].plot(np.arange(seq_len - 1, -1, -1), np.arange(seq_len), "r+", markersize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.04)
    fig.suptitle(f"Reverse task, last hidden layer per decoder step (val token acc {metrics['val/token_acc']:.3f})",
                 fontsize=10)
    png = common.save_figure(fig, out, "fig2_timestamps", logger)
    summary = {"analysis": NAME, "out": out, "figure": png, "val": metrics, "train_seconds": train_s,
               "estimate_seconds": est_s, "seq_len": seq_len, "max_steps": args.max_steps,
               "est_steps_run": res.meta["steps_run"], **measured}
    common.write_summary(out, summary)
    return summary
