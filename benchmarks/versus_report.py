"""Quality, CPU-time ratios and the Markdown table of ``versus_authors.py`` (pure functions on its results).

Definitions (the command's output repeats them):

* relative error of a sigma against another, per cell (layer, sentence, real word): ``|s - r| / r``;
  a setting's quality is the median and the root mean square of that over every cell it ran;
* the authors' seed-to-seed spread: the median over cells of ``|sigma_a - sigma_b| / sigma_b``, seeds
  ``a = 0`` and ``b = 1`` of their loop; it needs no reference;
* the authors' error: the mean over their two seeds of each seed's median error against the reference;
* equal quality: a setting of ours whose median error against the reference is at or below a bar (the
  spread, and separately the stricter of the spread and the authors' error);
* CPU-time ratio: the authors' CPU seconds for one pass (mean of the two seeds) over ours.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor


def rel_errors(sigma: Tensor, ref: Tensor, mask: Tensor) -> dict[str, Any]:
    """Median and RMS of ``|sigma - ref| / ref`` over the real words (``mask`` ``[N, T]``) of every layer of
    ``sigma``/``ref`` ``[L, N, T]``, and the median per layer. A non-finite sigma counts as an infinite error."""
    m = mask.bool().unsqueeze(0).expand_as(ref)
    err = ((sigma - ref).abs() / ref).masked_fill(~torch.isfinite(sigma), math.inf)
    cells = err[m].double()
    return {"median": float(cells.median()), "rms": float(cells.pow(2).mean().sqrt()),
            "per_layer": [float(err[i][m[i]].median()) for i in range(err.shape[0])], "cells": int(cells.numel())}


def geometric_mean(runs: list[Tensor]) -> Tensor:
    """Per-cell geometric mean of several sigma tensors of one shape."""
    return torch.stack(runs).log().mean(0).exp()


def cheapest_within(settings: dict[str, dict[str, Any]], bar: float) -> Optional[str]:
    """Name of the setting with the least ``cpu_s`` among those whose ``median`` error is at or below ``bar``
    (None if none is); ties go to the first in order.

    >>> cheapest_within({"a": {"cpu_s": 5.0, "median": 0.04}, "b": {"cpu_s": 9.0, "median": 0.01},
    ...                  "c": {"cpu_s": 7.0, "median": 0.02}}, 0.02)
    'c'
    """
    ok = [(v["cpu_s"], i, k) for i, (k, v) in enumerate(settings.items()) if v["median"] <= bar]
    return min(ok)[2] if ok else None


def ratio(authors_cpu: float, ours_cpu: float) -> float:
    """How many times fewer CPU seconds ours took (``authors / ours``)."""
    return authors_cpu / ours_cpu if ours_cpu > 0 else math.inf


def authors_quality(raw: dict[str, Any], ref: Tensor, mask: Tensor) -> dict[str, Any]:
    """The authors' two seeds: CPU and error of each, their spread, and the same at every checkpoint."""
    seeds = raw["authors"]
    out: dict[str, Any] = {"seeds": [], "checkpoints": {}}
    for run in seeds:
        out["seeds"].append(dict(seed=run["seed"], cpu_s=run["cpu_s"], wall_s=run["wall_s"],
                                 **rel_errors(run["sigma"], ref, mask)))
    out["cpu_s"] = sum(r["cpu_s"] for r in seeds) / len(seeds)
    out["error"] = sum(s["median"] for s in out["seeds"]) / len(seeds)
    out["spread"] = rel_errors(seeds[0]["sigma"], seeds[1]["sigma"], mask) if len(seeds) > 1 else None
    for it in sorted(seeds[0]["snapshots"]):
        snaps = [r["snapshots"][it] for r in seeds]
        errs = [rel_errors(s["sigma"], ref, mask)["median"] for s in snaps]
        out["checkpoints"][it] = {
            "cpu_s": sum(s["cpu_s"] for s in snaps) / len(snaps), "error": sum(errs) / len(errs),
            "spread": rel_errors(snaps[0]["sigma"], snaps[1]["sigma"], mask)["median"] if len(snaps) > 1 else None}
    return out


def ours_quality(raw: dict[str, Any], ref: Tensor, mask: Tensor, authors_cpu: float) -> dict[str, dict[str, Any]]:
    """Per setting of ours: its settings, CPU, steps run per sentence, error and the CPU-time ratio; ``net``:
    without the normalisation forward that each of its calls (one per sentence) repeats."""
    norm = raw.get("normalisation_forward_cpu_s", 0.0)
    out = {}
    for name, run in raw["ours"].items():
        net = run["cpu_s"] - len(run["steps_run"]) * norm
        out[name] = dict(run["setting"], cpu_s=run["cpu_s"], wall_s=run["wall_s"], steps_run=run["steps_run"],
                         stopped=run["stopped"], ratio=ratio(authors_cpu, run["cpu_s"]), cpu_net_s=net,
                         ratio_net=ratio(authors_cpu, net), **rel_errors(run["sigma"], ref, mask))
    return out


def verdicts(ours: dict[str, dict[str, Any]], default: str, bars: dict[str, float]) -> dict[str, Any]:
    """For each bar: the cheapest setting that reaches it, its ratio to the authors, and the defaults' cost
    over its cost; plus the defaults' own ratio."""
    d = ours[default]
    out: dict[str, Any] = {"default": default, "default_ratio": d["ratio"], "default_ratio_net": d["ratio_net"],
                           "default_median": d["median"], "bars": {}}
    for bar_name, bar in bars.items():
        best = cheapest_within(ours, bar)
        entry: dict[str, Any] = {"bar": bar, "cheapest": best, "default_meets": d["median"] <= bar}
        if best is not None:
            entry.update(ratio=ours[best]["ratio"], ratio_net=ours[best]["ratio_net"], median=ours[best]["median"],
                         default_over_cheapest=d["cpu_s"] / ours[best]["cpu_s"])
        out["bars"][bar_name] = entry
    return out


def summarise(raw: dict[str, Any], default: str) -> dict[str, Any]:
    """Everything the command reports, from its raw measurements (see :func:`versus_authors.measure`)."""
    ref, mask = raw["reference"]["sigma"], raw["mask"]
    authors = authors_quality(raw, ref, mask)
    ours = ours_quality(raw, ref, mask, authors["cpu_s"])
    bars = {}
    if authors["spread"] is not None:
        bars["authors' seed-to-seed spread"] = authors["spread"]["median"]
        bars["stricter of spread and authors' error"] = min(authors["spread"]["median"], authors["error"])
    ref_info = {k: v for k, v in raw["reference"].items() if k != "sigma"}
    return {"scope": raw["scope"], "reference": ref_info, "authors": authors, "ours": ours,
            "verdicts": verdicts(ours, default, bars) if bars else None,
            "normalisation_forward_cpu_s": raw.get("normalisation_forward_cpu_s", 0.0),
            "extrapolated_32": extrapolation(raw["scope"], authors["cpu_s"], ours[default]["cpu_s"])}


def extrapolation(scope: dict[str, Any], authors_cpu: float, default_cpu: float) -> Optional[dict[str, Any]]:
    """The CPU seconds of a subset scaled to the 32 probe sentences, by sentence count and by word count
    (extrapolated, not measured; None when all 32 sentences ran). Both scale alike, so the ratios do not move."""
    n_32, words_32 = scope.get("sentences_32", 32), scope.get("words_32")
    if scope["sentences"] >= n_32 or words_32 is None:
        return None
    words = sum(scope["lengths"])
    by = {"sentences": n_32 / scope["sentences"], "words": words_32 / words}
    return {"words_32": words_32, "words_run": words, "factors": by,
            "authors_cpu_s": {k: authors_cpu * f for k, f in by.items()},
            "default_cpu_s": {k: default_cpu * f for k, f in by.items()}}


def _p(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _s(v: float) -> str:
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def markdown(summary: dict[str, Any]) -> str:
    """The Markdown table and the headline lines of a summary."""
    sc, ref, a = summary["scope"], summary["reference"], summary["authors"]
    lines = [f"Scope: {sc['text']}", "",
             f"Reference: ours, {ref['steps']} fixed steps x {ref['samples']} draws, {len(ref['seeds'])} seeds, "
             f"geometric mean ({_s(ref['cpu_s'])} CPU s, not in the ratios); its seeds differ by "
             f"{_p(ref['seed_spread'])} (median), so the reference itself is off by about half that.", "",
             f"Ours runs one call per sentence; each call repeats a forward of the 32 normalisation sentences "
             f"({_s(summary['normalisation_forward_cpu_s'])} CPU s, measured apart) that one batched call would "
             "run once: 'net' leaves it out.", "",
             "| run | CPU s | authors / ours | net: authors / ours | steps per sentence | median rel. err | "
             "RMS rel. err | median per layer |", "|---|---:|---:|---:|---|---:|---:|---|"]
    for s in a["seeds"]:
        lines.append(f"| authors' loop, {sc['authors_steps']} iterations, seed {s['seed']} | {_s(s['cpu_s'])} | "
                     f"- | - | {sc['authors_steps']} x {len(sc['layers'])} layers | {_p(s['median'])} | "
                     f"{_p(s['rms'])} | {' '.join(_p(v) for v in s['per_layer'])} |")
    for it, c in a["checkpoints"].items():
        if it != sc["authors_steps"]:
            lines.append(f"| authors' loop stopped at {it} iterations (same runs, mean of seeds) | "
                         f"{_s(c['cpu_s'])} | - | - | {it} x {len(sc['layers'])} layers | {_p(c['error'])} | - | "
                         f"spread {_p(c['spread'])} |")
    for name, o in summary["ours"].items():
        steps = o["steps_run"]
        lines.append(f"| ours, {name} | {_s(o['cpu_s'])} | {o['ratio']:,.0f}x | {o['ratio_net']:,.0f}x | "
                     f"{min(steps)}-{max(steps)} | {_p(o['median'])} | {_p(o['rms'])} | "
                     f"{' '.join(_p(v) for v in o['per_layer'])} |")
    if a["spread"] is not None:
        lines += ["", "Authors' seed-to-seed spread (median |sigma_0 - sigma_1| / sigma_1): "
                  f"{_p(a['spread']['median'])}; their error against the reference (mean of the seeds' medians): "
                  f"{_p(a['error'])}."]
    v = summary["verdicts"]
    if v:
        lines += ["", f"At the defaults ({v['default']}): **{v['default_ratio']:,.0f}x** less CPU than the authors' "
                  f"loop ({v['default_ratio_net']:,.0f}x net), median error {_p(v['default_median'])}."]
        for bar_name, e in v["bars"].items():
            if e["cheapest"] is None:
                lines.append(f"At equal quality ({bar_name}, {_p(e['bar'])}): no setting of the ladder reaches it.")
                continue
            lines.append(f"At equal quality ({bar_name}, {_p(e['bar'])}): cheapest setting **{e['cheapest']}** "
                         f"({_p(e['median'])}), **{e['ratio']:,.0f}x** less CPU ({e['ratio_net']:,.0f}x net); the "
                         "defaults cost "
                         f"{e['default_over_cheapest']:.2f}x that and {'meet' if e['default_meets'] else 'miss'} "
                         "the bar.")
    x = summary.get("extrapolated_32")
    if x:
        f, a32, o32 = x["factors"], x["authors_cpu_s"], x["default_cpu_s"]
        lines += ["", f"Extrapolated (not measured) to the 32 probe sentences ({x['words_32']} words; this run "
                  f"{x['words_run']}), by sentence count (x {f['sentences']:.1f}) to by word count "
                  f"(x {f['words']:.1f}): the authors' loop {_s(a32['sentences'])} to {_s(a32['words'])} CPU s, "
                  f"ours at the defaults {_s(o32['sentences'])} to {_s(o32['words'])} CPU s. One factor scales both, "
                  "so the ratios stay the measured ones; that both scale alike on longer sentences is an assumption."]
    return "\n".join(lines) + "\n"
