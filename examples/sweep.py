"""Regularisation sweeps that test the guidance rules: ``python -m examples.sweep {run,reanalyse,report}``.

``run`` trains, on SST-2, the example Transformer with several Adam weight decays (coupled L2) and the
example LSTM with several dropout rates, each with a few seeds, under :class:`~lightning_infoflow.InfoFlowCallback`
(default schedule, a fixed probe of dev sentences) and a ``CSVLogger``. Each run also keeps the model's
``state_dict`` at every analysis step, the probe's token ids, its training loss at every step and its
validation scores, so that any new measure can be recomputed offline. Finished runs are skipped, an
unfinished one is started again from scratch.

``reanalyse`` runs the installed estimator again on every saved checkpoint, as the callback would, into the
namespace ``reanalysed`` of each run's log dir (:mod:`examples.sweep_reanalyse`), so that a newer estimator
is judged on the same runs without retraining.

``report`` reads the saved runs only (no training) and writes a Markdown report: which guidance rules
fired where and whether their advice pointed towards the better setting, and rank correlations of early
signals with final dev accuracy (see :mod:`examples.sweep_report`).

Layout of ``--out`` (default ``runs/sweep``)::

    <sweep>/<run>/record.json           what the run measured (written last: its presence marks the run done)
    <sweep>/<run>/probe.pt              the probe's sentences, input_ids and attention_mask
    <sweep>/<run>/train_loss.pt         training loss at every optimizer step
    <sweep>/<run>/checkpoints/step_N.pt the model's state_dict at each analysis step
    <sweep>/<run>/logs/version_0/       the CSVLogger's log dir (metrics.csv, hparams.yaml, infoflow/results)
    <sweep>/<run>/logs/version_0/reanalysed/results   ``reanalyse``'s results (same file layout)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

SWEEP_FILE = "sweep.json"
RECORD_FILE = "record.json"
EARLY_FRACTION = 0.2


@dataclass(frozen=True)
class Sweep:
    """One swept hyperparameter of one example model."""

    name: str
    model: str
    param: str  # "weight_decay" (TextClassifier's Adam L2) or "dropout" (the model's dropout)
    values: tuple[float, ...]

    def run_name(self, value: float, seed: int) -> str:
        short = {"weight_decay": "wd", "dropout": "dropout"}[self.param]
        return f"{self.model}_{short}{value:g}_seed{seed}"


def sweeps_from(args: argparse.Namespace) -> list[Sweep]:
    """The sweeps the options ask for."""
    known = {
        "transformer_wd": Sweep("transformer_wd", "transformer", "weight_decay", tuple(args.wd_values)),
        "lstm_dropout": Sweep("lstm_dropout", "lstm", "dropout", tuple(args.dropout_values)),
    }
    return [known[name] for name in args.sweeps]


def early_step(max_steps: int) -> int:
    """The step that stands for ~20% of training (validation runs every this many steps)."""
    return max(1, round(EARLY_FRACTION * max_steps))


# --------------------------------------------------------------------------- one run


def _recorder_class() -> type:
    """The recording callback (built lazily so that importing this module does not import Lightning)."""
    from lightning.pytorch import Callback

    class SweepRecorder(Callback):
        """Keeps, next to an InfoFlowCallback, the model at each analysis, the loss per step, the validations.

        Put it after the InfoFlowCallback in ``callbacks``: Lightning calls them in order, so the analysis
        of a step is finished when this callback looks for it.
        """

        def __init__(self, infoflow: Any, checkpoint_dir: str, early_dev: Optional[tuple[int, Any, Any]]) -> None:
            self.infoflow = infoflow
            self.early_dev = early_dev  # (step, dev data, collate): validate once, at this step
            self.checkpoint_dir = checkpoint_dir
            self.saved_steps: list[int] = []
            self.train_loss: dict[int, float] = {}
            self.validations: dict[int, dict[str, float]] = {}

        def _save_new_analysis(self, pl_module: Any) -> None:
            result = self.infoflow.last_result
            step = None if result is None else int(result.meta["step"])
            if step is None or step in self.saved_steps:
                return
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            torch.save(state, os.path.join(self.checkpoint_dir, f"step_{step}.pt"))
            self.saved_steps.append(step)

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self._save_new_analysis(pl_module)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor):
                self.train_loss[int(trainer.global_step)] = float(loss.detach())
            self._save_new_analysis(pl_module)
            if self.early_dev is not None and trainer.global_step == self.early_dev[0]:
                self.validations[trainer.global_step] = dev_scores(pl_module, *self.early_dev[1:])

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._save_new_analysis(pl_module)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                metrics = trainer.callback_metrics
                self.validations[int(trainer.global_step)] = {
                    k: float(metrics[k]) for k in ("val/acc", "val/loss") if k in metrics}

    return SweepRecorder


def dev_scores(module: Any, data: tuple[list[str], list[int]], collate: Any, batch_size: int = 64) -> dict[str, float]:
    """``val/acc`` and ``val/loss`` (mean over sentences) of ``module`` on ``data``, in eval mode, without
    gradients and without a DataLoader (which would draw from the global RNG and change the training)."""
    sentences, labels = data
    was_training = module.training
    module.eval()
    loss_sum, correct = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(sentences), batch_size):
                batch = collate(list(zip(sentences[i:i + batch_size], labels[i:i + batch_size])))
                logits = module(batch["input_ids"], batch["attention_mask"])
                loss_sum += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
                correct += int((logits.argmax(-1) == batch["labels"]).sum())
    finally:
        module.train(was_training)
    return {"val/acc": correct / len(sentences), "val/loss": loss_sum / len(sentences)}


def _mean_over(losses: dict[int, float], low: float, high: float) -> float:
    """Mean training loss of the steps in ``(low, high]`` (NaN if none)."""
    window = [v for s, v in losses.items() if low < s <= high]
    return sum(window) / len(window) if window else float("nan")


def _record(sweep: Sweep, value: float, seed: int, args: argparse.Namespace, recorder: Any, infoflow: Any,
            hparams: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What one run measured (``record.json``)."""
    steps, early = args.max_steps, early_step(args.max_steps)
    vals = recorder.validations
    final_step = max(vals) if vals else -1
    early_val = vals.get(early, {})
    analyses = sorted(int(s) for s in infoflow.state.steps)
    return {
        "sweep": sweep.name, "model": sweep.model, "param": sweep.param, "value": value, "seed": seed,
        "max_steps": steps, "early_step": early,
        "final_val_acc": vals.get(final_step, {}).get("val/acc", float("nan")), "final_val_step": final_step,
        "final_val_loss": vals.get(final_step, {}).get("val/loss", float("nan")),
        "early_val_acc": early_val.get("val/acc", float("nan")),
        "early_val_loss": early_val.get("val/loss", float("nan")),
        # training loss: the mean over the last tenth of training before the point (per-step values)
        "early_train_loss": _mean_over(recorder.train_loss, early - steps / 10, early),
        "final_train_loss": _mean_over(recorder.train_loss, steps - steps / 10, steps),
        "validations": {str(k): v for k, v in sorted(vals.items())},
        "analysis_steps": analyses, "checkpoint_steps": sorted(recorder.saved_steps),
        "analyses_skipped": infoflow.skipped, "analysis_failures": infoflow.failures,
        "wall_seconds": seconds, "log_dir": os.path.join("logs", "version_0"), "hparams": hparams,
    }


def _classifier(sweep: Sweep, value: float, vocab_size: int, tiny: bool) -> Any:
    from examples.analyses import common
    from examples.models import TextClassifier

    kwargs = dict(common.TINY_MODELS[sweep.model]) if tiny else {}
    weight_decay = value if sweep.param == "weight_decay" else 0.0
    if sweep.param == "dropout":
        kwargs["dropout"] = value
    return TextClassifier(sweep.model, vocab_size, lr=common.LEARNING_RATES[sweep.model],
                          weight_decay=weight_decay, model_kwargs=kwargs or None)


def run_one(sweep: Sweep, value: float, seed: int, args: argparse.Namespace, run_dir: str, dm: Any) -> dict[str, Any]:
    """Train one setting with one seed under the callback; write the run's files; return its record.

    The dev set is scored at ~20% of training and at the end (:func:`dev_scores`), logged as ``val/acc``
    and ``val/loss``; Lightning's own validation loop is off.
    """
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from examples.analyses import common
    from examples.analyses.layers import probe_sentences
    from examples.data import Collate
    from lightning_infoflow import EstimatorConfig, InfoFlowCallback

    start = time.perf_counter()
    args.seed = dm.seed = seed  # the seed orders the training batches
    sentences = probe_sentences(dm.dev_data[0], args.probe_size)
    tok = dm.tokenizer
    torch.save({"sentences": sentences, **tok.encode(sentences)}, os.path.join(run_dir, "probe.pt"))
    L.seed_everything(seed, workers=True, verbose=False)  # the same initialisation for every setting of a seed
    module = _classifier(sweep, value, dm.vocab_size, args.tiny)
    infoflow = InfoFlowCallback(probe=sentences, tokenizer=tok, layers="auto", num_sentences=len(sentences),
                                estimator=EstimatorConfig(seed=seed), heatmaps=0, max_overhead=None)
    early_dev = (early_step(args.max_steps), dm.dev_data, Collate(tok))
    recorder = _recorder_class()(infoflow, os.path.join(run_dir, "checkpoints"), early_dev)
    logger = CSVLogger(run_dir, name="logs", version=0)
    trainer = common.trainer(args, logger, callbacks=[infoflow, recorder])
    trainer.fit(module, datamodule=dm)
    recorder.validations[trainer.global_step] = dev_scores(module, dm.dev_data, Collate(tok))
    for step, scores in sorted(recorder.validations.items()):
        logger.log_metrics(scores, step=step)
    logger.save()
    torch.save(recorder.train_loss, os.path.join(run_dir, "train_loss.pt"))
    return _record(sweep, value, seed, args, recorder, infoflow, dict(module.hparams), time.perf_counter() - start)


def run_sweeps(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (sweep, value, seed) run not yet finished under ``args.out``, seed by seed (so that an
    interrupted sweep has whole seeds first); returns all records."""
    from examples.analyses import common

    torch.set_num_threads(args.threads)
    common.prepare(argparse.Namespace(tiny=False, out=args.out, seed=0), "sweep")  # folder, quiet Lightning logs
    sweeps = sweeps_from(args)
    for sweep in sweeps:
        os.makedirs(os.path.join(args.out, sweep.name), exist_ok=True)
        with open(os.path.join(args.out, sweep.name, SWEEP_FILE), "w") as f:
            json.dump({"model": sweep.model, "param": sweep.param, "values": list(sweep.values),
                       "seeds": list(args.seeds), "max_steps": args.max_steps, "probe_size": args.probe_size,
                       "train_size": args.train_size, "dev_size": args.dev_size}, f)
    data: dict[tuple[str, Optional[int]], Any] = {}
    records = []
    for seed in args.seeds:
        for sweep in sweeps:
            key = (sweep.model, seed if args.train_size or args.dev_size else None)  # subsets depend on the seed
            for value in sweep.values:
                run_dir = os.path.join(args.out, sweep.name, sweep.run_name(value, seed))
                records.append(_run_or_skip(sweep, value, seed, args, run_dir, data, key))
    return records


def _run_or_skip(sweep: Sweep, value: float, seed: int, args: argparse.Namespace, run_dir: str,
                 data: dict[tuple[str, Optional[int]], Any], key: tuple[str, Optional[int]]) -> dict[str, Any]:
    done = os.path.join(run_dir, RECORD_FILE)
    if os.path.exists(done):
        with open(done) as f:
            record: dict[str, Any] = json.load(f)
        print(f"skip {run_dir}: finished before (dev acc {record['final_val_acc']:.3f})", flush=True)
        return record
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts again from scratch
    os.makedirs(run_dir)
    if key not in data:  # one datamodule (vocabulary, splits) per model, built when first needed
        from examples.analyses import common

        args.seed = seed
        data[key] = common.datamodule(args, sweep.model, "sst2")
    record = run_one(sweep, value, seed, args, run_dir, data[key])
    with open(done + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(done + ".tmp", done)
    print(f"done {run_dir}: dev acc {record['final_val_acc']:.3f}, {record['wall_seconds']:.0f} s", flush=True)
    return record


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    from examples.analyses import common

    parser = argparse.ArgumentParser(prog="python -m examples.sweep", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train the sweeps (skips finished runs)")
    common.add_common_arguments(run, max_steps=500)
    run.set_defaults(out=os.path.join("runs", "sweep"))
    run.add_argument("--sweeps", nargs="+", default=["transformer_wd", "lstm_dropout"],
                     choices=["transformer_wd", "lstm_dropout"])
    run.add_argument("--wd-values", type=float, nargs="+", default=[0.0, 1e-3, 1e-2, 1e-1],
                     help="Adam weight decays (coupled L2) of the Transformer sweep")
    run.add_argument("--dropout-values", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75],
                     help="dropout rates of the LSTM sweep")
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    run.add_argument("--probe-size", type=int, default=16, help="dev sentences in the callback's probe")
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    again = sub.add_parser("reanalyse", help="run the installed estimator on the saved checkpoints (no training)")
    again.add_argument("--runs", default=os.path.join("runs", "sweep"), help="the `run` command's --out")
    again.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    again.add_argument("--max-length", type=int, default=50, help="the `run` command's --max-length")
    report = sub.add_parser("report", help="judge the guidance rules on saved runs (no training)")
    report.add_argument("--runs", default=os.path.join("runs", "sweep"), help="the `run` command's --out")
    report.add_argument("--out", default=os.path.join("docs", "guidance_validation.md"), help="Markdown file to write")
    report.add_argument("--namespace", default=None, choices=["infoflow", "reanalysed"],
                        help="which result files to judge (default: reanalysed where every run has them, "
                             "else infoflow, the callback's own)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Any:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return run_sweeps(args)
    if args.command == "reanalyse":
        from examples import sweep_reanalyse

        return sweep_reanalyse.reanalyse(args.runs, args.threads, args.max_length)
    from examples import sweep_report

    return sweep_report.write_report(args.runs, args.out, args.namespace)


if __name__ == "__main__":
    main(sys.argv[1:])
