"""Reading third-party checkpoints safely and saying exactly how a state_dict does not fit."""

from __future__ import annotations

import os
from typing import Dict, Iterable, List

import torch

__all__ = ["read_state_dict", "strip_prefix", "state_dict_mismatch"]


def read_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Read a checkpoint safely: safetensors directly, anything else with ``weights_only=True``.

    Accepts a plain state_dict or a dict wrapping one under ``state_dict``/``model``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state_dict (name -> tensor), got {type(obj).__name__}")
    return obj


def strip_prefix(state_dict: Dict[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    """Drop a prefix that every key carries (DataParallel's ``module.``)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _listing(what: str, items: List[str], limit: int) -> str:
    return f"{what} ({len(items)}): {items[:limit]}{' ...' if len(items) > limit else ''}"


def state_dict_mismatch(
    own: Dict[str, torch.Tensor], given: Dict[str, torch.Tensor], title: str, may_be_missing: Iterable[str] = ()
) -> str:
    """An empty string when ``given`` fits ``own`` (names and shapes); otherwise a message listing
    missing keys, unexpected keys and shape mismatches under ``title``. Keys of ``own`` starting
    with one of ``may_be_missing`` may be absent."""
    optional = tuple(may_be_missing)
    missing = [k for k in own if k not in given and not (optional and k.startswith(optional))]
    unexpected = [k for k in given if k not in own]
    bad = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(given[k].shape)}" for k in own if k in given and own[k].shape != given[k].shape]
    if not (missing or unexpected or bad):
        return ""
    lines = [f"{title} ({len(own)} keys expected, {len(given)} given)"]
    if missing:
        lines.append(_listing("missing keys", missing, 8))
    if unexpected:
        lines.append(_listing("unexpected keys", unexpected, 8))
    if bad:
        lines.append(_listing("shape mismatches", bad, 4))
    return "\n".join(lines)
