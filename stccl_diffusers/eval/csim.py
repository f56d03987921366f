"""CSIM: cosine similarity of an expression encoder's features, generated vs reference frames.

    CSIM = mean_t cos(E(gen_t), E(ref_t))          (mode="frame", frames paired by index)
    CSIM = cos(mean_t E(gen_t), mean_t E(ref_t))   (mode="clip", for references of another length)

The papers do not name their expression network (facts §7), so the encoder is pluggable:

- a Python callable ``encoder(faces) -> (N, D)``, ``faces`` being (N, 3, 112, 112) float in
  [-1, 1] RGB (the ArcFace-aligned crops), or
- a string ``"package.module:factory"``; ``factory(weights=<path or None>)`` must return such
  a callable (``nn.Module`` instances qualify), or
- the default ``"iresnet"``: an ArcFace iResNet (stage depths read from the checkpoint, so
  r18/r34/r50/r100 or an expression-fine-tuned iResNet all load) whose 512-d embedding is the
  feature. Its weights MUST be given (``--csim_weights``); there is no silent fallback to
  another network. With identity ArcFace weights CSIM measures identity, not expression: use an
  expression-trained iResNet for the paper's meaning.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..models.iresnet import IResNet, build_iresnet, load_arcface_state_dict, read_state_dict

__all__ = ["cosine_similarity_score", "encode_faces", "build_iresnet_encoder", "resolve_csim_encoder", "infer_iresnet_depths"]

Encoder = Callable[[torch.Tensor], torch.Tensor]


def cosine_similarity_score(gen_feats: torch.Tensor, ref_feats: torch.Tensor, mode: str = "frame") -> float:
    """CSIM from features (T_g, D) and (T_r, D). ``frame`` needs T_g == T_r; ``clip`` does not."""
    if gen_feats.ndim != 2 or ref_feats.ndim != 2 or gen_feats.shape[1] != ref_feats.shape[1]:
        raise ValueError(f"expected features (T_g, D) and (T_r, D), got {tuple(gen_feats.shape)} and {tuple(ref_feats.shape)}")
    g, r = gen_feats.double(), ref_feats.double()
    if mode == "frame":
        if g.shape[0] != r.shape[0]:
            raise ValueError(f"mode='frame' pairs frames by index: got {g.shape[0]} generated and {r.shape[0]} reference frames")
        return float(torch.nn.functional.cosine_similarity(g, r, dim=1).mean())
    if mode == "clip":
        return float(torch.nn.functional.cosine_similarity(g.mean(0, keepdim=True), r.mean(0, keepdim=True), dim=1)[0])
    raise ValueError(f"mode must be 'frame' or 'clip', got {mode!r}")


@torch.no_grad()
def encode_faces(encoder: Encoder, faces_rgb112: np.ndarray, batch_size: int = 64, device="cpu") -> torch.Tensor:
    """(N, 112, 112, 3) uint8 RGB aligned faces -> (N, D) float64 features (encoder sees [-1, 1])."""
    faces = np.asarray(faces_rgb112)
    if faces.ndim != 4 or faces.shape[1:] != (112, 112, 3):
        raise ValueError(f"expected aligned faces (N, 112, 112, 3) uint8 RGB, got {faces.shape}")
    if isinstance(encoder, torch.nn.Module):
        encoder.eval().to(device)
    out = []
    for i in range(0, len(faces), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(faces[i:i + batch_size])).to(device).permute(0, 3, 1, 2).float()
        f = encoder((x / 255.0 - 0.5) / 0.5)
        if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[0] != x.shape[0]:
            raise ValueError(f"CSIM encoder must return (N, D) features, got {getattr(f, 'shape', type(f))}")
        out.append(f.double().cpu())
    return torch.cat(out)


def infer_iresnet_depths(state_dict) -> tuple:
    """Blocks per stage of an iResNet state_dict, read from its ``layerN.M.`` keys."""
    depths = []
    for n in range(1, 5):
        idx = {int(m.group(1)) for k in state_dict for m in [re.match(rf"(?:module\.)?layer{n}\.(\d+)\.", k)] if m}
        if not idx:
            raise ValueError(f"not an iResNet state_dict: no 'layer{n}.<i>.' keys")
        depths.append(max(idx) + 1)
    return tuple(depths)


def _variance_preserving_init(model: torch.nn.Module) -> torch.nn.Module:
    """Random-init demos only: fan-in scaled weights keep activations O(1) in eval mode.

    insightface's own init (N(0, 0.1) convs) is meant for training with batch statistics; in eval
    mode with untrained running stats it makes embeddings explode (FAD ~ 1e15), which would make
    a demo table unreadable. Real checkpoints overwrite all of this.
    """
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    return model


def build_iresnet_encoder(weights: Optional[Union[str, os.PathLike]], random_init: bool = False, flag: str = "--csim_weights", arch: str = "r50") -> IResNet:
    """An ArcFace iResNet in eval mode, depths inferred from ``weights`` (``arch`` when random)."""
    if weights is None:
        if not random_init:
            raise ValueError(f"the iResNet encoder needs weights: pass {flag} /path/to/backbone.pth (or --random_init for a demo)")
        return _variance_preserving_init(build_iresnet(arch)).eval()
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{flag}: file not found: {weights}")
    sd = read_state_dict(weights)
    model = IResNet(infer_iresnet_depths(sd))
    load_arcface_state_dict(model, sd)
    return model.eval()


def resolve_csim_encoder(spec: Union[None, str, Encoder], weights=None, random_init: bool = False, arch: str = "r50") -> Encoder:
    """Turn ``--csim_encoder`` (None/"iresnet", "module:factory" or a callable) into an encoder."""
    if callable(spec):
        return spec
    if spec in (None, "", "iresnet"):
        return build_iresnet_encoder(weights, random_init=random_init, arch=arch)
    return load_plugin(spec, weights, "--csim_encoder", "--csim_weights", "iresnet", "encoder")


def load_plugin(spec, weights, option: str, weights_option: str, builtin: str, kind: str) -> Callable:
    """``factory(weights=...)`` of a ``"package.module:factory"`` plug-in (``option``'s value), checked to
    return a callable ``kind``; ``builtin`` names the option's built-in choice in the error."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"{option} must be '{builtin}' or 'package.module:factory', got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{option} {spec!r}: cannot import {attr!r} from {mod_name!r} ({e})") from e
    if weights is not None and not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights_option}: file not found: {weights}")
    plugin = factory(weights=os.fspath(weights) if weights is not None else None)
    if not callable(plugin):
        raise ValueError(f"{option} {spec!r}: factory returned {type(plugin).__name__}, expected a callable {kind}")
    return plugin
