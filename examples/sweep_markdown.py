"""The sweep report as Markdown: settings, runs and times, rule verdicts, rank correlations, collapse."""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from typing import Any

from examples.sweep_report import CHANCE_ACCURACY, RuleVerdict, SweepRuns
from lightning_infoflow.core.measures import COLLAPSED_SPREAD


def _f(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _settings(sweep: SweepRuns) -> list[str]:
    s = sweep.settings
    rec = next(iter(sweep.records.values()))
    hp = rec.get("hparams", {})
    collapsed = sweep.collapsed_values()
    train = f" (a random {s['train_size']} sentences)" if s.get("train_size") else ""
    steps = ", ".join(map(str, rec["analysis_steps"]))
    ran = sorted({int(r["seed"]) for r in sweep.records.values()})
    seeds = ", ".join(map(str, ran)) + ("" if ran == sorted(s["seeds"]) else
                                        f" (of {', '.join(map(str, s['seeds']))} planned; the others did not run)")
    dev = f"a random {s['dev_size']} dev sentences" if s.get("dev_size") else "the whole dev set (872 sentences)"
    return [
        f"### `{sweep.name}`: {s['model']}, {s['param']} in {', '.join(f'{v:g}' for v in s['values'])}", "",
        f"- seeds {seeds}; {s['max_steps']} optimizer steps of batch 32 on the SST-2 "
        f"training split{train} (Adam, lr {hp.get('lr', 'n/a')}); dev accuracy and loss on {dev} at step "
        f"{rec['early_step']} (\"~20%\") and at the end.",
        f"- InfoFlowCallback with its default schedule (analyses at steps {steps}), default estimator settings, "
        f"`max_overhead=None`, `heatmaps=0`, a probe of {s['probe_size']} dev "
        "sentences (the paper's \"rare birds\" sentence and the first 15 others); the model's state_dict saved at "
        "every analysis.",
        f"- {len(sweep.records)} finished runs. Collapsed settings (mean final dev accuracy below "
        f"{CHANCE_ACCURACY}): {', '.join(f'{v:g}' for v in collapsed) or 'none'}.", "",
    ]


def _runs_table(sweep: SweepRuns) -> list[str]:
    rows = []
    for r in sorted(sweep.records.values(), key=lambda r: (r["value"], r["seed"])):
        rows.append([f"{r['value']:g}", r["seed"], _f(r["final_val_acc"]), _f(r["early_train_loss"]),
                     _f(r["early_val_loss"]), _f(r["final_train_loss"]), _f(r["final_val_loss"]),
                     _f(r["wall_seconds"], 0)])
    acc = sweep.setting_accuracy()
    total = sum(r["wall_seconds"] for r in sweep.records.values())
    return _table([sweep.settings["param"], "seed", "final dev acc", "train loss ~20%", "val loss ~20%",
                   "train loss end", "val loss end", "wall s"], rows) + [
        "Mean final dev accuracy per setting: " + ", ".join(f"{v:g}: {a:.3f}" for v, a in acc.items())
        + f". Wall time of the {len(sweep.records)} runs: {total:.0f} s ({total / 60:.1f} min, "
        f"{total / len(sweep.records):.0f} s per run, training, analyses, checkpoints and validation included).", "",
    ]


def _verdict_rows(sweep: SweepRuns, vs: list[RuleVerdict]) -> list[list[Any]]:
    n = len(sweep.records)
    rows = []
    for v in vs:
        dirs = sorted({d for d in v.directions.values()})
        rows.append([f"`{v.rule}`", f"{len(v.fired_runs)} of {n}", ", ".join(dirs) or "-",
                     f"{v.toward_better} of {v.judged}" if v.judged else "not judged (no direction)" if v.fired_runs
                     else "-", f"{v.next_step_better} of {v.judged}" if v.judged else "-"])
    return rows


def _findings_by_run(sweep: SweepRuns, vs: list[RuleVerdict], measures: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name, r in sorted(sweep.records.items(), key=lambda kv: (kv[1]["value"], kv[1]["seed"])):
        fired = [f"{v.rule} ({v.directions[name]})" for v in vs if name in v.directions]
        m = measures[name]
        rows.append([name, _f(r["final_val_acc"]), "; ".join(fired) or "none", _f(m["stop_gap"], 3),
                     _f(m["effective_words"], 2), f"{_f(100 * m['loss_improvement'], 1)}% ({m['judged_loss']})"])
    return _table(["run", "final dev acc", "rules fired (advice direction)", "stop - content log sigma, end "
                   "(noisy_word_use: < 0.1)", "effective words, end", "loss improvement, first to last value "
                   "(not_learning: < 2%)"], rows)


def _correlation_table(rows: list[dict[str, Any]]) -> list[str]:
    return _table(["signal", "runs", "Spearman rho vs final dev acc", "p (exact permutation)"],
                  [[r["label"], r["n"], _f(r["rho"], 2), _f(r["p"], 3)] for r in rows])


def _spread_table(sweep: SweepRuns, measures: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name, r in sorted(sweep.records.items(), key=lambda kv: (kv[1]["value"], kv[1]["seed"])):
        m = measures[name]
        rows.append([f"{r['value']:g}", r["seed"], _f(m["final_val_acc"]), _f(m["info_early"], 1),
                     _f(m["info_final"], 1), _f(m["state_spread_start"], 4), _f(m["state_spread_early"], 4),
                     _f(m["state_spread_final"], 4), f"{_f(m['state_spread_min_final'], 4)} "
                     f"({m['state_spread_min_layer'].split('.')[-1]})", _f(m["spread_final"], 3)])
    return _table([sweep.settings["param"], "seed", "final dev acc", "info ~20% (nats/word)", "info end",
                   "state_spread step 0", "state_spread ~20%", "state_spread end", "lowest layer's end (layer)",
                   "word spread end (recomputed)"], rows)


def _separation(measures: dict[str, dict[str, Any]], bad: list[str], good: list[str], key: str, what: str) -> str:
    lo_bad, hi_bad = min(measures[n][key] for n in bad), max(measures[n][key] for n in bad)
    lo_good, hi_good = min(measures[n][key] for n in good), max(measures[n][key] for n in good)
    apart = (f"separates the {len(bad)} collapsed from the {len(good)} other runs"
             if hi_bad < lo_good or lo_bad > hi_good else "does not separate them")
    return f"{what}: collapsed {_f(lo_bad, 4)}-{_f(hi_bad, 4)}, others {_f(lo_good, 4)}-{_f(hi_good, 4)} ({apart})"


def _collapse_statement(sweep: SweepRuns, measures: dict[str, dict[str, Any]], flagged: list[str]) -> str:
    collapsed = sweep.collapsed_values()
    which = f" ({', '.join(flagged)})" if flagged else ""
    rule = (f"`collapsed_layer` flagged {len(flagged)} of {len(sweep.records)} runs{which} (state_spread below "
            f"{COLLAPSED_SPREAD:g} in some layer at the last analysis)")
    if not collapsed:
        return (f"No setting of `{sweep.name}` collapsed (every mean final dev accuracy is at least "
                f"{CHANCE_ACCURACY}); {rule}.")
    bad = [n for n, r in sweep.records.items() if r["value"] in collapsed]
    good = [n for n in sweep.records if n not in bad]
    caught = sorted(set(bad) & set(flagged))
    false_alarms = sorted(set(flagged) - set(bad))
    verdict = (f"{rule}: it catches {len(caught)} of the {len(bad)} collapsed runs and flags {len(false_alarms)} of "
               f"the {len(good)} others")
    if not good:
        return f"Every setting of `{sweep.name}` collapsed: there is nothing to tell them apart from; {verdict}."
    out = [_separation(measures, bad, good, key, what) for key, what in (
        ("state_spread_final", "estimator's state_spread of the last layer at the end"),
        ("state_spread_min_final", "lowest state_spread of any layer at the end"),
        ("spread_final", "word spread at the end (recomputed)"),
        ("info_final", "information at the end"), ("info_early", "information at ~20%"))]
    return (f"`{sweep.name}`, collapsed setting(s) {', '.join(f'{v:g}' for v in collapsed)} ({len(bad)} runs): "
            + "; ".join(out) + f". {verdict}.")


def _rule_statements(sweep: SweepRuns, vs: list[RuleVerdict]) -> list[str]:
    n = len(sweep.records)
    out = []
    for v in vs:
        if not v.fired_runs:
            out.append(f"- `{v.rule}` never fired on `{sweep.name}` ({n} runs): on this sweep it tells nothing.")
        elif not v.judged:
            out.append(f"- `{v.rule}` fired on {len(v.fired_runs)} of {n} runs of `{sweep.name}` with no advice on "
                       f"the swept {sweep.settings['param']}: it describes, it does not steer.")
        else:
            wrong = v.judged - v.toward_better
            verdict = "mostly toward" if v.toward_better > wrong else "as often away from as toward" \
                if v.toward_better == wrong else "mostly away from"
            same = set(v.directions.values())
            constant = (f" It gave the same advice ({same.pop()}) on every run it fired on, whatever the run's "
                        f"setting: its hits follow from where the best setting lies, not from the run."
                        if len(same) == 1 and len(v.fired_runs) > 1 else "")
            out.append(f"- `{v.rule}` fired on {len(v.fired_runs)} of {n} runs of `{sweep.name}`; its advice pointed "
                       f"{verdict} the better setting ({v.toward_better} of {v.judged} toward it; next step better in "
                       f"{v.next_step_better} of {v.judged}).{constant}")
    return out


def _signal_statement(name: str, rows: list[dict[str, Any]], suffix: str = "") -> str:
    early = [r for r in rows if r["key"] in ("info_early", "train_loss_early", "val_loss_early")]
    if not early:
        return ""
    strongest = max(early, key=lambda r: abs(r["rho"]) if math.isfinite(r["rho"]) else -1.0)
    info = next(r for r in early if r["key"] == "info_early")
    return (f"- `{name}`{suffix}: information at ~20% has rho {_f(info['rho'], 2)} (p {_f(info['p'], 3)}); the "
            f"strongest of (a)-(c) is {strongest['label']} with rho {_f(strongest['rho'], 2)}.")


def render(summary: dict[str, Any], runs_dir: str) -> str:
    """The whole page."""
    sweeps = summary["sweeps"]
    total = sum(r["wall_seconds"] for s in sweeps.values() for r in s["sweep"].records.values())
    n_runs = sum(len(s["sweep"].records) for s in sweeps.values())
    lines = [
        "# Do the guidance rules help tune regularisation? A check on real sweeps", "",
        f"Generated by `python -m examples.sweep report --runs {runs_dir}` on "
        f"{datetime.date.today().isoformat()} from saved runs only, with the guidance rules of the installed "
        f"package ({', '.join(f'`{r}`' for r in summary['rules_documented']) or 'none documented'}), judging the "
        f"result files of the namespace `{summary['namespace']}`. The runs came from `python -m examples.sweep run` "
        "(one CPU thread, one run at a time). Re-running the report after a change of the rules re-judges the same "
        "runs; nothing is retrained.", "",
        f"{n_runs} runs, {total:.0f} s ({total / 60:.1f} min) of training wall time in all (analyses, checkpoints "
        "and validation included).", "",
    ] + _reanalysis_note(summary) + [
        "## Settings", "",
        "How the values were chosen. Weight decay is Adam's coupled L2 penalty (`TextClassifier(weight_decay=...)`, "
        "the paper's alpha of Sec. 4.3), swept by decades from 0; the largest value is the one a calibration run "
        "showed to collapse the model: with weight decay 0.1, 200 steps left the Transformer at 0.509 dev accuracy "
        "(the share of the majority class) with a flat validation loss (0.697 at step 40, 0.696 at step 200). "
        "Dropout (the LSTM's, before every layer and the head) is swept from none to heavy. The decay of the "
        "paper's Fig. 4 (1e-5 to 1e-4) does not change these short runs measurably, so decades are used instead.", "",
    ]
    for s in sweeps.values():
        lines += _settings(s["sweep"])
    lines += ["## Runs", ""]
    for name, s in sweeps.items():
        lines += [f"### `{name}`", ""] + _runs_table(s["sweep"])
    sizes = sorted({len(s["sweep"].records) for s in sweeps.values()})
    lines += _rules_section(sweeps) + _signals_section(sweeps)
    lines += _collapse_section(sweeps, summary["namespace"]) + _limits(sizes)
    return "\n".join(lines).rstrip() + "\n"


def _reanalysis_note(summary: dict[str, Any]) -> list[str]:
    if summary["namespace"] != "reanalysed":
        return ["The analyses are the callback's own, written during training (`infoflow` result files).", ""]
    sessions = summary["reanalysis"]
    wall = sum(float(t["wall_seconds"]) for t in sessions)
    analyses = sum(int(t["analyses"]) for t in sessions)
    estimation = sum(float(t["estimation_seconds"]) for t in sessions)
    threads = ", ".join(sorted({str(t["threads"]) for t in sessions})) or "n/a"
    info_gap = max(s["agreement"][0] for s in summary["sweeps"].values())
    sigma_gap = max(s["agreement"][1] for s in summary["sweeps"].values())
    compared = sum(s["agreement"][2] for s in summary["sweeps"].values())
    return [
        "The analyses were re-run with the installed estimator on the checkpoints saved at every analysis step, by "
        "`python -m examples.sweep reanalyse --runs <runs>`: the run's model rebuilt and loaded, "
        "`InfoFlowEstimator` built on the step-0 weights with `EstimatorConfig(seed=<the run's seed>)` (the "
        "callback's settings in the runs), the run's probe, a cold analysis at step 0 and warm starts after it, "
        "as the callback does. Results in `<run>/logs/version_0/reanalysed/results/`.",
        f"Re-analysis: {analyses} analyses, {wall:.0f} s ({wall / 60:.1f} min) wall in {len(sessions)} session(s) "
        f"({estimation:.0f} s of it in the estimator), {threads} CPU thread(s), on a machine shared with other jobs.",
        f"Against the callback's own results at the same steps ({compared} analyses compared), the re-analysis "
        f"differs by at most {_f(info_gap, 4)} nats per word in a layer's mean information and {_f(sigma_gap, 4)} "
        "in any word's log sigma: the estimator's optimisation is unchanged, and the new fields (`noise_se`, "
        "`state_spread`, `effective_words` as now defined) are added on the same sigma.",
        "",
    ]


def _phase_table(sweep: SweepRuns) -> list[str]:
    labels: dict[str, dict[str, str]] = {}
    for f in sweep.findings:
        if f.rule == "information_phases" and f.run:
            labels.setdefault(f.run, {})[str(f.layer)] = str((f.extra or {}).get("label", ""))
    if not labels:
        return []
    layers = list(next(iter(labels.values())))
    rows = [[name, _f(r["final_val_acc"])] + [labels.get(name, {}).get(layer, "-") for layer in layers]
            for name, r in sorted(sweep.records.items(), key=lambda kv: (kv[1]["value"], kv[1]["seed"]))]
    return ["Phases per layer (`information_phases`, changes beyond their uncertainty):", ""] + _table(
        ["run", "final dev acc"] + [".".join(layer.split(".")[-2:]) for layer in layers], rows)


def _rules_section(sweeps: dict[str, Any]) -> list[str]:
    lines = ["## The rules on these sweeps", "",
             "Each rule ran through `lightning_infoflow.reporting.findings.compare_findings` (what `infoflow compare` "
             "runs) on the runs of one sweep, scored by final dev accuracy. A finding's suggestion is read as a "
             "direction on the swept hyperparameter (lower / raise / none; a rule that fires several times on a run "
             "counts once, `mixed` if its findings disagree). Each setting's accuracy is the mean of its seeds. "
             "**Points toward the better setting**: the setting with the best mean accuracy lies in the advised "
             "direction from the run's own setting (advice to move when the run already has the best setting counts "
             "as wrong). **Next step better**: the adjacent setting in that direction exists and has a higher mean "
             "accuracy than the run's own.", ""]
    for name, s in sweeps.items():
        lines += [f"### `{name}`", ""]
        lines += _table(["rule", "fired on", "advice", "points toward the better setting", "next step better"],
                        _verdict_rows(s["sweep"], s["verdicts"]))
        lines += _findings_by_run(s["sweep"], s["verdicts"], s["measures"])
        lines += _phase_table(s["sweep"])
    lines += ["### What the rules can and cannot tell here", ""]
    for s in sweeps.values():
        lines += _rule_statements(s["sweep"], s["verdicts"])
    return lines + [""]


def _signals_section(sweeps: dict[str, Any]) -> list[str]:
    lines = ["## Does early information rank the runs by final accuracy?", "",
             "Spearman's rank correlation, across the runs of each sweep, of each signal at ~20% of training with "
             "the final dev accuracy. Losses should correlate negatively (lower loss, better run), information in "
             "whichever sign; what matters is the size. The p-value is exact: the share of all pairings of the runs "
             "whose |rho| is at least as large. (d), (e) and (f) are references, not part of the promise; (f) is a "
             "difference of information, free of the large common offset that `sigma_max` puts into (a).", ""]
    statements = []
    for name, s in sweeps.items():
        lines += [f"### `{name}`", ""] + _correlation_table(s["correlations"])
        statements.append(_signal_statement(name, s["correlations"]))
        by_seed = s["correlations_by_seed"]
        if len(by_seed) > 1:
            lines += ["Within each seed (the runs of one seed share their initialisation and batches):", ""]
            seeds = sorted(by_seed)
            lines += _table(["signal"] + [f"rho, seed {k} ({by_seed[k][0]['n']} runs)" for k in seeds],
                            [[row["label"]] + [_f(by_seed[k][i]["rho"], 2) for k in seeds]
                             for i, row in enumerate(by_seed[seeds[0]][:3])])
            statements.append(f"- `{name}` within seeds: " + "; ".join(
                f"{row['label'][:3]} rho " + ", ".join(_f(by_seed[k][i]["rho"], 2) for k in seeds)
                for i, row in enumerate(by_seed[seeds[0]][:3])) + " (seeds " + ", ".join(map(str, seeds)) + ").")
        if s["correlations_without_collapsed"]:
            lines += [f"Without the collapsed setting ({s['correlations_without_collapsed'][0]['n']} runs):", ""]
            lines += _correlation_table(s["correlations_without_collapsed"])
            statements.append(_signal_statement(name, s["correlations_without_collapsed"],
                                                " without the collapsed setting"))
    return lines + ["In short:", ""] + [s for s in statements if s] + [""]


def _collapse_section(sweeps: dict[str, Any], namespace: str) -> list[str]:
    lines = ["## Can a collapsed setting be told apart?", "",
             f"`state_spread`: the estimator's, from the `{namespace}` result files (what `collapsed_layer` reads): "
             "the share of a layer's state's mean square that varies between the probe's sentences at the same "
             "time step, `sum_e Var_b(s_bte) / sum_e E[s^2]` (1: centred, 0: every sentence maps to the same "
             f"states; the rule flags a layer below {COLLAPSED_SPREAD:g}), of the last layer at step 0, ~20% and the "
             "end, and the lowest of any layer at the end. Word spread: the earlier measure, recomputed from the "
             "saved checkpoint, the last layer's output over the probe's real words, `sum_u Var(h_u) / sum_u "
             "E[h_u^2]` over all words together. Information is the last layer's mean information per word.", ""]
    statements = []
    for name, s in sweeps.items():
        lines += [f"### `{name}`", ""] + _spread_table(s["sweep"], s["measures"])
        flagged: list[str] = next((v.fired_runs for v in s["verdicts"] if v.rule == "collapsed_layer"), [])
        statements.append("- " + _collapse_statement(s["sweep"], s["measures"], flagged))
    return lines + statements + [""]


def _limits(sizes: list[int]) -> list[str]:
    return ["## Limits", "",
            "- Short runs (a few hundred steps, far from convergence; the paper's models trained for thousands), few "
            "seeds per setting, one probe of 16 sentences, one estimator seed per run: each correlation rests on "
            f"{' or '.join(map(str, sizes))} runs, so only a large |rho| is distinguishable from chance (see p).",
            "- Direction of advice is read from each suggestion's words; the per-run table shows what was read, so a "
            "misreading is visible.",
            "- The checkpoints in each run folder let any new measure be recomputed without retraining.", ""]
