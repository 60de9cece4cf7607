"""Cost and error of warm-started analyses next to cold ones, on the checkpoints of a training run.

    python benchmarks/warm_vs_cold.py --run runs/sweep/lstm_dropout/lstm_dropout0_seed0 --sentences 8 \
        --reference-at 50 250
    python benchmarks/warm_vs_cold.py --minilm --sentences 2 --reference-at 50 200
    python benchmarks/warm_vs_cold.py --run runs/long/lstm_dropout/lstm_dropout0_seed0 --checkpoints 200 500 1000 \
        1500 2000 --reference-at 1500 2000

The run is a folder written by ``python -m examples.sweep run`` (its model's state_dict at every analysis
step of the callback's default schedule, its probe and hyperparameters), or ``--minilm``: all-MiniLM-L6-v2
fine-tuned here on SST-2, its weights kept at every step of the schedule, probed with the first SST-2 dev
sentences at its 6 layers. For every checkpoint, in step order, on one CPU thread:

- ``warm``: ``steps="auto"`` started from the previous checkpoint's warm result, as the callback does
  (cold at the first checkpoint);
- ``cold``: ``steps="auto"`` from the closed-form start;
- ``fixed``: the callback's earlier defaults, 20 steps cold then 5 warm;
- at the steps of ``--reference-at``: a long run (``--reference-steps`` fixed steps of
  ``--reference-samples`` draws, another seed) that the others are scored against, as the root mean
  square and the median over words of ``|log sigma - log sigma_ref|`` (relative error of sigma).

Cost is the process CPU time of each estimate and its optimisation steps. Prints a Markdown table and
writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lightning_infoflow import InfoFlowResult  # noqa: E402


def gaps(result: InfoFlowResult, reference: InfoFlowResult) -> tuple[float, float]:
    """Root mean square and median over words of ``|log sigma - log sigma_ref|``."""
    gap = (result.sigma.log() - reference.sigma.log()).abs()
    gap = gap[~gap.isnan()]
    return float(gap.pow(2).mean().sqrt()), float(gap.median())


def timed(estimate: Any) -> tuple[InfoFlowResult, float]:
    started = time.process_time()
    result = estimate()
    return result, time.process_time() - started


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a run folder of `python -m examples.sweep run`")
    parser.add_argument("--minilm", action="store_true",
                        help="instead of --run: fine-tune all-MiniLM-L6-v2 on SST-2 (batch 16, lr 2e-5) to the "
                             "last step of --schedule, analysing its 6 layers at every step of the schedule")
    parser.add_argument("--schedule", type=int, nargs="*", default=[0, 1, 2, 5, 10, 20, 50, 100, 200],
                        help="--minilm: the steps analysed (default: the callback's log-spaced schedule to 200)")
    parser.add_argument("--checkpoints", type=int, nargs="*", default=None,
                        help="--run: only these of its checkpoint steps (the warm chain runs over them)")
    parser.add_argument("--sentences", type=int, default=8, help="the first N probe sentences")
    parser.add_argument("--reference-at", type=int, nargs="*", default=[], help="steps scored against a long run")
    parser.add_argument("--reference-steps", type=int, default=400)
    parser.add_argument("--reference-samples", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", default=None, help="JSON output (default: print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.minilm:
        estimator, batch, checkpoints = _minilm(args)
        source = "all-MiniLM-L6-v2 fine-tuned on SST-2"
    elif args.run:
        estimator, batch, checkpoints = _sweep_run(args)
        source = args.run
    else:
        parser.error("pass --run DIR or --minilm")
    rows: list[dict[str, Any]] = []
    warm: Optional[InfoFlowResult] = None
    fixed: Optional[InfoFlowResult] = None
    for step, load in checkpoints:
        load()
        warm, warm_s = timed(partial(estimator.estimate, batch, steps="auto", init=warm))
        cold, cold_s = timed(partial(estimator.estimate, batch, steps="auto"))
        fixed, fixed_s = timed(partial(estimator.estimate, batch, steps=5 if fixed is not None else 20, init=fixed))
        row: dict[str, Any] = {"step": step, "warm_steps": warm.meta["steps_run"], "warm_cpu_s": warm_s,
                               "cold_steps": cold.meta["steps_run"], "cold_cpu_s": cold_s,
                               "fixed_steps": fixed.meta["steps_run"], "fixed_cpu_s": fixed_s,
                               "warm_stated_error": max(warm.meta["error"] or [float("nan")]),
                               "cold_stated_error": max(cold.meta["error"] or [float("nan")])}
        if step in args.reference_at:
            ref, ref_s = timed(partial(_reference, estimator, batch, args))
            row.update(reference_cpu_s=ref_s)
            for name, res in (("warm", warm), ("cold", cold), ("fixed", fixed)):
                row[f"{name}_rms"], row[f"{name}_median"] = gaps(res, ref)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(table(rows, args))
    if args.out:
        Path(args.out).write_text(json.dumps({"source": source, "settings": vars(args), "rows": rows}, indent=1))


def _sweep_run(args: argparse.Namespace) -> tuple[Any, Any, list[tuple[int, Any]]]:
    """The estimator and probe the callback built for a sweep run, and a loader per saved checkpoint."""
    from examples import sweep_reanalyse as sweep

    run_dir = args.run.rstrip("/")
    record = json.loads(Path(run_dir, "record.json").read_text())
    module = sweep.rebuild_module(record)
    steps = sweep.checkpoint_steps(run_dir)
    sweep.load_checkpoint(module, run_dir, steps[0])
    tokenizer = sweep._tokenizer(record["hparams"]["model_name"], args.max_length, {})
    estimator, probe, _config = sweep._estimator_and_probe(module, run_dir, record, tokenizer)
    chosen = list(range(min(args.sentences, len(probe.tokens))))
    batch = {k: v[chosen] for k, v in probe.batch.items()} if isinstance(probe.batch, dict) else probe.batch[chosen]
    if getattr(args, "checkpoints", None):
        missing = sorted(set(args.checkpoints) - set(steps))
        if missing:
            raise SystemExit(f"{run_dir} has no checkpoints at steps {missing}; it has {steps}")
        steps = [s for s in steps if s in args.checkpoints]
    return estimator, batch, [(s, partial(sweep.load_checkpoint, module, run_dir, s)) for s in steps]


def _minilm(args: argparse.Namespace) -> tuple[Any, Any, list[tuple[int, Any]]]:
    """Fine-tune MiniLM (a fresh 2-class head) with AdamW, keeping its weights at each step of the schedule."""
    from common import minilm_dir, probe_batch, sst2_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_infoflow import InfoFlowEstimator

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2).float()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    lines = [line.split("\t") for line in sst2_path("train").read_text().splitlines()[1:]]
    dev = [line.split("\t")[0] for line in sst2_path("dev").read_text().splitlines()[1:]]
    gen = torch.Generator().manual_seed(0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-5)
    snapshots: dict[int, dict[str, Any]] = {}
    for step in range(max(args.schedule) + 1):
        if step in args.schedule:
            snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if step == max(args.schedule):
            break
        model.train()
        idx = torch.randint(0, len(lines), (16,), generator=gen).tolist()
        enc = tokenizer([lines[i][0] for i in idx], padding=True, truncation=True, max_length=args.max_length,
                        return_tensors="pt")
        loss = model(**enc, labels=torch.tensor([int(lines[i][1]) for i in idx])).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    model.load_state_dict(snapshots[0])
    batch = probe_batch(tokenizer, dev[: args.sentences])
    estimator = InfoFlowEstimator(model, layers="bert.encoder.layer.*")
    return estimator, batch, [(s, partial(model.load_state_dict, snapshots[s])) for s in sorted(snapshots)]


def _reference(estimator: Any, batch: Any, args: argparse.Namespace) -> InfoFlowResult:
    """A long run of many draws with another seed: what the others are scored against."""
    saved = (estimator.samples, estimator.seed)
    estimator.samples, estimator.seed = args.reference_samples, 1234
    try:
        return estimator.estimate(batch, steps=args.reference_steps)
    finally:
        estimator.samples, estimator.seed = saved


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = ("| step | warm auto: steps, CPU s | cold auto: steps, CPU s | warm / cold CPU | fixed 20 then 5: steps, "
            "CPU s | RMS error warm / cold / fixed (median) |")
    lines = [head, "|" + "---|" * 6]
    for r in rows:
        err = "-"
        if "warm_rms" in r:
            err = " / ".join(f"{r[f'{n}_rms']:.3f} ({r[f'{n}_median']:.3f})" for n in ("warm", "cold", "fixed"))
        lines.append(f"| {r['step']} | {r['warm_steps']}, {r['warm_cpu_s']:.1f} | {r['cold_steps']}, "
                     f"{r['cold_cpu_s']:.1f} | {r['warm_cpu_s'] / r['cold_cpu_s']:.2f} | {r['fixed_steps']}, "
                     f"{r['fixed_cpu_s']:.1f} | {err} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
