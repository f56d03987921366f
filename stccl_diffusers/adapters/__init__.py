"""Backends behind the shared training loop: DICE-Talk and EAT (each with its built-in reference model)."""

from .dice import DiceTrainingConfig, ReferenceDiceAdapter, build_callback, build_reference_adapter, make_svd_scheduler
from .eat import EATAdapter, EATWithSTCCL, ReferenceEATGeneratorFull, load_eat_generator_full

__all__ = [
    "DiceTrainingConfig", "ReferenceDiceAdapter", "build_callback", "build_reference_adapter", "make_svd_scheduler",
    "EATAdapter", "EATWithSTCCL", "ReferenceEATGeneratorFull", "load_eat_generator_full",
]
