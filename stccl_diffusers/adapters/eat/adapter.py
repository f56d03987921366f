"""The EAT backend of the shared loop: :class:`EATAdapter` around EAT's generator-full model (the
user's checkout, :mod:`.checkout`) or the built-in reference model (:class:`ReferenceEATGeneratorFull`),
with the STCCL term of :class:`~.hook.EATWithSTCCL`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from ...models.reference_eat import ReferenceEATModel
from ...training.adapter import TalkingHeadAdapter
from .checkout import EAT_EXPORT_NAME
from .hook import ANCHOR_WEIGHTS_NAME, EATWithSTCCL, eat_core, time_window

class ReferenceEATGeneratorFull(nn.Module):
    """The built-in :class:`ReferenceEATModel` behind EAT's stage-2 interface.

    Batch keys (EAT's names where EAT has them): ``source`` ``(B, 3, H, W)`` in ``[0, 1]``;
    ``audio`` ``(B, T, A)``; ``y_trg`` ``(B,)``; ``z_trg`` ``(B, 16)``; ``driving``
    ``(B, T, 3, H, W)`` in ``[0, 1]`` (ground truth, only needed for the losses); ``bboxs``
    ``(B, T, 4)`` pixel face boxes. Returns ``(loss_values, generated)`` like EAT.
    """

    def __init__(self, model: ReferenceEATModel, exp_weight: float = 0.01, motion_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.exp_weight, self.motion_weight = exp_weight, motion_weight

    def forward(self, x: Dict[str, Any], train_with_img: bool = True):
        generated = self.model(x["source"], x["audio"], x["y_trg"], x["z_trg"])
        loss_values = {}
        if train_with_img and x.get("driving") is not None:
            loss_values = ReferenceEATModel.reconstruction_losses(generated, x["driving"], self.exp_weight,
                                                                  source=x["source"], motion_weight=self.motion_weight)
        return loss_values, generated


# ----------------------------------------------------------------------------- adapter


class EATAdapter(TalkingHeadAdapter):
    """EAT backend of the shared training loop (:func:`stccl_diffusers.training.loop.train`).

    ``training_step`` draws ``z_trg ~ N(0, I_16)`` when the batch has none (EAT's data set supplies
    it), runs :class:`EATWithSTCCL` and sums the loss dict as EAT's loop does
    (``sum(v.mean() for v in loss_values.values())``).

    Args:
        generator_full: EAT's generator-full model or a :class:`ReferenceEATGeneratorFull`.
        metric: frozen STCCL metric. Other args as :class:`EATWithSTCCL`.
        trainable_modules: names of sub-modules of ``generator_full`` trained in full (empty: keep
            the parameters that already require grad: all of the reference model; EAT's own choice
            of prompt/EAM/side-tuning for the real model). LoRA does not apply to EAT.
        latent_dim: size of ``z_trg``.
        anchor: ``"frozen"`` (the trainable weights as loaded here, copied once and kept in every
            checkpoint as ``anchor_weights.safetensors``, so a resumed run keeps the step-0 anchor)
            or ``"current"`` (the weights being trained).
    """

    def __init__(
        self,
        generator_full: nn.Module,
        metric: nn.Module,
        weight: float = 1.0,
        warmup_steps: int = 0,
        ramp_steps: int = 0,
        crop_size: Optional[int] = 112,
        image_size: Optional[int] = 256,
        num_frames: int = 5,
        trainable_modules: Sequence[str] = (),
        latent_dim: int = 16,
        eat_optimization: bool = True,
        anchor: str = "frozen",
    ):
        super().__init__()
        # EAT's own train/eval choices (BatchNorms of generator and audio2kp, kp_extractor, the
        # loss networks in eval) are made when its model is built: remember them, so that the
        # shared loop's `.train()` does not undo them.
        self._eval_in_training = [n for n, m in generator_full.named_modules() if not m.training]
        self.eat_optimization = eat_optimization
        self.stccl = EATWithSTCCL(generator_full, metric, weight, warmup_steps, ramp_steps, crop_size,
                                  image_size, num_frames, anchor=anchor)
        self.latent_dim = latent_dim
        metric.requires_grad_(False)
        # EAT trains a hand-picked subset (prompt, EAM, side-tuning; see `load_eat_generator_full`),
        # chosen parameter by parameter: the adapter sets it here and tells the shared loop's
        # `configure_trainable` (module-level on/off) to leave it as is.
        self.mark_trainables_chosen()
        if trainable_modules:
            generator_full.requires_grad_(False)
            named = dict(generator_full.named_modules())
            missing = [m for m in trainable_modules if m not in named]
            if missing:
                raise ValueError(f"trainable_modules {missing} not found in {type(generator_full).__name__}; "
                                 f"top-level modules: {[n for n, _ in generator_full.named_children()]}")
            for m in trainable_modules:
                named[m].requires_grad_(True)
        # The frozen anchor is what trains, as loaded (step 0); a resume restores it from the checkpoint.
        self.stccl.snapshot_anchor()

    @property
    def generator_full(self) -> nn.Module:
        return self.stccl.generator_full

    @property
    def metric(self) -> nn.Module:
        return self.stccl.metric

    def train(self, mode: bool = True):
        super().train(mode)
        self.metric.eval()  # a frozen loss stays in eval mode (BatchNorm statistics untouched)
        if mode:
            named = dict(self.generator_full.named_modules())
            for name in self._eval_in_training:
                named[name].eval()
        return self

    # -- the frozen anchor in checkpoints ------------------------------------------------------
    def anchor_copy_bytes(self) -> int:
        return self.stccl.anchor_copy_bytes()

    def save_anchor_state(self, directory: Union[str, os.PathLike]) -> None:
        """``anchor_weights.safetensors``: the frozen anchor weights (step 0), for an exact resume."""
        from safetensors.torch import save_file

        if self.stccl.frozen_params:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.stccl.frozen_params.items()},
                      str(Path(directory) / ANCHOR_WEIGHTS_NAME))

    def load_anchor_state(self, directory: Union[str, os.PathLike]) -> None:
        """Restore the step-0 anchor weights of a checkpoint (the model rebuilt for the resume may
        not start where the run started: a reference model's random init, another starting file)."""
        from safetensors.torch import load_file
        import warnings

        if self.stccl.anchor != "frozen":
            return
        path = Path(directory) / ANCHOR_WEIGHTS_NAME
        if not path.is_file():
            warnings.warn(f"{directory} holds no {ANCHOR_WEIGHTS_NAME} (a run with anchor: current, or older): the "
                          "frozen anchor is the model as built for this resume, not the run's step-0 weights")
            return
        saved = load_file(str(path))
        if set(saved) != set(self.stccl.frozen_params):
            raise ValueError(f"{path}: expected anchor weights for {len(self.stccl.frozen_params)} trainable "
                             f"parameters, got {len(saved)} (trainable set changed? e.g. "
                             f"{sorted(set(saved) ^ set(self.stccl.frozen_params))[:3]})")
        self.stccl.frozen_params = {k: v.to(self.stccl.frozen_params[k].device) for k, v in saved.items()}

    # -- EAT's checkpoint format (what EAT's Logger saves and demo.py's load_ckpt reads) -------
    def export_eat_checkpoint(self, path: Union[str, os.PathLike], epoch: int = 0) -> Optional[Path]:
        """Write ``{module_name: state_dict, ..., "epoch": epoch}`` for EAT's generator,
        kp_detector, audio2kptransformer, emotionprompt and sidetuning (``torch.save``, as EAT's
        Logger). None (nothing written) for a model without those modules."""
        core = eat_core(self.generator_full)
        names = {"generator": "generator", "kp_detector": "kp_extractor", "audio2kptransformer": "audio2kptransformer",
                 "emotionprompt": "emotionprompt", "sidetuning": "sidetuning"}
        if not all(isinstance(getattr(core, a, None), nn.Module) for a in names.values()):
            return None
        state = {k: {n: v.detach().cpu() for n, v in getattr(core, a).state_dict().items()} for k, a in names.items()}
        state["epoch"] = int(epoch)
        path = Path(path)
        torch.save(state, path)
        return path

    def save_weights(self, directory: Union[str, os.PathLike]) -> None:
        """The loop's trained weights, plus ``eat_checkpoint.pth.tar`` in EAT's format for the real EAT."""
        super().save_weights(directory)
        self.export_eat_checkpoint(Path(directory) / EAT_EXPORT_NAME)

    # -- EAT's stage-2 optimisation (train_transformer.train_batch_deepprompt_eam3d_sidetuning) ---
    def _eat_groups(self):
        core = eat_core(self.generator_full)
        params = getattr(core, "train_params", None)
        if not self.eat_optimization or not isinstance(params, dict):
            return None
        names = {"generator": "lr_generator", "audio2kptransformer": "lr_audio2kptransformer",
                 "emotionprompt": "lr_emotionprompt", "sidetuning": "lr_sidetuning"}
        if not all(hasattr(core, n) for n in names) or not all(k in params for k in names.values()):
            return None
        return [(n, getattr(core, n), float(params[k])) for n, k in names.items()]

    def optimizer_param_groups(self, lr: float):
        """EAT's four Adams as param groups of one optimizer (Adam is per parameter, so this is
        the same update): generator, audio2kp, emotion prompt and side-tuning at EAT's learning
        rates from ``train_params`` (audio2kp 1.5e-4), betas (0.5, 0.999), no weight decay.
        ``lr`` (the config's) is ignored then; None (the loop's default optimiser) for a model
        without EAT's ``train_params`` or with ``eat_optimization=False``."""
        groups = self._eat_groups()
        if groups is None:
            return None
        return [{"params": [p for p in m.parameters() if p.requires_grad], "lr": g_lr, "betas": (0.5, 0.999),
                 "weight_decay": 0.0, "name": n} for n, m, g_lr in groups]

    def clip_gradients(self, accelerator, max_norm: float):
        """EAT clips audio2kp and side-tuning separately at 0.05 and nothing else; returns the
        total norm of what it clipped (for the loop's non-finite check), or None to let the loop
        clip all trainables jointly at ``max_norm`` (models without EAT's optimisation)."""
        groups = self._eat_groups()
        if groups is None:
            return None
        accelerator.unscale_gradients()
        norms = torch.stack([torch.as_tensor(torch.nn.utils.clip_grad_norm_(m.parameters(), 0.05), dtype=torch.float32)
                             for n, m, _ in groups if n in ("audio2kptransformer", "sidetuning")])
        self.last_clipped = float(bool((norms > 0.05).any()))  # the loop logs it as grad_clipped
        return norms.norm()

    def _with_latent(self, batch: Dict[str, Any], generator: Optional[torch.Generator]) -> Dict[str, Any]:
        if batch.get("z_trg") is not None:
            return batch
        src = batch["source"]
        z = torch.randn(src.shape[0], self.latent_dim, generator=generator,
                        device=generator.device if generator is not None else "cpu")
        return {**batch, "z_trg": z.to(src.device, src.dtype)}

    def training_step(self, batch: Dict[str, Any], step: int, generator: Optional[torch.Generator]) -> Dict[str, Any]:
        batch = self._with_latent(batch, generator)
        loss_values, _ = self.stccl(batch, True, step=step, generator=generator)
        terms = {k: v.mean() for k, v in loss_values.items()}
        logs: Dict[str, Any] = {"loss": sum(terms.values()), **{k: v.detach() for k, v in terms.items()}}
        logs.update(self.stccl.last)
        # EAT's own terms vs STCCL, with their graphs, for the loop's gradient-balance log.
        task = sum(v for k, v in terms.items() if k != "stccl")
        logs["loss_terms"] = {"task": task, "stccl": terms["stccl"] if self.stccl.last_active else None}
        return logs

    @torch.no_grad()
    def render_validation(self, batch: Dict[str, Any], generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """Target and neutral-anchor frames ``(B, T, 3, H, W)`` in ``[-1, 1]``.

        A clip longer than ``num_frames`` (the window EAT renders at once) is rendered window by
        window (:func:`time_window`: the per-frame entries, EAT's nested ``he_driving`` included,
        split along time); one ``z_trg`` per clip for all windows.
        """
        batch = self._with_latent(batch, generator)
        b, t = self.stccl._shape(batch)
        n = self.stccl.num_frames
        if t <= n or "bboxs" not in batch:
            return self._render_pair(batch, b, t)
        parts = []
        for s in range(0, t, n):
            e = min(t, s + n)
            parts.append(self._render_pair(time_window(batch, s, e), b, e - s))
        return {k: torch.cat([p[k] for p in parts], dim=1) for k in ("target", "anchor")}

    def _render_pair(self, batch: Dict[str, Any], b: int, t: int) -> Dict[str, torch.Tensor]:
        # EAT renders frames only with train_with_img=True (else `generated` is {}): render with
        # it, EAT's losses off.
        target, anchor = self.stccl.render(batch), self.stccl.render_anchor(batch)  # the anchor training uses
        return {"target": target * 2 - 1, "anchor": anchor * 2 - 1}
