"""The placebo of the STCCL term (issue 22): the anchor's frames shuffled in time.

A placebo arm trains with the same weight, the same anchor frames and the same metric, but the
anchor's frames are put in a random order (a derangement: no frame stays in place), so the
anchor still carries the right identity, emotion-free face and mouth shapes, while its *timing*
no longer matches the target's. An effect of STCCL on mouth timing that is real must beat it.
"""

from __future__ import annotations

from typing import Optional

import torch


def derangement(n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A random permutation of ``range(n)`` with no fixed point, (n,) int64 on the CPU.

    Rejection sampling (the chance that a random permutation is a derangement is about 1/e, so a
    handful of draws). ``n`` must be >= 2: one frame cannot be moved."""
    if n < 2:
        raise ValueError(f"expected at least 2 frames to shuffle in time, got {n}")
    ar = torch.arange(n)
    for _ in range(1000):
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == ar).any()):
            return perm
    raise RuntimeError(f"no derangement of {n} found in 1000 draws")  # probability ~ (1 - 1/e)^1000


def shuffle_time(frames: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``frames`` (B, T, ...) with each clip's T frames in its own random derangement.

    The frames themselves are unchanged (same values, same dtype and device, gradient kept): only
    their order along dim 1 changes. T must be >= 2."""
    if frames.ndim < 2:
        raise ValueError(f"expected frames (B, T, ...), got shape {tuple(frames.shape)}")
    b, t = frames.shape[:2]
    idx = torch.stack([derangement(t, generator) for _ in range(b)]).to(frames.device)  # (B, T)
    return torch.gather(frames, 1, idx.view(b, t, *([1] * (frames.ndim - 2))).expand_as(frames))


def enable_placebo(stccl_module, seed: int = 0):
    """Switch an :class:`~stccl_diffusers.adapters.eat.EATWithSTCCL` (``EATAdapter.stccl``) to the
    placebo arm: its anchor frames are shuffled in time with a CPU generator seeded from ``seed``
    (not the metric's stream). Returns the module."""
    stccl_module.placebo_generator = torch.Generator().manual_seed(int(seed) + 7919)
    return stccl_module
