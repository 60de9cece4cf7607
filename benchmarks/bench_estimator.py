"""The estimator benchmark, run by hand: the package's estimator against the authors' loop, Captum and the floor.

Every measurement runs in its own process (``python benchmarks/bench_estimator.py <job> ...``) so that
the peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that job alone; each job writes one
JSON file (and the sigma tensors it produced, ``.pt``) into ``benchmarks/results/raw/`` (git-ignored).
``python benchmarks/bench_estimator.py report`` reads them and writes ``benchmarks/results/*.json``.
``benchmarks/run_all.sh`` lists the exact sequence of jobs.

Times: wall seconds (``perf_counter``) and CPU seconds of the process (``process_time``). The machine
is shared, so CPU seconds are the contention-robust number; torch runs on ``--threads`` (default 1)
intra-op threads so that CPU time is not inflated by spinning threads of an oversubscribed pool.

Quality: median relative error ``|sigma - ref| / ref`` over real words, against a long run of the
package's estimator (``reference`` job) on the first ``--ref-n`` sentences of the probe. The hidden-unit
normalisation always comes from all 32 probe sentences (``reference=`` batch), so a result for a
sentence does not depend on which other sentences shared its batch. The baseline's objective equals
the package's with ``lam = rate * H / K`` (see ``baseline_loop.py``), which is 0.1 here; both use the
per-token normalisation (``normalisation="tokens"``) and perturb the token lookup. The side-by-side
comparison with the authors' own normalisation and noise point is ``versus_authors.py``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baseline_loop  # noqa: E402
import common as C  # noqa: E402

RAW = C.RESULTS / "raw"
LAM = 0.1


def _setup(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Tensor], list[str]]:
    torch.set_num_threads(args.threads)
    model = C.load_model(args.model)
    if getattr(args, "weights", None):
        model.load_state_dict(torch.load(args.weights))
    tok = C.load_tokenizer()
    batch = C.probe_batch(tok, C.read_sentences(args.n))
    return model, batch, C.layer_names(model)


def _measure(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    rss0 = C.current_rss_mib()
    load0 = C.loadavg()
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return out, {"wall_s": wall, "cpu_s": cpu, "rss_before_mib": rss0, "peak_rss_mib": C.peak_rss_mib(),
                 "load_before": load0, "load_after": C.loadavg()}


def _save(tag: str, record: dict[str, Any], tensors: dict[str, Tensor] | None = None) -> None:
    RAW.mkdir(parents=True, exist_ok=True)
    record = dict(record, tag=tag, machine=C.machine(), commit=C.git_commit(), argv=sys.argv[1:])
    if tensors:
        torch.save(tensors, RAW / f"{tag}.pt")
    C.write_json(RAW / f"{tag}.json", record)
    print(json.dumps({k: v for k, v in record.items() if k not in ("machine", "argv")}, default=float))


# ---------------------------------------------------------------------------------------------- jobs


def job_baseline(args: argparse.Namespace) -> None:
    """The authors' loop on a few sentences, every layer."""
    model, batch, layers = _setup(args)
    idx = [int(i) for i in args.sentences.split(",")]
    which = [int(i) for i in args.layers.split(",")] if args.layers else list(range(len(layers)))
    res, m = _measure(lambda: baseline_loop.run_baseline(
        model, batch["input_ids"], batch["attention_mask"], idx, [layers[i] for i in which], batch,
        steps=args.steps, raw_reg=args.raw_reg))
    words = [int(batch["attention_mask"][i].sum()) for i in idx]
    _save(args.tag, dict(m, job="baseline", model=args.model, sentences=idx, layers=which, words=words,
                         n_layers=len(layers), steps=args.steps,
                         seconds_per_layer_sentence=res["seconds"].tolist(), loss=res["loss"].tolist(),
                         sigma_max=res["scale"]),
          {"sigma": res["sigma"], "sentences": torch.tensor(idx)})


def job_estimate(args: argparse.Namespace) -> None:
    """The package's estimator on the first ``--probe`` sentences (normalisation from all ``--n``)."""
    from lightning_infoflow import InfoFlowEstimator, InfoFlowResult

    model, batch, layers = _setup(args)
    rows = [int(r) for r in args.rows.split(",")] if args.rows else list(range(args.probe))
    probe = {k: v[rows] for k, v in batch.items()}
    width = int(probe["attention_mask"].sum(1).max())
    probe = {k: v[:, :width] for k, v in probe.items()}
    init = InfoFlowResult.load(args.init) if args.init else None
    est = InfoFlowEstimator(model, layers=layers, lam=LAM, steps=args.steps, samples=args.samples, lr=args.lr,
                            seed=args.seed, target_error=args.target_error, max_steps=args.max_steps)
    res, m = _measure(lambda: est.estimate(probe, reference=batch, init=init))
    if args.save_result:
        res.save(args.save_result)
    _save(args.tag, dict(m, job="estimate", model=args.model, rows=rows, steps=args.steps,
                         samples=args.samples, lr=args.lr, seed=args.seed, init=args.init, weights=args.weights,
                         target_error=args.target_error, max_steps=args.max_steps,
                         steps_run=res.meta["steps_run"], stopped=res.meta["stopped"],
                         chunk_size=res.meta["chunk_size"],
                         copies=len(layers) * args.samples * len(rows), width=width,
                         sigma_max=res.sigma_max, at_bound=int(res.at_bound.sum())),
          {"sigma": res.sigma, "mask": res.mask})


def _truncated(model: nn.Module, depth: int) -> Any:
    """Context: ``model.encoder.layer`` cut to its first ``depth`` layers."""
    class _Cut:
        def __enter__(self) -> None:
            self.full = model.encoder.layer
            model.encoder.layer = nn.ModuleList(list(self.full)[:depth])

        def __exit__(self, *exc: Any) -> None:
            model.encoder.layer = self.full
    return _Cut()


def job_floor(args: argparse.Namespace) -> None:
    """Forward + backward (gradient to the word embeddings only) of the estimator's stacked batch.

    ``full``: all ``L x samples x B`` copies through the whole model; ``truncated``: the copies of layer
    ``l`` through layers ``0..l`` only (the work the estimator's truncation leaves). Same chunk size.
    """
    model, batch, layers = _setup(args)
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings()
    n_layers, b = len(layers), batch["input_ids"].shape[0]
    per_layer = args.samples * b
    chunk = args.chunk

    def run(copies_of_layer: list[int]) -> None:
        # copies_of_layer: the depth each copy runs to, in the estimator's order (layer-major)
        total = len(copies_of_layer)
        for a in range(0, total, chunk):
            depths = copies_of_layer[a : a + chunk]
            rows = torch.arange(a, a + len(depths)) % b
            sub = {k: v[rows] for k, v in batch.items()}
            for depth in sorted(set(depths)):
                sel = torch.tensor([i for i, d in enumerate(depths) if d == depth])
                part = {k: v[sel] for k, v in sub.items()}
                x = emb(part["input_ids"]).detach().requires_grad_(True)
                h = emb.register_forward_hook(lambda _m, _i, _o, x=x: x)
                try:
                    with torch.enable_grad(), _truncated(model, depth):
                        out = model(**part).last_hidden_state
                        torch.autograd.grad(out.pow(2).sum(), x)
                finally:
                    h.remove()

    full = [n_layers] * (n_layers * per_layer)
    trunc = [layer + 1 for layer in range(n_layers) for _ in range(per_layer)]
    out: dict[str, Any] = {}
    for name, plan in (("full", full), ("truncated", trunc)):
        reps = []
        for _ in range(args.reps):
            _, m = _measure(lambda plan=plan: run(plan))
            reps.append(m)
        out[name] = {"cpu_s": min(r["cpu_s"] for r in reps), "wall_s": min(r["wall_s"] for r in reps), "reps": reps}
    _save(args.tag, dict(job="floor", model=args.model, samples=args.samples, n=b, chunk=chunk,
                         copies=n_layers * per_layer, peak_rss_mib=C.peak_rss_mib(), **out))


def job_captum(args: argparse.Namespace) -> None:
    """Captum LayerIntegratedGradients (n_steps=50) at the word embeddings, one call per layer.

    The scalar attributed is ``0.5 * ||s_l||^2`` over the real words of each sentence (the layer's own
    state, so the cost is one IG per layer); the forward stops after layer ``l``.
    """
    from captum.attr import LayerIntegratedGradients

    model, batch, layers = _setup(args)
    emb = model.get_input_embeddings()

    def run() -> list[Tensor]:
        outs = []
        for depth in range(1, len(layers) + 1):
            def f(ids: Tensor, attn: Tensor, depth: int = depth) -> Tensor:
                with _truncated(model, depth):
                    h = model(input_ids=ids, attention_mask=attn).last_hidden_state
                return 0.5 * (h.pow(2) * attn.unsqueeze(-1)).sum(dim=(1, 2))

            lig = LayerIntegratedGradients(f, emb)
            attr = lig.attribute(batch["input_ids"], additional_forward_args=(batch["attention_mask"],),
                                 n_steps=50, internal_batch_size=args.internal_batch)
            outs.append(attr.sum(-1).detach())
        return outs

    _, m = _measure(run)
    _save(args.tag, dict(m, job="captum", model=args.model, n=batch["input_ids"].shape[0], n_steps=50,
                         layers=len(layers), internal_batch_size=args.internal_batch))


def job_finetune(args: argparse.Namespace) -> None:
    """A few hundred training steps of encoder + linear head on SST-2 train (mean-pooled), weights saved."""
    model, _, _ = _setup(args)
    tok = C.load_tokenizer()
    data = C.read_labelled("train")
    gen = torch.Generator().manual_seed(0)
    head = nn.Linear(model.config.hidden_size, 2)
    model.train()
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=args.lr)
    losses = []

    def train() -> None:
        for _ in range(args.steps):
            idx = torch.randint(0, len(data), (args.batch,), generator=gen).tolist()
            enc = tok([data[i][0] for i in idx], padding=True, return_tensors="pt")
            y = torch.tensor([data[i][1] for i in idx])
            h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            am = enc["attention_mask"].unsqueeze(-1).float()
            logits = head((h * am).sum(1) / am.sum(1))
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))

    _, m = _measure(train)
    model.eval()
    before = C.load_model(args.model).state_dict()
    after = model.state_dict()
    drift = {k: float((after[k] - before[k]).norm() / before[k].norm().clamp_min(1e-12))
             for k in after if after[k].is_floating_point()}
    torch.save(after, args.out)
    _save(args.tag, dict(m, job="finetune", model=args.model, steps=args.steps, batch=args.batch, lr=args.lr,
                         loss_first10=sum(losses[:10]) / 10, loss_last10=sum(losses[-10:]) / 10,
                         median_relative_weight_change=float(torch.tensor(list(drift.values())).median()),
                         out=args.out))


# ---------------------------------------------------------------------------------------------- report


def _raw(tag: str) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    j = RAW / f"{tag}.json"
    if not j.is_file():
        return None
    t = RAW / f"{tag}.pt"
    return json.loads(j.read_text()), (torch.load(t) if t.is_file() else {})


def _reference(prefix: str) -> tuple[Tensor, Tensor, dict[str, Any]] | None:
    """Geometric mean of the seeds' sigma, the mask, and the seed-to-seed spread."""
    runs = [r for r in (_raw(f"{prefix}_s{s}") for s in range(4)) if r is not None]
    if not runs:
        return None
    sig = torch.stack([r[1]["sigma"] for r in runs])
    mask = runs[0][1]["mask"]
    ref = sig.log().mean(0).exp()
    first = runs[0][0]
    info: dict[str, Any] = {"rows": first["rows"], "seeds": len(runs), "steps": first["steps"],
                            "samples": first["samples"], "lr": first["lr"], "cpu_s": [r[0]["cpu_s"] for r in runs],
                            "wall_s": [r[0]["wall_s"] for r in runs]}
    if len(runs) > 1:
        info["seed_to_seed"] = C.rel_errors(sig[1], sig[0], mask)
        info["seed_vs_mean"] = C.rel_errors(sig[0], ref, mask)
    return ref, mask, info


def _quality(sigma: Tensor, ref: Tensor, mask: Tensor, rows: list[int] | None = None) -> dict[str, Any]:
    """Errors of ``sigma`` against the reference; ``rows``: which of sigma's sentences are the reference's."""
    width = ref.shape[2]
    s = sigma if rows is None else sigma[:, rows]
    return C.rel_errors(s[:, :, :width], ref, mask)


def _timing(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("cpu_s", "wall_s", "peak_rss_mib", "rss_before_mib", "load_before", "load_after")
    return {k: rec[k] for k in keys if k in rec}


def job_report(args: argparse.Namespace) -> None:
    """Collect the raw files into ``benchmarks/results/summary.json`` and print the tables."""
    summary: dict[str, Any] = {"machine": None, "models": {}}
    for model in ("minilm", "bert4x256"):
        out: dict[str, Any] = {}
        refd = _reference(f"ref_{model}")
        if refd is None:
            continue
        ref, mask, out["reference"] = refd
        # grid of cheap settings, sentences 0-3
        grid = {}
        for path in sorted(glob.glob(str(RAW / f"grid_{model}_st*_sa*.json"))):
            tag = Path(path).stem
            rec, ten = _raw(tag)  # type: ignore[misc]
            if not isinstance(rec["steps"], int):
                continue  # the grid and timing tables compare fixed step counts (run_all.sh's jobs)
            summary["machine"] = rec["machine"]
            lr = "" if rec["lr"] == 0.1 else f",lr={rec['lr']}"
            grid[f"steps={rec['steps']},samples={rec['samples']}{lr}"] = dict(
                steps=rec["steps"], samples=rec["samples"], lr=rec["lr"], quality=_quality(ten["sigma"], ref, mask),
                **_timing(rec))
        out["grid_ref_rows"] = grid
        # baseline: one process per sentence (or per sentence and layer), merged in the reference's order
        parts = [_raw(Path(pth).stem) for pth in sorted(glob.glob(str(RAW / f"baseline_{model}_s*.json")))]
        parts = [q for q in parts if q is not None and q[0]["sentences"][0] in out["reference"]["rows"]]
        if parts:
            rows = sorted({q[0]["sentences"][0] for q in parts})
            n_layers = ref.shape[0]
            sig = torch.full((n_layers, len(rows), parts[0][1]["sigma"].shape[2]), float("nan"))
            cpu = {r: 0.0 for r in rows}
            wall = {r: 0.0 for r in rows}
            have = {r: set() for r in rows}
            per_layer_wall = torch.full((n_layers, len(rows)), float("nan"))
            for rec, ten in parts:
                r = rec["sentences"][0]
                lays = rec.get("layers", list(range(n_layers)))
                sig[lays, rows.index(r)] = ten["sigma"][:, 0]
                per_layer_wall[lays, rows.index(r)] = torch.tensor(rec["seconds_per_layer_sentence"])[:, 0]
                cpu[r] += rec["cpu_s"]
                wall[r] += rec["wall_s"]
                have[r].update(lays)
            complete = [r for r in rows if len(have[r]) == n_layers]
            # timing-only short runs (``tbaseline_*``): the loop's cost is linear in its steps
            short = [_raw(Path(pth).stem) for pth in sorted(glob.glob(str(RAW / f"tbaseline_{model}_s*.json")))]
            cpu_layer = torch.full((n_layers, len(rows)), float("nan"))
            how = [["-"] * len(rows) for _ in range(n_layers)]
            for rec, _ in parts:
                for li in rec.get("layers", list(range(n_layers))):
                    per_layer_cpu = rec["cpu_s"] / len(rec.get("layers", range(n_layers)))
                    cpu_layer[li, rows.index(rec["sentences"][0])] = per_layer_cpu
                    how[li][rows.index(rec["sentences"][0])] = "measured 5000 steps"
            for q in short:
                if q is None:
                    continue
                rec = q[0]
                r = rec["sentences"][0]
                for li in rec["layers"]:
                    if r in rows and how[li][rows.index(r)] == "-":
                        cpu_layer[li, rows.index(r)] = rec["cpu_s"] / len(rec["layers"]) * 5000 / rec["steps"]
                        how[li][rows.index(r)] = f"{rec['steps']} steps x {5000 / rec['steps']:.4g}"
            layers_done = [li for li in range(n_layers) if all(li in have[r] for r in rows)]
            out["baseline"] = dict(
                sentences=rows, complete_sentences=complete, layers_with_5000_step_runs=layers_done,
                steps=parts[0][0]["steps"],
                words=[int(mask[out["reference"]["rows"].index(r)].sum()) for r in rows],
                cpu_s_measured_per_sentence={r: cpu[r] for r in rows},
                cpu_s_per_layer=cpu_layer.tolist(), cpu_s_per_layer_source=how,
                wall_s_per_layer=per_layer_wall.tolist(),
                peak_rss_mib=max(q[0]["peak_rss_mib"] for q in parts),
                rss_before_mib=min(q[0]["rss_before_mib"] for q in parts),
                load=[(q[0]["load_before"], q[0]["load_after"]) for q in parts])
            if bool(torch.isfinite(cpu_layer).all()):
                per_sentence = cpu_layer.sum(0)
                out["baseline"].update(cpu_s_per_sentence_5000=per_sentence.tolist(),
                                       extrapolated_32_cpu_s=32 * float(per_sentence.mean()))
            if layers_done:
                refsel = [out["reference"]["rows"].index(r) for r in rows]
                out["baseline"]["quality"] = C.rel_errors(sig[layers_done][:, :, : ref.shape[2]],
                                                          ref[layers_done][:, refsel], mask[refsel])
                out["baseline"]["quality_layers"] = layers_done
        # timed runs on all 32 sentences
        timed = {}
        for path in sorted(glob.glob(str(RAW / f"time_{model}_st*_sa*.json"))):
            rec, ten = _raw(Path(path).stem)  # type: ignore[misc]
            if not isinstance(rec["steps"], int):
                continue
            timed[f"steps={rec['steps']},samples={rec['samples']}"] = dict(
                steps=rec["steps"], samples=rec["samples"], copies=rec["copies"], chunk_size=rec["chunk_size"],
                steps_run=rec["steps_run"],
                quality_ref_rows=_quality(ten["sigma"], ref, mask, out["reference"]["rows"]), **_timing(rec))
        out["timed_32"] = timed
        # 32-sentence cost of a grid setting not timed on 32 sentences: closed form + steps x one step
        # (same samples), one step = (t(5 or 10 steps) - t(0 steps)) / steps, all measured on 32 sentences
        step_cost: dict[int, float] = {}
        for v in timed.values():
            t0 = timed.get(f"steps=0,samples={v['samples']}")
            if v["steps"] > 0 and t0:
                step_cost[v["samples"]] = (v["cpu_s"] - t0["cpu_s"]) / v["steps"]
        for g in out["grid_ref_rows"].values():
            t0 = timed.get(f"steps=0,samples={g['samples']}")
            if g["samples"] in step_cost and t0:
                g["projected_32_cpu_s"] = t0["cpu_s"] + g["steps"] * step_cost[g["samples"]]
        out["step_cpu_s_32"] = step_cost
        if "baseline" in out and out["baseline"].get("quality"):
            base_err = out["baseline"]["quality"]["median"]
            lays = out["baseline"]["quality_layers"]
            brows = [out["reference"]["rows"].index(r) for r in out["baseline"]["sentences"]]
            cands = {}
            for k, v in timed.items():  # ours on the same layers and sentences as the baseline
                rec, ten = _raw(f"time_{model}_st{v['steps']}_sa{v['samples']}")  # type: ignore[misc]
                sig_ours = ten["sigma"][:, out["reference"]["rows"]]
                v["quality_on_baseline_cells"] = C.rel_errors(sig_ours[lays][:, brows][:, :, : ref.shape[2]],
                                                              ref[lays][:, brows], mask[brows])
                cands[f"{k} (timed)"] = (v["quality_on_baseline_cells"]["median"], v["cpu_s"])
            for k, g in out["grid_ref_rows"].items():
                lr_tag = "" if g["lr"] == 0.1 else f"_lr{g['lr']}"
                rec, ten = _raw(f"grid_{model}_st{g['steps']}_sa{g['samples']}{lr_tag}")  # type: ignore[misc]
                g["quality_on_baseline_cells"] = C.rel_errors(ten["sigma"][lays][:, brows], ref[lays][:, brows],
                                                              mask[brows])
                if "projected_32_cpu_s" in g:
                    cands[f"{k} (grid quality, projected 32-sentence cost)"] = (
                        g["quality_on_baseline_cells"]["median"], g["projected_32_cpu_s"])
            out["candidates_on_baseline_cells"] = {k: {"median_rel_err": q, "cpu_s_32": c}
                                                   for k, (q, c) in cands.items()}
            ok = {k: v for k, v in cands.items() if v[0] <= base_err}
            if ok:
                best = min(ok, key=lambda k: ok[k][1])
                out["cheapest_at_baseline_quality"] = dict(
                    setting=best, quality_on_baseline_cells=ok[best][0], baseline_quality=base_err,
                    cpu_s=ok[best][1],
                    speedup_cpu=(out["baseline"]["extrapolated_32_cpu_s"] / ok[best][1]
                                 if "extrapolated_32_cpu_s" in out["baseline"] else None))
        # one step vs the floor
        fl = _raw(f"floor_{model}_sa4")
        t0 = timed.get("steps=0,samples=4")
        stepped = [v for v in timed.values() if v["samples"] == 4 and v["steps"] > 0]
        if fl is not None and t0 and stepped:
            hi = max(stepped, key=lambda v: v["steps"])
            step_cpu = (hi["cpu_s"] - t0["cpu_s"]) / hi["steps"]
            step_wall = (hi["wall_s"] - t0["wall_s"]) / hi["steps"]
            f = fl[0]
            out["step_vs_floor"] = dict(
                samples=4, copies=f["copies"], step_cpu_s=step_cpu, step_wall_s=step_wall,
                floor_truncated_cpu_s=f["truncated"]["cpu_s"], floor_full_cpu_s=f["full"]["cpu_s"],
                floor_truncated_wall_s=f["truncated"]["wall_s"], floor_full_wall_s=f["full"]["wall_s"],
                ratio_to_truncated_cpu=step_cpu / f["truncated"]["cpu_s"],
                ratio_to_full_cpu=step_cpu / f["full"]["cpu_s"],
                floor_peak_rss_mib=f["peak_rss_mib"])
        caps = sorted(glob.glob(str(RAW / f"captum_{model}*.json")))
        if caps:
            cap = _raw(Path(caps[0]).stem)
            out["captum_lig_n50"] = dict(_timing(cap[0]), sentences=cap[0]["n"],  # type: ignore[index]
                                         cpu_s_per_32=cap[0]["cpu_s"] * 32 / cap[0]["n"])  # type: ignore[index]
        summary["models"][model] = out
    # warm start (MiniLM, after fine-tuning)
    rfd = _reference("ref_ft_minilm")
    if rfd is not None:
        ref, mask, info = rfd
        warm: dict[str, Any] = {"reference": info}
        ft = _raw("finetune_minilm")
        if ft is not None:
            warm["finetune"] = {k: ft[0][k] for k in ("steps", "batch", "lr", "loss_first10", "loss_last10",
                                                      "median_relative_weight_change", "cpu_s", "wall_s")}
        cold = {}
        for path in sorted(glob.glob(str(RAW / "ftcold_minilm_st*_sa*.json"))):
            rec, ten = _raw(Path(path).stem)  # type: ignore[misc]
            key = f"steps={rec['steps']},samples={rec['samples']}"
            t = summary["models"].get("minilm", {}).get("timed_32", {}).get(key, {})
            cold[key] = dict(quality=_quality(ten["sigma"], ref, mask), cpu_s_32=t.get("cpu_s"),
                             wall_s_32=t.get("wall_s"))
        warm["cold_on_finetuned"] = cold
        runs = {}
        for path in sorted(glob.glob(str(RAW / "ftwarm_minilm_*.json"))):
            rec, ten = _raw(Path(path).stem)  # type: ignore[misc]
            runs[Path(path).stem] = dict(init=rec["init"], steps=rec["steps"], samples=rec["samples"],
                                         quality_ref_rows=_quality(ten["sigma"], ref, mask, info["rows"]),
                                         **_timing(rec))
        warm["warm_32"] = runs
        summary["warm_start"] = warm
    C.write_json(C.RESULTS / "summary.json", summary)
    (C.RESULTS / "tables.md").write_text(_tables(summary))
    print(_tables(summary))


def _f(v: Any, fmt: str = "{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


def _tables(summary: dict[str, Any]) -> str:
    """Markdown tables of the summary (CPU seconds are the primary time; the machine was shared)."""
    lines = []
    for model, out in summary["models"].items():
        ref = out["reference"]
        lines += [f"### {model}", "",
                  f"Reference: sentences {ref['rows']}, {ref['seeds']} seed(s) x {ref['steps']} steps x "
                  f"{ref['samples']} samples, lr {ref['lr']}; seed-to-seed median rel. diff "
                  f"{_f(ref.get('seed_to_seed', {}).get('median'))}, seed vs reference "
                  f"{_f(ref.get('seed_vs_mean', {}).get('median'))}.", "",
                  "| method | sentences x layers | CPU s | wall s | peak RSS MiB | median rel. err (sentences "
                  f"{ref['rows']}) | per layer |", "|---|---|---|---|---|---|---|"]
        b = out.get("baseline")
        if b:
            q = b.get("quality") or {}
            lines.append(f"| authors' loop, 5000 steps, sentences {b['sentences']}, layers {b.get('quality_layers')} "
                         f"(measured) | {len(b['sentences'])} x {len(b.get('quality_layers') or [])} | "
                         f"{' + '.join(_f(v) for v in b['cpu_s_measured_per_sentence'].values())} | - | "
                         f"{_f(b['peak_rss_mib'], '{:.0f}')} | {_f(q.get('median'))} | "
                         f"{' '.join(_f(v, '{:.2f}') for v in q.get('per_layer', []))} |")
            if "extrapolated_32_cpu_s" in b:
                lines.append(f"| authors' loop, all layers, extrapolated to 32 sentences (per-sentence "
                             f"{_f(b['cpu_s_per_sentence_5000'][0], '{:.0f}')} CPU s) | 32 x all | "
                             f"{_f(b['extrapolated_32_cpu_s'], '{:.0f}')} | - | - | - | - |")
        for key, t in out.get("timed_32", {}).items():
            q = out["grid_ref_rows"].get(key, {}).get("quality") or t["quality_ref_rows"]
            lines.append(f"| ours {key} | 32 x all | {_f(t['cpu_s'])} | {_f(t['wall_s'])} | "
                         f"{_f(t['peak_rss_mib'], '{:.0f}')} | {_f(q['median'])} | "
                         f"{' '.join(_f(v, '{:.2f}') for v in q['per_layer'])} |")
        cap = out.get("captum_lig_n50")
        if cap:
            lines.append(f"| Captum LayerIntegratedGradients n_steps=50 ({cap['sentences']} sentences, CPU s x "
                         f"{32 / cap['sentences']:.3g} for 32) | 32 x all | {_f(cap['cpu_s_per_32'])} | "
                         f"{_f(cap['wall_s'])} | {_f(cap['peak_rss_mib'], '{:.0f}')} | n/a | |")
        lines += ["", "Quality grid (sentences of the reference only; CPU s = that small run; projected = cost of the "
                  "same setting on 32 sentences from the measured closed-form time + steps x measured step time):", "",
                  "| steps | samples | lr | median rel. err | p90 | per layer | err on baseline cells | CPU s | "
                  "projected 32-sentence CPU s |", "|---|---|---|---|---|---|---|---|---|"]
        for g in sorted(out["grid_ref_rows"].values(), key=lambda g: (g["steps"], g["samples"])):
            q = g["quality"]
            lines.append(f"| {g['steps']} | {g['samples']} | {g['lr']} | {_f(q['median'])} | {_f(q['p90'])} | "
                         f"{' '.join(_f(v, '{:.2f}') for v in q['per_layer'])} | "
                         f"{_f(g.get('quality_on_baseline_cells', {}).get('median'))} | {_f(g['cpu_s'])} | "
                         f"{_f(g.get('projected_32_cpu_s'), '{:.0f}')} |")
        if "cheapest_at_baseline_quality" in out:
            c = out["cheapest_at_baseline_quality"]
            lines += ["", f"Cheapest setting at the baseline's quality or better (on the baseline's own cells, "
                      f"sentences {out['baseline']['sentences']} x layers {out['baseline']['quality_layers']}): "
                      f"**{c['setting']}** "
                      f"(error {_f(c['quality_on_baseline_cells'])} vs baseline {_f(c['baseline_quality'])}), "
                      f"{_f(c['cpu_s'])} CPU s for 32 sentences: **{_f(c['speedup_cpu'], '{:.0f}')}x** "
                      "fewer CPU seconds than the baseline extrapolated to 32 sentences."]
        if "step_vs_floor" in out:
            f = out["step_vs_floor"]
            lines += ["", f"One step (samples=4, {f['copies']} copies): {_f(f['step_cpu_s'])} CPU s; floor "
                      f"(forward+backward of the same copies): truncated {_f(f['floor_truncated_cpu_s'])} s, "
                      f"full depth {_f(f['floor_full_cpu_s'])} s; ratio {_f(f['ratio_to_truncated_cpu'])} "
                      f"(truncated) / {_f(f['ratio_to_full_cpu'])} (full)."]
        lines.append("")
    w = summary.get("warm_start")
    if w:
        lines += ["### warm start (MiniLM after fine-tuning)", ""]
        if "finetune" in w:
            ft = w["finetune"]
            lines.append(f"Fine-tuning: {ft['steps']} AdamW steps, batch {ft['batch']}, lr {ft['lr']}; loss "
                         f"{_f(ft['loss_first10'])} -> {_f(ft['loss_last10'])}; median relative weight change "
                         f"{_f(ft['median_relative_weight_change'])}.")
        lines += ["", "| run | CPU s (32 sentences) | median rel. err vs reference on fine-tuned weights |",
                  "|---|---|---|"]
        for key, c in w.get("cold_on_finetuned", {}).items():
            lines.append(f"| cold {key} | {_f(c['cpu_s_32'])} | {_f(c['quality']['median'])} |")
        for key, r in w.get("warm_32", {}).items():
            lines.append(f"| warm {key} | {_f(r['cpu_s'])} | {_f(r['quality_ref_rows']['median'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main


def _steps(text: str) -> int | str:
    """``--steps``: ``auto`` or a non-negative int."""
    return "auto" if text == "auto" else int(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="job", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default="minilm", choices=["minilm", "bert4x256", "bertbase"])
        sp.add_argument("--n", type=int, default=32, help="probe sentences (first n of SST-2 dev)")
        sp.add_argument("--threads", type=int, default=1)
        sp.add_argument("--tag", required=True)
        sp.add_argument("--weights", default=None, help="state dict to load (fine-tuned weights)")

    sp = sub.add_parser("baseline")
    common(sp)
    sp.add_argument("--sentences", default="0,2")
    sp.add_argument("--steps", type=int, default=5000)
    sp.add_argument("--raw-reg", action="store_true")
    sp.add_argument("--layers", default=None, help="layer indices (comma-separated); default: all")
    sp.set_defaults(fn=job_baseline)

    sp = sub.add_parser("estimate")
    common(sp)
    sp.add_argument("--probe", type=int, default=32, help="estimate the first `probe` of the n sentences")
    sp.add_argument("--rows", default=None, help="estimate these sentences (comma-separated), e.g. 0,2")
    sp.add_argument("--steps", type=_steps, default=10, help="an int (exactly that many steps) or 'auto'")
    sp.add_argument("--samples", type=int, default=4)
    sp.add_argument("--lr", type=float, default=0.1)
    sp.add_argument("--target-error", type=float, default=0.03, help="where --steps auto stops")
    sp.add_argument("--max-steps", type=int, default=300, help="cap of --steps auto")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--init", default=None, help="InfoFlowResult file to warm-start from")
    sp.add_argument("--save-result", default=None)
    sp.set_defaults(fn=job_estimate)

    sp = sub.add_parser("floor")
    common(sp)
    sp.add_argument("--samples", type=int, default=4)
    sp.add_argument("--chunk", type=int, default=115)
    sp.add_argument("--reps", type=int, default=2)
    sp.set_defaults(fn=job_floor)

    sp = sub.add_parser("captum")
    common(sp)
    sp.add_argument("--internal-batch", type=int, default=400)
    sp.set_defaults(fn=job_captum)

    sp = sub.add_parser("finetune")
    common(sp)
    sp.add_argument("--steps", type=int, default=200)
    sp.add_argument("--batch", type=int, default=16)
    sp.add_argument("--lr", type=float, default=2e-5)
    sp.add_argument("--out", default="/tmp/infoflow_bench_finetuned.pt")
    sp.set_defaults(fn=job_finetune)

    sp = sub.add_parser("report")
    sp.set_defaults(fn=job_report)

    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
