"""lightning_infoflow: how much of each input word every layer of an NLP model keeps, while it trains.

Implements the information measure of Guan et al., "Towards a Deep and Unified Understanding of Deep
Neural Models in NLP" (ICML 2019): :class:`InfoFlowEstimator` learns per-word noise scales for every
layer of a model, :class:`InfoFlowCallback` runs it on a fixed probe while a Lightning Trainer trains.

The names below are imported on first use (PEP 562), so ``import lightning_infoflow`` loads neither
Lightning nor matplotlib; they load when the callback or a figure is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "InfoFlowEstimator": "lightning_infoflow.core.estimator",
    "InfoFlowResult": "lightning_infoflow.core.result",
    "Probe": "lightning_infoflow.core.probe",
    "build_probe": "lightning_infoflow.core.probe",
    "Finding": "lightning_infoflow.analysis.guidance",
    "SaliencyResult": "lightning_infoflow.analysis.saliency",
    "saliency": "lightning_infoflow.analysis.saliency",
    "WordAttributes": "lightning_infoflow.analysis.attributes",
    "attribute_figure": "lightning_infoflow.analysis.attributes",
    "load_concepts": "lightning_infoflow.analysis.attributes",
    "word_attributes": "lightning_infoflow.analysis.attributes",
    "InfoFlowCallback": "lightning_infoflow.lightning.callback",
    "EstimatorConfig": "lightning_infoflow.lightning.config",
    "InfoFlowHook": "lightning_infoflow.lightning.hooks",
    "HookOutput": "lightning_infoflow.lightning.hooks",
    "SaliencyHook": "lightning_infoflow.lightning.hooks",
    "AttributesHook": "lightning_infoflow.lightning.hooks",
}

__all__ = [
    "AttributesHook",
    "EstimatorConfig",
    "Finding",
    "HookOutput",
    "InfoFlowCallback",
    "InfoFlowEstimator",
    "InfoFlowHook",
    "InfoFlowResult",
    "Probe",
    "SaliencyHook",
    "SaliencyResult",
    "WordAttributes",
    "attribute_figure",
    "build_probe",
    "load_concepts",
    "saliency",
    "word_attributes",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lightning_infoflow.analysis.attributes import WordAttributes, attribute_figure, load_concepts, word_attributes
    from lightning_infoflow.analysis.guidance import Finding
    from lightning_infoflow.analysis.saliency import SaliencyResult, saliency
    from lightning_infoflow.core.estimator import InfoFlowEstimator
    from lightning_infoflow.core.probe import Probe, build_probe
    from lightning_infoflow.core.result import InfoFlowResult
    from lightning_infoflow.lightning.callback import InfoFlowCallback
    from lightning_infoflow.lightning.config import EstimatorConfig
    from lightning_infoflow.lightning.hooks import AttributesHook, HookOutput, InfoFlowHook, SaliencyHook


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_infoflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
