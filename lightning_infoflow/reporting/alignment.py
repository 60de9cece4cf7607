"""Layer alignment across runs: the same layer under different module paths is one layer.

A callback run names layers from the LightningModule (``model.bert.encoder.layer.3``), ``infoflow
analyze`` of the Hugging Face folder from the model itself (``encoder.layer.3``). :func:`align_layers`
lines them up by their longest common dotted suffix:

1. Each run may drop a leading dotted path that all of its layer names share (``model.bert.``), and
   keeps at least the last part of every name. Dropping nothing is always an option.
2. The first run is the reference. For each way of dropping its own prefix, every other run drops the
   prefix that makes the most of its layer names equal to the reference's; the reference's choice with
   the most equal names over all runs wins. Ties go to the least dropped, so the names that stay are the
   longest common dotted suffixes (``encoder.layer.3``, not ``layer.3`` or ``3``).
3. A match on a suffix of layer indices alone (``rnns.0`` against ``layer.0`` share only ``0``) is no
   match: the suffix must hold a name part that is not a number. Names equal in full always match.
4. When two different ways of dropping give as many equal names but pair the layers differently, the
   alignment is ambiguous: it still follows rule 2 and a note says so.

Aligned runs carry the shortened names in every analysis; a note names each prefix dropped. Runs whose
layer names are equal already are returned unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from lightning_infoflow.reporting.runs import Run

RULE = ("Layers are aligned across runs by their longest common dotted suffix: a run may drop a leading "
        "path all its layer names share (model.bert.encoder.layer.3 and encoder.layer.3 are one layer, "
        "encoder.layer.3); a suffix of layer indices alone (rnns.0 against layer.0) does not align.")
"""The alignment rule in one paragraph, for help texts."""


@dataclass
class Aligned:
    """Runs whose layer names were aligned, and notes on what was renamed or ambiguous."""

    runs: list[Run]
    notes: list[str]


def droppable(names: Sequence[str]) -> list[str]:
    """The leading dotted paths every name shares and may drop (keeping at least one part), shortest first.

    >>> droppable(["model.bert.layer.0", "model.bert.layer.1"])
    ['', 'model.', 'model.bert.', 'model.bert.layer.']
    >>> droppable(["embeddings", "encoder.layer.0"])
    ['']
    """
    parts = [name.split(".") for name in names]
    shared = 0
    while parts and all(len(p) > shared + 1 for p in parts) and len({p[shared] for p in parts}) == 1:
        shared += 1
    return ["".join(f"{x}." for x in parts[0][:k]) if parts else "" for k in range(shared + 1)]


def _keys(names: Sequence[str], prefix: str) -> list[str]:
    return [name[len(prefix):] for name in names]


def _named(key: str) -> bool:
    """Whether a suffix holds a name part, not only layer indices."""
    return any(not part.isdigit() for part in key.split("."))


def _pairs(reference: Sequence[str], ref_prefix: str, names: Sequence[str], prefix: str) -> frozenset[tuple[str, str]]:
    """Pairs (reference name, name) that are equal once the prefixes are dropped (rule 3 applied)."""
    exact = not ref_prefix and not prefix
    own = dict(zip(_keys(names, prefix), names))
    return frozenset((ref, own[key]) for ref, key in zip(reference, _keys(reference, ref_prefix))
                     if key in own and (exact or _named(key)))


def _best_prefix(reference: Sequence[str], ref_prefix: str,
                 names: Sequence[str]) -> tuple[str, frozenset[tuple[str, str]]]:
    """The prefix of ``names`` that pairs most of them with the reference (the shortest among equals)."""
    options = [(p, _pairs(reference, ref_prefix, names, p)) for p in droppable(names)]
    return max(options, key=lambda option: len(option[1]))  # max keeps the first (shortest) of equals


def _rename(run: Run, prefix: str) -> Run:
    if not prefix:
        return run

    def short(name: str) -> str:
        return name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else name

    results = [dataclasses.replace(r, layer_names=[short(n) for n in r.layer_names]) for r in run.results]
    return dataclasses.replace(run, results=results)


def align_layers(runs: Sequence[Run]) -> Aligned:
    """Rename the layers of ``runs`` so the same layer has the same name in every run (see the module
    docstring for the rule); the first run is the reference."""
    reference = runs[0].layer_names
    choices = []
    for ref_prefix in droppable(reference):
        picks = [_best_prefix(reference, ref_prefix, run.layer_names) for run in runs[1:]]
        choices.append((sum(len(pairs) for _p, pairs in picks), ref_prefix, picks))
    score = max(c[0] for c in choices)
    best = next(c for c in choices if c[0] == score)
    _score, ref_prefix, picks = best
    notes = []
    for k, (run, (_prefix, pairs)) in enumerate(zip(runs[1:], picks)):
        ways = {c[2][k][1] for c in choices if c[0] == score}
        if pairs and len(ways) > 1:
            notes.append(f"run {run.name}: its layers pair with run {runs[0].name}'s in {len(ways)} ways; aligned "
                         "by the longest common dotted suffix")
    prefixes = [ref_prefix, *(p if pairs else "" for p, pairs in picks)]
    notes += [f"run {run.name}: layer names shortened to their common suffix with the other runs' "
              f"(dropped {prefix!r}: {run.layer_names[0]} -> {run.layer_names[0][len(prefix):]})"
              for run, prefix in zip(runs, prefixes) if prefix]
    return Aligned([_rename(run, prefix) for run, prefix in zip(runs, prefixes)], notes)
