"""How honest and how cheap ``steps="auto"`` is, on the test models whose answer is known or can be run long.

    python benchmarks/auto_steps.py              # about 3 minutes on one CPU thread

For the linear model (closed-form optimum), a GRU stack and a 4-layer BiLSTM (``lightning_infoflow.testing``,
random weights, 8 random sentences), against the truth (linear) or a long run (1,500 steps x 8 draws,
another seed):

- ``steps="auto"`` at several ``target_error``: the steps it ran, its stated error (the largest layer's) and
  the true root-mean-square error of ``log sigma`` (the largest layer's), CPU seconds;
- fixed steps for comparison;
- a warm start on the same weights (nothing changed): the steps it ran;
- antithetic noise (each draw paired with its negative) at fixed steps, against independent draws.

Prints a Markdown table per model and writes ``benchmarks/results/auto_steps.json``.
"""

from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_infoflow import InfoFlowEstimator, InfoFlowResult  # noqa: E402
from lightning_infoflow.core import estimator as estimator_module  # noqa: E402
from lightning_infoflow.core import refine  # noqa: E402
from lightning_infoflow.testing import BiLSTMClassifier, GRUStack, LinearModel, random_ids  # noqa: E402

A = (4.0, 2.0, 1.0, 0.5)


def layer_rms(result: InfoFlowResult, truth: Tensor) -> float:
    """The largest layer's root mean square of ``log sigma - log sigma_true`` over real words."""
    worst = 0.0
    for layer in range(result.sigma.shape[0]):
        gap = result.sigma[layer].log() - truth[layer].log()
        worst = max(worst, float(gap[~gap.isnan()].pow(2).mean().sqrt()))
    return worst


class Antithetic(refine.Refiner):
    """Draws the second half of each step's samples as the negatives of the first half."""

    def draw(self, shape: tuple[int, ...]) -> Tensor:
        z = super().draw(shape)
        rows, samples, bsz = len(self.prep.rows), self.plan.samples, self.prep.batch_size
        view = z.view(rows, samples, bsz, *shape[1:])
        view[:, samples // 2:] = -view[:, : samples // 2]
        return z


def cases() -> list[tuple[str, nn.Module, str, Tensor, Callable[[nn.Module, Tensor], Tensor]]]:
    torch.manual_seed(0)
    linear = LinearModel(A, dim=64)
    lin_ids = random_ids(16, 4)

    def linear_truth(model: nn.Module, ids: Tensor) -> Tensor:
        with torch.no_grad():
            var = model(ids).var(dim=0, unbiased=False)
        return (64 * 0.1 / (2 * torch.tensor(A) ** 2 * (1 / var).sum())).sqrt().expand(1, ids.shape[0], len(A))

    def long_run(layers: str) -> Callable[[nn.Module, Tensor], Tensor]:
        return lambda model, ids: InfoFlowEstimator(model, layers=layers, steps=1500, samples=8,
                                                    seed=99).estimate(ids).sigma

    torch.manual_seed(0)
    gru = GRUStack()
    torch.manual_seed(0)
    lstm = BiLSTMClassifier()
    return [("linear (closed form)", linear, "mix", lin_ids, linear_truth),
            ("GRU stack, 2 layers", gru, "grus.*", random_ids(8, 10), long_run("grus.*")),
            ("BiLSTM, 4 layers", lstm, "lstms.*", random_ids(8, 12), long_run("lstms.*"))]


def timed(run: Callable[[], InfoFlowResult]) -> tuple[InfoFlowResult, float]:
    started = time.process_time()
    result = run()
    return result, time.process_time() - started


def main() -> None:
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    for name, model, layers, ids, truth_of in cases():
        truth = truth_of(model, ids)
        rows = []
        for setting in [{"target_error": t} for t in (0.05, 0.03, 0.02, 0.01)] + [{"steps": n} for n in (20, 100, 300)]:
            est = InfoFlowEstimator(model, layers=layers, max_steps=1000, **setting)  # type: ignore[arg-type]
            res, cpu = timed(partial(est.estimate, ids))
            warm = est.estimate(ids, init=res) if "target_error" in setting else None
            rows.append({"setting": setting, "steps_run": res.meta["steps_run"], "cpu_s": cpu,
                         "stated": max(res.meta["error"]) if res.meta["error"] else None,
                         "true": layer_rms(res, truth),
                         "warm_unchanged_steps": warm.meta["steps_run"] if warm else None})
        anti = []
        for refiner in (refine.Refiner, Antithetic):
            estimator_module.Refiner = refiner  # type: ignore[misc]
            try:
                errs = [layer_rms(InfoFlowEstimator(model, layers=layers, steps=60, seed=s).estimate(ids), truth)
                        for s in range(3)]
            finally:
                estimator_module.Refiner = refine.Refiner  # type: ignore[misc]
            anti.append({"draws": refiner.__name__, "true_at_60_steps": errs})
        out[name] = {"rows": rows, "antithetic": anti}
        print(f"\n{name}\n\n| setting | steps run | CPU s | stated error | true error | warm, unchanged: steps |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            stated = f"{r['stated']:.4f}" if r["stated"] is not None else "-"
            setting = ", ".join(f"{k}={v}" for k, v in r["setting"].items())
            print(f"| {setting} | {r['steps_run']} | {r['cpu_s']:.2f} | {stated} | {r['true']:.4f} | "
                  f"{r['warm_unchanged_steps'] if r['warm_unchanged_steps'] is not None else '-'} |")
        for a in anti:
            print(f"{a['draws']} draws, 60 fixed steps, true error over 3 seeds: "
                  + ", ".join(f"{e:.4f}" for e in a["true_at_60_steps"]))
    path = Path(__file__).resolve().parent / "results" / "auto_steps.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
