"""Differences between the diffusers/peft versions we support, kept in one place.

DICE-Talk's users run diffusers 0.29.0 / transformers 4.43.2 / accelerate 0.28.0; the main
environment runs current releases. Only LoRA (de)serialisation is touched by the package.
"""

from __future__ import annotations

import torch


def lora_state_dict_to_diffusers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """peft LoRA tensors of `model` with diffusers' key names (`...to_q.lora.down.weight`), no prefix."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


def load_diffusers_lora_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`lora_state_dict_to_diffusers` into a model that already carries LoRA layers."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, convert_unet_state_dict_to_peft(state_dict))
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"LoRA keys not found in {type(model).__name__}: {unexpected[:5]}")
