"""stccl-diffusers: STCCL as a drop-in training signal for emotional talking-head generators."""

__version__ = "0.1.0"

from .metric import STCCLMetric, STCCLOutput
from .diffusion import gate_threshold, predict_x0, timestep_gate, timesteps_to_sigmas
from .callback import STCCLRewardCallback, STCCLValidationCallback, adapters_disabled, anchor_forward

__all__ = [
    "STCCLMetric",
    "STCCLOutput",
    "predict_x0",
    "timestep_gate",
    "timesteps_to_sigmas",
    "gate_threshold",
    "STCCLRewardCallback",
    "STCCLValidationCallback",
    "anchor_forward",
    "adapters_disabled",
]
