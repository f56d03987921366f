"""DICE-Talk adapters: EDM training with the STCCL reward on a neutral-anchor stream.

Two backends, one interface (:class:`~stccl_diffusers.training.adapter.TalkingHeadAdapter`):

- :class:`ReferenceDiceAdapter` wraps the built-in :class:`~stccl_diffusers.models.reference_dice.ReferenceDICE`
  (trainable on a CPU; the demo and the tests).
- :class:`DiceTalkAdapter` (in :mod:`stccl_diffusers.adapters.dice_talk`) wraps the user's own
  DICE-Talk checkout and weights.

Both share :class:`DiceStepMixin`: SVD's EDM training step (ln sigma ~ N(P_mean, P_std),
v-prediction, weight (s^2+1)/s^2, condition dropout) and the STCCL term through
`STCCLRewardCallback` with the t < 500 gate: the neutral-anchor forward (same noisy latents,
sigma, reference, audio and face mask; the *neutral prior* as emotion) runs only when some
sample of the batch is gated and its target emotion is not neutral. The anchor is rendered by the
starting model (LoRA disabled, ``anchor="frozen"``, the default) or by the model being trained
(``anchor="current"``, the paper's online form).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .. import edm
from ..callback import adapters_disabled
from ..models.reference_dice import NEUTRAL_INDEX, ReferenceDICE, audio_frame_features, fit_autoencoder
from ..models.weighting import motion_weights
from ..training.adapter import TalkingHeadAdapter
from ..utils.safety import save_pretrained_atomic


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
    from ..training.config import ANCHORS

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


# ----------------------------------------------------------------------------------------------
# Configuration and assembly (used by train_dice_stccl.py)
# ----------------------------------------------------------------------------------------------
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

from ..training.config import TalkingClipsConfig  # noqa: E402


@dataclass
class DiceTrainingConfig(TalkingClipsConfig):
    """`train_dice_stccl.py` options on top of the shared ones (see configs/dice_stccl*.yaml)."""

    backend: str = "reference"
    """`reference` (built-in ReferenceDICE) or `dice_talk` (your DICE-Talk checkout and weights)."""
    # -- data (fields shared with EAT live in TalkingClipsConfig) --
    data_dir: str = "outputs/dice_demo_data"
    validation_emotion: str = "happy"
    validation_num_frames: int = 24
    """Frames of the validation clip (longer than training windows, so the video shows speech)."""
    validation_speaker: Optional[int] = None
    """Synthetic demo data: the validation clip is a new sentence (never trained on) said by this
    training speaker (0 = S000). None: a face training never saw. The demo's tiny model learns 3
    faces and cannot draw a new one (it draws one of its training faces instead)."""
    # -- reward (stccl_weight: TalkingClipsConfig) --
    gate_timestep: float = 500
    frame_subset: Optional[list] = None
    decode_chunk_size: Optional[int] = None
    use_face_boxes: bool = True
    # -- EDM --
    p_mean: float = 0.7
    p_std: float = 1.6
    drop_reference: float = 0.05
    drop_audio: float = 0.05
    drop_emotion: float = 0.05
    num_inference_steps: int = 10
    guidance_scale: float = 1.0
    # -- reward mode (issue 22; reference backend; see stccl_diffusers/training/rollout.py) --
    reward_mode: str = "single_step"
    """`single_step` (the paper's: x0-hat of a noised training clip, gated t < 500) or `rollout`
    (DRaFT-K style: target and anchor sampled from one noise with the validation sampler and
    guidance, gradient through the target's last `rollout_grad_steps` steps only)."""
    rollout_every: int = 1
    """rollout: the reward runs on every k-th step (the others train the EDM loss alone)."""
    rollout_grad_steps: int = 5
    """rollout: K, the last denoising steps of the target that keep their graph (1..num_inference_steps).
    Under EDM preconditioning a step at sigma moves x0-hat by c_out(sigma) ~ sigma for small sigma: with
    10 Karras steps the last step (sigma 0.002) passes ~0.2 % of the gradient, K = 1 barely trains (the
    quick benchmark's rollout arm equalled the without arm to 3 decimals). K = 5 reaches sigma 1.5."""
    rollout_audio: str = "neutral"
    """rollout: audio of the sampled pair: `neutral` (the same sentence's neutral recording, the
    deployment case; needs reference: neutral) or `clip` (the training clip's own audio)."""
    # -- reference model --
    pretrained_model_name_or_path: Optional[str] = None
    """A saved ReferenceDICE (`save_pretrained` folder); None: build one and pre-train it here."""
    vae_fit_steps: int = 160
    base_train_steps: int = 300
    base_learning_rate: float = 2e-3
    emotion_time_embedding: bool = True
    """Reference model: the emotion prior also shifts the UNet's time embedding (FiLM on every
    ResNet block), not only the cross-attention tokens; without it the small model renders
    emotion from the voice and barely changes with the label (the neutral anchor = the target)."""
    motion_weight: float = 0.0
    """Reference model: extra EDM-loss weight where a frame differs from its reference (mouth,
    brows, eyes; `models.weighting.motion_weights`). 0 is the plain EDM loss."""
    # -- real DICE-Talk --
    dice_talk_root: Optional[str] = None
    dice_checkpoints: Optional[str] = None
    svd_path: Optional[str] = None
    whisper_path: Optional[str] = None
    appearance_guidance_scale: float = 3.0
    audio_guidance_scale: float = 6.0
    """dice_talk validation: DICE-Talk's three-branch CFG scales (its inference config: 3.0 and 6.0)."""
    motion_bucket_id_exp: float = 16.0
    """dice_talk: third added_time_id, as DICE-Talk's inference config."""
    dice_fps: float = 12.5
    """dice_talk: frames are resampled to this rate from each clip's real fps (DICE-Talk generates at
    12.5 fps, `step: 2`, and doubles the rate with RIFE afterwards)."""
    emotion_retrieval: bool = False
    """dice_talk: EmotionModel(retrieval=...); False is what DICE-Talk's inference uses."""


def build_callback(cfg: DiceTrainingConfig, metric, decoder=None, decode_fn=None):
    """`STCCLRewardCallback` for SVD's scheduler with the configured gate, weight and decoding."""
    from ..callback import STCCLRewardCallback

    return STCCLRewardCallback(
        metric=metric, scheduler=make_svd_scheduler(), decoder=decoder, decode_fn=decode_fn,
        gate_timestep=cfg.gate_timestep, weight=cfg.stccl_weight, num_frames=cfg.num_frames,
        frame_subset=[int(i) for i in cfg.frame_subset] if cfg.frame_subset else None,
        decode_chunk_size=cfg.decode_chunk_size, placebo=bool(getattr(cfg, "stccl_placebo", False)),
    )


def build_reference_adapter(cfg: DiceTrainingConfig, model: ReferenceDICE, callback=None) -> ReferenceDiceAdapter:
    mode = getattr(cfg, "reward_mode", "single_step")
    if mode not in ("single_step", "rollout"):
        raise ValueError(f"expected reward_mode 'single_step' or 'rollout', got {mode!r}")
    cls, extra = ReferenceDiceAdapter, {}
    if mode == "rollout":  # issue 22: the reward on sampled clips (a training-loop feature, see training/rollout.py)
        from ..training.rollout import RolloutDiceAdapter

        cls, extra = RolloutDiceAdapter, dict(rollout_every=cfg.rollout_every, rollout_grad_steps=cfg.rollout_grad_steps,
                                              rollout_audio=cfg.rollout_audio)
    return cls(
        model, callback, **extra, p_mean=cfg.p_mean, p_std=cfg.p_std,
        dropout_probs=(cfg.drop_reference, cfg.drop_audio, cfg.drop_emotion),
        num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
        use_face_boxes=cfg.use_face_boxes, motion_weight=cfg.motion_weight, anchor=cfg.anchor,
    )


def pretrain_reference_dice(cfg: DiceTrainingConfig, dataset, save_dir: str | Path) -> tuple[ReferenceDICE, dict]:
    """Build a ReferenceDICE and train it from scratch (VAE fit, then the EDM loss in full, no STCCL).

    Deterministic for `cfg.seed`, so every rank of a multi-process run builds the same model.
    """
    import time

    from ..training.loop import train

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = ReferenceDICE(resolution=cfg.resolution, num_frames=cfg.num_frames,
                          emotion_time_embedding=cfg.emotion_time_embedding)
    frames = torch.cat([torch.from_numpy(c.frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0 for c in dataset.clips])
    info = {"vae": fit_autoencoder(model, frames, steps=cfg.vae_fit_steps, batch_size=16, seed=cfg.seed)}
    base_cfg = replace(
        cfg, output_dir=str(Path(save_dir) / "base_run"), train_mode="full",
        trainable_modules=["model.unet", "model.image_encoder", "model.audio_model", "model.emotion_model"]
        + (["model.emotion_embedding"] if model.emotion_embedding is not None else []),
        max_train_steps=cfg.base_train_steps, learning_rate=cfg.base_learning_rate, checkpointing_steps=0,
        validation_steps=0, validate_at_start=False, report_to="none", resume_from_checkpoint=None,
        lr_scheduler="cosine", lr_warmup_steps=min(20, cfg.base_train_steps // 10),
    )
    adapter = build_reference_adapter(base_cfg, model, callback=None)
    result = train(adapter, dataset, base_cfg)
    model.requires_grad_(False)
    save_pretrained_atomic(model, save_dir)
    info.update(base_steps=result.global_step, base_loss_first=result.step_log[0]["loss"] if result.step_log else None,
                base_loss_last=result.step_log[-1]["loss"] if result.step_log else None,
                base_pretrain_s=time.perf_counter() - t0)
    return model, info
