"""What every analysis shares: command-line options, training a model, the trained-model cache, figures."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from examples.data import GlueDataModule
from examples.models import TextClassifier, data_options
from lightning_infoflow import InfoFlowResult

log = logging.getLogger("examples")

# The sentence of the paper's Figs. 4 and 7, as it appears in the SST-2 dev set.
RARE_BIRD = "rare birds has more than enough charm to make it memorable ."

# Tiny sizes used by the tests (``--tiny``): every command runs end to end in seconds.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "transformer": {"d_model": 16, "nhead": 2, "num_layers": 3, "dim_feedforward": 32},
    "lstm": {"embed_dim": 8, "hidden": 8},
    "cnn": {"embed_dim": 8, "channels": 6},
    "bert": {},
}

LEARNING_RATES = {"bert": 5e-5, "transformer": 3e-4, "lstm": 1e-3, "cnn": 1e-3}


def add_common_arguments(parser: argparse.ArgumentParser, max_steps: int, train_size: Optional[int] = None) -> None:
    """Options every analysis takes."""
    parser.add_argument("--out", default=None, help="output folder (default: runs/examples/<analysis>)")
    parser.add_argument("--max-steps", type=int, default=max_steps, help="optimizer steps per trained model")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--max-length", type=int, default=50, help="truncation length in tokens")
    parser.add_argument("--train-size", type=int, default=train_size, help="random training subset (default: all)")
    parser.add_argument("--dev-size", type=int, default=None, help="random dev subset for validation (default: all)")
    parser.add_argument("--est-steps", type=int, default=None,
                        help="optimisation steps of the estimator after its closed-form start (default: per analysis)")
    parser.add_argument("--cache", default=None,
                        help="folder of trained models: reused when present, written otherwise")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--tiny", action="store_true", help="tiny models, a few steps (tests)")
    parser.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator for training (cpu, gpu, auto)")


def prepare(args: argparse.Namespace, name: str) -> str:
    """Create the output folder, seed everything, return the folder."""
    if args.tiny:  # tiny runs touch a few sentences only
        args.max_steps = min(args.max_steps, 2)
        args.train_size = min(args.train_size or 16, 16)
        args.dev_size = min(args.dev_size or 16, 16)
    out = args.out or os.path.join("runs", "examples", name)
    os.makedirs(out, exist_ok=True)
    L.seed_everything(args.seed, workers=True, verbose=False)
    for noisy in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return out


def trainer(args: argparse.Namespace, logger: Any, max_steps: Optional[int] = None,
            callbacks: Optional[list[Any]] = None, val_every: Optional[int] = None) -> L.Trainer:
    """A CPU-friendly Trainer: no checkpoints, no sanity check, validation only when asked."""
    steps = args.max_steps if max_steps is None else max_steps
    kwargs: dict[str, Any] = {"limit_val_batches": 0} if val_every is None else {
        "val_check_interval": val_every, "check_val_every_n_epoch": None}
    return L.Trainer(max_steps=steps, logger=logger, callbacks=callbacks or [], enable_checkpointing=False,
                     enable_progress_bar=args.progress, enable_model_summary=False, num_sanity_val_steps=0,
                     accelerator=getattr(args, "accelerator", "cpu"), devices=1, log_every_n_steps=10, **kwargs)


@dataclass
class Trained:
    """A trained classifier, its data, and its dev metrics."""

    module: TextClassifier
    data: GlueDataModule
    metrics: dict[str, float]
    seconds: float


def datamodule(args: argparse.Namespace, model_name: str, task: str) -> GlueDataModule:
    dm = GlueDataModule(task, batch_size=args.batch_size, max_length=args.max_length, train_size=args.train_size,
                        dev_size=args.dev_size, seed=args.seed, **data_options(model_name))
    dm.setup()
    return dm


def train_classifier(
    args: argparse.Namespace,
    model_name: str,
    task: str,
    out: str,
    weight_decay: float = 0.0,
    callbacks: Optional[list[Any]] = None,
    tag: str = "",
    model_kwargs: Optional[dict[str, Any]] = None,
) -> Trained:
    """Train (or load from ``--cache``) one classifier, log to TensorBoard under ``out``, evaluate on dev.

    ``model_kwargs`` overrides the model sizes (default: the model's own, or ``TINY_MODELS`` with ``--tiny``).
    """
    dm = datamodule(args, model_name, task)
    kwargs = model_kwargs if model_kwargs is not None else TINY_MODELS[model_name] if args.tiny else {}
    module = TextClassifier(model_name, dm.vocab_size, lr=LEARNING_RATES[model_name], weight_decay=weight_decay,
                            model_kwargs=kwargs)
    name = f"{model_name}_{task}{tag}"
    logger = TensorBoardLogger(out, name=name, default_hp_metric=False)
    cache = None
    if args.cache:
        size = "all" if args.train_size is None else args.train_size
        cache = os.path.join(args.cache, f"{name}_steps{args.max_steps}_n{size}_seed{args.seed}"
                                         f"{'_tiny' if args.tiny else ''}.pt")
    start = time.perf_counter()
    if cache and os.path.exists(cache):
        module.load_state_dict(torch.load(cache, weights_only=True))
        log.info("loaded %s from %s", name, cache)
    else:
        trainer(args, logger, callbacks=callbacks).fit(module, datamodule=dm)
        if cache:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            torch.save(module.state_dict(), cache)
    seconds = time.perf_counter() - start
    val = L.Trainer(logger=logger, enable_progress_bar=False, enable_model_summary=False,
                    accelerator=getattr(args, "accelerator", "cpu"),
                    devices=1).validate(module, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in val[0].items()}
    log.info("%s: %s (%.0f s)", name, metrics, seconds)
    return Trained(module.eval(), dm, metrics, seconds)


def est_steps(args: argparse.Namespace, default: int) -> int:
    if args.est_steps is not None:
        return args.est_steps
    return 2 if args.tiny else default


# --------------------------------------------------------------------------- figures and outputs


def heatmap(ax: Axes, values: np.ndarray, xlabels: Sequence[str], ylabels: Sequence[str], title: str,
            cmap: str = "viridis") -> Any:
    """One labelled heatmap on ``ax`` (rows: ``ylabels``; columns: ``xlabels``)."""
    im = ax.imshow(values, aspect="auto", cmap=cmap)
    ax.set_xticks(range(len(xlabels)), labels=list(xlabels), rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(ylabels)), labels=list(ylabels), fontsize=7)
    ax.set_title(title, fontsize=9)
    return im


def words_of(result: InfoFlowResult, b: int) -> list[str]:
    n = int(result.mask[b].sum())
    return list(result.tokens[b][:n]) if result.tokens else [str(i) for i in range(n)]


def information_rows(result: InfoFlowResult, b: int) -> np.ndarray:
    """``[L, n_words]`` information of sentence ``b`` (real words only)."""
    real = result.mask[b]
    return result.information[:, b][:, real].numpy()


def short_layer_names(names: Sequence[str]) -> list[str]:
    """``model.bert.encoder.layer.3`` -> ``layer.3`` (the last two components)."""
    return [".".join(n.split(".")[-2:]) for n in names]


def save_figure(fig: Figure, out: str, name: str, logger: Optional[TensorBoardLogger] = None) -> str:
    """Write ``<out>/<name>.png`` (small: 100 dpi) and add the figure to TensorBoard.

    The figure goes to ``logger``'s run, or to a ``<out>/figures`` TensorBoard run when none is given.
    """
    from torch.utils.tensorboard import SummaryWriter

    path = os.path.join(out, f"{name}.png")
    fig.savefig(path, dpi=100)
    if logger is not None:
        logger.experiment.add_figure(name, fig, close=False)
        logger.experiment.flush()
    else:
        with SummaryWriter(os.path.join(out, "figures")) as writer:
            writer.add_figure(name, fig, close=False)
    return path


def write_summary(out: str, summary: dict[str, Any]) -> str:
    """``<out>/summary.json``: the numbers an analysis measured (what RESULTS.md quotes)."""
    path = os.path.join(out, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2, default=float)
    return path
