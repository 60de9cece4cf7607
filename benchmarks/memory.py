"""Memory of the estimator on CPU: peak resident memory for a BERT-base-sized model, and no growth over many analyses.

Two measurements, each in a fresh subprocess so that one cannot inflate the other's peak:

* ``peak``: a 12-layer BERT-base-sized ``BertModel`` (``BertConfig()`` defaults, random weights), all 12
  layers, 64 SST-2 dev sentences (WordPiece, padded to the longest, at most ``--max-length`` tokens),
  one analysis with ``--steps`` (default 0: the closed-form start, whose vector-Jacobian pass holds the
  same activations per copy as an optimisation step) for each ``--budget``. Reported: resident memory
  before the analysis (model and probe), the peak during it (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``), the chunk size the budget gave, wall time.
* ``repeat``: a 4-layer, 256-wide BertModel, 16 sentences, ``--repeats`` analyses in a row (cold and warm
  alternating); resident memory after every 10th.

Linux only (reads ``/proc/self``). Run from the repository root::

    python benchmarks/memory.py                 # both, writes benchmarks/results/memory_cpu.json
    python benchmarks/memory.py --only repeat --repeats 50
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

MIB = 1024**2


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _probe(n: int, max_length: int) -> dict:
    tok = common.load_tokenizer()
    enc = tok(common.read_sentences(n), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def child_peak(budget_mib: int, steps: int, sentences: int, max_length: int) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertModel

    from lightning_infoflow import InfoFlowEstimator

    torch.manual_seed(0)
    model = BertModel(BertConfig()).eval()
    batch = _probe(sentences, max_length)
    est = InfoFlowEstimator(model, steps=steps, samples=1, memory_budget=budget_mib * MIB)
    gc.collect()
    before = _status("VmRSS")
    exact = _reset_peak()
    start = time.perf_counter()
    res = est.estimate(batch)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    return {
        "model": "BertModel(BertConfig()) random weights, 12 layers x 768, vocab 30522",
        "parameters": sum(p.numel() for p in model.parameters()),
        "sentences": sentences, "tokens_padded": int(batch["input_ids"].shape[1]),
        "real_tokens": int(batch["attention_mask"].sum()), "layers": len(res.layer_names), "samples": 1,
        "steps": steps, "copies": len(res.layer_names) * sentences, "memory_budget_mib": budget_mib,
        "chunk_size": res.meta["chunk_size"], "rss_before_mib": before / MIB, "peak_rss_mib": peak / MIB,
        "peak_above_before_mib": (peak - before) / MIB, "peak_is_analysis_only": exact, "seconds": seconds,
        "finite": bool(torch.isfinite(res.layer_information).all()),
    }


def child_repeat(repeats: int) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertModel

    from lightning_infoflow import InfoFlowEstimator

    torch.manual_seed(0)
    config = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    model = BertModel(config).eval()
    batch = _probe(16, 64)
    est = InfoFlowEstimator(model, steps=2, samples=1)
    previous = None
    rss: list[float] = []
    start = time.perf_counter()
    for i in range(repeats):
        previous = est.estimate(batch, init=previous if i % 2 else None)
        if i % 10 == 9:
            gc.collect()
            rss.append(_status("VmRSS") / MIB)
    seconds = time.perf_counter() - start
    warm = rss[min(1, len(rss) - 1)]
    return {
        "model": "BertModel 4 layers x 256, random weights", "sentences": 16,
        "tokens_padded": int(batch["input_ids"].shape[1]), "steps": 2, "samples": 1, "analyses": repeats,
        "rss_every_10_mib": rss, "growth_after_20_mib": rss[-1] - warm, "seconds": seconds,
    }


def _run_child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:], "args": args}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["peak", "repeat"], default=None)
    parser.add_argument("--budget", type=int, nargs="+", default=[512, 2048], help="memory_budget values, MiB")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default=str(common.RESULTS / "memory_cpu.json"))
    parser.add_argument("--child", nargs="*", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        kind, *rest = args.child
        if kind == "peak":
            print(json.dumps(child_peak(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]))))
        else:
            print(json.dumps(child_repeat(int(rest[0]))))
        return
    results: dict[str, Any] = {"command": " ".join(["python", "benchmarks/memory.py", *sys.argv[1:]]),
                               "machine": common.machine(), "commit": common.git_commit()}
    if args.only in (None, "peak"):
        results["peak"] = []
        for budget in args.budget:
            row = _run_child(["peak", str(budget), str(args.steps), str(args.sentences), str(args.max_length)])
            print(json.dumps(row), flush=True)
            results["peak"].append(row)
    if args.only in (None, "repeat"):
        results["repeat"] = _run_child(["repeat", str(args.repeats)])
        print(json.dumps(results["repeat"]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
