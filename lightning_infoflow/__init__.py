"""lightning_infoflow: how much of each input word every layer of an NLP model keeps, while it trains.

Implements the information measure of Guan et al., "Towards a Deep and Unified Understanding of Deep
Neural Models in NLP" (ICML 2019): :class:`InfoFlowEstimator` learns per-word noise scales for every
layer of a model, :class:`InfoFlowCallback` runs it on a fixed probe while a Lightning Trainer trains.
"""

from lightning_infoflow.callback import InfoFlowCallback
from lightning_infoflow.estimator import InfoFlowEstimator
from lightning_infoflow.probe import Probe, build_probe
from lightning_infoflow.result import InfoFlowResult

__all__ = ["InfoFlowCallback", "InfoFlowEstimator", "InfoFlowResult", "Probe", "build_probe"]
__version__ = "0.1.0"
