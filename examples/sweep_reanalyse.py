"""Re-run the estimator on a sweep's saved checkpoints: ``python -m examples.sweep reanalyse``; no training.

For every finished run under ``--runs`` and every checkpoint ``<run>/checkpoints/step_N.pt`` in step order,
this module rebuilds the run's model from its recorded hyperparameters, loads the state_dict and runs
:class:`~lightning_infoflow.InfoFlowEstimator` as :class:`~lightning_infoflow.InfoFlowCallback` does: the
estimator is built on the weights of the first checkpoint (step 0, the callback's ``setup``; ``sigma_max``
follows from them), with the settings of ``EstimatorConfig(seed=<the run's seed>)`` (the run's callback
settings: every default but the seed), the probe built from the run's probe sentences and its tokenizer by
the callback's own :func:`~lightning_infoflow.lightning.probing.build_checked_probe`, a cold analysis of
``steps`` at the first checkpoint and warm-started analyses (``EstimatorConfig.warm``) from the previous
result after it.

Each result goes next to the callback's, in the namespace ``reanalysed`` of the run's log dir::

    <run>/logs/version_0/infoflow/results/step_XXXXXXXX.pt     the callback's (as trained)
    <run>/logs/version_0/reanalysed/results/step_XXXXXXXX.pt   this module's (the installed estimator)

with ``meta`` ``name="reanalysed"``, ``step``, ``run_id`` (the training run's), so that
:func:`lightning_infoflow.reporting.runs.find_runs` reads it as a second namespace of the same run and
shares the run's ``hparams.yaml`` and ``metrics.csv`` (the training loss the collapse rule reads).
A step whose file exists is not analysed again; its result is read back as the next warm start, so an
interrupted re-analysis resumes with the numbers an uninterrupted one gives.
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
from typing import Any, Optional

import torch

NAMESPACE = "reanalysed"
TIMING_FILE = "reanalysis.json"
_CHECKPOINT = re.compile(r"^step_(\d+)\.pt$")


def rebuild_module(record: dict[str, Any]) -> Any:
    """The run's ``TextClassifier``, built from its recorded hyperparameters (untrained weights)."""
    from examples.models import TextClassifier

    hp = record["hparams"]
    return TextClassifier(hp["model_name"], hp["vocab_size"], lr=hp["lr"], weight_decay=hp["weight_decay"],
                          model_kwargs=hp.get("model_kwargs"))


def checkpoint_steps(run_dir: str) -> list[int]:
    """Steps of the run's saved state_dicts, ascending."""
    folder = os.path.join(run_dir, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(m.group(1)) for m in map(_CHECKPOINT.match, names) if m)


def load_checkpoint(module: Any, run_dir: str, step: int) -> None:
    module.load_state_dict(torch.load(os.path.join(run_dir, "checkpoints", f"step_{step}.pt"), weights_only=True))


def finished_runs(runs_dir: str) -> list[tuple[str, dict[str, Any]]]:
    """``(run dir, record)`` of every finished run (one with a ``record.json``) of every sweep, sorted."""
    from examples.sweep import RECORD_FILE

    out = []
    for path in sorted(glob.glob(os.path.join(glob.escape(runs_dir), "*", "*", RECORD_FILE))):
        with open(path) as f:
            out.append((os.path.dirname(path), json.load(f)))
    if not out:
        raise SystemExit(f"no finished sweep runs under {runs_dir!r}; "
                         f"run `python -m examples.sweep run --out {runs_dir}` first")
    return out


def _tokenizer(model_name: str, max_length: int, cache: dict[str, Any]) -> Any:
    """The word tokenizer the run's datamodule built (vocabulary from the full SST-2 training split)."""
    if model_name not in cache:
        from examples.data import GlueDataModule
        from examples.models import data_options

        dm = GlueDataModule("sst2", max_length=max_length, **data_options(model_name))
        dm.setup()
        cache[model_name] = dm.tokenizer
    return cache[model_name]


def _trained_run_id(log_dir: str) -> Optional[str]:
    """``meta["run_id"]`` of the callback's result files (the training run), if any."""
    for path in sorted(glob.glob(os.path.join(glob.escape(log_dir), "infoflow", "results", "step_*.pt"))):
        meta = torch.load(path, map_location="cpu", weights_only=True).get("meta", {})
        if isinstance(meta, dict) and meta.get("run_id"):
            return str(meta["run_id"])
    return None


def _estimator_and_probe(module: Any, run_dir: str, record: dict[str, Any], tokenizer: Any) -> tuple[Any, Any, Any]:
    """What the callback's ``setup`` builds: the estimator, the checked probe, and the estimator settings."""
    from lightning_infoflow import EstimatorConfig, InfoFlowEstimator
    from lightning_infoflow.lightning.probing import build_checked_probe
    from lightning_infoflow.lightning.target import find_target

    config = EstimatorConfig(seed=int(record["seed"]))
    target = find_target(module, None)
    estimator = InfoFlowEstimator(target.module, target.relative_layers("auto"), target.relative("auto"),
                                  **config.estimator_kwargs())
    saved = torch.load(os.path.join(run_dir, "probe.pt"), weights_only=True)
    probe, _names = build_checked_probe(saved["sentences"], tokenizer, estimator,
                                        num_sentences=len(saved["sentences"]), max_length=None)
    if not torch.equal(probe.input_ids, saved["input_ids"]):
        raise ValueError(f"{run_dir}: the tokenizer rebuilt here encodes the probe differently from the run's "
                         "probe.pt; pass the run's --max-length")
    return estimator, probe, config


def reanalyse_run(run_dir: str, record: dict[str, Any], tokenizers: dict[str, Any], max_length: int) -> dict[str, Any]:
    """Analyse every checkpoint of one run not yet analysed (see the module docstring); returns counts and times."""
    from lightning_infoflow import InfoFlowResult
    from lightning_infoflow.lightning.publish import result_path

    log_dir = os.path.join(run_dir, record["log_dir"])
    steps = checkpoint_steps(run_dir)
    todo = [s for s in steps if not os.path.exists(result_path(log_dir, NAMESPACE, s))]
    summary: dict[str, Any] = {"run": os.path.basename(run_dir), "steps": len(steps), "analysed": len(todo),
                               "seconds": 0.0}
    if not todo:
        return summary
    module = rebuild_module(record)
    load_checkpoint(module, run_dir, steps[0])  # the callback builds its estimator before the first step
    tokenizer = _tokenizer(record["hparams"]["model_name"], max_length, tokenizers)
    estimator, probe, config = _estimator_and_probe(module, run_dir, record, tokenizer)
    run_id = _trained_run_id(log_dir)
    previous: Optional[InfoFlowResult] = None
    for step in steps:
        path = result_path(log_dir, NAMESPACE, step)
        if os.path.exists(path):
            previous = InfoFlowResult.load(path)  # the next warm start, as if analysed now
            continue
        load_checkpoint(module, run_dir, step)
        warm = previous is not None
        started = time.perf_counter()
        result = estimator.estimate(probe.batch, steps=config.warm if warm else config.steps, init=previous,
                                    tokens=probe.tokens)
        seconds = time.perf_counter() - started
        result.meta.update(name=NAMESPACE, step=step, run_id=run_id, seconds=seconds, warm_start=warm, world_size=1,
                           checkpoint=os.path.join("checkpoints", f"step_{step}.pt"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        result.save(path)
        summary["seconds"] += seconds
        previous = result
    return summary


def complete(run_dir: str, record: dict[str, Any]) -> bool:
    """Whether every checkpoint of the run has its re-analysed result."""
    from lightning_infoflow.lightning.publish import result_path

    log_dir = os.path.join(run_dir, record["log_dir"])
    steps = checkpoint_steps(run_dir)
    return bool(steps) and all(os.path.exists(result_path(log_dir, NAMESPACE, s)) for s in steps)


def timings(runs_dir: str) -> list[dict[str, Any]]:
    """The sessions of ``reanalyse`` that analysed something under ``runs_dir`` (``TIMING_FILE``), oldest first."""
    path = os.path.join(runs_dir, TIMING_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        sessions: list[dict[str, Any]] = json.load(f)
    return sessions


def _note_timing(runs_dir: str, session: dict[str, Any]) -> None:
    sessions = timings(runs_dir) + [session]
    with open(os.path.join(runs_dir, TIMING_FILE + ".tmp"), "w") as f:
        json.dump(sessions, f, indent=1)
    os.replace(os.path.join(runs_dir, TIMING_FILE + ".tmp"), os.path.join(runs_dir, TIMING_FILE))


def reanalyse(runs_dir: str, threads: int = 1, max_length: int = 50) -> list[dict[str, Any]]:
    """Re-analyse every finished run under ``runs_dir``; prints and returns each run's counts and seconds.

    A session that analysed something is noted in ``<runs_dir>/reanalysis.json`` (wall time, analyses,
    estimation seconds, threads), which the report quotes.
    """
    torch.set_num_threads(threads)
    tokenizers: dict[str, Any] = {}
    started = time.perf_counter()
    out = []
    for run_dir, record in finished_runs(runs_dir):
        summary = reanalyse_run(run_dir, record, tokenizers, max_length)
        out.append(summary)
        print(f"reanalysed {run_dir}: {summary['analysed']} of {summary['steps']} checkpoints analysed now "
              f"({summary['seconds']:.0f} s of estimation)", flush=True)
    wall = time.perf_counter() - started
    analysed = sum(s["analysed"] for s in out)
    if analysed:
        _note_timing(runs_dir, {"wall_seconds": wall, "analyses": analysed, "runs": len(out), "threads": threads,
                                "estimation_seconds": sum(s["seconds"] for s in out)})
    print(f"re-analysis of {len(out)} runs: {wall:.0f} s wall ({sum(s['analysed'] for s in out)} analyses)",
          flush=True)
    return out
