"""The real DICE-Talk behind the adapter interface, imported from the user's own checkout.

DICE-Talk (github toto222/DICE-Talk, CC BY-NC-SA 4.0) is never vendored: its modules are
imported with importlib from `--dice_talk_root`, its weights read from `--dice_checkpoints`,
`--svd_path` (SVD-xt: vae, image_encoder, unet config) and `--whisper_path`. The conditioning is
built as DICE-Talk's inference pipeline builds it (facts §4): 8-channel UNet input (c_in x_t ⊕
reference latent), CLIP image embedding, whisper hidden states -> `AudioProjModel` -> 32 audio
tokens per frame, 256-d emotion prior -> `EmotionModel` -> 32 emotion tokens, the two IP-adapter
streams masked to the face (`ip_adapter_masks`), `PoseGuider` features of the face mask as
`spatial_condition`, `added_time_ids` [fps, motion_bucket_id, noise_aug]. The neutral anchor is
the same inputs with `examples/emo/neutral.npy`'s prior.

Batch (one clip per sample, T frames, 512x512 for the released model):
  frames (B, T, 3, H, W) in [-1, 1]; reference (B, 3, H, W) in [-1, 1];
  clip_image (B, 3, 224, 224) CLIP-normalised (optional: made from `reference`);
  audio_prompts (B, T, 10, 5, 384) whisper-tiny hidden-state windows (see :func:`audio_windows`);
  emotion (B,) index into DICE_EMOTIONS; face_box (B, 4) pixels.
This path cannot run without the user's weights and a large GPU; it is tested against stand-in
modules that have DICE-Talk's call signatures.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import edm
from ..models.reference_dice import DICE_EMOTIONS, NEUTRAL_INDEX
from ..training.adapter import TalkingHeadAdapter
from .dice import DiceStepMixin

DICE_CHECKPOINT_FILES = ("unet.pth", "pose_guider.pth", "audio_linear.pth", "emo_model.pth")
DICE_MODULES = {
    "UNetSpatioTemporalConditionModel": "src.models.base.unet_spatio_temporal_condition",
    "add_ip_adapters": "src.models.base.unet_spatio_temporal_condition",
    "PoseGuider": "src.models.audio_adapter.pose_guider",
    "AudioProjModel": "src.models.audio_adapter.audio_proj",
    "EmotionModel": "src.models.emotion_adapter.emo",
}
SVD_SUBFOLDERS = ("unet/config.json", "vae/config.json", "image_encoder/config.json")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class DiceTalkPaths:
    root: Path
    checkpoints: Path
    svd: Path
    whisper: Path | None


def check_dice_talk_paths(dice_talk_root, dice_checkpoints, svd_path, whisper_path=None) -> DiceTalkPaths:
    """Every file the real backend needs, checked before any model is built; all missing ones named."""
    missing: list[str] = []
    given = {"--dice_talk_root": dice_talk_root, "--dice_checkpoints": dice_checkpoints, "--svd_path": svd_path}
    for flag, value in given.items():
        if not value:
            missing.append(f"{flag} (not set)")
    if missing:
        raise FileNotFoundError("DICE-Talk backend: missing " + "; ".join(missing))
    root, ckpt, svd = Path(dice_talk_root), Path(dice_checkpoints), Path(svd_path)
    for module in sorted(set(DICE_MODULES.values())):
        p = root / (module.replace(".", "/") + ".py")
        if not p.is_file():
            missing.append(str(p))
    for emo in DICE_EMOTIONS:
        p = root / "examples" / "emo" / f"{emo}.npy"
        if not p.is_file():
            missing.append(str(p))
    missing += [str(ckpt / f) for f in DICE_CHECKPOINT_FILES if not (ckpt / f).is_file()]
    missing += [str(svd / f) for f in SVD_SUBFOLDERS if not (svd / f).is_file()]
    whisper = Path(whisper_path) if whisper_path else None
    if whisper is not None and not (whisper / "config.json").is_file():
        missing.append(str(whisper / "config.json"))
    if missing:
        raise FileNotFoundError(f"DICE-Talk backend: {len(missing)} file(s) missing: " + ", ".join(missing))
    return DiceTalkPaths(root, ckpt, svd, whisper)


def import_dice_talk(root: str | Path) -> SimpleNamespace:
    """DICE-Talk's own classes, imported from the user's checkout (its code uses `src.` imports)."""
    root = str(Path(root).resolve())
    stale = [m for m in sys.modules if m == "src" or m.startswith("src.")]
    for m in stale:  # another project's `src` package must not shadow DICE-Talk's
        mod_file = getattr(sys.modules[m], "__file__", None) or ""
        if not mod_file.startswith(root):
            del sys.modules[m]
    if root not in sys.path:
        sys.path.insert(0, root)
    ns = {}
    for name, module in DICE_MODULES.items():
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            raise ImportError(f"{module} in {root} has no {name}; is this a DICE-Talk checkout?")
        ns[name] = getattr(mod, name)
    return SimpleNamespace(**ns)


def load_emotion_priors(root: str | Path) -> torch.Tensor:
    """(8, 256) priors in DICE_EMOTIONS order from `examples/emo/*.npy` (`.item()['mu']`, (1, 256)).

    These files are pickled dicts, so `allow_pickle=True` is needed: load them only from a
    checkout you trust.
    """
    priors = []
    for emo in DICE_EMOTIONS:
        path = Path(root) / "examples" / "emo" / f"{emo}.npy"
        mu = np.asarray(np.load(path, allow_pickle=True).item()["mu"], dtype=np.float32)
        if mu.shape != (1, 256):
            raise ValueError(f"{path}: expected mu of shape (1, 256), got {mu.shape}")
        priors.append(torch.from_numpy(mu[0]))
    return torch.stack(priors)


def audio_windows(audio_prompts: torch.Tensor, num_frames: int, start_frame: int = 0) -> torch.Tensor:
    """Whisper hidden states (B, L, 5, 384) at 50 Hz -> per-video-frame windows (B, T, 10, 5, 384).

    As DICE-Talk's inference: pad 4 zero steps before and 6 after, frame i (25 fps) takes steps
    [2i, 2i + 10) of the padded sequence.
    """
    if audio_prompts.ndim != 4:
        raise ValueError(f"expected whisper hidden states (B, L, layers, C), got {tuple(audio_prompts.shape)}")
    padded = torch.cat([torch.zeros_like(audio_prompts[:, :4]), audio_prompts, torch.zeros_like(audio_prompts[:, :6])], 1)
    need = 2 * (start_frame + num_frames - 1) + 10
    if padded.shape[1] < need:
        raise ValueError(f"audio too short: {audio_prompts.shape[1]} whisper steps for frames up to "
                         f"{start_frame + num_frames} (need {need - 10} steps)")
    return torch.stack([padded[:, 2 * i: 2 * i + 10] for i in range(start_frame, start_frame + num_frames)], dim=1)


def box_mask(face_box: torch.Tensor, height: int, width: int, channels: int = 3) -> torch.Tensor:
    """(B, 4) x1, y1, x2, y2 pixels -> (B, channels, H, W) mask in {0, 1} (DICE-Talk's face mask image)."""
    ys = torch.arange(height, device=face_box.device).view(1, -1, 1) + 0.5
    xs = torch.arange(width, device=face_box.device).view(1, 1, -1) + 0.5
    b = face_box.float()
    m = (xs >= b[:, 0, None, None]) & (xs < b[:, 2, None, None]) & (ys >= b[:, 1, None, None]) & (ys < b[:, 3, None, None])
    return m.float()[:, None].expand(-1, channels, -1, -1)


@dataclass
class DiceTalkConditions:
    ref_latent: torch.Tensor  # (B, 4, h, w) unscaled VAE mode, as SVD conditions
    image_embeds: torch.Tensor  # (B*T, 1, 1024)
    audio_tokens: torch.Tensor  # (B*T, 32, 1024)
    emo_tokens: torch.Tensor  # (B*T, 32, 1024)
    pose_fea: torch.Tensor  # (B, T, 320, h, w)
    face_mask: torch.Tensor  # (B, 1, H, W)


class DiceTalkAdapter(DiceStepMixin, TalkingHeadAdapter):
    """DICE-Talk's UNet (+ IP adapters, PoseGuider, AudioProjModel, EmotionModel), SVD's VAE and CLIP."""

    lora_prefix = "unet"

    def __init__(self, unet, vae, image_encoder, pose_guider, audio_linear, emo_model, emotion_priors: torch.Tensor,
                 callback=None, p_mean=0.7, p_std=1.6, dropout_probs=(0.05, 0.05, 0.05), fps: float = 12.5,
                 motion_bucket_id: float = 8.0, noise_aug_strength: float = 16.0, num_inference_steps: int = 25,
                 guidance_scale: float = 1.0, use_face_boxes: bool = True, whisper=None,
                 feature_extractor=None) -> None:
        super().__init__()
        self.whisper, self.feature_extractor = whisper, feature_extractor
        self.unet, self.vae, self.image_encoder = unet, vae, image_encoder
        self.pose_guider, self.audio_linear, self.emo_model = pose_guider, audio_linear, emo_model
        if emotion_priors.shape != (len(DICE_EMOTIONS), 256):
            raise ValueError(f"expected emotion priors ({len(DICE_EMOTIONS)}, 256), got {tuple(emotion_priors.shape)}")
        if torch.count_nonzero(emotion_priors[NEUTRAL_INDEX]) == 0:
            raise ValueError("the neutral prior is all zeros: zeros are the unconditional input, not neutral")
        self.register_buffer("emotion_priors", emotion_priors.float())
        self.callback = callback
        self.p_mean, self.p_std, self.dropout_probs = p_mean, p_std, tuple(dropout_probs)
        self.time_ids = (fps, motion_bucket_id, noise_aug_strength)  # DICE-Talk's added_time_ids
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        self.use_face_boxes = use_face_boxes
        for m in (vae, image_encoder, pose_guider, audio_linear, emo_model, unet, whisper):
            if m is not None:
                m.requires_grad_(False)

    # -- TalkingHeadAdapter ----------------------------------------------------------------
    def lora_model(self):
        return self.unet

    def set_weight_dtype(self, dtype):
        if dtype == torch.float32:
            return
        for m in (self.vae, self.image_encoder, self.pose_guider, self.audio_linear, self.emo_model, self.unet):
            if not any(p.requires_grad for p in m.parameters()):
                m.to(dtype)

    def training_step(self, batch, step, generator):
        return self.edm_step(batch, step, generator)

    @torch.no_grad()
    def render_validation(self, batch, generator=None):
        x_shape = self._latent_shape(batch)
        gdev = generator.device if generator is not None else batch["reference"].device
        noise = torch.randn(x_shape, generator=generator, device=gdev).to(batch["reference"].device)
        out = {}
        for key, prior in (("target", self.target_prior(batch)), ("anchor", self.neutral_prior(batch))):
            cond = self.conditions(batch, prior, (None, None, None))
            sigmas = edm.karras_sigmas(self.num_inference_steps, 0.002, 700.0).to(noise.device)
            x = noise * sigmas[0]
            for i in range(self.num_inference_steps):
                s = sigmas[i].expand(x.shape[0])
                x0 = edm.x0_from_v(self.denoise(x, s, cond).float(), x, s)
                x = x + (x - x0) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            out[key] = self.decode(x).clamp(-1, 1)
        return out

    # -- DiceStepMixin ---------------------------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def audio_prompts(self, batch) -> torch.Tensor:
        """(B, T, 10, 5, 384): given in the batch, or whisper-tiny hidden states of `audio` (B, N) at 16 kHz."""
        if "audio_prompts" in batch:
            return batch["audio_prompts"]
        if self.whisper is None or self.feature_extractor is None:
            raise ValueError("expected batch['audio_prompts'] (B, T, 10, 5, 384) or a whisper model (--whisper_path) "
                             "to compute them from batch['audio']")
        T = batch["frames"].shape[1] if "frames" in batch else int(batch["num_frames"])
        wav = batch["audio"].float().cpu().numpy()
        feats = self.feature_extractor(list(wav), sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            hidden = self.whisper.encoder(feats.to(self.whisper.device, self.whisper.dtype),
                                          output_hidden_states=True).hidden_states
        prompts = torch.stack(hidden, dim=2)[:, : 2 * T]  # 50 Hz whisper steps, 2 per 25 fps frame
        return audio_windows(prompts, T)

    def _latent_shape(self, batch):
        B, T = self.audio_prompts(batch).shape[:2]
        H, W = batch["reference"].shape[-2:]
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (B, T, self.vae.config.latent_channels, H // f, W // f)

    def encode_latents(self, batch):
        frames = batch["frames"]
        with torch.no_grad():
            lat = self.vae.encode(frames.flatten(0, 1).to(self.vae.dtype)).latent_dist.mean * self.scaling_factor
        return lat.float().reshape(*frames.shape[:2], *lat.shape[1:])

    def decode(self, latents):
        B, T = latents.shape[:2]
        img = self.vae.decode((latents.flatten(0, 1) / self.scaling_factor).to(self.vae.dtype), num_frames=T).sample
        return img.float().reshape(B, T, *img.shape[1:])

    def target_prior(self, batch):
        return self.emotion_priors[batch["emotion"].long()]

    def neutral_prior(self, batch):
        return self.emotion_priors[NEUTRAL_INDEX].expand(batch["emotion"].shape[0], -1)

    def _clip_image(self, batch):
        if "clip_image" in batch:
            return batch["clip_image"]
        ref = (batch["reference"].float() + 1) / 2
        ref = F.interpolate(ref, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=ref.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=ref.device).view(1, 3, 1, 1)
        return (ref - mean) / std

    def conditions(self, batch, prior, drops) -> DiceTalkConditions:
        ref = batch["reference"]
        prompts = self.audio_prompts(batch)
        B, T = prompts.shape[:2]
        H, W = ref.shape[-2:]
        dtype = self.unet.dtype

        def keep(mask, x):
            return x if mask is None else x * (~mask).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

        with torch.no_grad():
            ref_latent = self.vae.encode(ref.to(self.vae.dtype)).latent_dist.mode()
        ref_latent = keep(drops[0], ref_latent)
        img = keep(drops[0], self.image_encoder(self._clip_image(batch).to(self.image_encoder.dtype)).image_embeds)
        image_embeds = img[:, None].repeat_interleave(T, dim=0)  # (B*T, 1, D)
        audio = keep(drops[1], prompts.to(dtype))
        audio_tokens = self.audio_linear(audio).flatten(0, 1)  # (B*T, 32, 1024)
        emo = keep(drops[2], prior.to(dtype)).reshape(B, 1, 1, 1, -1)
        emo_tokens = self.emo_model(emo, retrieval=True)[0]  # (B, 1, 32, D)
        emo_tokens = emo_tokens.reshape(B, -1, *emo_tokens.shape[-2:])[:, :1].expand(-1, T, -1, -1).flatten(0, 1)
        box = batch.get("face_box")
        if box is None:
            box = torch.tensor([[0.0, 0.0, W, H]], device=ref.device).expand(B, 4)
        mask = box_mask(box, H, W).to(dtype)  # (B, 3, H, W)
        pose_fea = self.pose_guider(mask[:, :, None].expand(-1, -1, T, -1, -1)).transpose(1, 2)
        return DiceTalkConditions(ref_latent, image_embeds.to(dtype), audio_tokens, emo_tokens, pose_fea, mask[:, :1])

    def denoise(self, x_t, sigma, cond: DiceTalkConditions):
        B, T = x_t.shape[:2]
        dtype = self.unet.dtype
        inp = torch.cat([edm.precondition_input(x_t, sigma), cond.ref_latent[:, None].expand(-1, T, -1, -1, -1)], 2)
        ids = torch.tensor(self.time_ids, device=x_t.device, dtype=dtype)[None].expand(B, -1)
        out = self.unet(
            inp.to(dtype), edm.c_noise(sigma).to(x_t.device),
            encoder_hidden_states=(cond.image_embeds, [cond.audio_tokens, cond.emo_tokens]),
            spatial_condition=cond.pose_fea, cross_attention_kwargs={"ip_adapter_masks": [cond.face_mask] * 2},
            added_time_ids=ids, return_dict=False,
        )[0]
        return out


def build_dice_talk_adapter(cfg, metric, device=None) -> DiceTalkAdapter:
    """Check paths, import DICE-Talk from the checkout, load its weights, wrap them with the reward."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionModelWithProjection

    from .dice import build_callback

    paths = check_dice_talk_paths(cfg.dice_talk_root, cfg.dice_checkpoints, cfg.svd_path, cfg.whisper_path)
    dt = import_dice_talk(paths.root)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(str(paths.svd), subfolder="vae")
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(str(paths.svd), subfolder="image_encoder")
    unet = dt.UNetSpatioTemporalConditionModel.from_pretrained(str(paths.svd), subfolder="unet")
    dt.add_ip_adapters(unet, [32, 32], [1.0, 1.0])
    pose_guider = dt.PoseGuider(conditioning_embedding_channels=unet.config.block_out_channels[0],
                                block_out_channels=(16, 32, 96, 256))
    audio_linear = dt.AudioProjModel(seq_len=10, blocks=5, channels=384, intermediate_dim=1024,
                                     output_dim=unet.config.cross_attention_dim, context_tokens=32)
    emo_model = dt.EmotionModel()
    for module, name, strict in ((unet, "unet.pth", False), (pose_guider, "pose_guider.pth", True),
                                 (audio_linear, "audio_linear.pth", True), (emo_model, "emo_model.pth", False)):
        state = torch.load(paths.checkpoints / name, map_location="cpu", weights_only=True)
        result = module.load_state_dict(state, strict=strict)
        if not strict and result.unexpected_keys:
            raise ValueError(f"{paths.checkpoints / name}: keys not in {type(module).__name__}: {result.unexpected_keys[:5]}")
    whisper = extractor = None
    if paths.whisper is not None:
        from transformers import WhisperFeatureExtractor, WhisperModel

        whisper = WhisperModel.from_pretrained(str(paths.whisper)).eval()
        extractor = WhisperFeatureExtractor.from_pretrained(str(paths.whisper))
    callback = build_callback(cfg, metric, decoder=vae)
    return DiceTalkAdapter(
        unet, vae, image_encoder, pose_guider, audio_linear, emo_model, load_emotion_priors(paths.root),
        callback=callback, p_mean=cfg.p_mean, p_std=cfg.p_std,
        dropout_probs=(cfg.drop_reference, cfg.drop_audio, cfg.drop_emotion),
        num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
        use_face_boxes=cfg.use_face_boxes, whisper=whisper, feature_extractor=extractor,
    )
