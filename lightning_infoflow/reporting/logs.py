"""What the logger wrote beside the results: hyperparameters (``hparams.yaml``) and scalars
(``metrics.csv`` from CSVLogger, TensorBoard event files).

A run resumed into new logger versions spans several log dirs, passed oldest first. Each step of each
scalar is kept once: the value from the latest log dir wins, and within one file the last value logged
(CSVLogger rewrites ``metrics.csv`` on resume; TensorBoard appends a new event file). ``infoflow/*``
scalars are not read: the result files are the source of truth for those.
"""

from __future__ import annotations

import csv
import glob
import math
import os
from collections.abc import Mapping
from typing import Any

import yaml


class _LenientLoader(yaml.SafeLoader):
    """Safe YAML loading that turns Python-object tags (non-primitive hparams) into their text."""


def _unknown_tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_LenientLoader.add_multi_constructor("", _unknown_tag)


def read_hparams(*log_dirs: str) -> dict[str, Any]:
    """The newest log dir's ``hparams.yaml`` flattened to ``{"a.b": value}``; empty when there is none."""
    for log_dir in reversed(log_dirs):
        path = os.path.join(log_dir, "hparams.yaml")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.load(f, Loader=_LenientLoader)
            except yaml.YAMLError:
                return {}
        return flatten(data) if isinstance(data, Mapping) else {}
    return {}


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``.

    >>> flatten({"lr": 0.1, "model": {"dropout": 0.2}})
    {'lr': 0.1, 'model.dropout': 0.2}
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def read_scalars(*log_dirs: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars the run logged besides infoflow's, each step once (see the module docstring).

    Returns ``{tag: [(step, value), ...]}`` sorted by step.
    """
    merged: dict[str, dict[int, float]] = {}
    for log_dir in log_dirs:  # oldest first: a later log dir overwrites the steps it logged again
        for tag, points in _scalars_of(log_dir).items():
            merged.setdefault(tag, {}).update(points)
    return {tag: sorted(points.items()) for tag, points in merged.items()}


def _scalars_of(log_dir: str) -> dict[str, dict[int, float]]:
    """One log dir's scalars, ``{tag: {step: value}}``: metrics.csv first, then tags only the events hold."""
    out = _csv_scalars(os.path.join(log_dir, "metrics.csv"))
    if glob.glob(os.path.join(glob.escape(log_dir), "events.out.tfevents.*")):
        for tag, points in _event_scalars(log_dir).items():
            out.setdefault(tag, points)
    return out


def _csv_scalars(path: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    if not os.path.isfile(path):
        return out
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = _number(row.get("step"))
            if step is None:
                continue
            for key, value in row.items():
                v = _number(value)
                if v is None or key in ("step", "epoch") or key is None or key.startswith("infoflow/"):
                    continue
                out.setdefault(key, {})[int(step)] = v  # a later row of the same step wins
    return out


def _event_scalars(log_dir: str) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Event files are read in name order, which is not time order (their counter suffix sorts as text), so
    # nothing is purged on a step that goes back, and a repeated step keeps the event written last.
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "images": 1, "tensors": 1, "histograms": 1,
                                                    "audio": 1, "compressedHistograms": 1},
                           purge_orphaned_data=False)
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags().get("scalars", []):
        if tag.startswith("infoflow/") or tag in ("epoch", "hp_metric"):
            continue
        events = sorted(acc.Scalars(tag), key=lambda e: e.wall_time)
        out[tag] = {int(e.step): float(e.value) for e in events}  # the last written event of a step wins
    return out


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
