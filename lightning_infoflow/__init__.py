"""lightning_infoflow: how much of each input word every layer of an NLP model keeps, while it trains.

Implements the information measure of Guan et al., "Towards a Deep and Unified Understanding of Deep
Neural Models in NLP" (ICML 2019).
"""

from lightning_infoflow.estimator import InfoFlowEstimator
from lightning_infoflow.result import InfoFlowResult

__all__ = ["InfoFlowEstimator", "InfoFlowResult"]
__version__ = "0.1.0"
