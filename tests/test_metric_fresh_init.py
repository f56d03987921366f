"""A fresh (unloaded) metric is finite: features, loss and gradients, eval mode, 112 and 224 px."""

from __future__ import annotations

import pytest
import torch

from stccl_diffusers import STCCLMetric
from stccl_diffusers.models.iresnet import IResNet, load_arcface_state_dict


def _clip(size, seed):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(2, 3, size // 16, size // 16, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).view(1, 2, 3, size, size)


@pytest.mark.parametrize("backbone,size", [("r50", 224), ("r100", 112)])
def test_fresh_metric_gives_finite_features_loss_and_gradients(backbone, size):
    torch.manual_seed(0)
    metric = STCCLMetric(backbone=backbone, input_size=size, embedding_head=False)  # frozen, eval mode
    assert not metric.training
    anchor, generated = _clip(size, 0), _clip(size, 1).requires_grad_(True)
    with torch.no_grad():
        feats = metric.backbone.forward_stages(anchor.flatten(0, 1))
    for i, f in enumerate(feats):
        assert torch.isfinite(f).all() and f.abs().max() < 1e4, (i, float(f.abs().max()))
    out = metric(anchor, generated, generator=torch.Generator().manual_seed(0))
    assert out.loss.isfinite()
    out.loss.backward()
    assert generated.grad is not None and torch.isfinite(generated.grad).all() and generated.grad.abs().sum() > 0


def test_arcface_weights_still_load_exactly_over_the_new_init():
    src = IResNet((1, 1, 1, 1), embedding_head=False)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.05)  # insightface-like values, unlike our init
        for name, b in src.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    state = {f"module.{k}": v.clone() for k, v in src.state_dict().items()}
    dst = IResNet((1, 1, 1, 1), embedding_head=False)
    load_arcface_state_dict(dst, {k[len("module."):]: v for k, v in state.items()})
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
