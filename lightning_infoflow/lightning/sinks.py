"""Where an analysis goes: one writer per logger type, chosen from a registry that users can extend.

Lightning has no common image API, so each logger type has a :class:`LoggerWriter`: TensorBoard
(one run per layer, so that layers get their own colour and legend entry, a custom-scalars chart per
measure, and ``add_figure``), Weights & Biases (one history row per analysis, scalars and images
together, against the step metric ``<name>/step``), MLflow (``log_figure``); every other logger
(CSVLogger included) gets its scalars through ``log_metrics`` and its figures as PNG files under
``<log_dir>/<name>/images``. At the end of training the guidance (findings) goes to TensorBoard's text
plugin (``<name>/findings``), the W&B run summary (``<name>/findings``), and for other loggers to
``<log_dir>/<name>/findings.md``. A logger type without a registered writer
uses that default and is warned about once.

Scalars and figures are logged on two threads (see :mod:`~lightning_infoflow.lightning.worker`):
:meth:`LoggerWriter.log_scalars` runs on the training thread, in order with Lightning's own logging to
the same logger, and :meth:`LoggerWriter.log_figures` on the background worker; a writer whose scalars
must go in the same call as its figures (W&B: one history row per analysis) sets
``scalars_with_figures = True`` and logs both in :meth:`LoggerWriter.log_analysis` on the worker.
Figures are drawn with matplotlib's object-oriented API only (no pyplot), which works off the main
thread. Register a writer for your own logger with :func:`register_writer`::

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

import torch
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_infoflow.core.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: tag -> (figure, caption)
Figures = Mapping[str, tuple["Figure", str]]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
MEASURES = {
    "information": "information per word (nats), all layers",
    "information_se": "standard error of the information per word (nats; bootstrap over probe sentences), all layers",
    "information_low": "lower end of the information's 90% interval (nats), all layers",
    "information_high": "upper end of the information's 90% interval (nats), all layers",
    "noise_se": "standard error of the information from the estimator's noise alone (nats), all layers",
    "entropy": "mean word entropy (nats), all layers",
    "effective_words": "effective number of words (exp entropy of the precision shares), all layers",
    "log_sigma": "mean log sigma per word (nats per dimension; free of sigma_max), all layers",
    "state_spread": "state spread over the probe (near 0: collapsed), all layers",
    "loss": "estimator loss, all layers",
}
"""Per-layer measures, logged as ``<name>/<measure>/<layer>``, and the title of each one's TensorBoard chart."""
INTERVAL_BOUNDS = ("information_low", "information_high")
"""Measures drawn as the band of the information's margin chart, not as charts of their own."""
MARGIN_CHART = "information per word with its 90% interval (nats), all layers"


class LoggerWriter:
    """How one analysis reaches one kind of logger. The default: scalars by ``log_metrics``, PNG figures.

    Subclass it and :func:`register_writer` it for a logger type this package does not know.
    """

    #: whether :meth:`log_figures` writes into ``image_dir`` (checked for writability at setup)
    writes_pngs = True
    #: ``False``: :meth:`log_scalars` on the training thread, :meth:`log_figures` on the worker; ``True``: both
    #: in one :meth:`log_analysis` call on the worker (for loggers that need them in one record)
    scalars_with_figures = False

    def log_analysis(self, logger: Logger, namespace: str, scalars: Mapping[str, float], figures: Figures,
                     step: int, image_dir: str) -> None:
        """One analysis at once, scalars and figures (called when :attr:`scalars_with_figures` is set)."""
        self.log_scalars(logger, namespace, scalars, step)
        if figures:
            self.log_figures(logger, figures, step, image_dir)

    def log_scalars(self, logger: Logger, namespace: str, scalars: Mapping[str, float], step: int) -> None:
        """The scalars of one analysis, by ``log_metrics``, then ``logger.save()``."""
        logger.log_metrics(dict(scalars), step=step)
        logger.save()

    def log_layout(self, logger: Logger, namespace: str) -> None:
        """Called once per logger before the first analysis: a place for dashboard layouts."""

    def log_figures(self, logger: Logger, figures: Figures, step: int, image_dir: str) -> None:
        save_pngs(figures, image_dir, step)

    def log_findings(self, logger: Logger, namespace: str, markdown: str, step: int, folder: str) -> None:
        """The guidance at the end of training, as Markdown: here ``folder/findings.md`` (written atomically);
        ``folder`` is ``<log_dir>/<name>``."""
        os.makedirs(folder, exist_ok=True)
        atomic_write(os.path.join(folder, "findings.md"), lambda f: f.write(markdown.encode("utf-8") + b"\n"))

    def finish(self, logger: Logger, namespace: str) -> None:
        """Called once when training ends: close what :meth:`log_analysis` opened."""


class TensorBoardWriter(LoggerWriter):
    """One run per layer, one custom-scalars chart per measure with every layer on it, ``add_figure``.

    TensorBoard colours lines by run, so the per-layer measures go to a run of their own per layer,
    ``<log_dir>/<name>/tb/<layer>``, under one tag per measure, ``<name>/<measure>`` (what
    ``SummaryWriter.add_scalars`` does): the scalars page and the custom-scalars page then draw one
    coloured line per layer with the layer in the legend. Other scalars (``analysis_seconds``, hooks'
    scalars) and the figures go to the logger's own run.
    """

    writes_pngs = False

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str], dict[str, Any]] = {}  # (log_dir, namespace) -> layer -> SummaryWriter

    def log_layout(self, logger: Logger, namespace: str) -> None:
        assert isinstance(logger, TensorBoardLogger)
        logger.experiment.add_custom_scalars(custom_scalars_layout(namespace))

    def log_scalars(self, logger: Logger, namespace: str, scalars: Mapping[str, float], step: int) -> None:
        assert isinstance(logger, TensorBoardLogger)
        per_layer, rest = split_per_layer(scalars, namespace)
        runs = self._runs.setdefault((logger.log_dir, namespace), {})
        for (measure, layer), value in per_layer.items():
            if layer not in runs:
                from torch.utils.tensorboard import SummaryWriter

                runs[layer] = SummaryWriter(os.path.join(logger.log_dir, namespace, "tb", _SAFE.sub("_", layer)))
            runs[layer].add_scalar(f"{namespace}/{measure}", value, global_step=step)
        for run in runs.values():
            run.flush()
        super().log_scalars(logger, namespace, rest, step)

    def log_figures(self, logger: Logger, figures: Figures, step: int, image_dir: str) -> None:
        """Each figure as an image of the logger's run (``add_figure``'s output, drawn without pyplot)."""
        assert isinstance(logger, TensorBoardLogger)
        for tag, (fig, _caption) in figures.items():
            logger.experiment.add_image(tag, figure_to_rgb(fig), global_step=step, dataformats="HWC")
        logger.experiment.flush()

    def log_findings(self, logger: Logger, namespace: str, markdown: str, step: int, folder: str) -> None:
        """TensorBoard's text plugin, tag ``<name>/findings`` in the logger's own run."""
        assert isinstance(logger, TensorBoardLogger)
        logger.experiment.add_text(f"{namespace}/findings", markdown, global_step=step)
        logger.experiment.flush()

    def finish(self, logger: Logger, namespace: str) -> None:
        assert isinstance(logger, TensorBoardLogger)
        for run in self._runs.pop((logger.log_dir, namespace), {}).values():
            run.close()


class WandbWriter(LoggerWriter):
    """One ``experiment.log`` call per analysis: its scalars and its images (with captions) in one history row.

    The row carries ``<name>/step`` (the analysis's optimizer step), declared with ``define_metric`` as
    the step metric of every ``<name>/*`` key, so analyses never fight the trainer's own step; it also
    carries ``trainer/global_step``, the x-axis WandbLogger gives every metric.
    """

    writes_pngs = False
    scalars_with_figures = True

    def log_layout(self, logger: Logger, namespace: str) -> None:
        assert isinstance(logger, WandbLogger)
        logger.experiment.define_metric(f"{namespace}/step")
        logger.experiment.define_metric(f"{namespace}/*", step_metric=f"{namespace}/step")

    def log_analysis(self, logger: Logger, namespace: str, scalars: Mapping[str, float], figures: Figures,
                     step: int, image_dir: str) -> None:
        assert isinstance(logger, WandbLogger)
        import wandb

        row: dict[str, Any] = {**scalars, f"{namespace}/step": step, "trainer/global_step": step}
        row.update({tag: wandb.Image(figure_to_pil(fig), caption=caption) for tag, (fig, caption) in figures.items()})
        logger.experiment.log(row)

    def log_findings(self, logger: Logger, namespace: str, markdown: str, step: int, folder: str) -> None:
        """The run summary's ``<name>/findings`` (shown on the run's overview page)."""
        assert isinstance(logger, WandbLogger)
        logger.experiment.summary[f"{namespace}/findings"] = markdown


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
    """TensorBoard custom-scalars layout: one multi-line chart per measure, a line per layer's run, and a
    margin chart of the information with its interval as the band (a band per layer's run)."""
    prefix = re.escape(namespace)
    charts: dict[str, Any] = {title: ["Multiline", [rf"^{prefix}/{measure}$"]]
                              for measure, title in MEASURES.items() if measure not in INTERVAL_BOUNDS}
    charts[MARGIN_CHART] = ["Margin", [f"{namespace}/information", *(f"{namespace}/{b}" for b in INTERVAL_BOUNDS)]]
    return {namespace: charts}


def split_per_layer(scalars: Mapping[str, float], namespace: str) -> tuple[dict[tuple[str, str], float],
                                                                            dict[str, float]]:
    """``{(measure, layer): value}`` of the ``<namespace>/<measure>/<layer>`` keys, and the other scalars."""
    per_layer: dict[tuple[str, str], float] = {}
    rest: dict[str, float] = {}
    for key, value in scalars.items():
        measure, _, layer = key[len(namespace) + 1:].partition("/")
        if key.startswith(f"{namespace}/") and measure in MEASURES and layer:
            per_layer[(measure, layer)] = value
        else:
            rest[key] = value
    return per_layer, rest


class Sinks:
    """Writes each analysis to every logger of a Trainer through its writer."""

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

    def log_scalars(self, logger: Logger, scalars: Mapping[str, float], step: int) -> None:
        """On the training thread: the logger's dashboard layout (once), then one analysis's scalars, unless
        its writer logs them with the figures."""
        writer = self.writer(logger)
        if id(logger) not in self._layout_written:
            writer.log_layout(logger, self.namespace)
            self._layout_written.add(id(logger))
        if not writer.scalars_with_figures:
            writer.log_scalars(logger, self.namespace, scalars, step)

    def log_figures(self, logger: Logger, scalars: Mapping[str, float], figures: Figures, step: int,
                    image_dir: str) -> None:
        """On the worker, after :meth:`log_scalars`: one analysis's figures (and its scalars, for a writer that
        logs them together)."""
        writer = self.writer(logger)
        if writer.scalars_with_figures:
            writer.log_analysis(logger, self.namespace, scalars, figures, step, image_dir)
        elif figures:
            writer.log_figures(logger, figures, step, image_dir)

    def log_findings(self, logger: Logger, markdown: str, step: int, folder: str) -> None:
        """The guidance at the end of training to one logger (``folder``: ``<its log_dir>/<name>``)."""
        self.writer(logger).log_findings(logger, self.namespace, markdown, step, folder)

    def finish(self, loggers: Sequence[Logger]) -> None:
        for logger in loggers:
            if id(logger) in self._layout_written:
                self.writer(logger).finish(logger, self.namespace)
        self._layout_written.clear()


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


def figure_to_rgb(fig: Figure) -> Tensor:
    """The figure drawn by the Agg canvas, ``[H, W, 3]`` uint8 (no pyplot, so any thread may call it)."""
    canvas = _drawn(fig)
    width, height = canvas.get_width_height()
    rgba = torch.frombuffer(bytearray(canvas.buffer_rgba()), dtype=torch.uint8)
    return rgba.view(height, width, 4)[:, :, :3].contiguous()


def figure_to_pil(fig: Figure) -> Any:
    """The figure drawn by the Agg canvas as an RGB PIL image (no pyplot)."""
    from PIL import Image

    canvas = _drawn(fig)
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")


def _drawn(fig: Figure) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas
