"""A small EAT-style audio-driven talking-head generator of our own (EAT: Gan et al., ICCV 2023).

It mirrors the *structure* of EAT (facts §5) at a size that trains on a CPU in minutes:

- **Deep emotional prompt** (:class:`EmotionPromptMapper`): a latent ``z_trg ~ N(0, I_16)`` goes
  through a shared MLP and one head per emotion ``y_trg`` in
  ``[ang, con, dis, fea, hap, neu, sad, sur]`` (neutral = 5), giving one emotion prompt token and
  ``num_deep_prompts`` deep prompt tokens (EAT's ``EmotionDeepPrompt`` returns the same split).
- **Audio-to-expression transformer** (:class:`Audio2ExpressionTransformer`): per-frame audio
  features, FiLM-modulated by the emotion prompt (EAT's emotional adaptation), are encoded
  together with the prompt tokens and an identity token by a transformer encoder; each audio
  position predicts a 2D offset for each of ``num_kp`` implicit keypoints (EAT predicts a 45-d
  3D keypoint expression offset; 2D keeps the renderer cheap).
- **Renderer** (:class:`KeypointRenderer`): face-vid2vid style. Keypoints of the source are found by
  a soft-argmax keypoint detector; the driving keypoints are source + expression offset; a mask
  network blends per-keypoint translations into a dense backward flow; the source is warped with
  it and a residual network, FiLM-modulated by the emotion prompt, refines the result. Output through a sigmoid, in ``[0, 1]`` like EAT's
  ``OcclusionAwareSPADEGeneratorEam``.

The forward returns EAT's layout: ``out["prediction"]`` is ``(B * T, 3, H, W)`` in ``[0, 1]``, so
the EAT adapter handles the reference model and the real EAT generator through the same code.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .weighting import motion_weights

__all__ = [
    "EMOTIONS",
    "NEUTRAL_INDEX",
    "EmotionPromptMapper",
    "Audio2ExpressionTransformer",
    "KeypointRenderer",
    "ReferenceEATModel",
    "gaussian_heatmaps",
    "soft_argmax",
    "make_grid",
]

# EAT's emotion order (facts §5).
EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
NEUTRAL_INDEX = 5


# ----------------------------------------------------------------------------- functional core


def make_grid(h: int, w: int, device=None, dtype=None) -> torch.Tensor:
    """Pixel-centre coordinates ``(h, w, 2)`` as ``(x, y)`` in ``[-1, 1]`` (``grid_sample`` order)."""
    ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def soft_argmax(heatmap_logits: torch.Tensor) -> torch.Tensor:
    """Keypoints as the expectation of a spatial softmax.

    heatmap_logits: ``(N, K, h, w)``; returns ``(N, K, 2)`` as ``(x, y)`` in ``[-1, 1]``:
    ``kp_k = sum_p softmax(H_k)_p * p``.
    """
    n, k, h, w = heatmap_logits.shape
    prob = heatmap_logits.flatten(2).softmax(-1).view(n, k, h, w, 1)
    grid = make_grid(h, w, heatmap_logits.device, heatmap_logits.dtype).view(1, 1, h, w, 2)
    return (prob * grid).sum(dim=(2, 3))


def gaussian_heatmaps(kp: torch.Tensor, h: int, w: int, sigma: float = 0.1) -> torch.Tensor:
    """Gaussian blobs at keypoints: ``kp (N, K, 2)`` in ``[-1, 1]`` -> ``(N, K, h, w)`` in ``(0, 1]``.

    ``G_k(p) = exp(-||p - kp_k||^2 / (2 sigma^2))``.
    """
    grid = make_grid(h, w, kp.device, kp.dtype).view(1, 1, h, w, 2)
    d2 = ((grid - kp[:, :, None, None, :]) ** 2).sum(-1)
    return torch.exp(-d2 / (2.0 * sigma**2))


# ----------------------------------------------------------------------------- modules


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(groups, cout), nn.SiLU())


class EmotionPromptMapper(nn.Module):
    """``(z_trg (B, latent_dim), y_trg (B,))`` -> prompt ``(B, D)`` and deep prompts ``(B, P, D)``.

    StarGAN-v2-style mapping as in EAT's ``MappingDeepNetwork``: shared layers, then one
    unshared head per emotion domain; the head of ``y_trg`` is selected per sample.
    """

    def __init__(self, latent_dim: int, dim: int, num_emotions: int, num_deep_prompts: int, hidden: int):
        super().__init__()
        self.dim, self.num_deep_prompts = dim, num_deep_prompts
        self.shared = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.heads = nn.ModuleList(
            [nn.Linear(hidden, (1 + num_deep_prompts) * dim) for _ in range(num_emotions)]
        )

    def forward(self, z_trg: torch.Tensor, y_trg: torch.Tensor):
        h = self.shared(z_trg)
        out = torch.stack([head(h) for head in self.heads], dim=1)  # (B, E, (1+P) D)
        out = out[torch.arange(z_trg.shape[0], device=z_trg.device), y_trg.long()]
        out = out.view(-1, 1 + self.num_deep_prompts, self.dim)
        return out[:, 0], out[:, 1:]


class Audio2ExpressionTransformer(nn.Module):
    """Audio ``(B, T, A)`` + prompt tokens + identity token -> keypoint offsets ``(B, T, K, 2)``."""

    def __init__(self, audio_dim: int, dim: int, num_layers: int, num_heads: int, num_kp: int,
                 max_frames: int, exp_scale: float):
        super().__init__()
        self.num_kp, self.exp_scale = num_kp, exp_scale
        self.audio_in = nn.Sequential(nn.Linear(audio_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.pos = nn.Parameter(torch.randn(1, max_frames, dim) * 0.02)
        # Emotional adaptation: FiLM of the audio tokens by the prompt (identity at init).
        self.film = nn.Linear(dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        layer = nn.TransformerEncoderLayer(dim, num_heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.to_exp = nn.Linear(dim, num_kp * 2)

    def forward(self, audio, prompt, deep_prompts, identity):
        b, t, _ = audio.shape
        if t > self.pos.shape[1]:
            raise ValueError(f"expected at most {self.pos.shape[1]} frames of audio, got {t}")
        a = self.audio_in(audio) + self.pos[:, :t]
        gamma, beta = self.film(prompt).unsqueeze(1).chunk(2, dim=-1)
        a = a * (1 + gamma) + beta
        tokens = torch.cat([prompt.unsqueeze(1), deep_prompts, identity.unsqueeze(1), a], dim=1)
        h = self.norm(self.encoder(tokens))[:, -t:]
        return torch.tanh(self.to_exp(h)).view(b, t, self.num_kp, 2) * self.exp_scale


class KeypointRenderer(nn.Module):
    """Animate a source face from keypoints: dense motion from sparse keypoint motion + residual.

    source ``(N, 3, H, W)`` in ``[0, 1]``, kp_source / kp_driving ``(N, K, 2)`` in ``[-1, 1]``
    (and an optional emotion prompt ``(N, D)`` modulating the refinement) -> frame ``(N, 3, H, W)``
    in ``[0, 1]``. Backward warp (face-vid2vid): a driving pixel ``p``
    near keypoint ``k`` samples the source at ``p + kp_source_k - kp_driving_k``.
    """

    def __init__(self, num_kp: int, channels: int, sigma: float, prompt_dim: int = 0):
        super().__init__()
        self.num_kp, self.sigma = num_kp, sigma
        cin = 3 + 2 * num_kp
        self.mask_net = nn.Sequential(_conv_block(cin, channels), _conv_block(channels, channels),
                                      nn.Conv2d(channels, num_kp + 1, 3, 1, 1))
        self.refine = nn.Sequential(_conv_block(3 + 3 + num_kp, channels), _conv_block(channels, channels),
                                    _conv_block(channels, channels), nn.Conv2d(channels, 3, 3, 1, 1))
        # Emotional adaptation of the renderer (EAT passes the prompt to its generator's `ea` modules):
        # FiLM of the first refine features by the emotion prompt, identity at init.
        self.prompt_film = nn.Linear(prompt_dim, 2 * channels) if prompt_dim else None
        if self.prompt_film is not None:
            nn.init.zeros_(self.prompt_film.weight)
            nn.init.zeros_(self.prompt_film.bias)
        # Starts as a pure warp of the source: the residual is zero at init.
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, source, kp_source, kp_driving, prompt=None):
        n, _, h, w = source.shape
        # Motion is estimated at half resolution (as face-vid2vid does), then upsampled.
        hs, ws = max(h // 2, 8), max(w // 2, 8)
        src_small = F.interpolate(source, size=(hs, ws), mode="bilinear", align_corners=False)
        heat_d = gaussian_heatmaps(kp_driving, hs, ws, self.sigma)
        heat_s = gaussian_heatmaps(kp_source, hs, ws, self.sigma)
        masks = self.mask_net(torch.cat([src_small, heat_d, heat_s], dim=1)).softmax(dim=1)  # (N, K+1, hs, ws)
        delta = (kp_source - kp_driving).view(n, self.num_kp, 1, 1, 2)
        # Displacement only (background moves by 0), upsampled and added to the full-size identity
        # grid, so no motion means exactly the identity warp.
        disp = (masks[:, 1:].unsqueeze(-1) * delta).sum(1)  # (N, hs, ws, 2)
        disp = F.interpolate(disp.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False)
        flow = make_grid(h, w, source.device, source.dtype).unsqueeze(0) + disp.permute(0, 2, 3, 1)
        warped = F.grid_sample(source, flow, mode="bilinear", padding_mode="border", align_corners=True)
        heat_full = gaussian_heatmaps(kp_driving, h, w, self.sigma)
        h = self.refine[0](torch.cat([warped, source, heat_full], dim=1))
        if prompt is not None and self.prompt_film is not None:
            gamma, beta = self.prompt_film(prompt)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + gamma) + beta
        residual = self.refine[1:](h)
        return torch.sigmoid(torch.logit(warped.clamp(1e-3, 1 - 1e-3)) + residual), warped


class ReferenceEATModel(ModelMixin, ConfigMixin):
    """EAT-style generator: (source frame, audio, emotion label, z_trg) -> talking frames in [0, 1].

    Args (all in ``config.json``):
        image_size: side of the square frames.
        audio_dim: audio features per video frame (e.g. stacked mel bins).
        num_emotions: 8, EAT's order (:data:`EMOTIONS`), neutral = 5.
        latent_dim: size of ``z_trg`` (16 as EAT's deep prompts).
        dim, num_layers, num_heads: the audio-to-expression transformer.
        num_kp: implicit keypoints (EAT: 15 in 3D; here 2D).
        num_deep_prompts: deep prompt tokens besides the emotion prompt token.
        max_frames: longest clip the positional embedding covers.
        exp_scale: bound of the keypoint offsets (tanh * exp_scale), in [-1, 1] image units.
        render_channels, kp_sigma: the renderer.
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,
        audio_dim: int = 80,
        num_emotions: int = 8,
        latent_dim: int = 16,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        num_kp: int = 10,
        num_deep_prompts: int = 2,
        max_frames: int = 32,
        exp_scale: float = 0.25,
        render_channels: int = 32,
        kp_sigma: float = 0.12,
    ):
        super().__init__()
        c = render_channels
        self.kp_detector = nn.Sequential(_conv_block(3, c, 2), _conv_block(c, c, 2), _conv_block(c, c),
                                         nn.Conv2d(c, num_kp, 3, 1, 1))
        self.identity = nn.Sequential(_conv_block(3, c, 2), _conv_block(c, c, 2), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(c, dim))
        self.prompt = EmotionPromptMapper(latent_dim, dim, num_emotions, num_deep_prompts, hidden=2 * dim)
        self.audio2exp = Audio2ExpressionTransformer(audio_dim, dim, num_layers, num_heads, num_kp,
                                                     max_frames, exp_scale)
        self.renderer = KeypointRenderer(num_kp, c, kp_sigma, prompt_dim=dim)

    def _check(self, source, audio, y_trg, z_trg):
        cfg = self.config
        if source.ndim != 4 or source.shape[1] != 3:
            raise ValueError(f"expected source (B, 3, H, W) in [0, 1], got {tuple(source.shape)}")
        b = source.shape[0]
        if audio.ndim != 3 or audio.shape[0] != b or audio.shape[2] != cfg.audio_dim:
            raise ValueError(f"expected audio ({b}, T, {cfg.audio_dim}), got {tuple(audio.shape)}")
        if y_trg.shape != (b,):
            raise ValueError(f"expected y_trg ({b},) emotion indices, got {tuple(y_trg.shape)}")
        if y_trg.numel() and (int(y_trg.min()) < 0 or int(y_trg.max()) >= cfg.num_emotions):
            raise ValueError(f"expected y_trg in [0, {cfg.num_emotions}), got {y_trg.tolist()}")
        if z_trg is None or z_trg.shape != (b, cfg.latent_dim):
            # EAT's deep prompt breaks on a None prompt (facts §5): require the latent explicitly.
            got = None if z_trg is None else tuple(z_trg.shape)
            raise ValueError(f"expected z_trg ({b}, {cfg.latent_dim}) ~ N(0, I), got {got}")

    def forward(self, source: torch.Tensor, audio: torch.Tensor, y_trg: torch.Tensor,
                z_trg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Render ``T`` frames per clip.

        Args:
            source: ``(B, 3, H, W)`` in ``[0, 1]``, the identity frame.
            audio: ``(B, T, audio_dim)`` audio features aligned to the video frames.
            y_trg: ``(B,)`` long, emotion index (5 = neutral).
            z_trg: ``(B, latent_dim)``, the deep-prompt latent ``~ N(0, I)``.

        Returns:
            dict with ``prediction`` ``(B * T, 3, H, W)`` in ``[0, 1]`` (EAT's layout, frames of a clip
            consecutive), ``kp_source`` ``(B, K, 2)``, ``kp_driving`` ``(B, T, K, 2)``, ``exp``
            ``(B, T, K, 2)`` (the expression offsets) and ``warped`` ``(B * T, 3, H, W)``.
        """
        self._check(source, audio, y_trg, z_trg)
        b, t = audio.shape[:2]
        kp_source = soft_argmax(self.kp_detector(source))
        prompt, deep = self.prompt(z_trg, y_trg)
        exp = self.audio2exp(audio, prompt, deep, self.identity(source))
        kp_driving = kp_source.unsqueeze(1) + exp
        rep = lambda v: v.unsqueeze(1).expand(b, t, *v.shape[1:]).reshape(b * t, *v.shape[1:])  # noqa: E731
        pred, warped = self.renderer(rep(source), rep(kp_source), kp_driving.reshape(b * t, -1, 2), rep(prompt))
        return {"prediction": pred, "warped": warped, "kp_source": kp_source, "kp_driving": kp_driving, "exp": exp}

    @staticmethod
    def reconstruction_losses(generated: Dict[str, torch.Tensor], driving: torch.Tensor,
                              exp_weight: float = 0.01, source: torch.Tensor | None = None,
                              motion_weight: float = 0.0) -> Dict[str, torch.Tensor]:
        """The model's own training losses (what EAT's ``loss_values`` holds for the real model).

        driving: ``(B, T, 3, H, W)`` or ``(B * T, 3, H, W)`` ground-truth frames in ``[0, 1]``.
        ``rec`` = L1 at full and half resolution (a cheap pyramid, as EAT's pyramid perceptual
        loss), ``exp_reg`` = ``exp_weight * mean |exp|`` (EAT's expression L1 prior).

        ``motion_weight`` > 0 (needs ``source (B, 3, H, W)``) weights each pixel's L1 by
        :func:`~stccl_diffusers.models.weighting.motion_weights`: where the frame differs from the
        source (mouth, brows, eyes) counts more. Not in EAT (see that module for why).
        """
        pred = generated["prediction"]
        gt = driving.reshape(pred.shape)
        w = w2 = 1.0
        if motion_weight > 0:
            if source is None:
                raise ValueError("motion_weight > 0 needs the source frames (B, 3, H, W)")
            t = pred.shape[0] // source.shape[0]
            src = source.unsqueeze(1).expand(-1, t, -1, -1, -1).reshape(pred.shape)
            w = motion_weights(gt, src, motion_weight)
            w2 = F.avg_pool2d(w, 2)
        rec = ((pred - gt).abs() * w).mean() + ((F.avg_pool2d(pred, 2) - F.avg_pool2d(gt, 2)).abs() * w2).mean()
        return {"rec": rec, "exp_reg": exp_weight * generated["exp"].abs().mean()}

