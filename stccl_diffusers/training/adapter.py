"""The interface every talking-head backend implements for the shared training loop.

The loop in :mod:`stccl_diffusers.training.loop` knows nothing about DICE-Talk, EAT, diffusion
or timestep gates. A backend (the DICE adapter, the EAT adapter, their built-in reference
models) subclasses :class:`TalkingHeadAdapter` and supplies:

- ``training_step(batch, step, generator) -> dict``: the total loss to back-propagate under
  ``"loss"`` and, for logging, ``"stccl"`` (the STCCL term, 0 when it was off this step) plus any
  other scalars. Backend-specific logic (the t < 500 gate and neutral-anchor forward for DICE,
  the warm-up for EAT) lives here.
- ``render_validation(batch, generator) -> {"target", "anchor"}``: frames ``(B, T, 3, H, W)`` in
  ``[-1, 1]`` for the target emotion and for the neutral anchor.
- ``lora_model()``: the module peft LoRA goes into (the denoiser / generator), or None when the
  backend cannot take LoRA.
- ``save_weights(dir)`` / ``load_weights(dir)``: only what was trained. The default writes LoRA
  in diffusers' format (``pytorch_lora_weights.safetensors``, keys ``{lora_prefix}.``...) and
  fully trained parameters to ``trainable_weights.safetensors``.
- ``save_anchor_state(dir)`` / ``load_anchor_state(dir)`` / ``anchor_copy_bytes()``: a backend
  whose frozen anchor is a copy of its starting weights (EAT) keeps that copy in each checkpoint,
  so a resumed run scores against the step-0 weights, not the resumed ones (default: nothing).

- ``optimizer_param_groups(lr)`` / ``clip_gradients(accelerator, max_norm)``: a backend's own
  optimiser groups and gradient clipping (EAT's four learning rates and its per-module clipping);
  None (the default) leaves both to the loop (AdamW on the trainables, joint clipping).
- ``trainables_chosen``: True when the backend chose what trains itself (EAT, parameter by
  parameter); the loop's ``configure_trainable`` then leaves it as is. ``mark_trainables_chosen()``
  says so (the loop marks it too once it configured LoRA or named modules).

Every hook the loop calls is a method here with a default; the loop probes nothing else.

``training_step`` may also return ``"loss_terms": {"task": ..., "stccl": ... or None}`` (scalars with
graph, ``task + stccl == loss``); the loop then logs their gradient balance every
``grad_balance_every`` steps. ``stccl`` is None on a step where the term is off.

``forward`` is ``training_step``, because DDP only synchronises gradients of a module whose
``forward`` was called through the wrapper.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file, save_file

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
TRAINABLE_WEIGHTS_NAME = "trainable_weights.safetensors"


class TalkingHeadAdapter(torch.nn.Module, ABC):
    """Base class for the backends driven by :func:`stccl_diffusers.training.loop.train`."""

    #: prefix of LoRA keys in the saved file (diffusers writes `unet.` for a UNet).
    lora_prefix: str = "unet"

    def __init__(self) -> None:
        super().__init__()
        self._lora_applied = False
        self._trainables_chosen = False
        #: Whether the last `clip_gradients` clipped (1.0) or not (0.0); the loop logs it as
        #: `grad_clipped`. None: the backend does not clip itself.
        self.last_clipped: float | None = None

    # -- the two things a backend must implement --------------------------------------------
    @abstractmethod
    def training_step(self, batch: dict[str, Any], step: int, generator: torch.Generator | None) -> dict[str, Any]:
        """One micro-batch: returns {"loss": scalar tensor with grad, "stccl": float/tensor, ...logs}."""

    @abstractmethod
    def render_validation(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Render {"target": (B, T, 3, H, W), "anchor": (B, T, 3, H, W)} in [-1, 1], no gradient."""

    def forward(self, batch: dict[str, Any], step: int = 0, generator: torch.Generator | None = None) -> dict[str, Any]:
        return self.training_step(batch, step, generator)

    # -- what is trained ------------------------------------------------------------------
    def lora_model(self) -> torch.nn.Module | None:
        """The module LoRA adapters are injected into; None if LoRA does not apply."""
        return None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> Iterable[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def set_weight_dtype(self, dtype: torch.dtype) -> None:
        """Cast frozen weights to `dtype` for mixed precision (default: leave everything as is)."""

    @property
    def trainables_chosen(self) -> bool:
        """True when what trains is already chosen (by the backend, or by the loop's
        `configure_trainable`): the loop then does not freeze and re-pick parameters."""
        return self._trainables_chosen

    def mark_trainables_chosen(self) -> None:
        """Say that `requires_grad` is set as it should train (a backend choosing parameter by
        parameter calls it in its constructor; `configure_trainable` calls it when done)."""
        self._trainables_chosen = True

    # -- optimisation hooks ----------------------------------------------------------------
    def optimizer_param_groups(self, lr: float) -> list[dict[str, Any]] | None:
        """Param groups for the loop's AdamW (each with its own `lr`, `betas`, ...), or None (the
        default): one group of `trainable_parameters()` at the config's learning rate."""
        return None

    def clip_gradients(self, accelerator, max_norm: float) -> torch.Tensor | None:
        """Clip this backend's gradients its own way (after `accelerator.unscale_gradients()`) and
        return the norm it measured, setting `last_clipped`; None (the default) lets the loop clip
        all trainables jointly at `max_norm`."""
        return None

    # -- hooks ---------------------------------------------------------------------------
    def enable_gradient_checkpointing(self) -> None:
        model = self.lora_model()
        if model is None or not hasattr(model, "enable_gradient_checkpointing"):
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing")
        import inspect

        setter = getattr(type(model), "_set_gradient_checkpointing", None)
        old_style = setter is not None and "value" in inspect.signature(setter).parameters
        if not old_style:
            model.enable_gradient_checkpointing()
            return
        # A model written for diffusers < 0.32 (DICE-Talk's UNet) overrides
        # `_set_gradient_checkpointing(module, value)`, which diffusers >= 0.32 calls with `enable=`;
        # its blocks only read `self.gradient_checkpointing`, so set that flag as old diffusers did.
        if not getattr(model, "_supports_gradient_checkpointing", False):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
        for module in model.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True

    def enable_xformers(self) -> None:
        found = False
        for module in self.modules():
            if module is not self and hasattr(module, "enable_xformers_memory_efficient_attention"):
                module.enable_xformers_memory_efficient_attention()
                found = True
                break
        if not found:
            raise ValueError(f"{type(self).__name__} has no module with xformers attention to enable")

    # -- the frozen anchor (backends that keep a copy of their starting weights) ---------------
    def anchor_copy_bytes(self) -> int:
        """Bytes of the frozen anchor copy beside the model (0: none; LoRA-off anchors cost nothing)."""
        return 0

    def save_anchor_state(self, directory: str | Path) -> None:
        """Write the frozen anchor copy into a checkpoint directory (default: there is none)."""

    def load_anchor_state(self, directory: str | Path) -> None:
        """Restore the frozen anchor copy from a checkpoint directory (default: there is none)."""

    # -- weights -------------------------------------------------------------------------
    def mark_lora_applied(self) -> None:
        self._lora_applied = True

    @property
    def lora_applied(self) -> bool:
        return self._lora_applied

    def trained_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """{"lora": diffusers-format LoRA dict (may be empty), "full": other trained tensors}."""
        from ..utils.compat import lora_state_dict_to_diffusers

        lora: dict[str, torch.Tensor] = {}
        lora_ids: set[int] = set()
        model = self.lora_model()
        if self._lora_applied and model is not None:
            lora = {f"{self.lora_prefix}.{k}": v for k, v in lora_state_dict_to_diffusers(model).items()}
            lora_ids = {id(p) for n, p in model.named_parameters() if "lora_" in n}
        full = {
            n: p.detach()
            for n, p in self.named_parameters()
            if p.requires_grad and id(p) not in lora_ids
        }
        return {"lora": lora, "full": full}

    def save_weights(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.trained_state_dict()
        if state["lora"]:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in state["lora"].items()}, directory / LORA_WEIGHTS_NAME)
        if state["full"]:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in state["full"].items()}, directory / TRAINABLE_WEIGHTS_NAME)

    def load_weights(self, directory: str | Path) -> None:
        from ..utils.compat import load_diffusers_lora_into

        directory = Path(directory)
        lora_file = directory / LORA_WEIGHTS_NAME
        full_file = directory / TRAINABLE_WEIGHTS_NAME
        if not lora_file.is_file() and not full_file.is_file():
            raise FileNotFoundError(f"no {LORA_WEIGHTS_NAME} or {TRAINABLE_WEIGHTS_NAME} in {directory}")
        if lora_file.is_file():
            model = self.lora_model()
            if model is None or not self._lora_applied:
                raise ValueError(f"{lora_file} holds LoRA weights but {type(self).__name__} has no LoRA applied")
            prefix = self.lora_prefix + "."
            sd = {k[len(prefix):]: v for k, v in load_file(str(lora_file)).items() if k.startswith(prefix)}
            load_diffusers_lora_into(model, sd)
        if full_file.is_file():
            sd = load_file(str(full_file))
            params = dict(self.named_parameters())
            missing = [k for k in sd if k not in params]
            if missing:
                raise ValueError(f"{full_file}: parameters not in {type(self).__name__}: {missing[:5]}")
            with torch.no_grad():
                for k, v in sd.items():
                    params[k].copy_(v.to(params[k].dtype))
