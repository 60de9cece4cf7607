"""Runs on disk: find the result files InfoFlowCallback (or ``infoflow analyze``) wrote, and load them.

Layout. A *log dir* is a logger's ``log_dir`` (``TensorBoardLogger.log_dir``, ``CSVLogger.log_dir``, ...).
Each callback writes into its own *namespace* folder there, ``<log_dir>/<name>/results/step_%08d.pt``
(``name`` defaults to ``"infoflow"``, the only folder older versions wrote), and each file's ``meta``
holds ``name``, ``step`` and ``run_id``. A folder ``<dir>/<name>/results`` counts as a namespace when
``name`` is ``infoflow`` or the folder holds ``step_*.pt`` files.

One run, one report. A *run* (:class:`RunSource`) is one namespace of one training run: its results
folders in every log dir that run wrote to. A run resumed into a new logger version
(``version_0/infoflow/results`` then ``version_1/infoflow/results``) is one run when the files carry the
same ``meta["run_id"]``; pointing at the newest version folder also finds the older sibling versions.
Two namespaces in one log dir are two runs, reported separately.

Which file wins. The callback's own result files are the source of truth for every information curve
(the ``infoflow/*`` scalars the logger copied are not read). When a step has several files, the newest
wins: the one in the latest logger version (``version_N`` by ``N``, then by folder name), and between
equal versions the newest modification time; a newer file that cannot be read gives way to the next. A
file that cannot be read, or whose tensors disagree in shape, is skipped with a note
(:attr:`Run.skipped`). Scalars from ``metrics.csv`` and TensorBoard event files keep each step once by
the same rule (:func:`~lightning_infoflow.reporting.logs.read_scalars`).
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.reporting.logs import read_hparams, read_scalars
from lightning_infoflow.reporting.losses import is_validation, train_loss_tag, val_loss_tag, window_means

DEFAULT_NAMESPACE = "infoflow"
RESULTS = "results"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
_VERSION = re.compile(r"^version_(\d+)$")

Progress = Callable[[str, int], Callable[[], None]]
"""``progress(description, total)`` returns ``advance()``; report code calls it around long loops."""


def no_progress(_description: str, _total: int) -> Callable[[], None]:
    """A :data:`Progress` that shows nothing."""
    return lambda: None


class RunError(Exception):
    """A directory that is not a run, or a run that cannot be reported (the message says why and what to do)."""


@dataclass(frozen=True)
class RunSource:
    """Where one run's result files lie: one namespace's ``results`` folders, oldest logger version first."""

    namespace: str
    results_dirs: tuple[str, ...]
    run_id: str | None = None

    @property
    def log_dirs(self) -> tuple[str, ...]:
        return tuple(os.path.dirname(os.path.dirname(d)) for d in self.results_dirs)

    @property
    def log_dir(self) -> str:
        """The newest log dir (where a resumed run writes now)."""
        return self.log_dirs[-1]

    @property
    def label(self) -> str:
        """The log dir, with the namespace folder when it is not the default one."""
        return self.log_dir if self.namespace == DEFAULT_NAMESPACE else os.path.join(self.log_dir, self.namespace)


def _version_key(log_dir: str) -> tuple[int, str]:
    name = os.path.basename(os.path.normpath(log_dir))
    match = _VERSION.match(name)
    return (int(match.group(1)) if match else -1, name)


def _is_namespace(results_dir: str) -> bool:
    if os.path.basename(os.path.dirname(results_dir)) == DEFAULT_NAMESPACE:
        return True
    return any(_STEP_FILE.match(f) for f in os.listdir(results_dir))


def _results_dirs(pattern: str) -> list[str]:
    return sorted(os.path.abspath(d) for d in glob.glob(pattern, recursive=True)
                  if os.path.isdir(d) and _is_namespace(d))


def _step_files(results_dir: str) -> dict[int, str]:
    matches = (_STEP_FILE.match(f) for f in os.listdir(results_dir))
    return {int(m.group(1)): os.path.join(results_dir, m.group(0)) for m in matches if m}


def _run_id(results_dir: str) -> str | None:
    """``meta["run_id"]`` of the newest readable result file in the folder (None for older files)."""
    for _step, path in sorted(_step_files(results_dir).items(), reverse=True):
        try:
            meta = torch.load(path, map_location="cpu", weights_only=True).get("meta", {})
        except Exception:  # noqa: BLE001, S112 - an unreadable file says nothing about the run; try the next
            continue
        run_id = meta.get("run_id") if isinstance(meta, dict) else None
        return None if run_id is None else str(run_id)
    return None


def find_runs(path: str) -> list[RunSource]:
    """Every run at or under ``path`` (one per namespace; resumed logger versions merged by ``run_id``).

    When ``path`` is itself a log dir, its sibling log dirs (other versions) join the runs whose
    ``run_id`` they share.

    Raises:
        RunError: ``path`` is not a directory, or nothing under it was written by InfoFlowCallback.
    """
    if not os.path.isdir(path):
        raise RunError(f"{path!r} is not a directory; pass the log dir of a run (the logger's log_dir)")
    found = _results_dirs(os.path.join(glob.escape(path), "**", RESULTS))
    if not found:
        raise RunError(
            f"{path!r} holds no InfoFlowCallback output (no {os.path.join(DEFAULT_NAMESPACE, RESULTS)}{os.sep} "
            "folder at or below it). Pass the log dir of a run trained with InfoFlowCallback(save_results=True), "
            "or write one with `infoflow analyze`."
        )
    sources = _group(found)
    here = os.path.abspath(path)
    if any(d == here for s in sources for d in s.log_dirs):  # a log dir: add other versions of its runs
        wanted = {(s.namespace, s.run_id) for s in sources if s.run_id is not None}
        siblings = _results_dirs(os.path.join(glob.escape(os.path.dirname(here)), "*", "*", RESULTS))
        extra = [d for d in siblings if d not in found and (os.path.basename(os.path.dirname(d)), _run_id(d)) in wanted]
        if extra:
            sources = _group([*found, *extra])
    return sources


def _group(results_dirs: Sequence[str]) -> list[RunSource]:
    """One source per (namespace, run_id); folders of files without a run_id are runs of their own."""
    groups: dict[tuple[str, str], list[str]] = {}
    ids: dict[tuple[str, str], str | None] = {}
    for d in sorted(results_dirs, key=lambda d: (_version_key(os.path.dirname(os.path.dirname(d))), d)):
        namespace, run_id = os.path.basename(os.path.dirname(d)), _run_id(d)
        key = (namespace, f"id:{run_id}" if run_id is not None else f"dir:{d}")
        groups.setdefault(key, []).append(d)
        ids[key] = run_id
    sources = [RunSource(key[0], tuple(dirs), ids[key]) for key, dirs in groups.items()]
    return sorted(sources, key=lambda s: (s.log_dir, s.namespace))


def group_by_log_dir(sources: Sequence[RunSource]) -> list[list[RunSource]]:
    """Sources that share a log dir (the namespaces of one training run), grouped; first-seen order."""
    groups: list[tuple[set[str], list[RunSource]]] = []
    for source in sources:
        dirs = set(source.log_dirs)
        joined = [g for g in groups if g[0] & dirs]
        merged = (dirs.union(*(g[0] for g in joined)), [s for g in joined for s in g[1]] + [source])
        groups = [g for g in groups if g not in joined] + [merged]
    return [members for _dirs, members in groups]


def find_one_run(path: str) -> list[RunSource]:
    """The runs of the one training run at ``path``: its namespaces, all sharing its log dirs.

    Raises:
        RunError: nothing at ``path`` (see :func:`find_runs`), or runs of several log dirs under it.
    """
    groups = group_by_log_dir(find_runs(path))
    if len(groups) > 1:
        listing = "\n  ".join(", ".join(dict.fromkeys(s.log_dir for s in g)) for g in groups)
        raise RunError(f"{path!r} holds {len(groups)} runs; pass one of them:\n  {listing}")
    return groups[0]


def check_shapes(result: InfoFlowResult) -> None:
    """Raise ValueError naming the tensor whose shape disagrees with ``sigma`` ``[L, B, T]``."""
    sigma, layers = result.sigma, len(result.layer_names)
    if sigma.dim() != 3 or sigma.shape[0] != layers:
        raise ValueError(
            f"sigma has shape {tuple(sigma.shape)}; expected [L, B, T] with L = len(layer_names) = {layers}")
    expected = {"mask": (tuple(result.mask.shape), tuple(sigma.shape[1:])),
                "at_bound": (tuple(result.at_bound.shape) if result.at_bound is not None else tuple(sigma.shape),
                             tuple(sigma.shape)),
                "loss": (tuple(result.loss.shape) if result.loss is not None else (layers,), (layers,))}
    for name, (got, want) in expected.items():
        if got != want:
            raise ValueError(f"{name} has shape {got}, sigma {tuple(sigma.shape)}: expected {name} {want}")
    if result.tokens is not None and len(result.tokens) != sigma.shape[1]:
        raise ValueError(f"tokens hold {len(result.tokens)} sentences, sigma {sigma.shape[1]}")


@dataclass
class Run:
    """One run's analyses (one per step, sorted), hyperparameters and logged scalars.

    ``skipped`` notes the files that could not be used; ``superseded`` the files a newer file of the same
    step replaced (see the module docstring for which file wins).
    """

    source: RunSource
    name: str
    results: list[InfoFlowResult]
    hparams: dict[str, Any] = field(default_factory=dict)
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        """The newest log dir of the run."""
        return self.source.log_dir

    @property
    def last(self) -> InfoFlowResult:
        return self.results[-1]

    @property
    def layer_names(self) -> list[str]:
        return list(self.last.layer_names)

    @property
    def steps(self) -> list[int]:
        return [int(r.meta.get("step", i)) for i, r in enumerate(self.results)]

    def history(self, measure: str = "layer_information") -> Tensor:
        """``[N, L]``: a per-layer measure per analysis (``layer_information``, ``effective_words``,
        ``mean_entropy``)."""
        return torch.stack([getattr(r, measure).float() for r in self.results])

    def aligned_history(self, measure: str = "layer_information") -> Tensor | None:
        """:meth:`history` when every analysis watched the same layers, else ``None`` (no curves)."""
        if any(list(r.layer_names) != self.layer_names for r in self.results):
            return None
        return self.history(measure)

    def peak_index(self) -> int:
        """Index of the analysis where the last layer keeps the most information."""
        info = self.aligned_history()
        if info is None:
            return len(self.results) - 1
        return int(torch.nan_to_num(info[:, -1], nan=-math.inf).argmax())

    def final_metrics(self) -> dict[str, float]:
        """Last logged value of every validation scalar (:func:`~lightning_infoflow.reporting.losses.is_validation`)."""
        return {tag: points[-1][1] for tag, points in self.scalars.items() if points and is_validation(tag)}

    def loss_tag(self) -> str | None:
        """The training-loss scalar (:func:`~lightning_infoflow.reporting.losses.train_loss_tag`)."""
        return train_loss_tag(self.scalars)

    def loss_history(self) -> list[float]:
        """Training loss at each analysis: the mean of the values logged since the previous analysis (NaN if none)."""
        tag = self.loss_tag()
        return window_means(self.scalars.get(tag, []) if tag else [], self.steps)

    def val_losses(self) -> list[tuple[int, float]]:
        """Every logged ``(step, value)`` of the validation loss
        (:func:`~lightning_infoflow.reporting.losses.val_loss_tag`); empty when the run logged none."""
        tag = val_loss_tag(self.scalars)
        return list(self.scalars[tag]) if tag else []


def load_run(source: RunSource | str, name: str | None = None, progress: Progress = no_progress) -> Run:
    """Load a run: a :class:`RunSource` from :func:`find_runs`, or the path of a log dir holding one run.

    Raises:
        RunError: not a run dir, several runs under the path, or a run with no readable analyses.
    """
    if isinstance(source, str):
        sources = find_runs(source)
        if len(sources) > 1:
            listing = "\n  ".join(s.label for s in sources)
            raise RunError(f"{source!r} holds {len(sources)} runs; pass one of them:\n  {listing}")
        source = sources[0]
    results, skipped, superseded = _read_results(source, progress)
    return Run(source, name or default_name(source), results, read_hparams(*source.log_dirs),
               read_scalars(*source.log_dirs), skipped, superseded)


def _candidates(source: RunSource) -> dict[int, list[str]]:
    """Result files per step, newest first (latest logger version, then modification time)."""
    ranked: dict[int, list[tuple[tuple[int, float], str]]] = {}
    for rank, results_dir in enumerate(source.results_dirs):
        for step, path in _step_files(results_dir).items():
            ranked.setdefault(step, []).append(((rank, os.path.getmtime(path)), path))
    return {step: [p for _key, p in sorted(files, reverse=True)] for step, files in sorted(ranked.items())}


def _read_results(source: RunSource, progress: Progress) -> tuple[list[InfoFlowResult], list[str], list[str]]:
    files = _candidates(source)
    if not files:
        raise RunError(
            f"run {source.label!r} has no analyses yet ({', '.join(source.results_dirs)} is empty): the callback "
            "writes step_XXXXXXXX.pt there at each analysis; train longer or check save_results=True"
        )
    results, skipped, superseded = [], [], []
    advance = progress(f"loading {os.path.basename(source.log_dir) or source.log_dir}", len(files))
    for step, paths in files.items():
        for k, path in enumerate(paths):
            try:
                results.append(_read_result(path, step))
            except Exception as err:  # noqa: BLE001 - a foreign or broken file is skipped and reported
                skipped.append(f"{_short(path, source)}: {type(err).__name__}: {err}")
                continue
            superseded += [_short(p, source) for p in paths[k + 1:]]
            break
        advance()
    if not results:
        raise RunError(f"run {source.label!r}: none of its {sum(map(len, files.values()))} result files could be "
                       f"read ({skipped[0]})")
    return results, skipped, superseded


def _read_result(path: str, step: int) -> InfoFlowResult:
    data = torch.load(path, map_location="cpu", weights_only=True)
    result = InfoFlowResult.from_dict(data)
    check_shapes(result)
    result.meta["step"] = step  # the file name is the step every other file of the step is matched by
    if isinstance(data.get("baselines"), dict):  # saliency maps the callback saved beside the result
        result.meta["baselines"] = data["baselines"]
    return result


def _short(path: str, source: RunSource) -> str:
    """A result file's name, with its log dir's name when the run spans several log dirs."""
    if len(set(source.log_dirs)) == 1:
        return os.path.basename(path)
    return os.path.join(os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(path)))),
                        os.path.basename(path))


def default_name(source: RunSource) -> str:
    """The last two folders of the run's log dir, and its namespace when it is not the default one."""
    parts = os.path.normpath(os.path.abspath(source.log_dir)).split(os.sep)
    name = "/".join(parts[-2:])
    return name if source.namespace == DEFAULT_NAMESPACE else f"{name}:{source.namespace}"


def run_names(paths: Sequence[str]) -> list[str]:
    """Short distinct names: the paths relative to their common folder, without a last folder they all share
    (``version_0``); the last two folders of a path alone.

    >>> run_names(["runs/wd0/version_0", "runs/wd0.1/version_0"]), run_names(["a/x/version_0", "a/x/version_1"])
    (['wd0', 'wd0.1'], ['version_0', 'version_1'])
    """
    if len(paths) == 1:
        return ["/".join(os.path.normpath(os.path.abspath(paths[0])).split(os.sep)[-2:])]
    absolute = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath(absolute)
    parts = [os.path.relpath(p, common).split(os.sep) if p != common else [os.path.basename(p)] for p in absolute]
    if all(len(x) > 1 for x in parts) and len({x[-1] for x in parts}) == 1:
        trimmed = [x[:-1] for x in parts]
        if len({tuple(x) for x in trimmed}) == len(trimmed):
            parts = trimmed
    return ["/".join(x) for x in parts]


def source_names(sources: Sequence[RunSource]) -> list[str]:
    """Short distinct names of runs: :func:`run_names` of their log dirs, with ``:namespace`` for a
    namespace other than the default one."""
    names = run_names([s.log_dir for s in sources])
    return [n if s.namespace == DEFAULT_NAMESPACE else f"{n}:{s.namespace}" for n, s in zip(names, sources)]


def parse_steps(spec: str, steps: Sequence[int], peak: int | None = None) -> list[int]:
    """Indices of the analyses a spec picks: ``first``, ``last``, ``peak``, ``all`` or step numbers, comma-separated.

    ``peak`` is the index of the analysis where the last layer keeps the most information (given by the
    caller, e.g. :meth:`Run.peak_index`). Raises ValueError for a step that was not analysed.

    >>> parse_steps("first,last", [0, 5, 10]), parse_steps("5", [0, 5, 10]), parse_steps("all,peak", [0, 5], peak=1)
    ([0, 2], [1], [0, 1])
    """
    named = {"first": [0], "last": [len(steps) - 1], "peak": [len(steps) - 1 if peak is None else peak],
             "all": list(range(len(steps)))}
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in named:
            out += named[part]
            continue
        try:
            step = int(part)
        except ValueError:
            raise ValueError(f"cannot read step {part!r}: use first, last, peak, all or step numbers") from None
        if step not in steps:
            raise ValueError(f"step {step} was not analysed; analysed steps: {list(steps)}")
        out.append(list(steps).index(step))
    return list(dict.fromkeys(out))
