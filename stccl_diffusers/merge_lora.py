"""Merge a trained LoRA into DICE-Talk's `unet.pth`, so DICE-Talk's own `dice_talk.py` runs it unchanged.

    stccl-merge-lora --unet checkpoints/DICE-Talk/unet.pth \\
        --lora outputs/dice_talk_stccl/pytorch_lora_weights.safetensors --output merged/unet.pth

Each LoRA pair of the file (diffusers key names, `unet.` prefix, alpha already folded into the
up weights by the trainer) is added to its base weight: W' = W + up @ down. The result holds the
same keys as the input `unet.pth` (IP-adapter processors included), in the input's dtype.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

DOWN, UP = ".lora.down.weight", ".lora.up.weight"


def merge_lora_state(unet_state: dict[str, torch.Tensor], lora_state: dict[str, torch.Tensor],
                     prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """`unet_state` with every LoRA delta of `lora_state` added (a new dict; inputs untouched)."""
    merged = dict(unet_state)
    downs = [k for k in lora_state if k.endswith(DOWN)]
    if not downs:
        raise ValueError(f"no '*{DOWN}' keys in the LoRA file (got e.g. {list(lora_state)[:3]})")
    for down_key in downs:
        module = down_key[: -len(DOWN)]
        module = module[len(prefix):] if module.startswith(prefix) else module
        up_key = down_key[: -len(DOWN)] + UP
        weight_key = module + ".weight"
        if up_key not in lora_state:
            raise ValueError(f"LoRA file has {down_key} but no {up_key}")
        if weight_key not in merged:
            raise ValueError(f"LoRA layer {module}: expected {weight_key} in unet.pth, not found")
        down, up, w = lora_state[down_key].float(), lora_state[up_key].float(), merged[weight_key]
        if down.ndim != 2 or up.ndim != 2 or (up.shape[0], down.shape[1]) != tuple(w.shape):
            raise ValueError(f"{module}: LoRA {tuple(up.shape)} @ {tuple(down.shape)} does not fit weight {tuple(w.shape)}")
        merged[weight_key] = (w.float() + up @ down).to(w.dtype)
    return merged


def main(argv=None) -> Path:
    from safetensors.torch import load_file

    parser = argparse.ArgumentParser(description="Merge a trained LoRA into DICE-Talk's unet.pth")
    parser.add_argument("--unet", required=True, help="DICE-Talk's checkpoints/DICE-Talk/unet.pth")
    parser.add_argument("--lora", required=True, help="pytorch_lora_weights.safetensors written by train_dice_stccl.py")
    parser.add_argument("--output", required=True, help="the merged unet.pth to write (must not exist)")
    args = parser.parse_args(argv)
    out = Path(args.output)
    if out.exists():
        raise FileExistsError(f"{out} exists; refusing to overwrite (choose a new --output)")
    if Path(args.unet).resolve() == out.resolve():
        raise ValueError("--output must differ from --unet")
    unet_state = torch.load(args.unet, map_location="cpu", weights_only=True)
    merged = merge_lora_state(unet_state, load_file(args.lora))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    torch.save(merged, tmp)
    tmp.replace(out)
    print(f"stccl-merge-lora: wrote {out} ({len(merged)} tensors)")
    return out


if __name__ == "__main__":
    main()
