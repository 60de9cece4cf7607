"""Judge the guidance rules on saved sweep runs (``python -m examples.sweep report``); no training.

For every sweep under ``--runs`` (written by ``python -m examples.sweep run``) this module

1. applies the guidance rules present in the installed package, through
   :func:`lightning_infoflow.reporting.findings.compare_findings` (the function ``infoflow compare`` uses),
   to the sweep's runs with their final dev accuracy as the score, and judges each finding's advice;
2. measures whether early signals rank the runs by final dev accuracy (Spearman's rho, exact
   permutation p-value);
3. reads the estimator's ``state_spread`` (what ``collapsed_layer`` judges) from the results and recomputes,
   from the saved checkpoints, how much the last layer's states vary across the probe's words, to tell
   whether a collapsed setting can be told apart;

The analyses judged are those of one namespace of every run: ``reanalysed`` (``python -m examples.sweep
reanalyse``, the installed estimator on the saved checkpoints) when every run has them, else ``infoflow``
(the callback's own, as trained);

and writes everything as one Markdown page (:mod:`examples.sweep_markdown`).

How an advice is judged. A finding's suggestion is read as a direction on the swept hyperparameter
(:func:`examples.sweep_stats.advice_direction`: lower, raise, or none). Each setting's accuracy is the
mean final dev accuracy of its seeds. The advice on a run *points toward the better setting* when the
setting with the best mean accuracy lies in that direction from the run's own setting (advice to move
away from the best setting, or to move at all from it, counts as wrong); *next step better* when the
adjacent setting in that direction exists and has a higher mean accuracy than the run's own.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from examples import sweep_stats

CHANCE_ACCURACY = 0.55
"""A setting whose mean final dev accuracy is below this counts as collapsed (SST-2 dev: 50.9% positive)."""


@dataclass
class SweepRuns:
    """One sweep: its settings, and per run its record, its loaded results and its directory."""

    name: str
    settings: dict[str, Any]
    records: dict[str, dict[str, Any]]
    runs: dict[str, Any]  # run name -> lightning_infoflow.reporting.runs.Run
    dirs: dict[str, str]
    findings: list[Any] = field(default_factory=list)

    def setting_accuracy(self) -> dict[float, float]:
        by_value: dict[float, list[float]] = defaultdict(list)
        for rec in self.records.values():
            by_value[float(rec["value"])].append(float(rec["final_val_acc"]))
        return {v: sum(a) / len(a) for v, a in sorted(by_value.items())}

    def collapsed_values(self) -> list[float]:
        return [v for v, acc in self.setting_accuracy().items() if acc < CHANCE_ACCURACY]


def default_namespace(runs_dir: str) -> str:
    """``reanalysed`` when every finished run has a re-analysed result at every checkpoint, else ``infoflow``."""
    from examples import sweep_reanalyse

    runs = sweep_reanalyse.finished_runs(runs_dir)
    if all(sweep_reanalyse.complete(d, r) for d, r in runs):
        return sweep_reanalyse.NAMESPACE
    if any(sweep_reanalyse.complete(d, r) for d, r in runs):
        print(f"not every run under {runs_dir} is re-analysed: judging the callback's own results (infoflow); "
              f"run `python -m examples.sweep reanalyse --runs {runs_dir}` to finish", flush=True)
    return "infoflow"


def _load_namespace(log_dir: str, name: str, namespace: str) -> Any:
    """The run in ``log_dir`` whose result files are those of ``namespace``."""
    from lightning_infoflow.reporting.runs import find_runs, load_run

    sources = [s for s in find_runs(log_dir) if s.namespace == namespace]
    if not sources:
        raise SystemExit(f"{log_dir} has no {namespace!r} results; run `python -m examples.sweep reanalyse` "
                         "first, or pass --namespace infoflow")
    return load_run(sources[0], name=name)


def agreement(sweep: SweepRuns) -> tuple[float, float, int]:
    """How far the judged results lie from the callback's own at the same steps: the largest absolute
    difference of ``layer_information`` (nats per word) and of ``log sigma`` over the real words, and the
    number of analyses compared (0 when the judged results are the callback's)."""
    worst_info, worst_log_sigma, compared = 0.0, 0.0, 0
    for name, run in sweep.runs.items():
        if run.source.namespace == "infoflow":
            continue
        own = {int(r.meta["step"]): r for r in _load_namespace(run.path, name, "infoflow").results}
        for result in run.results:
            trained = own.get(int(result.meta["step"]))
            if trained is None or trained.sigma.shape != result.sigma.shape:
                continue
            real = result.mask.unsqueeze(0).expand_as(result.sigma)
            gap = (result.sigma[real].log() - trained.sigma[real].log()).abs()
            worst_log_sigma = max(worst_log_sigma, float(gap.max()))
            worst_info = max(worst_info, float((result.layer_information - trained.layer_information).abs().max()))
            compared += 1
    return worst_info, worst_log_sigma, compared


def load_sweeps(runs_dir: str, namespace: str = "infoflow") -> list[SweepRuns]:
    """Every sweep under ``runs_dir`` with its finished runs (those with a ``record.json``), each run's
    analyses read from ``namespace``."""
    from examples.sweep import RECORD_FILE, SWEEP_FILE

    sweeps = []
    for sweep_file in sorted(glob.glob(os.path.join(runs_dir, "*", SWEEP_FILE))):
        sweep_dir = os.path.dirname(sweep_file)
        with open(sweep_file) as f:
            settings = json.load(f)
        records, runs, dirs = {}, {}, {}
        for record_file in sorted(glob.glob(os.path.join(sweep_dir, "*", RECORD_FILE))):
            run_dir = os.path.dirname(record_file)
            name = os.path.basename(run_dir)
            with open(record_file) as f:
                records[name] = json.load(f)
            runs[name] = _load_namespace(os.path.join(run_dir, records[name]["log_dir"]), name, namespace)
            dirs[name] = run_dir
        if records:
            sweeps.append(SweepRuns(os.path.basename(sweep_dir), settings, records, runs, dirs))
    if not sweeps:
        raise SystemExit(f"no finished sweep runs under {runs_dir!r}; "
                         f"run `python -m examples.sweep run --out {runs_dir}` first")
    return sweeps


# --------------------------------------------------------------------------- rules


def rule_names() -> list[str]:
    """The rules the installed guidance module documents: its ``RULES`` when it has one, else the
    ````name```` entries that open lines of its docstring."""
    guidance = importlib.import_module("lightning_infoflow.analysis.guidance")
    declared = getattr(guidance, "RULES", None)
    if isinstance(declared, dict):
        return [str(k) for k in declared]
    if isinstance(declared, (list, tuple)) and all(isinstance(r, str) for r in declared):
        return list(declared)
    return re.findall(r"^``(\w+)``", guidance.__doc__ or "", flags=re.MULTILINE)


def apply_rules(sweep: SweepRuns) -> list[Any]:
    """The findings of the package's sweep comparison on this sweep, scored by final dev accuracy."""
    findings_module = importlib.import_module("lightning_infoflow.reporting.findings")
    compare = findings_module.compare_findings
    offered = {"scores": {n: float(r["final_val_acc"]) for n, r in sweep.records.items()}, "score_name": "val/acc"}
    accepted = inspect.signature(compare).parameters
    kwargs = {k: v for k, v in offered.items() if k in accepted}
    return list(compare(list(sweep.runs.values()), **kwargs))


def finding_direction(sweep: SweepRuns, finding: Any) -> str:
    """The direction of a finding's advice on its run's swept value (see the module docstring)."""
    suggestion = str(getattr(finding, "suggestion", ""))
    if sweep_stats.TOWARD_BEST_RUN.search(suggestion) and finding.run in sweep.records:
        best = max(sweep.records.values(), key=lambda r: r["final_val_acc"])["value"]
        mine = sweep.records[finding.run]["value"]
        return "none" if best == mine else ("lower" if best < mine else "raise")
    return sweep_stats.advice_direction(suggestion, dict(getattr(finding, "extra", {}) or {}))


def judge(sweep: SweepRuns, value: float, direction: str) -> tuple[bool | None, bool | None]:
    """(points toward the better setting, next step better) for advice ``direction`` at ``value``;
    ``None`` when the advice has no single direction."""
    if direction not in ("lower", "raise"):
        return None, None
    acc = sweep.setting_accuracy()
    values = sorted(acc)
    best = max(values, key=lambda v: acc[v])
    toward = best < value if direction == "lower" else best > value
    i = values.index(value)
    j = i - 1 if direction == "lower" else i + 1
    step = 0 <= j < len(values) and acc[values[j]] > acc[value]
    return toward, step


@dataclass
class RuleVerdict:
    """One rule on one sweep: the runs it fired on, and how its advice fared."""

    rule: str
    fired_runs: list[str] = field(default_factory=list)
    directions: dict[str, str] = field(default_factory=dict)
    toward_better: int = 0
    next_step_better: int = 0
    judged: int = 0


def verdicts(sweep: SweepRuns, names: list[str]) -> list[RuleVerdict]:
    """Per rule (documented ones first, then any other that fired): where it fired and how its advice fared."""
    by_rule: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for f in sweep.findings:
        by_rule[f.rule][f.run or "(no run)"].add(finding_direction(sweep, f))
    out = []
    for rule in names + sorted(set(by_rule) - set(names)):
        v = RuleVerdict(rule)
        for run, dirs in sorted(by_rule.get(rule, {}).items()):
            v.fired_runs.append(run)
            moves = dirs - {"none"}
            direction = "mixed" if len(moves) > 1 or "mixed" in moves else (moves.pop() if moves else "none")
            v.directions[run] = direction
            if run not in sweep.records:
                continue
            toward, step = judge(sweep, sweep.records[run]["value"], direction)
            if toward is not None:
                v.judged += 1
                v.toward_better += int(toward)
                v.next_step_better += int(bool(step))
        out.append(v)
    return out


# --------------------------------------------------------------------------- early signals and spread


def result_near(run: Any, step: int) -> Any:
    """The run's analysis nearest to ``step`` (the earlier one on a tie)."""
    return min(run.results, key=lambda r: (abs(int(r.meta.get("step", 0)) - step), int(r.meta.get("step", 0))))


def run_measures(sweep: SweepRuns, name: str) -> dict[str, Any]:
    """Early and final signals of one run, and the last layer's state spread at both points."""
    rec, run = sweep.records[name], sweep.runs[name]
    early = result_near(run, int(rec["early_step"]))
    first, last = run.results[0], run.results[-1]
    run_dir = sweep.dirs[name]
    return {
        "info_early": float(early.layer_information[-1]), "info_step": float(early.meta.get("step", -1)),
        "info_final": float(last.layer_information[-1]),
        "info_change_early": float(early.layer_information[-1] - first.layer_information[-1]),
        "train_loss_early": float(rec["early_train_loss"]), "val_loss_early": float(rec["early_val_loss"]),
        "val_acc_early": float(rec["early_val_acc"]), "final_val_acc": float(rec["final_val_acc"]),
        "spread_start": checkpoint_spread(run_dir, rec, int(first.meta.get("step", -1)), first.layer_names[-1]),
        "spread_early": checkpoint_spread(run_dir, rec, int(early.meta.get("step", -1)), early.layer_names[-1]),
        "spread_final": checkpoint_spread(run_dir, rec, int(last.meta.get("step", -1)), last.layer_names[-1]),
        **result_spreads(first, early, last), **rule_margins(run),
        "analysis_seconds": sum(float(r.meta.get("seconds", float("nan"))) for r in run.results),
    }


def rule_margins(run: Any) -> dict[str, Any]:
    """How near the rules came to firing on a run: the last layer's stop-word minus content-word mean log sigma
    at the end (``noisy_word_use`` fires below 0.1), its effective words at the end, and the relative
    improvement of the loss ``not_learning`` judges, with which loss it is (the rule fires below 2%)."""
    from lightning_infoflow.analysis import guidance

    # the rule with a bar no run clears reports its measurement on every run it can judge
    judged = guidance.not_learning(list(zip(run.steps, run.loss_history())),
                                   [p for p in run.val_losses() if p[0] <= run.steps[-1]], min_improvement=math.inf)
    return {"stop_gap": float(guidance.stop_word_gap(run.last)[0][-1]),
            "effective_words": float(run.last.effective_words[-1]),
            "loss_improvement": judged[0].measured["improvement"] if judged else float("nan"),
            "judged_loss": judged[0].extra["loss"] if judged else "none"}


def result_spreads(first: Any, early: Any, last: Any) -> dict[str, Any]:
    """The estimator's ``state_spread`` (what ``collapsed_layer`` reads) of the last layer at step 0, ~20% and
    the end, and the lowest of any layer at the end with its layer (NaN for files written without it)."""
    spread = last.state_spread
    lowest = int(torch.nan_to_num(spread, nan=math.inf).argmin()) if spread is not None and len(spread) else -1
    return {
        "state_spread_start": float(first.state_spread[-1]), "state_spread_early": float(early.state_spread[-1]),
        "state_spread_final": float(spread[-1]), "state_spread_min_final": float(spread[lowest]),
        "state_spread_min_layer": last.layer_names[lowest],
    }


def checkpoint_spread(run_dir: str, record: dict[str, Any], step: int, layer: str) -> float:
    """:func:`~examples.sweep_stats.state_spread` of ``layer`` over the run's probe, with the weights of ``step``."""
    from examples.sweep_reanalyse import load_checkpoint, rebuild_module

    if not os.path.exists(os.path.join(run_dir, "checkpoints", f"step_{step}.pt")):
        return float("nan")
    module = rebuild_module(record)
    load_checkpoint(module, run_dir, step)
    probe = torch.load(os.path.join(run_dir, "probe.pt"), weights_only=True)
    states = sweep_stats.layer_states(module, layer, probe["input_ids"], probe["attention_mask"])
    return sweep_stats.state_spread(states, probe["attention_mask"])


PREDICTORS = (
    ("info_early", "(a) last layer's mean information per word at ~20%"),
    ("train_loss_early", "(b) training loss at ~20%"),
    ("val_loss_early", "(c) validation loss at ~20%"),
    ("val_acc_early", "(d) validation accuracy at ~20% (reference)"),
    ("info_final", "(e) last layer's information at the end (not a forecast)"),
    ("info_change_early", "(f) change of the last layer's information from step 0 to ~20% (no sigma_max offset)"),
)


def correlations(measures: dict[str, dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Spearman's rho of each predictor against final dev accuracy over ``names``, with its p-value."""
    acc = [measures[n]["final_val_acc"] for n in names]
    rows = []
    for key, label in PREDICTORS:
        xs = [measures[n][key] for n in names]
        rows.append({"key": key, "label": label, "n": len(names), "rho": sweep_stats.spearman(xs, acc),
                     "p": sweep_stats.permutation_p(xs, acc)})
    return rows


def write_report(runs_dir: str, out: str, namespace: str | None = None) -> dict[str, Any]:
    """Judge every sweep under ``runs_dir`` and write the Markdown page ``out``; returns the numbers.

    ``namespace``: the result files to judge, ``infoflow`` (the callback's, as trained) or ``reanalysed``
    (``python -m examples.sweep reanalyse``); default :func:`default_namespace`.
    """
    from examples import sweep_markdown, sweep_reanalyse

    names = rule_names()
    namespace = namespace or default_namespace(runs_dir)
    summary: dict[str, Any] = {"rules_documented": names, "sweeps": {}, "namespace": namespace,
                               "reanalysis": sweep_reanalyse.timings(runs_dir)}
    for sweep in load_sweeps(runs_dir, namespace):
        sweep.findings = apply_rules(sweep)
        measures = {n: run_measures(sweep, n) for n in sweep.records}
        kept = [n for n in sweep.records if sweep.records[n]["value"] not in sweep.collapsed_values()]
        summary["sweeps"][sweep.name] = {
            "sweep": sweep, "verdicts": verdicts(sweep, names), "measures": measures, "agreement": agreement(sweep),
            "correlations": correlations(measures, sorted(sweep.records)),
            "correlations_by_seed": {seed: correlations(measures, [n for n, r in sweep.records.items()
                                                                   if r["seed"] == seed])
                                     for seed in sorted({r["seed"] for r in sweep.records.values()})},
            "correlations_without_collapsed": correlations(measures, kept) if 3 <= len(kept) < len(sweep.records)
            else [],
        }
    text = sweep_markdown.render(summary, runs_dir)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(f"wrote {out}", flush=True)
    return summary


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
