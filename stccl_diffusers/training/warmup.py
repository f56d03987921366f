"""Step-based warm-up of an auxiliary loss weight (the STCCL term of non-diffusion backends).

Diffusion backends gate the STCCL reward by timestep (t < 500); a GAN/transformer generator such
as EAT has no timestep, so the term is switched on by training step instead (facts §5): off for
``warmup_steps``, then a linear ramp over ``ramp_steps`` up to the full weight.
"""

from __future__ import annotations

__all__ = ["warmup_weight"]


def warmup_weight(step: int, weight: float, warmup_steps: int = 0, ramp_steps: int = 0) -> float:
    """Weight of the auxiliary loss at optimizer step ``step`` (0-based).

    ``w(s) = 0`` for ``s < warmup_steps``;
    ``w(s) = weight * min(1, (s - warmup_steps + 1) / ramp_steps)`` afterwards (``ramp_steps = 0``
    switches straight to ``weight``). The first step of the ramp already has a non-zero weight so
    that ``warmup_steps`` is exactly the number of steps without the term.
    """
    if warmup_steps < 0 or ramp_steps < 0:
        raise ValueError(f"expected warmup_steps >= 0 and ramp_steps >= 0, got {warmup_steps} and {ramp_steps}")
    if step < warmup_steps:
        return 0.0
    if ramp_steps == 0:
        return float(weight)
    return float(weight) * min(1.0, (step - warmup_steps + 1) / ramp_steps)
