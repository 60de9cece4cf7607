"""Where an analysis goes: one writer per logger type, chosen from a registry that users can extend.

Lightning has no common image API, so each logger type has a :class:`LoggerWriter`: TensorBoard
(``add_figure`` and a custom-scalars chart), Weights & Biases (``WandbLogger.log_image``), MLflow
(``log_figure``); every other logger (CSVLogger included) gets its scalars through ``log_metrics`` and
its figures as PNG files under ``<log_dir>/<name>/images``. A logger type without a registered writer
uses that default and is warned about once. Register a writer for your own logger with
:func:`register_writer`::

    class MyWriter(LoggerWriter):
        def log_figures(self, logger, figures, step, image_dir):
            for tag, (fig, caption) in figures.items():
                logger.experiment.add_image(tag, fig, step)

    register_writer(MyLogger, MyWriter())
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Callable, Optional

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

from lightning_infoflow.core.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: tag -> (figure, caption)
Figures = Mapping[str, tuple["Figure", str]]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
MEASURES = {
    "information": "information per word (nats), all layers",
    "entropy": "mean word entropy (nats), all layers",
    "effective_words": "effective number of words, all layers",
    "loss": "estimator loss, all layers",
}


class LoggerWriter:
    """How one analysis reaches one kind of logger. The default: scalars by ``log_metrics``, PNG figures.

    Subclass it and :func:`register_writer` it for a logger type this package does not know.
    """

    #: whether :meth:`log_figures` writes into ``image_dir`` (checked for writability at setup)
    writes_pngs = True

    def log_scalars(self, logger: Logger, scalars: Mapping[str, float], step: int) -> None:
        logger.log_metrics(dict(scalars), step=step)

    def log_layout(self, logger: Logger, namespace: str) -> None:
        """Called once per logger before the first scalars: a place for dashboard layouts."""

    def log_figures(self, logger: Logger, figures: Figures, step: int, image_dir: str) -> None:
        save_pngs(figures, image_dir, step)


class TensorBoardWriter(LoggerWriter):
    """``add_figure`` per figure; one custom-scalars chart per measure with every layer on it."""

    writes_pngs = False

    def log_layout(self, logger: Logger, namespace: str) -> None:
        assert isinstance(logger, TensorBoardLogger)
        logger.experiment.add_custom_scalars(custom_scalars_layout(namespace))

    def log_figures(self, logger: Logger, figures: Figures, step: int, image_dir: str) -> None:
        assert isinstance(logger, TensorBoardLogger)
        for tag, (fig, _caption) in figures.items():
            logger.experiment.add_figure(tag, fig, global_step=step, close=False)
        logger.experiment.flush()


class WandbWriter(LoggerWriter):
    """``WandbLogger.log_image`` per figure, with its caption, at the analysis's ``step``."""

    writes_pngs = False

    def log_figures(self, logger: Logger, figures: Figures, step: int, image_dir: str) -> None:
        assert isinstance(logger, WandbLogger)
        for tag, (fig, caption) in figures.items():
            logger.log_image(key=tag, images=[figure_to_pil(fig)], step=step, caption=[caption])


class MLFlowWriter(LoggerWriter):
    """``log_figure`` per figure into the logger's run."""

    writes_pngs = False

    def log_figures(self, logger: Logger, figures: Figures, step: int, image_dir: str) -> None:
        assert isinstance(logger, MLFlowLogger)
        for tag, (fig, _caption) in figures.items():
            logger.experiment.log_figure(logger.run_id, fig, png_name(tag, step))


_WRITERS: dict[type, LoggerWriter] = {}
_DEFAULT = LoggerWriter()


def register_writer(logger_type: type, writer: LoggerWriter) -> None:
    """Use ``writer`` for loggers of ``logger_type`` (and its subclasses without a writer of their own)."""
    if not (isinstance(logger_type, type) and issubclass(logger_type, Logger)):
        raise ValueError(f"register_writer: {logger_type!r} is not a Logger class; pass e.g. TensorBoardLogger")
    if not isinstance(writer, LoggerWriter):
        raise ValueError(f"register_writer: {type(writer).__name__} is not a LoggerWriter; subclass LoggerWriter")
    _WRITERS[logger_type] = writer


def writer_for(logger: Logger) -> Optional[LoggerWriter]:
    """The writer registered for the logger's class or its nearest base; ``None`` when there is none."""
    for cls in logger.__class__.__mro__:  # __class__: what isinstance() sees
        if cls in _WRITERS:
            return _WRITERS[cls]
    return None


register_writer(TensorBoardLogger, TensorBoardWriter())
register_writer(WandbLogger, WandbWriter())
register_writer(MLFlowLogger, MLFlowWriter())
register_writer(CSVLogger, _DEFAULT)


def logger_dir(logger: Logger, fallback: str) -> str:
    """Folder of this logger's run, under which ``<name>/results`` and ``<name>/images`` go."""
    if isinstance(logger, WandbLogger):
        save_dir = logger.save_dir or fallback
        return os.path.join(save_dir, "infoflow", str(logger.version or "run"))
    log_dir = getattr(logger, "log_dir", None)
    if isinstance(log_dir, str):
        return log_dir
    if isinstance(logger, MLFlowLogger):
        return os.path.join(logger.save_dir or fallback, str(logger.experiment_id), str(logger.run_id))
    return fallback


def custom_scalars_layout(namespace: str) -> dict[str, Any]:
    """TensorBoard custom-scalars layout: one multi-line chart per measure, all layers on it."""
    prefix = re.escape(namespace)
    return {namespace: {title: ["Multiline", [rf"^{prefix}/{measure}/.*"]] for measure, title in MEASURES.items()}}


class Sinks:
    """Writes scalars and figures to every logger of a Trainer through its writer."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._warned: set[type] = set()
        self._layout_written: set[int] = set()

    def writer(self, logger: Logger) -> LoggerWriter:
        writer = writer_for(logger)
        if writer is None:
            if type(logger) not in self._warned:
                self._warned.add(type(logger))
                rank_zero_warn(
                    f"InfoFlowCallback: no writer is registered for {type(logger).__name__}; its figures are "
                    "written as PNG files under its log dir. Register one with "
                    "lightning_infoflow.lightning.sinks.register_writer."
                )
            return _DEFAULT
        return writer

    def log_scalars(self, loggers: Sequence[Logger], scalars: Mapping[str, float], step: int) -> None:
        for logger in loggers:
            writer = self.writer(logger)
            if id(logger) not in self._layout_written:
                writer.log_layout(logger, self.namespace)
                self._layout_written.add(id(logger))
            writer.log_scalars(logger, scalars, step)
            logger.save()

    def log_figures(self, loggers: Sequence[Logger], figures: Figures, step: int,
                    image_dirs: Sequence[str]) -> None:
        """``image_dirs[i]`` is where PNG files of ``loggers[i]`` go."""
        if figures:
            for logger, image_dir in zip(loggers, image_dirs):
                self.writer(logger).log_figures(logger, figures, step, image_dir)


def png_name(tag: str, step: int) -> str:
    return f"{_SAFE.sub('_', tag.replace('/', '__'))}_step{step:08d}.png"


def save_pngs(figures: Figures, directory: str, step: int) -> None:
    """One PNG per figure, each written atomically (a failure leaves no partial file)."""
    os.makedirs(directory, exist_ok=True)
    for tag, (fig, _caption) in figures.items():
        atomic_write(os.path.join(directory, png_name(tag, step)), _png_of(fig))


def _png_of(fig: Figure) -> Callable[[IO[bytes]], None]:
    def write(f: IO[bytes]) -> None:
        fig.savefig(f, format="png", dpi=110)

    return write


def figure_to_pil(fig: Figure) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
