"""The callback's progress bar over one analysis's optimisation steps."""

from __future__ import annotations

from typing import Any

from typing_extensions import Self


class Progress:
    """A tqdm bar over the estimator's steps, on rank 0 only, when the Trainer shows a progress bar."""

    def __init__(self, enabled: bool, desc: str, total: int) -> None:
        self.enabled = enabled and total > 0
        self.desc = desc
        self.total = total
        self._bar: Any = None

    def __enter__(self) -> Self:
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, leave=False, dynamic_ncols=True)
        return self

    def update(self, step: int, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total  # steps="auto" may stop before its cap
            self._bar.n = step
            self._bar.refresh()

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

