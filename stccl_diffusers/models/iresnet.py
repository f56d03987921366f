"""ArcFace iResNet backbones, module-for-module compatible with insightface's ``arcface_torch``.

The module names and shapes follow ``recognition/arcface_torch/backbones/iresnet.py`` so that an
insightface ``backbone.pth`` (a plain state_dict, optionally saved with a ``module.`` prefix by
DataParallel) loads with :func:`load_arcface_state_dict`. Two entry points:

- :meth:`IResNet.forward_stages` returns the outputs of ``layer1..layer4`` (the multi-scale
  features ``eps_l(x)``, l = 1..4, of STCCL eq. 8). Any input size works; at 224x224 the maps are
  112, 56, 28 and 14 pixels wide.
- :meth:`IResNet.forward` is the recognition head: the 512-d embedding of a 112x112 face in
  ``[-1, 1]`` (insightface's ``(x / 255 - 0.5) / 0.5``), used for FAD.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

from .checkpoints import read_state_dict, state_dict_mismatch, strip_prefix

__all__ = [
    "IBasicBlock",
    "IResNet",
    "ARCFACE_DEPTHS",
    "build_iresnet",
    "load_arcface_state_dict",
    "read_state_dict",
]

# Blocks per stage (facts §3).
ARCFACE_DEPTHS: Dict[str, Sequence[int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
}


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block of iResNet: BN-conv-BN-PReLU-conv(stride)-BN + shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    """ArcFace iResNet. ``layers`` gives the number of blocks in each of the four stages."""

    fc_scale = 7 * 7
    stage_channels = (64, 128, 256, 512)

    def __init__(self, layers: Sequence[int], dropout: float = 0.0, num_features: int = 512, embedding_head: bool = True):
        super().__init__()
        self.has_embedding_head = embedding_head
        if len(layers) != 4:
            raise ValueError(f"expected 4 stage depths, got {list(layers)}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0], stride=2)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        if embedding_head:
            # The recognition head (12.8 M parameters in fc alone): only the 512-d embedding uses it.
            self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
            self.dropout = nn.Dropout(p=dropout)
            self.fc = nn.Linear(512 * self.fc_scale, num_features)
            self.features = nn.BatchNorm1d(num_features, eps=1e-05)
            nn.init.constant_(self.features.weight, 1.0)
            # insightface keeps the embedding BN scale fixed.
            self.features.weight.requires_grad = False
        # A fresh network must give finite features in eval mode (BatchNorm running stats 0 / 1),
        # where BN does not rescale: insightface's normal(0, 0.1) init grows layer-3/4 features to
        # 1e22+ at 224 px and the STCCL heads overflow. Variance-preserving convs, plus a small scale
        # on each block's last BN so the residual sum grows by (1 + 0.1^2) per block, not 2x.
        # Loaded ArcFace weights replace all of this (`load_arcface_state_dict` is strict).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        for m in self.modules():
            if isinstance(m, IBasicBlock):
                nn.init.constant_(m.bn3.weight, 0.1)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-05),
            )
        mods = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        mods += [IBasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``x``: (N, 3, H, W) in [-1, 1]. Returns the four stage outputs, (N, C_l, H / 2^l, W / 2^l)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, 3, 112, 112) aligned faces in [-1, 1]. Returns (N, 512) un-normalised embeddings."""
        if not self.has_embedding_head:
            raise RuntimeError("this iResNet was built with embedding_head=False; only forward_stages is available")
        if x.ndim != 4 or x.shape[1:] != (3, 112, 112):
            raise ValueError(f"expected aligned faces (N, 3, 112, 112) in [-1, 1], got {tuple(x.shape)}")
        x = self.forward_stages(x)[-1]
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        return self.features(x)


def build_iresnet(name: str = "r50", **kwargs) -> IResNet:
    """Build ``r18``, ``r34``, ``r50`` or ``r100`` (also accepted: ``iresnet50`` and so on)."""
    key = name.lower().replace("iresnet", "r")
    if key not in ARCFACE_DEPTHS:
        raise ValueError(f"unknown ArcFace backbone {name!r}; expected one of {sorted(ARCFACE_DEPTHS)}")
    return IResNet(ARCFACE_DEPTHS[key], **kwargs)


def load_arcface_state_dict(model: IResNet, state_dict: Dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load an insightface ``arcface_torch`` state_dict (``module.`` prefix allowed) into ``model``.

    Mismatched names or shapes raise ``ValueError`` listing what was expected and what arrived.
    With ``strict=False`` the recognition head (``fc``, ``features``, ``bn2``) may be absent.
    """
    sd = strip_prefix(state_dict)
    head = ("fc.", "features.", "bn2.")
    if not getattr(model, "has_embedding_head", True):
        sd = {k: v for k, v in sd.items() if not k.startswith(head)}
    own = model.state_dict()
    depth = sum(len(getattr(model, f"layer{i}")) for i in range(1, 5))
    problem = state_dict_mismatch(
        own, sd, f"state_dict does not match an ArcFace iResNet with {depth} blocks", () if strict else head
    )
    if problem:
        raise ValueError(problem)
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
