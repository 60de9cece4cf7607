"""Per-logger output of an analysis: scalars to every logger, figures where each logger can take them.

Lightning has no common image API, so figures are dispatched on the logger type: TensorBoard
``add_figure``, Weights & Biases ``log_image``, MLflow ``log_figure``; anything else (CSVLogger
included) gets PNG files under its log dir. An unsupported logger is warned about once, never fatal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Optional

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def logger_dir(logger: Logger, fallback: str) -> str:
    """Directory where this logger's run lives (where raw results and PNGs go)."""
    if isinstance(logger, WandbLogger):
        save_dir = logger.save_dir or fallback
        return os.path.join(save_dir, "infoflow", str(logger.version or "run"))
    log_dir = getattr(logger, "log_dir", None)
    if isinstance(log_dir, str):
        return log_dir
    if isinstance(logger, MLFlowLogger):
        return os.path.join(logger.save_dir or fallback, str(logger.experiment_id), str(logger.run_id))
    return fallback


def custom_scalars_layout(keys: Mapping[str, list[str]]) -> dict[str, Any]:
    """TensorBoard custom-scalars layout: one multi-line chart per measure, all layers on it."""
    return {
        "infoflow": {
            title: ["Multiline", [rf"^infoflow/{measure}/.*"]]
            for measure, title in (
                ("information", "information per word (nats), all layers"),
                ("entropy", "mean word entropy (nats), all layers"),
                ("effective_words", "effective number of words, all layers"),
                ("loss", "estimator loss, all layers"),
            )
            if measure in keys
        }
    }


class Sinks:
    """Writes one analysis to every logger of a Trainer; remembers what it already warned about."""

    def __init__(self) -> None:
        self._warned: set[type] = set()
        self._layout_written: set[int] = set()

    def log_scalars(self, loggers: list[Logger], scalars: dict[str, float], step: int) -> None:
        for logger in loggers:
            logger.log_metrics(scalars, step=step)

    def write_layout(self, loggers: list[Logger], keys: Mapping[str, list[str]]) -> None:
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger) and id(logger) not in self._layout_written:
                logger.experiment.add_custom_scalars(custom_scalars_layout(keys))
                self._layout_written.add(id(logger))

    def log_figures(self, loggers: list[Logger], figures: dict[str, tuple[Figure, str]], step: int,
                    fallback_dir: str) -> None:
        """``figures`` maps a tag to (figure, caption)."""
        if not figures:
            return
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, (fig, _caption) in figures.items():
                    logger.experiment.add_figure(tag, fig, global_step=step, close=False)
                logger.experiment.flush()
            elif isinstance(logger, WandbLogger):
                import wandb

                payload = {tag: wandb.Image(_to_pil(fig), caption=caption) for tag, (fig, caption) in figures.items()}
                payload["trainer/global_step"] = step
                logger.experiment.log(payload)
            elif isinstance(logger, MLFlowLogger):
                for tag, (fig, _caption) in figures.items():
                    logger.experiment.log_figure(logger.run_id, fig, f"{_file_name(tag)}_step{step:08d}.png")
            else:
                if not isinstance(logger, CSVLogger) and type(logger) not in self._warned:
                    self._warned.add(type(logger))
                    rank_zero_warn(
                        f"InfoFlowCallback: {type(logger).__name__} has no image support here; "
                        "figures are written as PNG files under its log dir instead."
                    )
                self.save_pngs(figures, os.path.join(logger_dir(logger, fallback_dir), "infoflow", "images"), step)

    @staticmethod
    def save_pngs(figures: dict[str, tuple[Figure, str]], directory: str, step: int) -> None:
        os.makedirs(directory, exist_ok=True)
        for tag, (fig, _caption) in figures.items():
            fig.savefig(os.path.join(directory, f"{_file_name(tag)}_step{step:08d}.png"), dpi=110)


def _file_name(tag: str) -> str:
    return _SAFE.sub("_", tag.replace("/", "__"))


def _to_pil(fig: Figure) -> Optional[Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
