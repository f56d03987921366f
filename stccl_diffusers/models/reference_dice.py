"""A small DICE-Talk-style talking-head diffusion model built from stock diffusers parts.

What it shares with DICE-Talk (facts §4), so that the DICE adapter exercises the same path:

- a `UNetSpatioTemporalConditionModel` with 8 input channels (noisy latent ⊕ reference latent),
  EDM/v-prediction preconditioning (:mod:`stccl_diffusers.edm`), `added_time_ids`;
- an image encoder giving one reference token for cross-attention (CLIP's role);
- audio: per-frame features -> clip tokens for cross-attention plus a per-frame feature map
  added after `conv_in` (the way DICE-Talk adds `PoseGuider` features), because the stock SVD UNet
  shares one set of cross-attention tokens across all frames;
- emotion: a 256-d emotion *prior* -> tokens through attention over a learned codebook (the role
  of DICE-Talk's `EmotionModel`). Each emotion has a fixed prior; neutral has its own prior
  (cosine ~0.95 to the others, as DICE-Talk's `.npy` priors); zeros are the *unconditional*
  input used by condition dropout and classifier-free guidance, never the neutral anchor;
  with `emotion_time_embedding=True` (what `pretrain_reference_dice` builds) the prior also shifts
  the UNet's time embedding, so it scales/shifts every ResNet block (not in DICE-Talk);
- a tiny `AutoencoderKL` (2x downsampling) as the VAE.

Everything here is ours (the stock diffusers parts aside); it is sized to train on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNetSpatioTemporalConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .. import edm

# DICE-Talk's emotion vocabulary (examples/emo/*.npy) and MEAD's folder names.
DICE_EMOTIONS: tuple[str, ...] = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
NEUTRAL_INDEX = DICE_EMOTIONS.index("neutral")


def make_emotion_priors(num: int = len(DICE_EMOTIONS), dim: int = 256, neutral_index: int = NEUTRAL_INDEX,
                        spread: float = 0.33, seed: int = 0) -> torch.Tensor:
    """Fixed unit-norm emotion priors (num, dim): a shared direction plus one per emotion.

    Neutral keeps the shared direction alone, so cosine(neutral, other) = 1/sqrt(1 + spread^2)
    (~0.95 for spread 0.33, the range DICE-Talk's priors have); none is the zero vector.
    """
    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(dim, generator=g), dim=0)
    dirs = torch.randn(num, dim, generator=g)
    dirs = F.normalize(dirs - (dirs @ base)[:, None] * base, dim=1)  # orthogonal to base
    priors = base[None] + spread * dirs
    priors[neutral_index] = base
    return F.normalize(priors, dim=1) * math.sqrt(dim)  # unit variance per entry, like a N(0, 1) prior


_MEL_CACHE: dict = {}


def audio_frame_features(
    waveform: torch.Tensor, sample_rate: int, fps: float, num_frames: int, n_mels: int = 20, context: int = 1
) -> torch.Tensor:
    """Per-video-frame log-mel features with +-`context` neighbouring frames stacked.

    waveform (B, N) in [-1, 1] covering the clip; returns (B, T, n_mels * (2*context + 1)),
    roughly zero-mean unit-scale. STFT hop = sample_rate / fps, centred, so STFT column t sits at
    video frame t.
    """
    if waveform.ndim != 2:
        raise ValueError(f"expected waveform (B, N), got {tuple(waveform.shape)}")
    hop = int(round(sample_rate / fps))
    n_fft = 1 << int(math.ceil(math.log2(2 * hop)))
    key = (sample_rate, n_fft, n_mels)
    if key not in _MEL_CACHE:
        import librosa

        _MEL_CACHE[key] = torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)).float()
    mel_fb = _MEL_CACHE[key].to(waveform.device)
    need = num_frames * hop
    wav = waveform.float()
    if wav.shape[1] < need:
        wav = F.pad(wav, (0, need - wav.shape[1]))
    spec = torch.stft(wav[:, :need], n_fft, hop_length=hop, window=torch.hann_window(n_fft, device=wav.device),
                      center=True, return_complex=True).abs() ** 2  # (B, n_fft//2+1, frames)
    mel = torch.log(mel_fb @ spec + 1e-6)[:, :, :num_frames]  # (B, n_mels, T)
    mel = (mel + 6.0) / 6.0
    padded = F.pad(mel, (context, context), mode="replicate")
    stacked = torch.cat([padded[:, :, i:i + num_frames] for i in range(2 * context + 1)], dim=1)
    return stacked.transpose(1, 2).contiguous()


class ImageTokenEncoder(torch.nn.Module):
    """Reference image (B, 3, H, W) in [-1, 1] -> one token (B, 1, D) (CLIP image embedding's role)."""

    def __init__(self, dim: int, width: int = 16) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, 2, 1), torch.nn.SiLU(),
            torch.nn.Conv2d(width, 2 * width, 3, 2, 1), torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2 * width, dim),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)[:, None]


class AudioTokenModel(torch.nn.Module):
    """Per-frame audio features (B, T, F) -> clip tokens (B, N, D) and a per-frame map (B, T, C, r, r).

    The map is added after the UNet's `conv_in` (how DICE-Talk injects PoseGuider features), so the
    mouth can follow each frame's sound; the tokens carry the clip's voice for cross-attention.
    """

    def __init__(self, in_dim: int, dim: int, num_tokens: int, map_channels: int, map_size: int = 4) -> None:
        super().__init__()
        self.num_tokens, self.dim, self.map_channels, self.map_size = num_tokens, dim, map_channels, map_size
        self.frame = torch.nn.Sequential(torch.nn.Linear(in_dim, dim), torch.nn.SiLU(), torch.nn.Linear(dim, dim), torch.nn.SiLU())
        self.to_tokens = torch.nn.Linear(dim, num_tokens * dim)
        self.to_map = torch.nn.Linear(dim, map_channels * map_size * map_size)
        torch.nn.init.zeros_(self.to_map.weight)  # starts as a no-op on the UNet, like a fresh PoseGuider
        torch.nn.init.zeros_(self.to_map.bias)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = feats.shape
        h = self.frame(feats)
        tokens = self.to_tokens(h.mean(dim=1)).reshape(B, self.num_tokens, self.dim)
        fmap = self.to_map(h).reshape(B, T, self.map_channels, self.map_size, self.map_size)
        return tokens, fmap


class EmotionTokenModel(torch.nn.Module):
    """Emotion prior (B, P) -> tokens (B, N, D) by attention over a learned codebook (K, D).

    Same role as DICE-Talk's EmotionModel (prior `mu` -> codebook attention -> tokens); our own
    layer layout. Also returns a clip-level map (B, C, r, r) added after `conv_in`.
    """

    def __init__(self, prior_dim: int, dim: int, num_tokens: int, codebook_size: int, map_channels: int,
                 map_size: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.num_tokens, self.dim, self.map_channels, self.map_size = num_tokens, dim, map_channels, map_size
        self.codebook = torch.nn.Parameter(torch.randn(codebook_size, dim) * 0.5)
        self.to_queries = torch.nn.Linear(prior_dim, num_tokens * dim)
        self.attn = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = torch.nn.LayerNorm(dim)
        self.to_map = torch.nn.Linear(prior_dim, map_channels * map_size * map_size)
        torch.nn.init.zeros_(self.to_map.weight)
        torch.nn.init.zeros_(self.to_map.bias)

    def forward(self, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = prior.shape[0]
        q = self.to_queries(prior).reshape(B, self.num_tokens, self.dim)
        kv = self.codebook[None].expand(B, -1, -1).to(q.dtype)
        tokens = self.norm(q + self.attn(q, kv, kv, need_weights=False)[0])
        fmap = self.to_map(prior).reshape(B, self.map_channels, self.map_size, self.map_size)
        return tokens, fmap


@dataclass
class DiceConditions:
    """Encoded conditions. ref_latent (B, 4, h, w) scaled; tokens (B, N, D); conv_in_residual (B, T, C, h, w)."""

    ref_latent: torch.Tensor
    tokens: torch.Tensor
    conv_in_residual: torch.Tensor
    time_embedding: torch.Tensor | None = None
    """(B, 4 * block_out_channels[0]) added to the UNet's time embedding (`emotion_time_embedding`)."""


class ReferenceDICE(ModelMixin, ConfigMixin):
    """The built-in small DICE-style model. Frames (B, T, 3, H, W) in [-1, 1]; latents (B, T, 4, H/2, W/2)."""

    @register_to_config
    def __init__(
        self,
        resolution: int = 32,
        num_frames: int = 8,
        latent_channels: int = 4,
        block_out_channels: Sequence[int] = (32, 64),
        cross_attention_dim: int = 32,
        num_attention_heads: Sequence[int] = (2, 4),
        vae_block_out_channels: Sequence[int] = (16, 32),
        audio_feature_dim: int = 60,
        num_audio_tokens: int = 4,
        emotion_prior_dim: int = 256,
        num_emotion_tokens: int = 4,
        emotion_codebook_size: int = 16,
        num_emotions: int = len(DICE_EMOTIONS),
        neutral_index: int = NEUTRAL_INDEX,
        fps: float = 25.0,
        sample_rate: int = 16000,
        added_time_ids: Sequence[float] = (25.0, 8.0, 0.0),
        vae_scaling_factor: float = 1.0,
        emotion_time_embedding: bool = False,
    ) -> None:
        super().__init__()
        lat = resolution // 2 ** (len(vae_block_out_channels) - 1)
        self.vae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vae_block_out_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_block_out_channels),
            block_out_channels=tuple(vae_block_out_channels), layers_per_block=1, latent_channels=latent_channels,
            norm_num_groups=8, sample_size=resolution,
        )
        self.vae.register_to_config(scaling_factor=vae_scaling_factor)  # the callback reads it there
        n_levels = len(block_out_channels)
        self.unet = UNetSpatioTemporalConditionModel(
            sample_size=lat, in_channels=2 * latent_channels, out_channels=latent_channels,
            # Attention only at the coarsest level (and the mid block): full-resolution attention
            # over every frame is what makes a UNet slow on a CPU, and the face is small anyway.
            down_block_types=("DownBlockSpatioTemporal",) * (n_levels - 1) + ("CrossAttnDownBlockSpatioTemporal",),
            up_block_types=("CrossAttnUpBlockSpatioTemporal",) + ("UpBlockSpatioTemporal",) * (n_levels - 1),
            block_out_channels=tuple(block_out_channels), addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 3, layers_per_block=1,
            cross_attention_dim=cross_attention_dim, transformer_layers_per_block=1,
            num_attention_heads=tuple(num_attention_heads), num_frames=num_frames,
        )
        c0 = block_out_channels[0]
        self.image_encoder = ImageTokenEncoder(cross_attention_dim)
        self.audio_model = AudioTokenModel(audio_feature_dim, cross_attention_dim, num_audio_tokens, c0)
        self.emotion_model = EmotionTokenModel(emotion_prior_dim, cross_attention_dim, num_emotion_tokens,
                                               emotion_codebook_size, c0)
        self.register_buffer("emotion_priors", make_emotion_priors(num_emotions, emotion_prior_dim, neutral_index))
        # Deviation from DICE-Talk (emotion enters through cross-attention only there): the prior
        # also shifts the time embedding, i.e. scales/shifts every ResNet block (FiLM). Through
        # tokens alone the small model reads emotion from the voice and barely from the label.
        self.emotion_embedding = None
        if emotion_time_embedding:
            t_dim = 4 * block_out_channels[0]
            self.emotion_embedding = torch.nn.Sequential(
                torch.nn.Linear(emotion_prior_dim, t_dim), torch.nn.SiLU(), torch.nn.Linear(t_dim, t_dim))
        self._residual: torch.Tensor | None = None
        self._time_residual: torch.Tensor | None = None
        self.unet.conv_in.register_forward_hook(self._add_conv_in_residual)
        self.unet.add_embedding.register_forward_hook(self._add_time_residual)

    # -- hooks ------------------------------------------------------------------------------
    def _add_conv_in_residual(self, module, inputs, output):
        if self._residual is None:
            return output
        return output + self._residual.to(output.dtype)

    def _add_time_residual(self, module, inputs, output):
        if self._time_residual is None:
            return output
        return output + self._time_residual.to(output.dtype)

    # -- conditions -------------------------------------------------------------------------
    def emotion_prior(self, emotion: torch.Tensor) -> torch.Tensor:
        """Label indices (B,) -> priors (B, P). The neutral prior is `emotion_prior(neutral_index)`."""
        return self.emotion_priors[emotion.long()]

    def neutral_prior(self, batch_size: int) -> torch.Tensor:
        return self.emotion_priors[self.config.neutral_index].expand(batch_size, -1)

    @property
    def scaling_factor(self) -> float:
        return float(self.config.vae_scaling_factor)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) or (B, 3, H, W) in [-1, 1] -> scaled latents (posterior mean, deterministic)."""
        lead = frames.shape[:-3]
        flat = frames.reshape(-1, *frames.shape[-3:]).to(self.vae.dtype)
        lat = self.vae.encode(flat).latent_dist.mean * self.scaling_factor
        return lat.reshape(*lead, *lat.shape[-3:])

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (..., 4, h, w) -> frames (..., 3, H, W) in about [-1, 1] (differentiable)."""
        lead = latents.shape[:-3]
        flat = latents.reshape(-1, *latents.shape[-3:]) / self.scaling_factor
        img = self.vae.decode(flat.to(self.vae.dtype)).sample
        return img.reshape(*lead, *img.shape[-3:])

    def encode_conditions(
        self,
        reference: torch.Tensor,
        audio_features: torch.Tensor,
        prior: torch.Tensor,
        lat_hw: tuple[int, int],
        drop_reference: torch.Tensor | None = None,
        drop_audio: torch.Tensor | None = None,
        drop_emotion: torch.Tensor | None = None,
    ) -> DiceConditions:
        """reference (B, 3, H, W) in [-1, 1]; audio_features (B, T, F); prior (B, P).

        `drop_*` (B,) bool: condition dropout. A dropped condition becomes zeros (the
        unconditional input); the neutral anchor is a *prior*, not a dropped emotion.
        """
        B, T = audio_features.shape[:2]

        def keep(mask, x):
            if mask is None:
                return x
            return x * (~mask).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

        ref_latent = keep(drop_reference, self.encode_frames(reference))
        img_tok = keep(drop_reference, self.image_encoder(reference.to(self.dtype)))
        aud_tok, aud_map = self.audio_model(keep(drop_audio, audio_features.to(self.dtype)))
        emo_tok, emo_map = self.emotion_model(keep(drop_emotion, prior.to(self.dtype)))
        tokens = torch.cat([img_tok, aud_tok, emo_tok], dim=1)
        fmap = aud_map + emo_map[:, None]
        residual = F.interpolate(fmap.flatten(0, 1), size=lat_hw, mode="bilinear", align_corners=False)
        t_emb = None
        if self.emotion_embedding is not None:
            t_emb = self.emotion_embedding(keep(drop_emotion, prior.to(self.dtype)))
        return DiceConditions(ref_latent, tokens, residual.reshape(B, T, *residual.shape[1:]), t_emb)

    # -- the denoiser -----------------------------------------------------------------------
    def time_ids(self, batch_size: int, device, dtype) -> torch.Tensor:
        return torch.tensor(list(self.config.added_time_ids), device=device, dtype=dtype)[None].expand(batch_size, -1)

    def forward(self, noisy_latents: torch.Tensor, sigma: torch.Tensor, cond: DiceConditions) -> torch.Tensor:
        """F(c_in x_t ⊕ ref_latent, c_noise): noisy_latents (B, T, 4, h, w) = x0 + sigma eps; sigma (B,).

        Returns the v-prediction (B, T, 4, h, w); x0_hat = edm.x0_from_v(v, x_t, sigma).
        """
        B, T = noisy_latents.shape[:2]
        x_in = edm.precondition_input(noisy_latents, sigma)
        ref = cond.ref_latent[:, None].expand(-1, T, -1, -1, -1)
        sample = torch.cat([x_in, ref.to(x_in.dtype)], dim=2).to(self.unet.dtype)
        self._residual = cond.conv_in_residual.flatten(0, 1)
        self._time_residual = cond.time_embedding
        try:
            out = self.unet(
                sample, edm.c_noise(sigma).to(sample.device), encoder_hidden_states=cond.tokens.to(self.unet.dtype),
                added_time_ids=self.time_ids(B, sample.device, self.unet.dtype),
            ).sample
        finally:
            self._residual = self._time_residual = None
        return out

    @torch.no_grad()
    def sample(
        self,
        reference: torch.Tensor,
        audio_features: torch.Tensor,
        prior: torch.Tensor,
        num_inference_steps: int = 12,
        sigma_max: float = 80.0,
        sigma_min: float = 0.002,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Euler (EDM) sampling -> frames (B, T, 3, H, W) in [-1, 1].

        Classifier-free guidance (scale > 1) contrasts with zeroed audio and emotion, reference kept.
        Pass the same `noise` to render the target and the neutral anchor from one starting point.
        """
        B, T = audio_features.shape[:2]
        res = self.config.resolution
        lat_hw = (res // 2 ** (len(self.config.vae_block_out_channels) - 1),) * 2
        shape = (B, T, self.config.latent_channels, *lat_hw)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=generator.device if generator else reference.device)
        noise = noise.to(reference.device, torch.float32)
        cond = self.encode_conditions(reference, audio_features, prior, lat_hw)
        uncond = None
        if guidance_scale != 1.0:
            ones = torch.ones(B, dtype=torch.bool, device=reference.device)
            uncond = self.encode_conditions(reference, audio_features, prior, lat_hw, drop_audio=ones, drop_emotion=ones)
        sigmas = edm.karras_sigmas(num_inference_steps, sigma_min, sigma_max).to(reference.device)
        x = noise * sigmas[0]
        for i in range(num_inference_steps):
            s = sigmas[i].expand(B)
            x0 = edm.x0_from_v(self(x, s, cond).float(), x, s)
            if uncond is not None:
                x0_u = edm.x0_from_v(self(x, s, uncond).float(), x, s)
                x0 = x0_u + guidance_scale * (x0 - x0_u)
            d = (x - x0) / sigmas[i]
            x = x + d * (sigmas[i + 1] - sigmas[i])
        return self.decode_latents(x).clamp(-1, 1).float()


def fit_autoencoder(
    model: ReferenceDICE,
    frames: torch.Tensor,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Fit the tiny VAE to frames (N, 3, H, W) in [-1, 1] (reconstruction + a small KL), then set
    `vae_scaling_factor` so the latents have unit std (what SVD's 0.18215 does for its VAE).

    Returns {"recon_mse": final MSE, "scaling_factor": ...}. A stock fresh VAE decodes noise; the
    demo model is trained from scratch, so its autoencoder comes first.
    """
    from tqdm.auto import tqdm

    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames (N, 3, H, W) in [-1, 1], got {tuple(frames.shape)}")
    vae = model.vae
    vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    mse = float("nan")
    bar = tqdm(range(steps), desc="autoencoder", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, frames.shape[0], (min(batch_size, frames.shape[0]),), generator=g)
        x = frames[idx].to(model.device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(x.device)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mse = F.mse_loss(rec.detach(), x).item()
        bar.set_postfix(mse=f"{mse:.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        lat = vae.encode(frames[: 256].to(model.device)).latent_dist.mean
        scale = float(1.0 / lat.std().clamp_min(1e-3))
    model.register_to_config(vae_scaling_factor=scale)
    vae.register_to_config(scaling_factor=scale)
    return {"recon_mse": mse, "scaling_factor": scale}
