"""lightning_infoflow: how much of each input word every layer of an NLP model keeps, while it trains.

Implements the information measure of Guan et al., "Towards a Deep and Unified Understanding of Deep
Neural Models in NLP" (ICML 2019): :class:`InfoFlowEstimator` learns per-word noise scales for every
layer of a model, :class:`InfoFlowCallback` runs it on a fixed probe while a Lightning Trainer trains.
"""

from lightning_infoflow.attributes import WordAttributes, attribute_figure, load_concepts, word_attributes
from lightning_infoflow.baselines import SaliencyResult, saliency
from lightning_infoflow.callback import InfoFlowCallback
from lightning_infoflow.estimator import InfoFlowEstimator
from lightning_infoflow.guidance import Finding, collapse_finding
from lightning_infoflow.probe import Probe, build_probe
from lightning_infoflow.result import InfoFlowResult

__all__ = [
    "Finding",
    "InfoFlowCallback",
    "InfoFlowEstimator",
    "InfoFlowResult",
    "Probe",
    "SaliencyResult",
    "WordAttributes",
    "attribute_figure",
    "build_probe",
    "collapse_finding",
    "load_concepts",
    "saliency",
    "word_attributes",
]
__version__ = "0.1.0"
