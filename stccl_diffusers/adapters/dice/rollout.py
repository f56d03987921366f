"""The rollout reward mode of the DICE reference backend (issue 22), as in DRaFT-K / AlignProp.

Why: the single-step reward scores x0-hat of a noised *ground-truth* clip at sigma < 1.62, where
target and anchor both copy that clip's mouth; drift that arises while sampling from noise is
invisible to it. The rollout reward samples instead.

Every ``rollout_every``-th training step (the other steps train the diffusion loss alone):

1. target and anchor are sampled from the *same* initial noise with the validation sampler
   (EDM Euler, ``num_inference_steps``, ``sigma_max``, classifier-free ``guidance_scale``):
   the target with the clip's emotion, the anchor with the neutral prior;
2. the first ``num_inference_steps - K`` steps of the target, and every step of the anchor, run
   without gradient; only the last ``K = rollout_grad_steps`` denoising steps of the target keep
   their graph (DRaFT-K's truncated backpropagation: gradient through the last K steps only). Under
   EDM preconditioning the step at sigma changes x0-hat by c_out(sigma) ~ sigma when sigma is small,
   so K must reach the steps near sigma ~ 1 (K = 5 of 10 Karras steps: sigma 1.5 and below); K = 1
   (sigma 0.002) passes ~0.2 % of the gradient;
3. both final latents are decoded and scored by the STCCL callback (its frame subset, face crop,
   weight, placebo), exactly as the single-step reward scores x0-hat.

Audio of the pseudo-pair (``rollout_audio``): ``clip`` (the training clip's own audio) or ``neutral``
(the neutral recording of the same sentence by the same speaker, the deployment case: a user brings
neutral speech and asks for an emotion; needs ``neutral_audio`` in the batch, which
:class:`~stccl_diffusers.data.clips.TalkingClipDataset` gives with ``reference: neutral``). The
default is ``neutral``: with the clip's audio the anchor is asked to say emotional (loud or fast)
speech with a neutral face, a pairing training never shows it, so the reward would pull the target
towards an out-of-distribution anchor; with neutral audio both sides of the pair are the question the
model is deployed on, and the reward asks the emotional rendering to articulate that speech as the
neutral rendering does.

This is a training-loop feature of the reference backend (:class:`RolloutDiceAdapter`), not part
of :class:`~stccl_diffusers.callback.STCCLRewardCallback`: the callback's API scores one denoiser
output per step; a rollout needs the sampler, the conditions and the model, which only the adapter has.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ... import edm
from .adapter import ReferenceDiceAdapter

REWARD_MODES = ("single_step", "rollout")
ROLLOUT_AUDIO = ("clip", "neutral")


def euler_sample_latents(denoise, cond, uncond, noise: torch.Tensor, sigmas: torch.Tensor, guidance_scale: float,
                         grad_steps: int = 0) -> torch.Tensor:
    """EDM Euler sampling in latent space, as :meth:`ReferenceDICE.sample` (before decoding).

    denoise(x, sigma (B,), cond) -> v; noise (B, T, C, h, w) unit Gaussian; sigmas (N + 1,)
    descending to 0 (:func:`~stccl_diffusers.edm.karras_sigmas`). ``grad_steps`` K in [0, N]: only
    the last K steps are run with autograd on (when it is on at all); the earlier ones run under
    ``no_grad``, so the latent entering step N - K is a constant. Returns the final latents
    (B, T, C, h, w) float32."""
    n = len(sigmas) - 1
    if not 0 <= grad_steps <= n:
        raise ValueError(f"expected rollout_grad_steps K in [0, {n}] (the sampler's steps), got {grad_steps}")
    grad_on = torch.is_grad_enabled()
    B = noise.shape[0]
    x = noise.float() * sigmas[0]
    for i in range(n):
        with torch.set_grad_enabled(grad_on and i >= n - grad_steps):
            s = sigmas[i].expand(B)
            x0 = edm.x0_from_v(denoise(x, s, cond).float(), x, s)
            if uncond is not None:
                x0_u = edm.x0_from_v(denoise(x, s, uncond).float(), x, s)
                x0 = x0_u + guidance_scale * (x0 - x0_u)
            x = x + (x - x0) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def _rollout_conditions(adapter, batch, prior, audio_key: str, lat_hw, guidance_scale: float):
    m = adapter.model
    T = batch["frames"].shape[1] if "frames" in batch else m.config.num_frames
    from ...models.reference_dice import audio_frame_features

    feats = audio_frame_features(batch[audio_key], m.config.sample_rate, m.config.fps, T)
    cond = m.encode_conditions(batch["reference"], feats, prior, lat_hw)
    uncond = None
    if guidance_scale != 1.0:
        ones = torch.ones(feats.shape[0], dtype=torch.bool, device=feats.device)
        uncond = m.encode_conditions(batch["reference"], feats, prior, lat_hw, drop_audio=ones, drop_emotion=ones)
    return cond, uncond, T


def rollout_stccl(adapter, batch: dict[str, Any], generator: Optional[torch.Generator], grad_steps: int,
                  audio: str = "neutral", mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The rollout reward of one batch: ``callback(x0=target latents, anchor_x0=anchor latents)``.

    `adapter`: a :class:`~stccl_diffusers.adapters.dice.ReferenceDiceAdapter` with a callback.
    Returns the callback's weighted loss (fp32 scalar; gradient only through the target's last
    `grad_steps` denoising steps). ``adapter.last_rollout`` holds the anchor and target latents.
    `mask`: (B,) bool, the clips scored (neutral-target clips are left out, as in the single-step mode)."""
    if audio not in ROLLOUT_AUDIO:
        raise ValueError(f"expected rollout_audio in {ROLLOUT_AUDIO}, got {audio!r}")
    audio_key = "neutral_audio" if audio == "neutral" else "audio"
    if audio_key not in batch:
        raise ValueError("expected 'neutral_audio' in the batch for rollout_audio='neutral' (TalkingClipDataset gives "
                         "it with reference: neutral), or rollout_audio='clip'")
    m, cb = adapter.model, adapter.callback
    if cb is None:
        raise ValueError("expected a STCCL callback on the adapter for the rollout reward, got None")
    lat = m.config.resolution // 2 ** (len(m.config.vae_block_out_channels) - 1)
    device = batch["reference"].device
    g = adapter.guidance_scale
    sigmas = edm.karras_sigmas(adapter.num_inference_steps, 0.002, adapter.sigma_max).to(device)
    cond_t, uncond_t, T = _rollout_conditions(adapter, batch, adapter.target_prior(batch), audio_key, (lat, lat), g)
    B = batch["reference"].shape[0]
    gdev = generator.device if generator is not None else device
    noise = torch.randn(B, T, m.config.latent_channels, lat, lat, generator=generator, device=gdev).to(device)
    # The anchor comes from the model `adapter.anchor` names: LoRA off for `frozen` (the default),
    # the model being trained for `current`, exactly as the single-step reward and validation do.
    with torch.no_grad(), adapter.anchor_weights():
        cond_a, uncond_a, _ = _rollout_conditions(adapter, batch, adapter.neutral_prior(batch), audio_key, (lat, lat), g)
        anchor = euler_sample_latents(adapter.denoise, cond_a, uncond_a, noise, sigmas, g, grad_steps=0)
    target = euler_sample_latents(adapter.denoise, cond_t, uncond_t, noise, sigmas, g, grad_steps=grad_steps)
    adapter.last_rollout = {"target": target.detach(), "anchor": anchor}
    boxes = batch.get("face_box") if adapter.use_face_boxes else None
    # timesteps 0: the clean end of the sampler is always under the callback's gate.
    return cb(x0=target, anchor_x0=anchor, timesteps=torch.zeros(B, device=device), layout="btchw",
              face_boxes=boxes, generator=generator, mask=mask)


class RolloutDiceAdapter(ReferenceDiceAdapter):
    """:class:`ReferenceDiceAdapter` whose STCCL term is the rollout reward (see the module doc).

    Every step trains the EDM loss; steps with ``step % rollout_every == 0`` add the rollout
    reward (the single-step reward is not computed in this mode)."""

    def __init__(self, *args, rollout_every: int = 1, rollout_grad_steps: int = 5, rollout_audio: str = "neutral",
                 **kwargs):
        super().__init__(*args, **kwargs)
        if rollout_every < 1:
            raise ValueError(f"expected rollout_every >= 1, got {rollout_every}")
        if not 1 <= rollout_grad_steps <= self.num_inference_steps:
            raise ValueError(f"expected rollout_grad_steps in [1, num_inference_steps={self.num_inference_steps}], "
                             f"got {rollout_grad_steps}")
        if rollout_audio not in ROLLOUT_AUDIO:
            raise ValueError(f"expected rollout_audio in {ROLLOUT_AUDIO}, got {rollout_audio!r}")
        self.rollout_every, self.rollout_grad_steps, self.rollout_audio = rollout_every, rollout_grad_steps, rollout_audio
        self.last_rollout = None

    def training_step(self, batch, step, generator):
        self._check_batch(batch)
        cb, self.callback = self.callback, None  # the EDM loss alone (no single-step reward)
        try:
            out = self.edm_step(batch, step, generator)
        finally:
            self.callback = cb
        if cb is None or float(cb.config.weight) <= 0 or step % self.rollout_every:
            out["rollout"] = 0.0
            return out
        emotional = self.emotional_mask(batch).to(batch["reference"].device)
        out["stccl_skipped_neutral"] = float(emotional.numel() - int(emotional.sum()))
        if not bool(emotional.any()):  # an all-neutral batch: target = anchor, nothing to sample
            out["rollout"] = 0.0
            return out
        stccl = rollout_stccl(self, batch, generator, self.rollout_grad_steps, self.rollout_audio, mask=emotional)
        out["loss"] = out["loss"] + stccl
        out["stccl"] = stccl.detach()
        out["rollout"] = 1.0
        if int(cb.last_stats.get("num_scored", 0)) > 0 and isinstance(out.get("loss_terms"), dict):
            out["loss_terms"] = {**out["loss_terms"], "stccl": stccl}  # for the gradient-balance log
        for k, val in cb.last_stats.items():
            if k != "stccl_loss":
                out[f"stccl_{k}"] = val
        return out
