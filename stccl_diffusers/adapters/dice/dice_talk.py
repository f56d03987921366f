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
Tests run it against DICE-Talk's real source with tiny random weights in DICE-Talk's file layout
(:func:`write_random_dice_talk_weights`); see docs/dice.md for what still differs from inference.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ... import edm
from ...models.reference_dice import DICE_EMOTIONS, NEUTRAL_INDEX
from ...training.adapter import TalkingHeadAdapter
from ..checkout import import_from_checkout
from .adapter import DiceStepMixin, check_anchor

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
    """DICE-Talk's own classes, imported from the user's checkout (its code uses `src.` imports):
    scoped and origin-checked by :func:`~stccl_diffusers.adapters.checkout.import_from_checkout`, so
    another project's `src` package can neither shadow DICE-Talk's nor stay on `sys.path`."""
    root = Path(root).resolve()
    ns = {}
    for name, module in DICE_MODULES.items():
        mod = import_from_checkout(root, module, project="the DICE-Talk checkout")
        if not hasattr(mod, name):
            raise ImportError(f"{module} in {root} has no {name}; is this a DICE-Talk checkout?")
        ns[name] = getattr(mod, name)
    return SimpleNamespace(**ns)


class _EmotionPriorUnpickler(pickle.Unpickler):
    """Only what an `examples/emo/*.npy` pickle needs to rebuild a dict holding an ndarray."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "dict")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"emotion prior pickle wants {module}.{name}; only a dict with an "
                                         f"ndarray 'mu' is allowed")
        return super().find_class(module, name)


def load_emotion_prior_file(path: str | Path) -> np.ndarray:
    """`mu` (1, 256) float32 of one DICE-Talk emotion file, read with a restricted unpickler (no code runs)."""
    path = Path(path)
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(f"{path}: expected a pickled dict (0-d object array), got dtype {dtype} shape {shape}")
        obj = _EmotionPriorUnpickler(f).load()
    obj = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    if not isinstance(obj, dict) or not isinstance(obj.get("mu"), np.ndarray):
        raise ValueError(f"{path}: expected a dict with an ndarray 'mu', got {type(obj).__name__}")
    return np.asarray(obj["mu"], dtype=np.float32)


def load_emotion_priors(root: str | Path) -> torch.Tensor:
    """(8, 256) priors in DICE_EMOTIONS order from `examples/emo/*.npy` (`.item()['mu']`, (1, 256)).

    These files are pickled dicts; they are read by :func:`load_emotion_prior_file`, whose unpickler
    rebuilds only a dict of ndarrays, so a tampered file cannot run code.
    """
    priors = []
    for emo in DICE_EMOTIONS:
        path = Path(root) / "examples" / "emo" / f"{emo}.npy"
        mu = load_emotion_prior_file(path)
        if mu.shape != (1, 256):
            raise ValueError(f"{path}: expected mu of shape (1, 256), got {mu.shape}")
        priors.append(torch.from_numpy(mu[0]))
    return torch.stack(priors)


def audio_windows(audio_prompts: torch.Tensor, num_frames: int, start_frame: int = 0, step: int = 2) -> torch.Tensor:
    """Whisper hidden states (B, L, 5, 384) at 50 Hz -> per-video-frame windows (B, T, 10, 5, 384).

    As DICE-Talk's inference (`dice_talk.py`, config `step: 2`, `fps: 12.5`): pad 4 zero steps
    before and 6 after, generated frame j takes steps [2*step*j, 2*step*j + 10) of the padded
    sequence (step 2: frame j at 12.5 fps takes [4j, 4j + 10)).
    """
    if audio_prompts.ndim != 4:
        raise ValueError(f"expected whisper hidden states (B, L, layers, C), got {tuple(audio_prompts.shape)}")
    padded = torch.cat([torch.zeros_like(audio_prompts[:, :4]), audio_prompts, torch.zeros_like(audio_prompts[:, :6])], 1)
    need = 2 * step * (start_frame + num_frames - 1) + 10
    if padded.shape[1] < need:
        raise ValueError(f"audio too short: {audio_prompts.shape[1]} whisper steps for frames up to "
                         f"{start_frame + num_frames} (need {need - 10} steps)")
    return torch.stack([padded[:, 2 * step * i: 2 * step * i + 10]
                        for i in range(start_frame, start_frame + num_frames)], dim=1)


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


def dice_talk_dropout(batch_size: int, probs: tuple[float, float, float], generator, device) -> tuple[torch.Tensor, ...]:
    """Per-sample drops (reference, audio, emotion) matching DICE-Talk's three-branch CFG.

    DICE-Talk samples with `uncond + g1 (no-audio - uncond) + g2 (cond - no-audio)`, where the
    "no-audio" branch keeps the reference and drops audio AND emotion, and "uncond" drops all three.
    So training shows exactly those branches: with probability `probs[0]` everything is dropped,
    with probability `probs[1]` audio and emotion are dropped together (reference kept), otherwise
    nothing. `probs[2]` is unused here (emotion always goes with audio).
    """
    u = torch.rand(batch_size, generator=generator, device=generator.device if generator is not None else device).to(device)
    drop_all = u < probs[0]
    drop_audio_emotion = u < probs[0] + probs[1]
    return drop_all, drop_audio_emotion, drop_audio_emotion.clone()


class DiceTalkAdapter(DiceStepMixin, TalkingHeadAdapter):
    """DICE-Talk's UNet (+ IP adapters, PoseGuider, AudioProjModel, EmotionModel), SVD's VAE and CLIP."""

    lora_prefix = "unet"

    def __init__(self, unet, vae, image_encoder, pose_guider, audio_linear, emo_model, emotion_priors: torch.Tensor,
                 callback=None, p_mean=0.7, p_std=1.6, dropout_probs=(0.05, 0.05, 0.05), fps: float = 12.5,
                 motion_bucket_id: float = 8.0, motion_bucket_id_exp: float = 16.0, num_inference_steps: int = 25,
                 appearance_guidance_scale: float = 3.0, audio_guidance_scale: float = 6.0,
                 retrieval: bool = False, audio_step: int = 2, use_face_boxes: bool = True, whisper=None,
                 feature_extractor=None, anchor: str = "frozen") -> None:
        super().__init__()
        self.anchor = check_anchor(anchor)
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
        # DICE-Talk's added_time_ids: the pipeline's `_get_add_time_ids(fps, motion_bucket_id, ...)` is
        # called with `motion_bucket_id_exp` (16) in the third slot (config/inference/dice_talk.yaml).
        self.time_ids = (fps, motion_bucket_id, motion_bucket_id_exp)
        self.num_inference_steps = num_inference_steps
        self.guidance = (appearance_guidance_scale, audio_guidance_scale)
        self.retrieval, self.audio_step = bool(retrieval), int(audio_step)
        self.use_face_boxes = use_face_boxes
        for m in (vae, image_encoder, pose_guider, audio_linear, emo_model, unet, whisper):
            if m is not None:
                m.requires_grad_(False)

    # -- TalkingHeadAdapter ----------------------------------------------------------------
    def lora_model(self):
        return self.unet

    def set_weight_dtype(self, dtype):
        """Frozen weights in `dtype` as diffusers' examples do (the loop then puts what is trained back
        in fp32); `audio_linear` and `emo_model` stay fp32 as DICE-Talk's dice_talk.py keeps them."""
        for m in (self.vae, self.image_encoder, self.pose_guider, self.unet, self.whisper):
            if m is not None:
                m.to(dtype)

    def sample_dropout(self, batch_size, generator, device):
        return dice_talk_dropout(batch_size, self.dropout_probs, generator, device)

    def training_step(self, batch, step, generator):
        return self.edm_step(batch, step, generator)

    @torch.no_grad()
    def render_validation(self, batch, generator=None):
        """DICE-Talk's sampling: Karras sigmas, three-branch CFG (appearance 3.0, audio 6.0); the anchor
        rendered as training scores against it (LoRA off for `anchor="frozen"`)."""
        x_shape = self._latent_shape(batch)
        gdev = generator.device if generator is not None else batch["reference"].device
        noise = torch.randn(x_shape, generator=generator, device=gdev).to(batch["reference"].device)
        target = self._sample(batch, self.target_prior(batch), noise)
        with self.anchor_weights():
            anchor = self._sample(batch, self.neutral_prior(batch), noise)
        return {"target": target, "anchor": anchor}

    def _sample(self, batch, prior, noise):
        """Frames (B, T, 3, H, W) in [-1, 1] sampled from `noise` (B, T, C, h, w) with emotion `prior`."""
        B = noise.shape[0]
        g1, g2 = self.guidance
        none, every = torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)
        branches = [self.conditions(batch, prior, d) for d in
                    ((every, every, every), (none, every, every), (none, none, none))]
        sigmas = edm.karras_sigmas(self.num_inference_steps, 0.002, 700.0).to(noise.device)
        x = noise * sigmas[0]
        for i in range(self.num_inference_steps):
            s = sigmas[i].expand(x.shape[0])
            uncond, no_audio, cond = (self.denoise(x, s, c).float() for c in branches)
            v = uncond + g1 * (no_audio - uncond) + g2 * (cond - no_audio)
            x0 = edm.x0_from_v(v, x, s)
            x = x + (x - x0) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return self.decode(x).clamp(-1, 1)

    # -- LoRA files that load at the trained scale -------------------------------------------
    def _lora_scalings(self) -> dict[str, float]:
        """{diffusers module path: lora_alpha / r} of every peft LoRA layer in the UNet."""
        out = {}
        for name, module in self.unet.named_modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict) and "default" in scaling:
                out[name] = float(scaling["default"])
        return out

    def trained_state_dict(self):
        """LoRA with `alpha / r` folded into the up weights: diffusers' and DICE-Talk's loaders read a
        file without alpha at scale 1, so a run with `lora_alpha != rank` still loads at its scale."""
        state = super().trained_state_dict()
        state["lora"] = fold_lora_scale(state["lora"], self._lora_scalings(), prefix=self.lora_prefix + ".")
        return state

    def load_weights(self, directory):
        import shutil
        import tempfile

        from safetensors.torch import load_file, save_file

        from ...training.adapter import LORA_WEIGHTS_NAME, TRAINABLE_WEIGHTS_NAME

        directory = Path(directory)
        lora_file = directory / LORA_WEIGHTS_NAME
        if not lora_file.is_file():
            return super().load_weights(directory)
        unscale = {k: 1.0 / v for k, v in self._lora_scalings().items()}
        with tempfile.TemporaryDirectory() as tmp:
            save_file(fold_lora_scale(load_file(str(lora_file)), unscale, self.lora_prefix + "."),
                      str(Path(tmp) / LORA_WEIGHTS_NAME))
            if (directory / TRAINABLE_WEIGHTS_NAME).is_file():
                shutil.copy(directory / TRAINABLE_WEIGHTS_NAME, tmp)
            super().load_weights(tmp)

    # -- DiceStepMixin ---------------------------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def audio_prompts(self, batch) -> torch.Tensor:
        """(B, T, 10, 5, 384): given in the batch, or from whisper-tiny on the whole clip's `audio`.

        `audio` (B, N) at 16 kHz is the whole clip; `start_frame` (B,) says where the T frames (at
        12.5 fps) begin. As dice_talk.py: whisper over the whole clip (30 s features windows),
        `audio_len * 2` steps kept (audio_len = N // 640), then :func:`audio_windows`.
        """
        if "audio_prompts" in batch:
            return batch["audio_prompts"]
        if self.whisper is None or self.feature_extractor is None:
            raise ValueError("expected batch['audio_prompts'] (B, T, 10, 5, 384) or a whisper model (--whisper_path) "
                             "to compute them from batch['audio']")
        T = batch["frames"].shape[1] if "frames" in batch else int(batch["num_frames"])
        starts = batch.get("start_frame")
        whole = (batch["clip_audio"] if "clip_audio" in batch else batch["audio"]).float().cpu().numpy()
        lengths = batch.get("clip_audio_len")
        windows = []
        for b, wav in enumerate(whole):
            wav = wav[: int(lengths[b])] if lengths is not None else wav
            hidden = whisper_hidden_states(self.whisper, self.feature_extractor, wav)
            start = int(starts[b]) if starts is not None else 0
            windows.append(audio_windows(hidden, T, start_frame=start, step=self.audio_step))
        return torch.cat(windows).to(batch["reference"].device)

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
        audio_dtype = next(self.audio_linear.parameters()).dtype  # fp32, as DICE-Talk keeps it
        emo_dtype = next(self.emo_model.parameters()).dtype

        def keep(mask, x):
            return x if mask is None else x * (~mask.to(x.device)).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

        with torch.no_grad():
            ref_latent = self.vae.encode(ref.to(self.vae.dtype)).latent_dist.mode()
        ref_latent = keep(drops[0], ref_latent)
        img = keep(drops[0], self.image_encoder(self._clip_image(batch).to(self.image_encoder.dtype)).image_embeds)
        image_embeds = img[:, None].repeat_interleave(T, dim=0)  # (B*T, 1, D)
        audio = keep(drops[1], prompts.to(audio_dtype))
        audio_tokens = self.audio_linear(audio).flatten(0, 1)  # (B*T, 32, 1024)
        emo = keep(drops[2], prior.to(emo_dtype)).reshape(B, 1, 1, 1, -1)
        # retrieval=False (DICE-Talk's inference config): the whole codebook is the key/value bank.
        emo_tokens = torch.cat([self.emo_model(e[None], retrieval=self.retrieval)[0] for e in emo])  # (B, 1, 32, D)
        emo_tokens = emo_tokens.reshape(B, -1, *emo_tokens.shape[-2:])[:, :1].expand(-1, T, -1, -1).flatten(0, 1)
        mask = face_mask(batch, H, W, detect=self.use_face_boxes).to(dtype)  # (B, 3, H, W)
        pose_fea = self.pose_guider(mask[:, :, None].expand(-1, -1, T, -1, -1)).transpose(1, 2)
        # DICE-Talk's IP-adapter processor takes one (N, 1, H, W) mask per stream and tiles it over
        # its batch of B*T frames when N == 1; with B clips the mask of clip b goes to its T frames.
        ip_mask = mask[:, :1].repeat_interleave(T, dim=0) if B > 1 else mask[:, :1]
        return DiceTalkConditions(ref_latent, image_embeds.to(dtype), audio_tokens.to(dtype), emo_tokens.to(dtype),
                                  pose_fea, ip_mask)

    def denoise(self, x_t, sigma, cond: DiceTalkConditions):
        B, T = x_t.shape[:2]
        dtype = self.unet.dtype
        inp = torch.cat([edm.precondition_input(x_t, sigma), cond.ref_latent[:, None].expand(-1, T, -1, -1, -1)], 2)
        ids = torch.tensor(self.time_ids, device=x_t.device, dtype=dtype)[None].expand(B, -1)
        out = self.unet(
            inp.to(dtype), edm.c_noise(sigma).to(x_t.device),
            encoder_hidden_states=(cond.image_embeds, [cond.audio_tokens, cond.emo_tokens]),
            spatial_condition=cond.pose_fea.to(dtype), cross_attention_kwargs={"ip_adapter_masks": [cond.face_mask] * 2},
            added_time_ids=ids, return_dict=False,
        )[0]
        return out


def dice_face_box(image_rgb: np.ndarray, area: float = 1.1) -> np.ndarray | None:
    """x1, y1, x2, y2 of DICE-Talk's face mask for one image, or None when no face is found.

    The face comes from the package's detector (`eval.faces.detect_face_box`); the box is then
    enlarged as DICE-Talk's `image_audio_emo_to_tensor` does: width and height times `area` about
    the integer centre, clamped to the image, floored to whole pixels (`mask[int(y1):int(y2), ...]`).
    """
    from ...eval.faces import detect_face_box

    found = detect_face_box(image_rgb)
    if found is None:
        return None
    h, w = image_rgb.shape[:2]
    x1, y1, bw, bh = (float(v) for v in found)
    x2, y2 = x1 + bw, y1 + bh
    ww, hh = (x2 - x1) * area, (y2 - y1) * area
    cx, cy = (x2 + x1) // 2, (y2 + y1) // 2
    box = [max(cx - ww // 2, 0), max(cy - hh // 2, 0), min(cx + ww // 2, w), min(cy + hh // 2, h)]
    return np.floor(np.asarray(box, dtype=np.float64))


def face_mask(batch, height: int, width: int, detect: bool = False, area: float = 1.1) -> torch.Tensor:
    """(B, 3, H, W) DICE-Talk face-mask image, one per clip (DICE-Talk: from the reference image).

    The batch's `face_mask` if given; else, with `detect`, :func:`dice_face_box` on each reference;
    else (or where no face is found) the batch's `face_box`; else the whole frame.
    """
    ref = batch["reference"]
    if "face_mask" in batch:
        m = batch["face_mask"].float()
        return (m if m.shape[1] == 3 else m[:, :1].expand(-1, 3, -1, -1)).to(ref.device)
    box = batch.get("face_box")
    box = (torch.tensor([[0.0, 0.0, width, height]]).expand(ref.shape[0], 4) if box is None else box).float().cpu().clone()
    if detect:
        images = ((ref.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for b, image in enumerate(images):
            found = dice_face_box(image, area)
            if found is not None:
                box[b] = torch.from_numpy(found).float()
    return box_mask(box.to(ref.device), height, width)


def fold_lora_scale(lora: dict[str, torch.Tensor], scalings: dict[str, float], prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """Multiply each `...lora.up.weight` by its layer's scale (diffusers key names, `prefix` stripped to match)."""
    out = {}
    for key, value in lora.items():
        if key.endswith(".lora.up.weight"):
            module = key[len(prefix):] if key.startswith(prefix) else key
            module = module[: -len(".lora.up.weight")]
            scale = scalings.get(module)
            if scale is None:
                raise ValueError(f"LoRA key {key}: no LoRA layer {module} in the UNet")
            value = value * scale
        out[key] = value
    return out


def whisper_hidden_states(whisper, feature_extractor, wav: np.ndarray) -> torch.Tensor:
    """(1, audio_len * 2, layers, C) whisper encoder hidden states of a whole 16 kHz clip, as dice_talk.py.

    Features are extracted per 750*640-sample chunk (test_preprocess.get_audio_feature), the encoder
    runs on 3000-frame windows, and `audio_len * 2` steps (audio_len = len(wav) // 640) are kept.
    """
    chunk = 750 * 640
    param = next(whisper.parameters())
    with torch.autocast("cpu", enabled=False):  # the log-mel is computed in fp32 even under mixed precision
        feats = torch.cat([feature_extractor(wav[i:i + chunk], sampling_rate=16000, return_tensors="pt").input_features
                           for i in range(0, len(wav), chunk)], dim=-1)
    prompts = []
    with torch.no_grad():
        for i in range(0, feats.shape[-1], 3000):
            hidden = whisper.encoder(feats[:, :, i:i + 3000].to(param.device, param.dtype), output_hidden_states=True).hidden_states
            prompts.append(torch.stack(hidden, dim=2))
    return torch.cat(prompts, dim=1)[:, : (len(wav) // 640) * 2].float()


def load_svd_part(cls, svd: Path, subfolder: str):
    """`cls.from_pretrained(svd, subfolder)`, falling back to `variant="fp16"` (DICE-Talk's download
    of SVD-xt holds only `*.fp16.safetensors`), loaded in fp32 either way."""
    folder = Path(svd) / subfolder
    has_full = any(f.name.split(".")[-2] != "fp16" for f in folder.glob("*.safetensors")) or \
        any(folder.glob("*.bin")) and not all(f.name.endswith(".fp16.bin") for f in folder.glob("*.bin"))
    if has_full or not any(folder.glob("*.fp16.*")):
        return cls.from_pretrained(str(svd), subfolder=subfolder)
    return cls.from_pretrained(str(svd), subfolder=subfolder, variant="fp16", torch_dtype=torch.float32)


def build_dice_talk_adapter(cfg, metric, device=None) -> DiceTalkAdapter:
    """Check paths, import DICE-Talk from the checkout, load its weights, wrap them with the reward."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionModelWithProjection

    from .build import build_callback

    paths = check_dice_talk_paths(cfg.dice_talk_root, cfg.dice_checkpoints, cfg.svd_path, cfg.whisper_path)
    dt = import_dice_talk(paths.root)
    vae = load_svd_part(AutoencoderKLTemporalDecoder, paths.svd, "vae")
    image_encoder = load_svd_part(CLIPVisionModelWithProjection, paths.svd, "image_encoder")
    unet = load_svd_part(dt.UNetSpatioTemporalConditionModel, paths.svd, "unet")
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
        num_inference_steps=cfg.num_inference_steps, appearance_guidance_scale=cfg.appearance_guidance_scale,
        audio_guidance_scale=cfg.audio_guidance_scale, retrieval=cfg.emotion_retrieval,
        motion_bucket_id_exp=cfg.motion_bucket_id_exp,
        use_face_boxes=cfg.use_face_boxes, whisper=whisper, feature_extractor=extractor, anchor=cfg.anchor,
    )


def write_random_dice_talk_weights(out: str | Path, dice_talk_root: str | Path, full: bool = False,
                                   seed: int = 0) -> dict[str, str]:
    """Random weights built from DICE-Talk's own classes in its real file layout (tests, benchmarks).

    `out/checkpoints/DICE-Talk/{unet,pose_guider,audio_linear,emo_model}.pth`, an SVD folder
    (`unet`, `vae`, `image_encoder`) and a whisper folder. DICE-Talk's fixed sizes are kept
    (cross-attention 1024, AudioProjModel(10, 5, 384), EmotionModel, whisper d_model 384 with 5
    hidden states); `full` also gives SVD-xt's UNet/VAE and a ViT-H CLIP, tiny otherwise.
    Returns the config paths {dice_talk_root, dice_checkpoints, svd_path, whisper_path}.
    """
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import (CLIPVisionConfig, CLIPVisionModelWithProjection, WhisperConfig,
                              WhisperFeatureExtractor, WhisperModel)

    out = Path(out)
    ckpt, svd, whisper = out / "checkpoints/DICE-Talk", out / "checkpoints/svd", out / "checkpoints/whisper-tiny"
    dt = import_dice_talk(dice_talk_root)
    torch.manual_seed(seed)
    if full:
        unet, vae = dt.UNetSpatioTemporalConditionModel(), AutoencoderKLTemporalDecoder()
        clip = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                                image_size=224, patch_size=14, projection_dim=1024)
    else:
        unet = dt.UNetSpatioTemporalConditionModel(
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), layers_per_block=1,
            num_attention_heads=(2, 4), cross_attention_dim=1024, addition_time_embed_dim=32,
            projection_class_embeddings_input_dim=96)
        vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                                           layers_per_block=1, latent_channels=4)
        clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=224, patch_size=56, projection_dim=1024)
    unet.save_pretrained(str(svd / "unet"))
    vae.save_pretrained(str(svd / "vae"))
    CLIPVisionModelWithProjection(clip).save_pretrained(str(svd / "image_encoder"))
    dt.add_ip_adapters(unet, [32, 32], [1.0, 1.0])
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save(unet.state_dict(), ckpt / "unet.pth")
    torch.save(dt.PoseGuider(conditioning_embedding_channels=unet.config.block_out_channels[0],
                             block_out_channels=(16, 32, 96, 256)).state_dict(), ckpt / "pose_guider.pth")
    torch.save(dt.AudioProjModel(seq_len=10, blocks=5, channels=384, intermediate_dim=1024, output_dim=1024,
                                 context_tokens=32).state_dict(), ckpt / "audio_linear.pth")
    torch.save(dt.EmotionModel().state_dict(), ckpt / "emo_model.pth")
    WhisperModel(WhisperConfig(d_model=384, encoder_layers=4, decoder_layers=1 if not full else 4,
                               encoder_attention_heads=2 if not full else 6, decoder_attention_heads=2 if not full else 6,
                               encoder_ffn_dim=64 if not full else 1536, decoder_ffn_dim=64 if not full else 1536,
                               vocab_size=64 if not full else 51865, max_source_positions=1500, pad_token_id=0,
                               bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, begin_suppress_tokens=None,
                               suppress_tokens=None)).save_pretrained(str(whisper))
    WhisperFeatureExtractor().save_pretrained(str(whisper))
    return {"dice_talk_root": str(Path(dice_talk_root)), "dice_checkpoints": str(ckpt), "svd_path": str(svd),
            "whisper_path": str(whisper)}
