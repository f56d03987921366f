"""Backends behind the shared training loop: DICE-Talk (and its built-in reference model)."""

from .dice import DiceTrainingConfig, ReferenceDiceAdapter, build_callback, build_reference_adapter, make_svd_scheduler

__all__ = ["DiceTrainingConfig", "ReferenceDiceAdapter", "build_callback", "build_reference_adapter", "make_svd_scheduler"]
