"""stccl-diffusers: STCCL as a drop-in training signal for emotional talking-head generators.

The metric and the reward callback are imported eagerly; data, training and adapter names resolve
on first use, so `import stccl_diffusers` stays light (no OpenCV or librosa until needed).
"""

import importlib

__version__ = "0.1.0"

from .metric import STCCLMetric, STCCLOutput
from .diffusion import gate_threshold, predict_x0, timestep_gate, timesteps_to_sigmas
from .callback import STCCLRewardCallback, STCCLValidationCallback, adapters_disabled, anchor_forward

_LAZY = {
    # paired data and metric learning
    "PairedClipDataset": ".data",
    "FaceAligner": ".data",
    "EMOTIONS": ".data",
    "make_pair": ".data",
    "synthetic_batch": ".data",
    "layer_similarities": ".analysis",
    # shared training machinery
    "TalkingHeadAdapter": ".training",
    "TrainingConfig": ".training",
    "parse_config": ".training",
    "train": ".training",
    "warmup_weight": ".training.warmup",
    # DICE-Talk
    "ReferenceDICE": ".models.reference_dice",
    "ReferenceDiceAdapter": ".adapters.dice",
    "DiceTrainingConfig": ".adapters.dice",
    # EAT
    "ReferenceEATModel": ".models.reference_eat",
    "EATSTCCLConfig": ".adapters.eat",
    "EATAdapter": ".adapters.eat",
    "EATWithSTCCL": ".adapters.eat",
    "ReferenceEATGeneratorFull": ".adapters.eat",
    "load_eat_generator_full": ".adapters.eat",
}

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
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
