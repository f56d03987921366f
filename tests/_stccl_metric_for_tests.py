"""The metric the callback tests score with.

The real ``STCCLMetric(backbone=(1, 1, 1, 1), input_size=64)`` when ``stccl_diffusers.metric`` exists;
until then a small stand-in with the contract's call signature and output fields (BRIEF.md).
Both are wrapped in a spy that records every call.
"""

from types import SimpleNamespace

import torch
import torch.nn.functional as F


class StandInMetric(torch.nn.Module):
    """Frozen conv features; spatial = feature MSE, temporal = MSE of frame differences."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
        self.validate_inputs = True

    def freeze(self):
        self.requires_grad_(False)
        self.eval()

    def forward(self, anchor, generated, generator=None):
        for name, x in (("anchor", anchor), ("generated", generated)):
            if x.ndim != 5 or x.shape[2] != 3:
                raise ValueError(f"expected {name} (B, T, 3, H, W), got {tuple(x.shape)}")
            if x.shape[1] < 2:
                raise ValueError("expected T >= 2 with TCC on")
        if anchor.shape != generated.shape:
            raise ValueError("shape mismatch")
        if self.validate_inputs and (generated.abs().max() > 1.5 or not torch.isfinite(generated).all()):
            raise ValueError("expected values in [-1, 1]")
        b, t = generated.shape[:2]
        fa = torch.tanh(self.conv(anchor.flatten(0, 1))).reshape(b, t, -1)
        fg = torch.tanh(self.conv(generated.flatten(0, 1))).reshape(b, t, -1)
        spatial = ((fg - fa) ** 2).mean(dim=(1, 2))
        temporal = (((fg[:, 1:] - fg[:, :-1]) - (fa[:, 1:] - fa[:, :-1])) ** 2).mean(dim=(1, 2))
        sample = spatial + temporal
        cos = F.cosine_similarity(fg, fa, dim=-1)
        return SimpleNamespace(
            loss=sample.mean(), spatial_loss=spatial.mean(), temporal_loss=temporal.mean(),
            pos_sim=cos.mean().detach(), neg_sim=(cos.mean() * 0.5).detach(), sample_loss=sample, per_layer={},
        )


def build_metric():
    try:
        from stccl_diffusers.metric import STCCLMetric
    except ImportError:
        return StandInMetric(), False
    return STCCLMetric(backbone=(1, 1, 1, 1), input_size=64), True


class SpyMetric(torch.nn.Module):
    """Delegates to ``inner`` and records (anchor shape, generated shape, generated requires_grad)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def freeze(self):
        if hasattr(self.inner, "freeze"):
            self.inner.freeze()

    def forward(self, anchor, generated, generator=None):
        self.calls.append((tuple(anchor.shape), tuple(generated.shape), generated.requires_grad, anchor.requires_grad))
        return self.inner(anchor, generated, generator=generator)
