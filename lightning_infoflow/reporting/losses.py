"""Which logged scalars are a run's training and validation losses, and the training loss at each analysis.

One detection for both readers: the reports (tags of ``metrics.csv`` and TensorBoard event files, see
:mod:`~lightning_infoflow.reporting.logs`) and the callback (the keys of ``trainer.callback_metrics``).
The callback's own scalars (``<name>/<measure>/<layer>``, ``infoflow/`` by default) never count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

OWN_PREFIXES = ("infoflow/",)
"""Tags of InfoFlowCallback's own scalars under its default name; never a loss of the run."""


def is_validation(tag: str) -> bool:
    """Whether a scalar's name says it was measured on validation data (it starts with ``val`` or has ``/val``).

    >>> is_validation("val_loss"), is_validation("metrics/val_acc"), is_validation("train/loss")
    (True, True, False)
    """
    lower = tag.lower()
    return lower.startswith("val") or "/val" in lower


def _losses(tags: Iterable[str], exclude: Sequence[str]) -> list[str]:
    return [t for t in tags if "loss" in t.lower() and not any(t.startswith(p) for p in exclude)]


def train_loss_tag(tags: Iterable[str], exclude: Sequence[str] = OWN_PREFIXES) -> str | None:
    """The training loss among ``tags``: one with ``loss`` and ``train`` in it, else any loss that is neither a
    validation nor a test loss; per step before per epoch, then the shortest.

    >>> train_loss_tag(["val_loss", "train_loss_epoch", "train_loss_step", "infoflow/loss/enc.0"])
    'train_loss_step'
    """
    tags = [t for t in _losses(tags, exclude) if "val" not in t.lower() and "test" not in t.lower()]
    trained = [t for t in tags if "train" in t.lower()]
    chosen = sorted(trained or tags, key=lambda t: ("epoch" in t, len(t)))
    return chosen[0] if chosen else None


def val_loss_tag(tags: Iterable[str], exclude: Sequence[str] = OWN_PREFIXES) -> str | None:
    """The validation loss among ``tags`` (a loss that :func:`is_validation`): a plain name before one that
    ends in ``epoch``, before one logged per validation batch (``step``), then the shortest.

    >>> val_loss_tag(["val_loss_step", "val_loss_epoch", "train_loss", "val/acc"])
    'val_loss_epoch'
    >>> val_loss_tag(["val/loss", "val_loss_epoch"]), val_loss_tag(["train_loss"])
    ('val/loss', None)
    """
    tags = [t for t in _losses(tags, exclude) if is_validation(t)]
    chosen = sorted(tags, key=lambda t: ("step" in t.lower(), "epoch" in t.lower(), len(t)))
    return chosen[0] if chosen else None


def window_means(points: Sequence[tuple[int, float]], steps: Sequence[int]) -> list[float]:
    """At each of ``steps`` (ascending), the mean of the values logged since the previous one, NaN if none.

    >>> window_means([(0, 1.0), (4, 0.8), (5, 0.6), (9, 0.5)], [0, 5, 8])
    [1.0, 0.7, nan]
    """
    out, previous = [], -1
    for step in steps:
        window = [v for s, v in points if previous < s <= step]
        out.append(sum(window) / len(window) if window else float("nan"))
        previous = step
    return out
