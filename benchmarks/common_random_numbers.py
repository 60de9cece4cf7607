"""Would common random numbers make a warm analysis cheaper? The noise of a step's gradient, alone and as a
difference between two checkpoints of a run under the same draws.

    python benchmarks/common_random_numbers.py --run runs/sweep/lstm_dropout/lstm_dropout0_seed0 \
        --pairs 20:50 50:100 100:200 200:250

A warm analysis has to find how far the optimum of Eq. 7 moved since the previous analysis. Measured
with fresh draws, each step's gradient carries the full noise ``V`` of the draws; measured as a difference
``g_new - g_old`` of the two checkpoints' gradients at the previous result under the *same* draws (common
random numbers), it carries only the noise of the difference, ``V_diff``, which is small when the model
changed little, at twice the forwards. For each pair ``old:new`` of the run's checkpoints this fits the
old one (``steps="auto"``, the estimator's defaults), takes ``--draws`` steps of gradients at that result
on both checkpoints with one seed, and prints, averaged over the free words:

- ``V_new``: the per-step gradient variance on the new checkpoint (what a plain warm start pays);
- ``V_diff``: the variance of the difference (what common random numbers would pay, at twice the cost);
- ``shift_rms``: how far the optimum moved, ``|mean(g_new - g_old)| / h`` (root mean square over words,
  in ``log sigma``), against the target error of the analysis.

Common random numbers pay only when ``V_diff < V_new / 2``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lightning_infoflow import InfoFlowEstimator, InfoFlowResult  # noqa: E402
from lightning_infoflow.core import guard, inputs  # noqa: E402
from lightning_infoflow.core.chunks import ChunkScorer  # noqa: E402
from lightning_infoflow.core.refine import Plan, Refiner  # noqa: E402
from lightning_infoflow.core.start import warm_start  # noqa: E402
from lightning_infoflow.core.uncertainty import CURVATURE  # noqa: E402


def gradients(estimator: InfoFlowEstimator, batch: Any, at: InfoFlowResult, draws: int, seed: int) -> tuple[Tensor,
                                                                                                             Tensor]:
    """``draws`` steps' gradients ``[draws, L, B, T]`` of Eq. 7 at ``at`` (no update), and the free words."""
    device = guard.device_of(estimator.model)
    mask = inputs.word_mask(batch, estimator.pad_token_id).to(device)
    out = []
    with torch.no_grad(), guard.model_untouched(estimator.model, device):
        prep = estimator._prepare(batch, mask, None, device)
        has_state = torch.stack([sm.sum(1) > 0 for sm in prep.state_masks])
        words = prep.mask.unsqueeze(0) & has_state.unsqueeze(-1)
        copies = len(prep.rows) * estimator.samples * prep.batch_size
        scorer = ChunkScorer(estimator._runner, prep, estimator.samples)
        plan = Plan(steps=draws, max_steps=draws, target_error=estimator.target_error, check_every=draws,
                    lr=estimator.lr, warm_lr=estimator.warm_lr, lam=estimator.lam, samples=estimator.samples,
                    warm=True)
        refiner = Refiner(prep, scorer, [(0, copies)], words, torch.Generator(device=device).manual_seed(seed), plan)
        log_max = math.log(prep.noise_scale)
        log_sigma = warm_start(at, prep, device).clamp(max=log_max).masked_fill(~words, 0.0)
        log_sigma = log_sigma.contiguous().requires_grad_(True)
        for _ in range(draws):
            out.append(refiner.gradient(log_sigma).clone())
    return torch.stack(out), (log_sigma.detach() < log_max - 1e-4) & words


def compare(estimator: InfoFlowEstimator, batch: Any, load_old: Any, load_new: Any, draws: int,
            seed: int) -> dict[str, Any]:
    load_old()
    old = estimator.estimate(batch, steps="auto")
    g_old, free_old = gradients(estimator, batch, old, draws, seed)
    load_new()
    g_new, free_new = gradients(estimator, batch, old, draws, seed)
    free = (free_old & free_new).float()

    def mean(t: Tensor) -> float:
        return float((t * free).sum() / free.sum())

    diff = g_new - g_old
    v_new, v_diff = mean(g_new.var(0)), mean(diff.var(0))
    return {"V_new": v_new, "V_diff": v_diff, "ratio": v_diff / v_new,
            "shift_rms": math.sqrt(max(mean((diff.mean(0) / CURVATURE).pow(2)) - v_diff / draws / CURVATURE**2,
                                       0.0)),
            "old_error": old.meta["error"], "target_error": estimator.target_error}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder of `python -m examples.sweep run`")
    parser.add_argument("--pairs", nargs="+", default=["20:50", "50:100", "100:200", "200:250"],
                        help="checkpoint steps old:new")
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from warm_vs_cold import _sweep_run

    estimator, batch, checkpoints = _sweep_run(args)
    loaders = dict(checkpoints)
    rows = []
    for pair in args.pairs:
        old, new = (int(s) for s in pair.split(":"))
        row = {"old": old, "new": new, **compare(estimator, batch, loaders[old], loaders[new], args.draws, 99)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| checkpoints | V_new | V_diff | V_diff / V_new | optimum moved (RMS, log sigma) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['old']} -> {r['new']} | {r['V_new']:.3f} | {r['V_diff']:.3f} | {r['ratio']:.2f} | "
              f"{r['shift_rms']:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
