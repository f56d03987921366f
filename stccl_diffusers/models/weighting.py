"""Reconstruction weights for small talking-head models: what moves counts more.

At 32-64 px the mouth, brows and eyes that carry speech and emotion cover a few percent of the
pixels, so a plain per-pixel loss is minimised by copying the reference image and ignoring them.
Not in DICE-Talk or EAT (their 256-512 px faces and perceptual losses make those regions big
enough); used by the built-in reference models only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def motion_weights(frames: torch.Tensor, source: torch.Tensor, strength: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-pixel loss weights ``(N, 1, h, w)``: ``1 + strength * d / mean(d)``.

    ``d`` is the channel-mean ``|frames - source|`` blurred over 5x5 (the weight covers the region,
    not just its edges), then area-resized to ``size`` (a latent grid) when given.
    frames, source: ``(N, C, H, W)`` in the same range. The mean weight is ``1 + strength``, and 1
    everywhere for a frame equal to its source.
    """
    if frames.shape != source.shape or frames.ndim != 4:
        raise ValueError(f"expected frames and source (N, C, H, W) of one shape, got {tuple(frames.shape)} and "
                         f"{tuple(source.shape)}")
    d = (frames.float() - source.float()).abs().mean(1, keepdim=True)
    d = F.avg_pool2d(d, 5, 1, 2, count_include_pad=False)
    if size is not None and tuple(size) != tuple(d.shape[-2:]):
        d = F.adaptive_avg_pool2d(d, size)
    return 1.0 + strength * d / d.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
