"""stccl-diffusers: STCCL as a drop-in training signal for emotional talking-head generators."""

__version__ = "0.1.0"

from .metric import STCCLMetric, STCCLOutput

__all__ = ["STCCLMetric", "STCCLOutput"]
