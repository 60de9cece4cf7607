"""Demo: train a 4-layer BiLSTM on SST-2 for a few minutes on the CPU with InfoFlowCallback watching.

    python examples/demo.py                 # about 8 minutes on 2 CPU cores (measured in the README's Set up)
    python examples/demo.py --max-steps 50  # a quick look

Prints one line per analysis and per validation while it trains, so that it never looks hung.

Writes TensorBoard logs (scalars, custom-scalars chart, heatmaps, curves) and the raw result of every
analysis under ``--out``, plus PNG copies of the figures of the last analysis, then prints where they are.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.data import GlueDataModule, load_split  # noqa: E402
from examples.models import TextClassifier  # noqa: E402
from lightning_infoflow import InfoFlowCallback, InfoFlowResult  # noqa: E402
from lightning_infoflow.reporting.figures import information_curves, information_heatmap  # noqa: E402

PROBE = [
    "rare bird has more than enough charm to make it memorable .",
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "domestic tension and unhappiness",
]


class ProgressLines(L.Callback):
    """One printed line per analysis of ``infoflow`` and per validation, beside (or without) the progress bar."""

    def __init__(self, infoflow: InfoFlowCallback) -> None:
        self.infoflow = infoflow
        self.printed = -1

    def _analysis_line(self, trainer: L.Trainer) -> None:
        result = self.infoflow.last_result
        if result is None or int(result.meta["step"]) == self.printed:
            return
        self.printed = int(result.meta["step"])
        layers = ", ".join(f"{v:.0f}" for v in result.layer_information.tolist())
        _say(f"[step {self.printed}/{trainer.max_steps}] analysis {len(self.infoflow.state.steps)} took "
             f"{result.meta['seconds']:.1f} s; information per word by layer (nats): {layers}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._analysis_line(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self._analysis_line(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._analysis_line(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = ", ".join(f"{k} {float(v):.3f}" for k, v in sorted(trainer.callback_metrics.items())
                                if k.startswith("val"))
            _say(f"[step {trainer.global_step}/{trainer.max_steps}] validation: {metrics}")


def _say(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line)  # keeps Lightning's progress bar intact
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="log directory")
    parser.add_argument("--max-steps", type=int, default=600, help="optimizer steps")
    parser.add_argument("--every", type=int, default=200, help="analyse every N steps (plus 0, 1, 2, 5, ...)")
    parser.add_argument("--train-size", type=int, default=20000, help="SST-2 training sentences used")
    parser.add_argument("--hidden", type=int, default=64, help="LSTM units per direction")
    parser.add_argument("--probe-size", type=int, default=8, help="dev sentences in the probe (first 4 fixed)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--max-overhead", type=float, default=None,
                        help="the callback's time budget (fraction of training time); default: every analysis runs")
    parser.add_argument("--no-callback", action="store_true", help="train without the callback (to time it)")
    args = parser.parse_args(argv)

    L.seed_everything(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data = GlueDataModule("sst2", tokenizer="word", max_length=48, batch_size=32, train_size=args.train_size,
                          dev_size=872, seed=args.seed)
    data.setup()
    model = TextClassifier("lstm", vocab_size=data.vocab_size, lr=2e-3,
                           model_kwargs={"embed_dim": args.hidden, "hidden": args.hidden})
    dev_sentences, _ = load_split("sst2", "dev")
    probe = (PROBE + [s for s in dev_sentences if s not in PROBE])[: args.probe_size]
    callback = InfoFlowCallback(
        probe=probe,
        tokenizer=data.tokenizer,
        layers=model.infoflow_layers,
        every_n_train_steps=args.every,
        heatmaps=4,
        max_overhead=args.max_overhead,  # default None: every scheduled analysis, a dense Fig. 9 curve
    )
    logger = TensorBoardLogger(args.out, name="sst2_lstm", default_hp_metric=False)
    callbacks = [] if args.no_callback else [callback, ProgressLines(callback)]
    trainer = L.Trainer(max_steps=args.max_steps, logger=logger, callbacks=callbacks, val_check_interval=args.every,
                        check_val_every_n_epoch=None, enable_model_summary=False, log_every_n_steps=20)
    start = time.perf_counter()
    trainer.fit(model, data)
    minutes = (time.perf_counter() - start) / 60
    if args.no_callback:
        print(f"\nTrained {args.max_steps} steps in {minutes:.2f} min ({60 * minutes:.1f} s) without the callback.")
        return logger.log_dir

    results = sorted(glob.glob(os.path.join(logger.log_dir, "infoflow", "results", "*.pt")))
    last = InfoFlowResult.load(results[-1])
    figures_dir = os.path.join(logger.log_dir, "figures")
    os.makedirs(figures_dir, exist_ok=True)
    for b in range(min(4, last.sigma.shape[1])):
        information_heatmap(last, b).savefig(os.path.join(figures_dir, f"heatmap_sentence_{b}.png"), dpi=110)
    steps = [InfoFlowResult.load(p).meta["step"] for p in results]
    curves = torch.stack([InfoFlowResult.load(p).layer_information for p in results])
    information_curves(steps, curves, last.layer_names).savefig(os.path.join(figures_dir, "curves.png"), dpi=110)

    print(f"\nTrained {args.max_steps} steps in {minutes:.1f} min; {len(results)} analyses at steps {steps}.")
    print("Information per word (nats) in the last analysis, by layer:")
    for name, value, eff in zip(last.layer_names, last.layer_information.tolist(), last.effective_words.tolist()):
        print(f"  {name:20s} {value:8.1f}   effective words {eff:5.2f}")
    print(f"\nTensorBoard logs: {logger.log_dir}\n  open them with:  "
          f"tensorboard --logdir {args.out} --samples_per_plugin images=1000")
    print(f"Raw results:      {os.path.dirname(results[-1])}")
    print(f"PNG figures:      {figures_dir}")
    return logger.log_dir


if __name__ == "__main__":
    main()
