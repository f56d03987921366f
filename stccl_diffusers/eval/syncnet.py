"""SyncNet with the module names and shapes of the public ``syncnet_v2.model``.

Layer for layer the network of joonson/syncnet_python ``SyncNetModel.S`` (written here from
its published architecture, facts §7), so that ``syncnet_v2.model`` -- a plain state_dict with
102 keys (``netcnnaud.*``, ``netfcaud.*``, ``netcnnlip.*``, ``netfclip.*``), 13.6 M parameters --
loads with :func:`load_syncnet_state_dict`.

Inputs:
    audio: (N, 1, 13, 20) MFCC blocks (13 cepstra x 20 columns = 0.2 s at 100 Hz).
    lips:  (N, 3, 5, 224, 224) five consecutive 25 fps face crops, BGR, float in [0, 255].
Both branches return (N, 1024) embeddings compared by L2 distance.
"""

from __future__ import annotations

import os
from typing import Dict

import torch
from torch import nn

from ..models.iresnet import read_state_dict

__all__ = ["SyncNet", "load_syncnet_state_dict", "build_syncnet", "SYNCNET_NUM_KEYS"]

SYNCNET_NUM_KEYS = 102


def _conv_bn_relu(conv: nn.Module, bn: nn.Module) -> list:
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """SyncNet v2 (Chung & Zisserman 2016) in the layout of ``syncnet_v2.model``."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        # Indices inside each Sequential must match the public file (MaxPool/ReLU keep their slots).
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64)),
            nn.MaxPool2d(kernel_size=1, stride=1),
            *_conv_bn_relu(nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192)),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 512, kernel_size=(5, 4)),
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn_relu(nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6)),
            nn.BatchNorm3d(512),
            nn.ReLU(inplace=True),
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) MFCC blocks -> (N, embed_dim)."""
        if x.ndim != 4 or x.shape[1:] != (1, 13, 20):
            raise ValueError(f"expected MFCC blocks (N, 1, 13, 20), got {tuple(x.shape)}")
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) BGR float [0, 255] -> (N, embed_dim)."""
        if x.ndim != 5 or x.shape[1:] != (3, 5, 224, 224):
            raise ValueError(f"expected lip clips (N, 3, 5, 224, 224) BGR in [0, 255], got {tuple(x.shape)}")
        return self.netfclip(self.netcnnlip(x).flatten(1))


def load_syncnet_state_dict(model: SyncNet, state_dict: Dict[str, torch.Tensor]) -> None:
    """Load a ``syncnet_v2.model`` state_dict; mismatches raise ``ValueError`` listing them.

    ``num_batches_tracked`` buffers may be absent (files saved by older PyTorch have 88 keys);
    every other key must be present with the right shape. A ``module.`` or ``__S__.`` prefix
    (DataParallel / SyncNetInstance wrappers) is stripped.
    """
    sd = dict(state_dict)
    for prefix in ("module.", "__S__."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    bad = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(sd[k].shape)}" for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or unexpected or bad:
        lines = [f"state_dict does not match SyncNet syncnet_v2.model ({len(own)} keys expected, {len(sd)} given)"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if bad:
            lines.append(f"shape mismatches ({len(bad)}): {bad[:4]}{' ...' if len(bad) > 4 else ''}")
        raise ValueError("\n".join(lines))
    model.load_state_dict(sd, strict=False)


def build_syncnet(weights: str | os.PathLike | None, random_init: bool = False) -> SyncNet:
    """SyncNet in eval mode with weights from ``weights`` (``syncnet_v2.model``).

    ``weights=None`` is an error unless ``random_init=True`` (demos only: the scores are then
    meaningless and the report says so).
    """
    model = SyncNet()
    if weights is None:
        if not random_init:
            raise ValueError("SyncNet weights are required for LSE-D/LSE-C: pass --syncnet_weights /path/to/syncnet_v2.model (or --random_init for a demo)")
    else:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"--syncnet_weights: file not found: {weights}")
        load_syncnet_state_dict(model, read_state_dict(weights))
    return model.eval()
