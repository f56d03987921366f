"""Shared training machinery for the STCCL training scripts (DICE-Talk, EAT)."""

from .adapter import TalkingHeadAdapter
from .config import TalkingClipsConfig, TrainingConfig, config_from_dict, load_yaml_config, parse_config
from .loop import (
    EpochShuffleSampler,
    TrainResult,
    build_accelerator,
    configure_trainable,
    gradient_balance,
    list_checkpoints,
    read_jsonl,
    step_generator,
    train,
)

__all__ = [
    "TalkingHeadAdapter",
    "TrainingConfig",
    "TalkingClipsConfig",
    "parse_config",
    "config_from_dict",
    "load_yaml_config",
    "build_accelerator",
    "configure_trainable",
    "train",
    "gradient_balance",
    "TrainResult",
    "EpochShuffleSampler",
    "step_generator",
    "list_checkpoints",
    "read_jsonl",
]
