"""Extra analyses that ride along with each information analysis: saliency baselines, word attributes, yours.

A hook is called on global rank 0 right after an analysis, with the estimator (whose model holds the
weights of that step), the probe and the new result. What it returns is published with the analysis:
its scalars under ``<name>/`` in every logger and ``trainer.callback_metrics``, its figures beside the
heatmaps, its data saved in the same result file. A failing hook is a warning; the information itself
is still logged. Write your own by subclassing :class:`InfoFlowHook`::

    class NormHook(InfoFlowHook):
        def __call__(self, estimator, probe, result):
            norm = estimator.embedding_module.weight.norm()
            return HookOutput(scalars={"embedding_norm": float(norm)})

    InfoFlowCallback(probe, hooks=[NormHook(), SaliencyHook(methods=["gradient"])])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from torch import Tensor

from lightning_infoflow.core.estimator import InfoFlowEstimator
from lightning_infoflow.core.probe import Probe
from lightning_infoflow.core.result import InfoFlowResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WordSpec = tuple[int, Union[int, list[int]]]


@dataclass
class HookOutput:
    """What a hook adds to one analysis (every part optional).

    Attributes:
        scalars: name -> value, logged as ``<callback name>/<scalar name>``.
        figures: tag -> (figure, caption), logged as ``<callback name>/<tag>``.
        data: key -> tensors / primitives, saved in the analysis's result file under that key.
    """

    scalars: dict[str, float] = field(default_factory=dict)
    figures: dict[str, tuple[Figure, str]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def update(self, other: HookOutput) -> None:
        self.scalars.update(other.scalars)
        self.figures.update(other.figures)
        self.data.update(other.data)


class InfoFlowHook:
    """Base class of the callback's extra analyses: override :meth:`__call__` (and :meth:`setup`)."""

    def setup(self, estimator: InfoFlowEstimator, probe: Probe, tokenizer: Optional[Callable[..., Any]]) -> None:
        """Validate against the model and probe at ``Trainer.setup``; raise ``ValueError`` with the fix."""

    def __call__(self, estimator: InfoFlowEstimator, probe: Probe, result: InfoFlowResult) -> HookOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")


class SaliencyHook(InfoFlowHook):
    """Saliency maps of every watched layer (:func:`~lightning_infoflow.saliency`) beside the information.

    Saved as ``baselines`` (method -> ``[L, B, T]``) in each result file, where ``infoflow report`` finds
    them; figures ``baselines/sentence_<b>`` show them beside the information heatmap.

    Args:
        methods: ``"gradient"``, ``"integrated_gradients"``, ``"perturbation"``, ``"lrp"``.
        max_figures: comparison figures per analysis (0: none).
    """

    def __init__(self, methods: Sequence[str] = ("gradient",), max_figures: int = 4) -> None:
        from lightning_infoflow.analysis.saliency import METHODS

        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"SaliencyHook: unknown baseline method(s) {unknown or methods!r}; choose from "
                             f"{list(METHODS)}")
        if not (isinstance(max_figures, int) and max_figures >= 0):
            raise ValueError(f"SaliencyHook: `max_figures` must be a non-negative int, got {max_figures!r}")
        self.methods = list(methods)
        self.max_figures = max_figures

    def __call__(self, estimator: InfoFlowEstimator, probe: Probe, result: InfoFlowResult) -> HookOutput:
        from lightning_infoflow.analysis.saliency import saliency
        from lightning_infoflow.reporting.figures import comparison_heatmaps

        maps: dict[str, Tensor] = {
            m: saliency(estimator.model, probe.batch, estimator.layer_names, m,  # type: ignore[arg-type]
                        embedding=estimator.embedding_name, position=estimator.position,
                        pad_token_id=estimator.pad_token_id).values
            for m in self.methods
        }
        caption = "information beside " + ", ".join(maps)
        figures = {f"baselines/sentence_{b}": (comparison_heatmaps(result, maps, b), caption)
                   for b in range(min(self.max_figures, result.sigma.shape[1]))}
        return HookOutput(figures=figures, data={"baselines": maps})


class AttributesHook(InfoFlowHook):
    """Word attributes (Eqs. 8-9, :func:`~lightning_infoflow.word_attributes`) of chosen probe words.

    Logs ``attribute/s<sentence>w<word>/<concept>/<layer>`` (r = A_i - A_c) and a Fig. 8 figure
    ``attributes``; saves ``attributes`` (a list of dicts) in each result file. Needs an ``nn.Embedding``
    word embedding and a vocabulary.

    Args:
        words: ``(sentence, word position or word-piece positions)`` pairs of the probe.
        concepts: a dict ``{concept: [words]}``, a JSON/YAML file or a shipped set's name.
        vocab: ``{word: id}``, a list of words or a Hugging Face tokenizer; default: the callback's tokenizer.
    """

    def __init__(self, words: Sequence[WordSpec], concepts: Union[str, dict[str, list[str]]] = "sst2_example",
                 vocab: Optional[Any] = None) -> None:
        if not words:
            raise ValueError("AttributesHook: `words` is empty; pass (sentence, position) pairs, e.g. [(0, 1)]")
        self.words = [(int(s), w) for s, w in words]
        self.concepts = concepts
        self.vocab = vocab
        self._concepts: dict[str, Any] = {}
        self._vocab: Any = None

    def setup(self, estimator: InfoFlowEstimator, probe: Probe, tokenizer: Optional[Callable[..., Any]]) -> None:
        from lightning_infoflow.analysis.attributes import load_concepts

        self._vocab = self.vocab if self.vocab is not None else tokenizer
        if self._vocab is None:
            raise ValueError("AttributesHook needs `vocab=` (or the callback's `tokenizer=`) to look up concept words")
        self._concepts = load_concepts(self.concepts)
        for sentence, _ in self.words:
            if not 0 <= sentence < len(probe):
                raise ValueError(f"AttributesHook: sentence {sentence} is not in the probe of {len(probe)} sentences; "
                                 f"pick one in 0..{len(probe) - 1}")

    def __call__(self, estimator: InfoFlowEstimator, probe: Probe, result: InfoFlowResult) -> HookOutput:
        from lightning_infoflow.analysis.attributes import attribute_figure, word_attributes

        out = HookOutput()
        found = []
        for sentence, word in self.words:
            a = word_attributes(estimator, result, sentence, word, self._concepts, self._vocab, batch=probe.batch)
            found.append(a)
            tag = f"s{sentence}w{word if isinstance(word, int) else '_'.join(map(str, word))}"
            for c, concept in enumerate(a.concepts):
                for i, layer in enumerate(a.layer_names):
                    out.scalars[f"attribute/{tag}/{concept}/{layer}"] = float(a.remaining[i, c])
        out.figures["attributes"] = (attribute_figure(found, titles=[a.word for a in found]),
                                     "r = A_i - A_c per layer and concept (Fig. 8)")
        out.data["attributes"] = [a.to_dict() for a in found]
        return out
