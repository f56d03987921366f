"""Backends behind the shared training loop: DICE-Talk and EAT (each with its built-in reference model).

Each backend is a package holding its training config, its builders, its STCCL hook and adapter and
the loading of the user's upstream checkout (`dice/`, `eat/`); `checkout.py` imports both upstream
projects the same way (scoped to the import, origin-checked)."""

from .dice import DiceTrainingConfig, ReferenceDiceAdapter, build_callback, build_reference_adapter, make_svd_scheduler
from .eat import EATAdapter, EATSTCCLConfig, EATWithSTCCL, ReferenceEATGeneratorFull, load_eat_generator_full

__all__ = [
    "DiceTrainingConfig", "ReferenceDiceAdapter", "build_callback", "build_reference_adapter", "make_svd_scheduler",
    "EATSTCCLConfig", "EATAdapter", "EATWithSTCCL", "ReferenceEATGeneratorFull", "load_eat_generator_full",
]
