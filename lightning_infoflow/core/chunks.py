"""Perturbed copies of the probe in chunks: each copy scored on its own result row, within a memory budget.

The estimator's objective runs ``rows x samples x sentences`` copies of the probe batch. Copy ``c``
belongs to row ``c // (samples * B)`` and sentence ``c % B``; copies of one row are contiguous, so a
chunk touches few rows and its forward (:meth:`~lightning_infoflow.core.runner.ProbeRunner.forward`)
stops after the deepest module they need.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

from lightning_infoflow.core import inputs
from lightning_infoflow.core.runner import PreparedProbe, ProbeRunner

_CPU_MEMORY_BUDGET = 2 * 1024**3

Score = Callable[[int, int, int, Tensor], None]  # (row g, first copy, last copy, states of those copies)


def human_bytes(n: float) -> str:
    """Bytes as text: ``'1.5 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"


def chunk_size(requested: Union[int, str], memory_budget: Optional[int], copies: int, per_copy_bytes: float,
               fixed_bytes: float, device: torch.device) -> int:
    """Copies per forward: ``requested``, or as many as fit the budget left after ``fixed_bytes``.

    The default budget is 60% of free memory on CUDA and 2 GiB elsewhere.

    Raises:
        ValueError: not even one copy fits the budget (with the fixes).
    """
    if requested != "auto":
        return min(int(requested), copies)
    budget = memory_budget
    if budget is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = int(0.6 * free)
        else:
            budget = _CPU_MEMORY_BUDGET
    fit = int((budget - fixed_bytes) // max(per_copy_bytes, 1.0))
    if fit < 1:
        raise ValueError(
            f"one perturbed copy of the probe needs about {human_bytes(per_copy_bytes)} of activations "
            f"(plus {human_bytes(fixed_bytes)} of noise for all copies), more than "
            f"memory_budget={human_bytes(budget)}; "
            "raise `memory_budget`, or probe fewer or shorter sentences (a fixed `chunk_size` skips this check)"
        )
    return min(fit, copies)


class ChunkScorer:
    """Runs chunks of perturbed copies and scores each copy on its own row's clean state.

    Args:
        runner: the hooked forward.
        prep: the prepared probe.
        samples: copies per row and sentence.
    """

    def __init__(self, runner: ProbeRunner, prep: PreparedProbe, samples: int) -> None:
        self.runner = runner
        self.prep = prep
        self.bsz = prep.batch_size
        self.per_row = samples * self.bsz
        self.device = prep.mask.device
        self._batches: dict[tuple[int, int], inputs.Batch] = {}
        shapes = [s.state.shape[1:] for s in prep.states.values()]
        self.max_state_shape = (max(s[0] for s in shapes), max(s[1] for s in shapes))

    def _plan(self, a: int, b: int) -> dict[str, list[tuple[int, int, int]]]:
        """For each module: (row, first copy, last copy) of the chunk's copies that score on it."""
        plan: dict[str, list[tuple[int, int, int]]] = {}
        first, last = a // self.per_row, (b - 1) // self.per_row
        for g in range(first, last + 1):
            lo, hi = max(a, g * self.per_row) - a, min(b, (g + 1) * self.per_row) - a
            plan.setdefault(self.prep.rows[g].module_name, []).append((g, lo, hi))
        return plan

    def _run(self, a: int, b: int, x_rows: Tensor, score: Score) -> None:
        plan = self._plan(a, b)

        def on_state(name: str, state: Tensor) -> None:
            for g, lo, hi in plan[name]:
                score(g, lo, hi, state[lo:hi])

        self.runner.forward(self.prep, self._chunk_batch(a, b), x_rows, list(plan), on_state,
                            done=self._done(plan, b - a))

    def _done(self, plan: dict[str, list[tuple[int, int, int]]], n: int) -> Optional[dict[str, Tensor]]:
        """Per module of a chunk that spans several: the copies scored there or earlier (see ``forward``)."""
        if len(plan) < 2:
            return None
        order = self.prep.order
        done: dict[str, Tensor] = {}
        for name in plan:
            rows = torch.zeros(n, dtype=torch.bool, device=self.device)
            for other, spans in plan.items():
                if order[other] <= order[name]:
                    for _, lo, hi in spans:
                        rows[lo:hi] = True
            done[name] = rows
        return done

    def _chunk_batch(self, a: int, b: int) -> inputs.Batch:
        """The model inputs of copies ``a:b`` (copy ``c`` holds sentence ``c % B``), built once per chunk."""
        if (a, b) not in self._batches:
            self._batches[(a, b)] = self.runner.copies(self.prep, torch.arange(a, b, device=self.device) % self.bsz)
        return self._batches[(a, b)]

    def errors(self, a: int, b: int, x_rows: Tensor) -> Tensor:
        """Normalised squared error of each copy's state against the clean state of its row: ``[b - a]``."""
        parts: list[tuple[int, Tensor]] = []
        sentences = torch.arange(a, b, device=self.device) % self.bsz

        def score(g: int, lo: int, hi: int, out: Tensor) -> None:
            b_rows = sentences[lo:hi]
            diff = (out - self.prep.clean(g)[b_rows]) * self.prep.inv_std[self.prep.rows[g].module_name]
            parts.append((lo, (diff.pow(2).sum(-1) * self.prep.state_masks[g][b_rows]).sum(-1)))

        self._run(a, b, x_rows, score)
        parts.sort(key=lambda p: p[0])
        return torch.cat([p[1] for p in parts])

    def vjp_norms(self, a: int, b: int, x_rows: Tensor, u: Tensor) -> Tensor:
        """``||u^T J_i||^2`` per copy and word for random ``u`` in the normalised state space: ``[b - a, T]``."""
        parts: list[tuple[int, Tensor]] = []
        sentences = torch.arange(a, b, device=self.device) % self.bsz
        with torch.enable_grad():
            x_rows = x_rows.detach().requires_grad_(True)

            def score(g: int, lo: int, hi: int, out: Tensor) -> None:
                w = u[lo:hi, : out.shape[1], : out.shape[2]] * self.prep.inv_std[self.prep.rows[g].module_name]
                w = w * self.prep.state_masks[g][sentences[lo:hi]].unsqueeze(-1)
                parts.append((lo, (out * w).sum()))

            self._run(a, b, x_rows, score)
            total = torch.stack([p[1] for p in parts]).sum()
            (grad,) = torch.autograd.grad(total, x_rows)
        return grad.pow(2).sum(-1)

    def bytes_per_copy(self, rows: int) -> float:
        """Activation bytes autograd saves per perturbed copy, measured on a few copies of the deepest layer.

        Each saved storage counts once; the model's parameters (saved by every layer but shared by all
        copies) do not count.
        """
        model = self.runner.model
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
        seen: set[int] = set()
        saved = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal saved
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params and ptr not in seen:
                seen.add(ptr)
                saved += t.untyped_storage().nbytes()
            # Detached: the storage stays alive (pointers stay unique) but the packed tensor holds no
            # grad_fn. Returning ``t`` itself would tie a saved output to its own graph node, a cycle
            # the garbage collector cannot see, and leak the graph of every analysis.
            return t.detach()

        rows_of = self.prep.rows
        deepest = max(range(len(rows_of)), key=lambda g: self.prep.order[rows_of[g].module_name])
        a = int(deepest * self.per_row)
        b = min(a + rows, len(rows_of) * self.per_row)
        x_rows = self.prep.x[torch.arange(a, b, device=self.device) % self.bsz].requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self.errors(a, b, x_rows * 1.0)
        return saved / (b - a)
