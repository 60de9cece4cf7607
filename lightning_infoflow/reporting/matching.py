"""Probe matching across runs: compare runs only on the probe sentences all of them analysed."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from lightning_infoflow.core.result import InfoFlowResult
from lightning_infoflow.reporting.runs import Run, RunError


def probe_keys(result: InfoFlowResult) -> list[tuple[str, ...]]:
    """One key per probe sentence: its token strings (its length where the result has no tokens)."""
    if result.tokens:
        return [tuple(result.words(b)) for b in range(result.mask.shape[0])]
    return [("#words", str(int(n))) for n in result.mask.sum(1).tolist()]


@dataclass
class Matched:
    """Runs restricted to the probe sentences they share; ``notes`` say what was skipped."""

    runs: list[Run]
    notes: list[str]
    sentences: int


def match_probes(runs: Sequence[Run]) -> Matched:
    """Restrict runs to the probe sentences all of them analysed (by token strings).

    A run that shares no sentence with the first run is left out. Every analysis of a kept run is
    restricted to the shared sentences, in the first run's order.

    Raises:
        RunError: fewer than two runs share a probe sentence.
    """
    reference = probe_keys(runs[0].last)
    notes: list[str] = []
    kept = [runs[0]]
    for run in runs[1:]:
        if set(probe_keys(run.last)) & set(reference):
            kept.append(run)
        else:
            notes.append(f"skipped run {run.name}: its probe shares no sentence with run {runs[0].name}'s")
    if len(kept) < 2:
        raise RunError("nothing to compare: " + "; ".join(notes))
    common = [k for k in dict.fromkeys(reference) if all(k in probe_keys(r.last) for r in kept)]
    out = []
    for run in kept:
        keys = probe_keys(run.last)
        if keys == common:
            out.append(run)
            continue
        index = [keys.index(k) for k in common]
        notes.append(f"run {run.name}: compared on the {len(common)} probe sentences all runs share; "
                     f"{len(keys) - len(index)} of its {len(keys)} sentences skipped")
        results = [r.select(index) for r in run.results if len(probe_keys(r)) == len(keys)]
        out.append(dataclasses.replace(run, results=results))
    return Matched(out, notes, len(common))
