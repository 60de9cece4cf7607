"""The estimator against the authors' loop, side by side on all-MiniLM-L6-v2: CPU time and quality.

One command::

    python benchmarks/versus_authors.py --sentences 32 --layers all

1. A converged reference: our estimator on all chosen sentences at once, ``--ref-steps`` fixed steps x
   ``--ref-samples`` draws, ``--ref-seeds`` seeds (not ours' ladder seed), geometric mean.
2. Per sentence, interleaved so that the machine's load hits both alike: the authors' loop with seed 0 on
   every chosen layer, then ours at every setting of the ladder on that sentence alone, then the authors'
   loop with seed 1 (the order reverses on every other sentence).
3. Per setting: CPU seconds (``time.process_time``, one torch thread), median and RMS relative error
   against the reference, and the CPU-time ratio authors / ours, at the defaults and at the cheapest
   setting whose median error is at or below the authors' own seed-to-seed spread (definitions in
   ``versus_report.py``). Writes ``benchmarks/results/versus_authors.json`` (+ ``.md``), the sigma
   tensors to ``benchmarks/results/raw/versus_authors.pt``, and prints the Markdown table.

The objectives are matched (``baseline_loop.py``'s docstring has the algebra): the authors' ``rate``
becomes ``lam = rate * H / K``; both divide each hidden unit by the same spread (``--normalisation``,
default ``sentences``: the authors' own, the std over the 32 probe sentences of their word-averaged
states; ``tokens``: the package's default) computed on the first 32 SST-2 dev sentences whatever the
subset; the noise enters at the same module (``--embedding``, default ``embeddings``: after the embedding
block, as in the authors' BERT tutorial) with the same bound ``sigma_max = 10 x std`` of the word
embeddings. Ours runs each sentence in its own call (no padding), as the authors' loop does; its time
includes its normalisation forward over the 32 sentences, the authors' excludes theirs (computed once).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baseline_loop  # noqa: E402
import common as C  # noqa: E402
import versus_report as R  # noqa: E402

from lightning_infoflow import InfoFlowEstimator  # noqa: E402

LADDER = ("steps=0", "steps=5", "steps=10", "steps=20", "target=0.1", "target=0.05", "default", "target=0.02",
          "target=0.01")
REFERENCE_SENTENCES = 32


@dataclass(frozen=True)
class Setting:
    """One setting of ours: ``steps`` (an int, or ``"auto"`` with ``target_error``) and ``samples``."""

    steps: Union[int, Literal["auto"]]
    target_error: float
    samples: int
    max_steps: int


def estimator_defaults() -> Setting:
    """The estimator's own defaults, read off its signature."""
    p = inspect.signature(InfoFlowEstimator.__init__).parameters
    return Setting(p["steps"].default, p["target_error"].default, p["samples"].default, p["max_steps"].default)


def parse_setting(text: str) -> Setting:
    """``default`` or comma-separated ``target=E`` / ``steps=N`` / ``samples=S`` / ``max_steps=M`` over the
    defaults: ``target=0.05`` is ``steps="auto", target_error=0.05``; ``steps=10,samples=8`` fixed steps."""
    values: dict[str, Any] = asdict(estimator_defaults())
    for part in [] if text == "default" else text.split(","):
        key, _, value = part.partition("=")
        if key == "target":
            values.update(steps="auto", target_error=float(value))
        elif key in ("steps", "samples", "max_steps"):
            values[key] = int(value)
        else:
            raise ValueError(f"unknown setting {part!r} in {text!r}: use target=, steps=, samples=, max_steps=")
    return Setting(**values)


@dataclass
class Probe:
    """The matched problem: model, the chosen sentences (padded ``batch``), the 32 sample sentences for the
    normalisation (``reference``), layers, noise point, ``lam``, ``sigma_max``, normalisation, rate."""

    model: nn.Module
    batch: dict[str, Tensor]
    reference: dict[str, Tensor]
    layers: list[str]
    embedding: str
    normalisation: str
    rate: float
    lam: float
    sigma_max: float

    @property
    def lengths(self) -> list[int]:
        return [int(v) for v in self.batch["attention_mask"].sum(1)]

    def sentence(self, j: int) -> dict[str, Tensor]:
        """Sentence ``j`` alone, unpadded."""
        n = self.lengths[j]
        return {k: v[j : j + 1, :n] for k, v in self.batch.items()}


def make_probe(model: nn.Module, batch: dict[str, Tensor], reference: dict[str, Tensor], layers: list[str],
               embedding: str, normalisation: str, rate: float = 0.1) -> Probe:
    """The probe with ``lam = rate * H / K`` (H: the layers' width, K: the noise point's) and the authors'
    ``sigma_max`` (10 x the std of the word-embedding weights)."""
    model.eval()
    modules = dict(model.named_modules())
    row = batch["input_ids"][:1, : int(batch["attention_mask"][0].sum())]
    x = baseline_loop.clean_input(model, modules[embedding], row)
    with torch.no_grad():
        widths = {baseline_loop.LayerPhi(model, modules[embedding], modules[n], row)(x).shape[-1] for n in layers}
    if len(widths) != 1:
        raise ValueError(f"layers {layers} have different widths {sorted(widths)}: one lam cannot match them all")
    lam = rate * widths.pop() / x.shape[-1]
    sigma_max = 10.0 * float(baseline_loop.word_embedding_weight(model).std())
    return Probe(model, batch, reference, layers, embedding, normalisation, rate, lam, sigma_max)


def _estimator(probe: Probe, setting: Setting, seed: int) -> InfoFlowEstimator:
    return InfoFlowEstimator(probe.model, layers=probe.layers, embedding=probe.embedding, lam=probe.lam,
                             steps=setting.steps, samples=setting.samples, target_error=setting.target_error,
                             max_steps=setting.max_steps, sigma_max=probe.sigma_max, seed=seed,
                             normalisation=probe.normalisation)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def reference_run(probe: Probe, steps: int, samples: int, seeds: list[int]) -> dict[str, Any]:
    """Our estimator on all chosen sentences at once, long, per seed; the geometric mean and the seeds' spread."""
    setting = Setting(steps, estimator_defaults().target_error, samples, estimator_defaults().max_steps)
    runs, cpu = [], 0.0
    for seed in seeds:
        est = _estimator(probe, setting, seed)
        res, c, _ = _timed(partial(est.estimate, probe.batch, reference=probe.reference))
        runs.append(res.sigma)
        cpu += c
    mask = probe.batch["attention_mask"].bool()
    spread = R.rel_errors(runs[0], runs[1], mask)["median"] if len(runs) > 1 else None
    return {"sigma": R.geometric_mean(runs), "steps": steps, "samples": samples, "seeds": seeds, "cpu_s": cpu,
            "seed_spread": spread}


def ours_sentence(probe: Probe, setting: Setting, j: int, seed: int = 0) -> dict[str, Any]:
    """Ours on sentence ``j`` alone: sigma ``[L, n_j]``, CPU and wall seconds, steps run, why it stopped."""
    est = _estimator(probe, setting, seed)
    res, cpu, wall = _timed(lambda: est.estimate(probe.sentence(j), reference=probe.reference))
    return {"sigma": res.sigma[:, 0], "cpu_s": cpu, "wall_s": wall, "steps_run": int(res.meta["steps_run"]),
            "stopped": res.meta["stopped"]}


def authors_sentence(probe: Probe, j: int, seed: int, steps: int, checkpoints: list[int],
                     regs: dict[str, Tensor]) -> dict[str, Any]:
    """The authors' loop on sentence ``j``, every layer: sigma ``[L, n_j]``, CPU and wall seconds, and the
    best-so-far sigma with the CPU seconds spent at each checkpoint."""
    out, cpu, wall = _timed(lambda: baseline_loop.run_baseline(
        probe.model, probe.batch["input_ids"], probe.batch["attention_mask"], [j], probe.layers, probe.reference,
        steps=steps, rate=probe.rate, seed=seed, log=None, normalisation=probe.normalisation,
        embedding=probe.embedding, checkpoints=checkpoints, regs=regs))
    n = probe.lengths[j]
    snaps = {it: {"sigma": s[:, 0, :n], "cpu_s": float(c.sum())} for it, (s, c) in out["snapshots"].items()}
    return {"sigma": out["sigma"][:, 0, :n], "cpu_s": cpu, "wall_s": wall, "snapshots": snaps}


class _Stop(Exception):
    """Ends a forward after the deepest watched layer."""


def normalisation_forward_cpu(probe: Probe, repeats: int = 3) -> float:
    """CPU seconds of one no-grad forward of the 32 sample sentences up to the deepest layer (median of
    ``repeats``): what each call of ours spends on its normalisation, which a single batched call over the
    same sentences gets from its clean forward."""
    modules = dict(probe.model.named_modules())

    def stop(_m: nn.Module, _i: Any, _o: Any) -> None:
        raise _Stop

    times = []
    for _ in range(repeats):
        handle = modules[probe.layers[-1]].register_forward_hook(stop)
        c0 = time.process_time()
        try:
            with torch.no_grad():
                probe.model(**probe.reference)
        except _Stop:
            pass
        finally:
            handle.remove()
        times.append(time.process_time() - c0)
    return sorted(times)[len(times) // 2]


def _blank(probe: Probe) -> Tensor:
    return torch.full((len(probe.layers), *probe.batch["input_ids"].shape), float("nan"))


def measure(probe: Probe, settings: dict[str, Setting], authors_steps: int, checkpoints: list[int],
            log: Optional[Callable[[str], None]] = print) -> dict[str, Any]:
    """The interleaved runs: per sentence, authors seed 0, ours at each setting, authors seed 1 (reversed on
    every other sentence). Returns per run the sigma ``[L, N, T]`` and the CPU and wall seconds summed over
    the sentences (ours: also steps run per sentence; the authors: the checkpoints)."""
    regs = baseline_loop.layer_regs(probe.model, probe.reference, probe.layers, probe.normalisation)
    checkpoints = sorted({c for c in checkpoints if c < authors_steps} | {authors_steps})
    authors = [{"seed": s, "sigma": _blank(probe), "cpu_s": 0.0, "wall_s": 0.0,
                "snapshots": {it: {"sigma": _blank(probe), "cpu_s": 0.0} for it in checkpoints}} for s in (0, 1)]
    ours: dict[str, dict[str, Any]] = {
        name: {"setting": asdict(s), "sigma": _blank(probe), "cpu_s": 0.0, "wall_s": 0.0, "steps_run": [],
               "stopped": []} for name, s in settings.items()}
    for j, n in enumerate(probe.lengths):
        jobs: list[tuple[str, Any]] = [("authors", 0), *[("ours", k) for k in settings], ("authors", 1)]
        for kind, key in jobs if j % 2 == 0 else jobs[::-1]:
            if kind == "authors":
                got = authors_sentence(probe, j, key, authors_steps, checkpoints, regs)
                run = authors[key]
                for it, snap in got["snapshots"].items():
                    run["snapshots"][it]["sigma"][:, j, :n] = snap["sigma"]
                    run["snapshots"][it]["cpu_s"] += snap["cpu_s"]
            else:
                got = ours_sentence(probe, settings[key], j)
                run = ours[key]
                run["steps_run"].append(got["steps_run"])
                run["stopped"].append(got["stopped"])
            run["sigma"][:, j, :n] = got["sigma"]
            run["cpu_s"] += got["cpu_s"]
            run["wall_s"] += got["wall_s"]
            if log:
                log(f"sentence {j} ({n} words): {kind} {key}: {got['cpu_s']:.1f} CPU s, {got['wall_s']:.1f} wall s")
    return {"authors": authors, "ours": ours, "normalisation_forward_cpu_s": normalisation_forward_cpu(probe)}


def scope(probe: Probe, n_layers: int, authors_steps: int, threads: int, model_name: str) -> dict[str, Any]:
    """What this run covers, in a sentence and as fields."""
    n = len(probe.lengths)
    text = (f"{model_name}, the first {n} of the {REFERENCE_SENTENCES} probe sentences (SST-2 dev; "
            f"{sum(probe.lengths)} words, lengths {probe.lengths}), layers {probe.layers} ({len(probe.layers)} of "
            f"{n_layers}); the authors' loop at {authors_steps} iterations x 2 seeds; normalisation "
            f"'{probe.normalisation}' from the {REFERENCE_SENTENCES} sentences, lam = rate x H / K = {probe.lam:g} "
            f"(rate {probe.rate:g}), noise at '{probe.embedding}', sigma_max {probe.sigma_max:.4g}; {threads} torch "
            "thread(s), CPU seconds of the process")
    return {"text": text, "sentences": n, "lengths": probe.lengths, "layers": probe.layers,
            "authors_steps": authors_steps, "normalisation": probe.normalisation, "embedding": probe.embedding,
            "lam": probe.lam, "rate": probe.rate, "sigma_max": probe.sigma_max, "threads": threads,
            "model": model_name, "words_32": int(probe.reference["attention_mask"].sum()),
            "sentences_32": REFERENCE_SENTENCES}


def _layers(model: nn.Module, spec: str) -> list[str]:
    names = C.layer_names(model)
    return names if spec == "all" else [names[i] for i in sorted({int(i) for i in spec.split(",")})]


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm", choices=["minilm", "bert4x256", "bertbase"])
    p.add_argument("--sentences", type=int, default=32, help="the first N of the 32 probe sentences")
    p.add_argument("--layers", default="all", help="'all' or layer indices, e.g. 2,5")
    p.add_argument("--authors-steps", type=int, default=5000, help="iterations of the authors' loop (their default)")
    p.add_argument("--checkpoints", default="500,1000,2000", help="also report the authors' loop at these iterations")
    p.add_argument("--settings", nargs="+", default=list(LADDER), help="ours: 'default', target=E, steps=N[,samples=S]")
    p.add_argument("--ref-steps", type=int, default=250)
    p.add_argument("--ref-samples", type=int, default=12)
    p.add_argument("--ref-seeds", default="101,102")
    p.add_argument("--normalisation", default="sentences", choices=["sentences", "tokens"])
    p.add_argument("--embedding", default="embeddings",
                   help="noise point: 'embeddings' (after the block) or 'embeddings.word_embeddings' (token lookup)")
    p.add_argument("--rate", type=float, default=0.1, help="the authors' rate (lambda)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(C.RESULTS / "versus_authors.json"))
    p.add_argument("--from-raw", default=None, help="summarise a saved raw file (.pt) again instead of measuring")
    args = p.parse_args(argv)
    if args.from_raw:
        return write(torch.load(args.from_raw, weights_only=False), args.out)
    torch.set_num_threads(args.threads)
    model = C.load_model(args.model)
    for q in model.parameters():
        q.requires_grad_(False)
    tok = C.load_tokenizer()
    reference = C.probe_batch(tok, C.read_sentences(REFERENCE_SENTENCES))
    chosen = C.probe_batch(tok, C.read_sentences(args.sentences))
    probe = make_probe(model, chosen, reference, _layers(model, args.layers), args.embedding, args.normalisation,
                       args.rate)
    settings = {name: parse_setting(name) for name in args.settings}
    if "default" not in settings:
        settings["default"] = parse_setting("default")
    sc = scope(probe, len(C.layer_names(model)), args.authors_steps, args.threads, args.model)
    print("Running:", sc["text"], flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    ref = reference_run(probe, args.ref_steps, args.ref_samples, [int(s) for s in args.ref_seeds.split(",")])
    print(f"reference: {ref['cpu_s']:.1f} CPU s, seeds differ by {ref['seed_spread']}", flush=True)
    raw = measure(probe, settings, args.authors_steps, [int(c) for c in args.checkpoints.split(",") if c])
    raw.update(scope=sc, mask=probe.batch["attention_mask"].bool(), reference=ref)
    raw["run"] = dict(machine=C.machine(), commit=C.git_commit(), argv=sys.argv[1:] if argv is None else argv,
                      load_after=C.loadavg(), total_wall_s=time.perf_counter() - t0,
                      total_cpu_s=time.process_time() - c0, defaults=asdict(estimator_defaults()))
    raw_path = C.RESULTS / "raw" / (Path(args.out).stem + ".pt")
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(raw, raw_path)
    print(f"wrote {raw_path}")
    return write(raw, args.out)


def write(raw: dict[str, Any], out: str) -> dict[str, Any]:
    """Summarise ``raw``, write the JSON summary and the Markdown table next to it, print the table."""
    summary = dict(R.summarise(raw, "default"), **raw["run"])
    table = R.markdown(summary)
    path = Path(out).resolve()
    C.write_json(path, summary)
    path.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {path} and {path.with_suffix('.md')}; the measurement took {summary['total_wall_s']:.0f} wall s, "
          f"{summary['total_cpu_s']:.0f} CPU s")
    return summary


if __name__ == "__main__":
    main()
