"""The DICE backend's training step: :class:`DiceStepMixin` (SVD's EDM step with the STCCL reward,
shared with :class:`~.dice_talk.DiceTalkAdapter`) and :class:`ReferenceDiceAdapter` for the built-in
reference model (see the package docstring)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ... import edm
from ...callback import adapters_disabled
from ...models.reference_dice import NEUTRAL_INDEX, ReferenceDICE, audio_frame_features
from ...models.weighting import motion_weights
from ...training.adapter import TalkingHeadAdapter


def make_svd_scheduler():
    """SVD-xt's EulerDiscreteScheduler (v-prediction, continuous timesteps = 0.25 ln sigma,
    scaled-linear 0.00085..0.012 so that the t < 500 gate is sigma < ~1.62)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", timestep_type="continuous", use_karras_sigmas=True,
        sigma_min=0.002, sigma_max=700.0, interpolation_type="linear",
    )


def condition_dropout(batch_size: int, probs: tuple[float, float, float], generator, device) -> tuple[torch.Tensor, ...]:
    """Independent per-sample drop masks (B,) bool for (reference, audio, emotion)."""
    u = torch.rand(3, batch_size, generator=generator, device=generator.device if generator is not None else device)
    u = u.to(device)
    return tuple(u[i] < p for i, p in enumerate(probs))


def check_anchor(anchor: str) -> str:
    """`anchor` if it is `frozen` or `current`, else a ValueError naming both."""
    from ...training.config import ANCHORS

    if anchor not in ANCHORS:
        raise ValueError(f"expected anchor one of {ANCHORS}, got {anchor!r}")
    return anchor


class DiceStepMixin:
    """The EDM + STCCL step both DICE backends share. Subclasses provide:

    - `encode_latents(batch) -> x0 (B, T, C, h, w)` (scaled latents, no grad),
    - `conditions(batch, prior, drops) -> cond` and `neutral_prior(batch) -> prior`,
      `target_prior(batch) -> prior`,
    - `denoise(x_t, sigma, cond) -> v (B, T, C, h, w)`.

    `anchor`: `"frozen"` renders the neutral anchor with the LoRA adapters disabled (the model as it
    started; costs no memory), `"current"` with the model being trained (under no_grad).
    """

    callback = None
    anchor: str = "frozen"
    neutral_index: int = NEUTRAL_INDEX
    p_mean: float = 0.7
    p_std: float = 1.6
    dropout_probs: tuple[float, float, float] = (0.05, 0.05, 0.05)
    use_face_boxes: bool = True
    motion_weight: float = 0.0  # > 0: `models.weighting.motion_weights` on the EDM loss (frames vs reference)

    def sample_dropout(self, batch_size: int, generator, device) -> tuple[torch.Tensor, ...]:
        return condition_dropout(batch_size, self.dropout_probs, generator, device)

    def emotional_mask(self, batch) -> torch.Tensor:
        """(B,) bool, False where the target emotion is neutral (target = anchor: STCCL has nothing to learn)."""
        return batch["emotion"].reshape(-1) != self.neutral_index

    def anchor_denoise(self, x_t, sigma, cond) -> torch.Tensor:
        """The neutral anchor's prediction (no grad, detached) from the model `self.anchor` names.

        `frozen`: through the callback's `run_anchor` with the peft adapters of `lora_model()` off
        (its `anchor="base_model"`), so the anchor stays where the fine-tuning started.
        `current`: the model being trained, as the paper's online pseudo-pairing does.
        """
        if self.anchor == "current":
            with torch.no_grad():
                return self.denoise(x_t, sigma, cond).detach()
        if not self.lora_applied:
            raise ValueError("anchor 'frozen' renders the anchor with the LoRA adapters off, but this model has no "
                             "LoRA (train_mode: full?): expected train_mode: lora, or anchor: current")
        return self.callback.run_anchor(self.lora_model(), x_t, sigma, cond, forward_fn=self.denoise)

    def anchor_weights(self):
        """Context in which validation renders the anchor: LoRA off for `frozen`, as training does.
        A model without LoRA (not fine-tuned yet, or a full fine-tune) renders it as it is."""
        if self.anchor == "frozen" and self.lora_applied:
            return adapters_disabled(self.lora_model())
        return contextlib.nullcontext()

    def edm_step(self, batch: dict[str, Any], step: int, generator: torch.Generator | None) -> dict[str, Any]:
        x0 = self.encode_latents(batch)
        B, device = x0.shape[0], x0.device
        gdev = generator.device if generator is not None else device
        sigma = edm.sample_sigmas(B, self.p_mean, self.p_std, generator=generator, device=gdev).to(device)
        noise = torch.randn(x0.shape, generator=generator, device=gdev).to(device, x0.dtype)
        x_t = edm.add_noise(x0, noise, sigma)
        drops = self.sample_dropout(B, generator, device)
        cond = self.conditions(batch, self.target_prior(batch), drops)
        v = self.denoise(x_t, sigma, cond)
        weight = None
        if self.motion_weight > 0 and "frames" in batch:
            frames, T = batch["frames"], x0.shape[1]
            ref = batch["reference"][:, None].expand_as(frames)
            weight = motion_weights(frames.flatten(0, 1), ref.flatten(0, 1), self.motion_weight,
                                    size=tuple(x0.shape[-2:])).view(B, T, 1, *x0.shape[-2:])
        diffusion = edm.edm_loss(edm.x0_from_v(v.float(), x_t, sigma), x0, sigma, pixel_weight=weight).mean()

        logs: dict[str, Any] = {"diffusion": diffusion.detach()}
        stccl = torch.zeros((), device=device)
        scored = False
        cb = self.callback
        if cb is not None and float(cb.config.weight) > 0:
            timesteps = edm.c_noise(sigma)
            # A clip whose target emotion is neutral has target = anchor: it is skipped (and counted).
            emotional = self.emotional_mask(batch).to(device)
            anchor_v = None
            if cb.needs_anchor(timesteps, sigmas=sigma, mask=emotional):
                with torch.no_grad():
                    # Same noisy latents, sigma, reference, audio, face mask and dropout; neutral prior.
                    anchor_cond = self.conditions(batch, self.neutral_prior(batch), (drops[0], drops[1], None))
                anchor_v = self.anchor_denoise(x_t, sigma, anchor_cond)
            boxes = batch.get("face_box") if self.use_face_boxes else None
            stccl = cb(model_pred=v, anchor_pred=anchor_v, noisy_latents=x_t, timesteps=timesteps, sigmas=sigma,
                       face_boxes=boxes, generator=generator, mask=emotional)
            logs["anchor_forward"] = float(anchor_v is not None)
            logs["stccl_skipped_neutral"] = float(B - int(emotional.sum()))
            scored = int(cb.last_stats.get("num_scored", 0)) > 0
            for k, val in cb.last_stats.items():
                if k != "stccl_loss":
                    logs[f"stccl_{k}"] = val
        logs["stccl"] = stccl.detach()
        # The two terms, with their graphs, for the loop's gradient-balance log (None: STCCL was off).
        terms = {"task": diffusion, "stccl": stccl if scored else None}
        return {"loss": diffusion + stccl, "loss_terms": terms, **logs}


class ReferenceDiceAdapter(DiceStepMixin, TalkingHeadAdapter):
    """The built-in ReferenceDICE behind the adapter interface.

    Batch: {"frames": (B, T, 3, H, W) in [-1, 1], "reference": (B, 3, H, W), "audio": (B, N)
    waveform, "emotion": (B,) label index, "face_box": (B, 4) pixels (optional)}.
    """

    lora_prefix = "unet"

    def __init__(
        self,
        model: ReferenceDICE,
        callback=None,
        p_mean: float = 0.7,
        p_std: float = 1.6,
        dropout_probs: tuple[float, float, float] = (0.05, 0.05, 0.05),
        num_inference_steps: int = 10,
        guidance_scale: float = 1.0,
        sigma_max: float = 80.0,
        use_face_boxes: bool = True,
        motion_weight: float = 0.0,
        anchor: str = "frozen",
    ) -> None:
        super().__init__()
        self.anchor = check_anchor(anchor)
        self.model = model
        self.motion_weight = motion_weight
        self.callback = callback
        self.p_mean, self.p_std, self.dropout_probs = p_mean, p_std, tuple(dropout_probs)
        self.num_inference_steps, self.guidance_scale, self.sigma_max = num_inference_steps, guidance_scale, sigma_max
        self.use_face_boxes = use_face_boxes
        model.vae.requires_grad_(False)

    # -- TalkingHeadAdapter ----------------------------------------------------------------
    def lora_model(self) -> torch.nn.Module:
        return self.model.unet

    def set_weight_dtype(self, dtype: torch.dtype) -> None:
        # Frozen parts run in the mixed-precision dtype; what is trained stays fp32 (cast_training_params).
        if dtype == torch.float32:
            return
        for module in (self.model.vae, self.model.unet, self.model.image_encoder, self.model.audio_model,
                       self.model.emotion_model):
            if not any(p.requires_grad for p in module.parameters()):
                module.to(dtype)

    def training_step(self, batch, step, generator):
        self._check_batch(batch)
        return self.edm_step(batch, step, generator)

    @torch.no_grad()
    def render_validation(self, batch, generator=None):
        self._check_batch(batch)
        ref, feats = batch["reference"], self.audio_features(batch)
        B, T = feats.shape[:2]
        m = self.model
        lat = m.config.resolution // 2 ** (len(m.config.vae_block_out_channels) - 1)
        gdev = generator.device if generator is not None else ref.device
        noise = torch.randn(B, T, m.config.latent_channels, lat, lat, generator=generator, device=gdev).to(ref.device)
        kw = dict(num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                  sigma_max=self.sigma_max, noise=noise)
        target = m.sample(ref, feats, self.target_prior(batch), **kw)
        with self.anchor_weights():  # the anchor training scores against (LoRA off for `frozen`)
            anchor = m.sample(ref, feats, self.neutral_prior(batch), **kw)
        return {"target": target, "anchor": anchor}

    # -- DiceStepMixin ---------------------------------------------------------------------
    def audio_features(self, batch) -> torch.Tensor:
        T = batch["frames"].shape[1] if "frames" in batch else self.model.config.num_frames
        return audio_frame_features(batch["audio"], self.model.config.sample_rate, self.model.config.fps, T)

    def encode_latents(self, batch) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode_frames(batch["frames"]).float()

    def target_prior(self, batch) -> torch.Tensor:
        return self.model.emotion_prior(batch["emotion"])

    def neutral_prior(self, batch) -> torch.Tensor:
        return self.model.neutral_prior(batch["emotion"].shape[0])

    def conditions(self, batch, prior, drops):
        m = self.model
        lat = m.config.resolution // 2 ** (len(m.config.vae_block_out_channels) - 1)
        return m.encode_conditions(batch["reference"], self.audio_features(batch), prior, (lat, lat),
                                   drop_reference=drops[0], drop_audio=drops[1], drop_emotion=drops[2])

    def denoise(self, x_t, sigma, cond):
        return self.model(x_t, sigma, cond)

    def _check_batch(self, batch) -> None:
        need = ("reference", "audio", "emotion")
        missing = [k for k in need if k not in batch]
        if missing:
            raise ValueError(f"expected batch keys {need} (+ 'frames' for training), missing {missing}")
        frames = batch.get("frames")
        res = self.model.config.resolution
        if frames is not None and (frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[-1] != res):
            raise ValueError(f"expected frames (B, T, 3, {res}, {res}) in [-1, 1], got {tuple(frames.shape)}")
