"""Cost and error of warm-started analyses next to cold ones, on the checkpoints of a training run.

    python benchmarks/warm_vs_cold.py --run runs/sweep/lstm_dropout/lstm_dropout0_seed0 --sentences 8 \
        --reference-at 50 250

The run is a folder written by ``python -m examples.sweep run`` (its model's state_dict at every analysis
step of the callback's default schedule, its probe and hyperparameters). For every checkpoint, in step
order, on one CPU thread:

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

from examples import sweep_reanalyse as sweep  # noqa: E402
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
    parser.add_argument("--run", required=True, help="a run folder of `python -m examples.sweep run`")
    parser.add_argument("--sentences", type=int, default=8, help="the first N probe sentences")
    parser.add_argument("--reference-at", type=int, nargs="*", default=[], help="steps scored against a long run")
    parser.add_argument("--reference-steps", type=int, default=400)
    parser.add_argument("--reference-samples", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", default=None, help="JSON output (default: print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    run_dir = args.run.rstrip("/")
    record = json.loads(Path(run_dir, "record.json").read_text())
    module = sweep.rebuild_module(record)
    steps = sweep.checkpoint_steps(run_dir)
    sweep.load_checkpoint(module, run_dir, steps[0])
    tokenizer = sweep._tokenizer(record["hparams"]["model_name"], args.max_length, {})
    estimator, probe, _config = sweep._estimator_and_probe(module, run_dir, record, tokenizer)
    chosen = list(range(min(args.sentences, len(probe.tokens))))
    batch = {k: v[chosen] for k, v in probe.batch.items()} if isinstance(probe.batch, dict) else probe.batch[chosen]
    rows: list[dict[str, Any]] = []
    warm: Optional[InfoFlowResult] = None
    fixed: Optional[InfoFlowResult] = None
    for step in steps:
        sweep.load_checkpoint(module, run_dir, step)
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
        Path(args.out).write_text(json.dumps({"run": run_dir, "settings": vars(args), "rows": rows}, indent=1))


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
