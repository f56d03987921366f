"""The diffusers reward-style STCCL callback (paper §8.3.3; ControlNet++-style single-step reward).

diffusers has no training-time callback API, so this is one that feels native: a ``ConfigMixin``
(``save_config`` / ``from_config``) that a training loop calls once per step with the tensors it
already has::

    stccl = STCCLRewardCallback(metric=metric, scheduler=noise_scheduler, decoder=vae)  # or preconditioning="edm_v"
    loss = diffusion_loss + stccl.reward(model_pred, noisy_latents, timesteps, sigmas=sigmas,
                                         model=unet, anchor_args=(unet_input, timesteps, neutral_cond))

Per step: gate on t < 500 (``timestep_gate``), then for the gated clips only: run the anchor (the
base model with peft adapters off, a frozen copy, or a neutral-conditioning ``anchor_fn``), x0-hat of
the prediction (with gradient) and of the anchor (no gradient), decode both, score with the frozen
``STCCLMetric`` (anchor vs generated) using the callback's own generator, return ``weight * loss``
in fp32. ``__call__`` is the same without the anchor forward (pass ``anchor_pred``, or ``x0`` /
``anchor_x0`` when the script computes the denoised latents itself).

Latent layouts (``layout=``): ``"btchw"`` (B, T, C, h, w) (UNetSpatioTemporalConditionModel),
``"flat"`` (B*T, C, h, w) with ``num_frames=T`` (frames of a clip contiguous, image UNets) and
``"bcfhw"`` (B, C, F, h, w) (UNet3D); the channel count is checked against the decoder's. Timesteps
and sigmas are per clip or per frame, in any shape with trailing singleton dims; frames of one clip
share their noise level. ``noisy_latents`` are the unscaled ``x0 + sigma * noise``, never the UNet
input. Images are clips of ``T = 1`` (use a metric with ``use_tcc=False``).
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.callbacks import PipelineCallback
from diffusers.configuration_utils import ConfigMixin, register_to_config

from .diffusion import PRECONDITIONINGS, predict_x0, preconditioning_scheduler, timestep_gate

__all__ = [
    "STCCLRewardCallback",
    "STCCLValidationCallback",
    "adapters_disabled",
    "anchor_forward",
    "crop_faces",
    "decode_latents",
    "neutral_captions",
    "zero_loss_like",
]

_STAT_KEYS = ("spatial_loss", "temporal_loss", "pos_sim", "neg_sim")
_LAYOUTS = {"btchw": "(B, T, C, h, w)", "flat": "(B*T, C, h, w)", "bcfhw": "(B, C, F, h, w)"}
_ANCHORS = ("base_model", "frozen_copy")


# ----------------------------------------------------------------------------------------------
# Functional pieces
# ----------------------------------------------------------------------------------------------
def zero_loss_like(t: torch.Tensor) -> torch.Tensor:
    """fp32 scalar 0 still attached to ``t``'s graph (so ``backward`` is valid), NaN-safe (``0 * nan`` is nan)."""
    if not t.requires_grad:
        return torch.zeros((), device=t.device, dtype=torch.float32)
    return torch.nan_to_num(t.reshape(-1)[:1].float(), nan=0.0, posinf=0.0, neginf=0.0).sum() * 0.0


def crop_faces(frames: torch.Tensor, boxes: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Differentiable bilinear crop-and-resize of one box per frame.

    Args:
        frames: (N, C, H, W).
        boxes: (N, 4) ``x1, y1, x2, y2`` in pixels of ``frames`` (x2, y2 exclusive edges).
        size: (h, w) output size.
    Returns:
        (N, C, h, w).
    """
    if boxes.shape != (frames.shape[0], 4):
        raise ValueError(f"expected face boxes (N, 4) = ({frames.shape[0]}, 4), got {tuple(boxes.shape)}")
    n, _, h, w = frames.shape
    b = boxes.to(device=frames.device, dtype=torch.float32)
    theta = torch.zeros(n, 2, 3, device=frames.device, dtype=torch.float32)
    theta[:, 0, 0] = (b[:, 2] - b[:, 0]) / w
    theta[:, 0, 2] = (b[:, 0] + b[:, 2]) / w - 1
    theta[:, 1, 1] = (b[:, 3] - b[:, 1]) / h
    theta[:, 1, 2] = (b[:, 1] + b[:, 3]) / h - 1
    grid = F.affine_grid(theta, [n, frames.shape[1], int(size[0]), int(size[1])], align_corners=False)
    return F.grid_sample(frames.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


# Emotion words (and their common noun / adjective forms) a caption may hold; each becomes "neutral".
_EMOTION_WORDS = re.compile(
    r"\b(angry|anger|contempt|contemptuous|disgusted|disgust|fear|fearful|scared|afraid|happy|happiness|joyful|"
    r"smiling|sad|sadness|surprised|surprise|emotional)\b",
    re.IGNORECASE,
)


def neutral_captions(captions: Sequence[str], neutral: str = "neutral") -> list[str]:
    """Each caption with its emotion words swapped for ``neutral`` (the anchor keeps identity and scene)."""
    if isinstance(captions, str):
        raise ValueError(f"expected a list of captions (one per sample), got one string {captions!r}")
    return [_EMOTION_WORDS.sub(neutral, c) for c in captions]


def _decoder_kind(decoder) -> str:
    # Class names rather than imports: keeps older diffusers (0.29) and custom subclasses working.
    names = {c.__name__ for c in type(decoder).__mro__}
    if "AutoencoderKLTemporalDecoder" in names:
        return "temporal"
    if "AutoencoderTiny" in names or "AutoencoderKL" in names:
        return "image"
    if hasattr(decoder, "decode"):
        return "image"
    raise ValueError(
        f"expected a decoder with .decode (AutoencoderKL, AutoencoderKLTemporalDecoder, AutoencoderTiny) or a "
        f"decode_fn, got {type(decoder).__name__}"
    )


def decode_latents(
    latents: torch.Tensor,
    decoder=None,
    decode_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    scaling_factor: float = 1.0,
    shift_factor: float = 0.0,
    chunk_size: Optional[int] = None,
    gradient_checkpointing: bool = False,
) -> torch.Tensor:
    """Decode clips of latents to pixels.

    Args:
        latents: (n, T, C, h, w) scaled latents (as the denoiser sees them).
        decoder: AutoencoderKL / AutoencoderTiny (``.decode(z)``, differentiable) or
            AutoencoderKLTemporalDecoder (``.decode(z, num_frames=k)``; chunks never cross clips).
        decode_fn: alternative ``(N, C, h, w) -> (N, 3, H, W)``; for pixel-space models.
        scaling_factor, shift_factor: ``z = latents / scaling_factor + shift_factor`` before decoding.
        chunk_size: frames per decoder call (bounds activation memory); None = all at once.
        gradient_checkpointing: recompute decoder activations in backward instead of storing them.
    Returns:
        (n, T, 3, H, W) fp32 pixels as the decoder returns them (about [-1, 1]).
    """
    if latents.ndim != 5:
        raise ValueError(f"expected latents (n, T, C, h, w), got {tuple(latents.shape)}")
    n, t = latents.shape[:2]
    z = latents.flatten(0, 1).float() / scaling_factor + shift_factor
    if decode_fn is not None:
        kind, dtype = "fn", z.dtype
        fn = decode_fn
    else:
        if decoder is None:
            raise ValueError("expected a decoder or a decode_fn, got neither")
        kind = _decoder_kind(decoder)
        dtype = next(decoder.parameters()).dtype

        def fn(zc, k=None):
            if kind == "temporal":
                return decoder.decode(zc, num_frames=k, return_dict=False)[0]
            return decoder.decode(zc, return_dict=False)[0]

    z = z.to(dtype)
    use_ckpt = gradient_checkpointing and torch.is_grad_enabled() and z.requires_grad
    step = chunk_size or z.shape[0]

    def run(zc, k):
        call = (lambda a: fn(a, k)) if kind == "temporal" else fn
        if use_ckpt:
            return checkpoint(call, zc, use_reentrant=False)
        return call(zc)

    outs = []
    if kind == "temporal":
        step = min(step, t)
        for clip in range(n):  # the temporal decoder mixes frames within a call: keep calls inside one clip
            for s in range(0, t, step):
                zc = z[clip * t + s: clip * t + min(s + step, t)]
                outs.append(run(zc, zc.shape[0]))
    else:
        for s in range(0, z.shape[0], step):
            outs.append(run(z[s: s + step], None))
    px = torch.cat(outs).float()
    return px.reshape(n, t, *px.shape[1:])


def _unwrap(model):
    while True:
        if hasattr(model, "module") and isinstance(getattr(model, "module"), torch.nn.Module):
            model = model.module  # DDP / accelerate wrappers
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile
        else:
            return model


@contextlib.contextmanager
def adapters_disabled(model):
    """Run ``model`` as its base model (peft adapters off), restoring the previous adapter state after.

    The one place with peft/diffusers version-dependent code: a ``peft.PeftModel`` uses its own
    ``disable_adapter()`` context manager; a model with adapters injected in place (diffusers
    ``unet.add_adapter``, ``peft.inject_adapter_in_model``) has its ``BaseTunerLayer`` modules toggled.
    """
    inner = _unwrap(model)
    if hasattr(inner, "disable_adapter") and hasattr(inner, "base_model") and hasattr(inner, "peft_config"):
        with inner.disable_adapter():
            yield model
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in inner.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ValueError(
            f"expected a peft-wrapped model (LoRA layers from peft, e.g. via unet.add_adapter), "
            f"found no peft adapter layers in {type(inner).__name__}"
        )
    was_disabled = [bool(getattr(m, "disable_adapters", False)) for m in layers]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m, off in zip(layers, was_disabled):
            m.enable_adapters(not off)


def _first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    raise ValueError(f"expected the model to return a tensor, a tuple or an output with .sample, got {type(out)}")


def anchor_forward(model, *args, use_base_model: bool = False, forward_fn: Optional[Callable] = None,
                   **kwargs) -> torch.Tensor:
    """The neutral-anchor prediction: ``model(*args, **kwargs)`` under ``no_grad`` (detached).

    Pass the neutral conditioning in ``args``/``kwargs`` (same noisy latents, timesteps, identity,
    audio; neutral emotion). ``use_base_model=True`` instead runs the peft model with adapters
    disabled (the pre-fine-tuning model as anchor); both can be combined. ``forward_fn`` is called
    instead of ``model`` when the denoiser is reached through a wrapper (a training adapter's
    ``denoise`` that builds the UNet input); ``model`` is still where the adapters are switched off.
    """
    ctx = adapters_disabled(model) if use_base_model else contextlib.nullcontext()
    fn = model if forward_fn is None else forward_fn
    with torch.no_grad(), ctx:
        return _first_tensor(fn(*args, **kwargs)).detach()


def _shape(t):
    return None if t is None else tuple(t.shape)


def _levels(name: str, value) -> torch.Tensor:
    """Timesteps / sigmas as 1-D: scalars, (N,) and (N, 1, ..., 1) are accepted; the error names ``name``."""
    v = torch.as_tensor(value)
    if v.ndim == 0:
        return v.reshape(1)
    if any(d != 1 for d in v.shape[1:]):
        raise ValueError(f"expected {name} of shape (N,) or (N, 1, ..., 1), got {tuple(v.shape)}")
    return v.reshape(v.shape[0])


def _per_clip(name: str, value, b: int, t_len: int) -> torch.Tensor:
    """One value per clip (B,) from a scalar, per-clip or per-frame (B*T,) ``value``; frames share theirs."""
    v = _levels(name, value)
    if v.shape[0] == 1:
        return v.expand(b)
    if v.shape[0] == b:
        return v
    if t_len > 1 and v.shape[0] == b * t_len:
        return v[::t_len]
    frames = f" or ({b * t_len},) per frame" if t_len > 1 else ""
    raise ValueError(f"expected {name} of shape ({b},) per clip{frames} (or with trailing singleton dims), got "
                     f"{tuple(torch.as_tensor(value).shape)}")


def _check_noisy(model_pred, noisy_latents):
    if model_pred.shape == noisy_latents.shape:
        return
    if model_pred.ndim == noisy_latents.ndim and model_pred.ndim >= 4:
        diff = [i for i, (p, q) in enumerate(zip(model_pred.shape, noisy_latents.shape)) if p != q]
        if len(diff) == 1 and noisy_latents.shape[diff[0]] > model_pred.shape[diff[0]]:
            raise ValueError(
                f"expected noisy_latents of shape {tuple(model_pred.shape)} (as model_pred), got "
                f"{tuple(noisy_latents.shape)}: noisy_latents are the unscaled x0 + sigma * noise, not the UNet "
                "input (scaled and concatenated with the conditioning, as SVD loops build it); give that one to "
                "the anchor (anchor_args) instead"
            )
    raise ValueError(f"expected noisy_latents of shape {tuple(model_pred.shape)} (as model_pred), got "
                     f"{tuple(noisy_latents.shape)}")


def _to_btchw(z: torch.Tensor, layout: Optional[str], t_len: int) -> torch.Tensor:
    if layout == "bcfhw":
        return z.transpose(1, 2)
    if z.ndim == 4:
        return z.reshape(z.shape[0] // t_len, t_len, *z.shape[1:])
    return z


# ----------------------------------------------------------------------------------------------
# The stateful shell
# ----------------------------------------------------------------------------------------------
class STCCLRewardCallback(ConfigMixin):
    r"""STCCL as a training-time reward: gated, decoded, scored against a neutral anchor.

    Args (saved in the config):
        gate_timestep: reward only for samples less noisy than this timestep (paper: 500); for sigma
            schedulers it is converted to a sigma through the scheduler's 1000-step schedule.
        weight: factor on the returned loss.
        num_frames: frames per clip for the flat ``(B*T, C, h, w)`` layout (call argument wins).
        frame_subset: frame indices to decode and score (None = all); bounds memory for long clips.
        face_crop_size: output side of the face crop when ``face_boxes`` are given (None = decoded H, W).
        decode_chunk_size: frames per decoder call (None = all gated frames at once).
        gradient_checkpointing: checkpoint the decoder on the generated branch.
        scaling_factor, shift_factor: latent scaling (None = read from ``decoder.config``; 1.0 / 0.0
            with ``decode_fn``).
        clamp_pixels: clamp decoded frames to [-1, 1] before the metric (its input contract).
        metric_pretrained_path: ``STCCLMetric.from_pretrained`` source used when no ``metric`` is given.
        preconditioning: instead of a ``scheduler``: ``"edm_v"`` (SVD-style, sigma_data = 1, v-prediction,
            timesteps ``0.25 ln sigma``), ``"ddpm_eps"`` / ``"ddpm_v"`` / ``"ddpm_sample"`` (SD's
            scaled-linear table), ``"flow"`` (rectified flow, ``t = 1000 sigma``).
        layout: ``"btchw"`` (B, T, C, h, w), ``"flat"`` (B*T, C, h, w) or ``"bcfhw"`` (B, C, F, h, w, UNet3D);
            None infers btchw from 5-D and flat from 4-D latents (call argument wins).
        anchor: ``"base_model"`` (peft adapters disabled) or ``"frozen_copy"`` (a frozen copy of the model
            made at the first ``reward`` call, for full fine-tunes); an ``anchor_fn`` callable wins.
        seed: seed of the callback's own generator for the metric's region sampling (the global RNG
            is never touched, so switching STCCL on leaves the script's noise stream as it was).
        placebo: the placebo arm of the benchmark (issue 22): the decoded anchor's frames are shuffled in
            time (a random derangement per clip, :func:`~stccl_diffusers.placebo.shuffle_time`) before
            scoring, at the same weight. Needs >= 2 scored frames per clip.

    Runtime objects (not in the config; pass to ``__init__`` or ``from_config``): ``metric``
    (frozen ``STCCLMetric`` or a callable with its signature), ``scheduler``, ``decoder``, ``decode_fn``,
    ``anchor_fn`` (``(*anchor_args, **anchor_kwargs) -> prediction``, e.g. the UNet with neutral conditioning).
    """

    config_name = "stccl_callback_config.json"
    ignore_for_config = ["metric", "scheduler", "decoder", "decode_fn", "anchor_fn"]

    @register_to_config
    def __init__(
        self,
        gate_timestep: float = 500,
        weight: float = 1.0,
        num_frames: Optional[int] = None,
        frame_subset: Optional[list] = None,
        face_crop_size: Optional[int] = None,
        decode_chunk_size: Optional[int] = None,
        gradient_checkpointing: bool = False,
        scaling_factor: Optional[float] = None,
        shift_factor: Optional[float] = None,
        clamp_pixels: bool = True,
        metric_pretrained_path: Optional[str] = None,
        preconditioning: Optional[str] = None,
        layout: Optional[str] = None,
        anchor: str = "base_model",
        seed: int = 0,
        placebo: bool = False,
        metric=None,
        scheduler=None,
        decoder=None,
        decode_fn: Optional[Callable] = None,
        anchor_fn: Optional[Callable] = None,
    ):
        if preconditioning is not None:
            if scheduler is not None:
                raise ValueError(f"expected scheduler= or preconditioning=, got both ({type(scheduler).__name__} "
                                 f"and {preconditioning!r})")
            scheduler = preconditioning_scheduler(preconditioning)
        if layout is not None and layout not in _LAYOUTS:
            raise ValueError(f"expected layout one of {sorted(_LAYOUTS)}, got {layout!r}")
        if anchor not in _ANCHORS:
            raise ValueError(f"expected anchor one of {_ANCHORS} (or an anchor_fn callable), got {anchor!r}")
        self.metric = None
        self.scheduler = scheduler
        self.decoder = decoder
        self.decode_fn = decode_fn
        self.anchor_fn = anchor_fn
        self.frozen_model = None
        self.last_stats: dict[str, Any] = {}
        self._warned_nonfinite = False
        self._placebo_generator: Optional[torch.Generator] = None  # the placebo arm's own stream, made on first use
        self._generators: dict[str, torch.Generator] = {}
        if metric is None and metric_pretrained_path is not None:
            from .metric import STCCLMetric  # lazy: the metric layer does not depend on this one

            metric = STCCLMetric.from_pretrained(metric_pretrained_path)
        if metric is not None:
            self.set_metric(metric)

    @classmethod
    def from_config(cls, config=None, metric=None, scheduler=None, decoder=None, decode_fn=None, anchor_fn=None,
                    **kwargs):
        """``ConfigMixin.from_config`` plus the runtime objects (which the config does not hold)."""
        cb = super().from_config(config, **kwargs)
        cb.anchor_fn = anchor_fn if anchor_fn is not None else cb.anchor_fn
        if metric is not None:
            cb.set_metric(metric)
        cb.scheduler = scheduler if scheduler is not None else cb.scheduler
        cb.decoder = decoder if decoder is not None else cb.decoder
        cb.decode_fn = decode_fn if decode_fn is not None else cb.decode_fn
        return cb

    def set_metric(self, metric) -> None:
        """Hold ``metric`` frozen and in eval mode (it is a loss here, never trained)."""
        if hasattr(metric, "freeze"):
            metric.freeze()
        if isinstance(metric, torch.nn.Module):
            metric.eval()
            metric.requires_grad_(False)
        use_tcc = getattr(getattr(metric, "config", None), "use_tcc", None)
        frames = len(self.config.frame_subset) if self.config.frame_subset else self.config.num_frames
        if use_tcc and frames is not None and int(frames) < 2:
            raise ValueError(
                f"expected a metric with use_tcc=False for {frames} scored frame(s) per clip (num_frames="
                f"{self.config.num_frames}, frame_subset={self.config.frame_subset}), got use_tcc=True: the "
                "temporal term needs T >= 2 frames"
            )
        self.metric = metric

    def generator(self, device) -> torch.Generator:
        """The callback's own generator on ``device`` (seeded with ``config.seed``; advances across calls)."""
        key = str(torch.device(device))
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(int(self.config.seed))
        return self._generators[key]

    # -- gate ------------------------------------------------------------------------------------
    def gate(self, timesteps=None, sigmas=None, mask=None) -> torch.Tensor:
        """(N,) bool mask, True where the reward applies. No host sync.

        ``timesteps`` / ``sigmas``: scalars or (N,) or any shape with trailing singleton dims
        ((N, 1, 1, 1, 1) as SVD scripts hold sigma); sigmas alone suffice for sigma preconditionings.
        ``mask``: optional (N,) bool, False for samples the reward must skip whatever their noise
        level (e.g. clips whose target emotion is neutral: target = anchor, nothing to learn).
        """
        self._require("scheduler")
        s = None if sigmas is None else _levels("sigmas", sigmas)
        if timesteps is None:
            if s is None:
                raise ValueError("expected timesteps or sigmas to gate on, got neither")
            if isinstance(self.scheduler, (DDPMScheduler, DDIMScheduler)):
                raise ValueError(f"expected timesteps for {type(self.scheduler).__name__} (it gates on timesteps), "
                                 "got only sigmas")
            t = s
        else:
            t = _levels("timesteps", timesteps)
        if s is not None and t.shape != s.shape and s.numel() != 1:
            raise ValueError(f"expected sigmas with one value per timestep, shape {tuple(t.shape)}, got "
                             f"{tuple(torch.as_tensor(sigmas).shape)}")
        gate = timestep_gate(self.scheduler, t, self.config.gate_timestep, s)
        if mask is None:
            return gate
        m = torch.as_tensor(mask, device=gate.device).reshape(-1).bool()
        if m.shape != gate.shape and m.numel() != 1:
            raise ValueError(f"expected mask (N,) bool with one value per sample, shape {tuple(gate.shape)}, got "
                             f"{tuple(torch.as_tensor(mask).shape)}")
        return gate & m

    def needs_anchor(self, timesteps=None, sigmas=None, mask=None) -> bool:
        """Whether any sample is gated (and not masked out), so a script can skip the anchor forward
        (one host sync)."""
        return bool(self.gate(timesteps, sigmas, mask).any())

    # -- anchors -----------------------------------------------------------------------------------
    def make_frozen_copy(self, model) -> torch.nn.Module:
        """Freeze a copy of ``model`` (its weights now) as the anchor, for full fine-tunes without LoRA."""
        self.frozen_model = copy.deepcopy(_unwrap(model)).requires_grad_(False)
        return self.frozen_model

    def run_anchor(self, model=None, *args, forward_fn: Optional[Callable] = None, **kwargs) -> torch.Tensor:
        """The anchor prediction (no grad, detached): ``anchor_fn``, else the frozen copy or the base model
        (``model`` with peft adapters off), called with ``args`` / ``kwargs``.

        ``forward_fn``: with ``anchor="base_model"``, call this instead of ``model`` (a wrapper around
        ``model``, e.g. a training adapter's ``denoise`` that builds the UNet's inputs); the adapters
        are still switched off on ``model``.

        Runs under ``torch.random.fork_rng``: a model in train mode (dropout) draws from the global RNG,
        and the script's own noise stream must not see the anchor.
        """
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        devices = [tensors[0].device] if tensors and tensors[0].device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices, device_type=devices[0].type if devices else None):
            return self._run_anchor(model, *args, forward_fn=forward_fn, **kwargs)

    def _run_anchor(self, model, *args, forward_fn=None, **kwargs) -> torch.Tensor:
        if self.anchor_fn is not None:
            with torch.no_grad():
                return _first_tensor(self.anchor_fn(*args, **kwargs)).detach()
        if self.config.anchor == "frozen_copy":
            if forward_fn is not None:
                raise ValueError("expected anchor='base_model' with forward_fn= (the wrapper calls the live model; a "
                                 "frozen copy cannot be reached through it), got anchor='frozen_copy'")
            if self.frozen_model is None:
                if model is None:
                    raise ValueError("expected model= for anchor='frozen_copy' (the copy is made at the first call), "
                                     "got None")
                self.make_frozen_copy(model)
            return anchor_forward(self.frozen_model, *args, **kwargs)
        if model is None:
            raise ValueError("expected model= (the trained peft model; its base model is the anchor) or an anchor_fn, "
                             "got neither")
        return anchor_forward(model, *args, use_base_model=True, forward_fn=forward_fn, **kwargs)

    def reward(
        self,
        model_pred: torch.Tensor,
        noisy_latents: torch.Tensor,
        timesteps=None,
        *,
        model=None,
        anchor_args: Sequence = (),
        anchor_kwargs: Optional[dict] = None,
        sigmas=None,
        num_frames: Optional[int] = None,
        face_boxes: Optional[torch.Tensor] = None,
        layout: Optional[str] = None,
        generator: Optional[torch.Generator] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """One call per training step: gate, run the anchor only when a clip is gated, score.

        ``model_pred`` and ``noisy_latents`` are what ``__call__`` takes (the *unscaled* noisy latents
        ``x0 + sigma * noise``); ``anchor_args`` / ``anchor_kwargs`` are the denoiser's inputs for the
        anchor (the *UNet input*: for SVD the scaled latents concatenated with the conditioning; neutral
        conditioning where there is one). Returns the weighted loss (exactly 0 on ungated steps).
        """
        if self.config.anchor == "frozen_copy" and self.frozen_model is None and self.anchor_fn is None:
            if model is None:
                raise ValueError("expected model= for anchor='frozen_copy', got None")
            self.make_frozen_copy(model)  # at the first call, before any optimizer step changed the weights
        anchor_pred = None
        if self.needs_anchor(timesteps, sigmas, mask):
            anchor_pred = self.run_anchor(model, *anchor_args, **(anchor_kwargs or {}))
        return self(model_pred=model_pred, anchor_pred=anchor_pred, noisy_latents=noisy_latents, timesteps=timesteps,
                    num_frames=num_frames, face_boxes=face_boxes, sigmas=sigmas, generator=generator, layout=layout,
                    mask=mask)

    # -- main call -------------------------------------------------------------------------------
    def __call__(
        self,
        model_pred: Optional[torch.Tensor] = None,
        anchor_pred: Optional[torch.Tensor] = None,
        noisy_latents: Optional[torch.Tensor] = None,
        timesteps=None,
        num_frames: Optional[int] = None,
        face_boxes: Optional[torch.Tensor] = None,
        sigmas: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        *,
        x0: Optional[torch.Tensor] = None,
        anchor_x0: Optional[torch.Tensor] = None,
        layout: Optional[str] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Weighted STCCL loss (fp32 scalar) to add to the diffusion loss.

        Args:
            model_pred: denoiser output with gradient, in ``layout`` (default: (B, T, C, h, w) when 5-D,
                (B*T, C, h, w) when 4-D). Not needed when ``x0`` is given.
            anchor_pred: the neutral-anchor output for the same noisy latents (same shape); may be
                None only when nothing is gated (see ``needs_anchor``). Never receives gradient.
            noisy_latents: x_t = x0 + sigma * noise, same shape as ``model_pred``: the *unscaled* latents,
                never the UNet input (``scale_model_input`` / ``c_in`` scaled, or concatenated with the
                conditioning as in SVD).
            timesteps: the values given to the denoiser, one per clip or per frame, any shape with
                trailing singleton dims.
            num_frames: T for the flat layout (default: the config's ``num_frames``, else 1).
            face_boxes: optional (B, 4) or (B, T, 4) ``x1, y1, x2, y2`` in decoded-pixel units.
            sigmas: optional sigmas (sigma preconditionings; exact), like ``timesteps`` in shape.
            generator: for the metric's region sampling (default: the callback's own, ``generator()``).
            x0, anchor_x0: the denoised latents (with gradient) and the anchor's, when the script
                computes them itself; then no ``model_pred`` / ``noisy_latents`` are needed (the gate
                still reads ``timesteps`` / ``sigmas``).
            layout: ``"btchw"``, ``"flat"`` or ``"bcfhw"`` (default: the config's, else inferred).
            mask: optional (B,) bool per clip, False to skip that clip whatever its noise level (a
                neutral target emotion: target = anchor); it never counts as gated.
        Returns:
            ``weight * metric(anchor_px, generated_px).loss`` over the scored clips; an fp32 zero still
            attached to the prediction's graph when no clip is scored. ``last_stats`` is updated.
        """
        if self.metric is None:
            raise ValueError("expected a metric (STCCLMetric) on the callback, got none: pass metric= or "
                             "metric_pretrained_path=")
        layout = layout or self.config.layout
        if layout is not None and layout not in _LAYOUTS:
            raise ValueError(f"expected layout one of {sorted(_LAYOUTS)}, got {layout!r}")
        if x0 is not None:
            ref, ref_name = x0, "x0"
            if anchor_x0 is not None and anchor_x0.shape != x0.shape:
                raise ValueError(f"expected anchor_x0 of shape {tuple(x0.shape)} (as x0), got {tuple(anchor_x0.shape)}")
        else:
            if model_pred is None or noisy_latents is None:
                raise ValueError("expected model_pred and noisy_latents, or x0= (denoised latents), got "
                                 f"model_pred={_shape(model_pred)}, noisy_latents={_shape(noisy_latents)}")
            self._require("scheduler")
            ref, ref_name = model_pred, "model_pred"
            _check_noisy(model_pred, noisy_latents)
            if anchor_pred is not None and anchor_pred.shape != model_pred.shape:
                raise ValueError(f"expected anchor_pred of shape {tuple(model_pred.shape)} (as model_pred), got "
                                 f"{tuple(anchor_pred.shape)}")
        b, t_len = self._clips(ref, ref_name, layout, num_frames)
        t_clip = None if timesteps is None else _per_clip("timesteps", timesteps, b, t_len).to(ref.device)
        s_clip = None if sigmas is None else _per_clip("sigmas", sigmas, b, t_len).to(ref.device)

        gate = self.gate(t_clip, s_clip, mask)  # (B,)
        zero = zero_loss_like(ref)
        have_anchor = (anchor_x0 if x0 is not None else anchor_pred) is not None
        if not have_anchor:
            # Cheap check first: without an anchor only an all-ungated batch is valid.
            if bool(gate.any()):
                name = "anchor_x0" if x0 is not None else "anchor_pred"
                raise ValueError(f"expected {name} for a batch with gated samples, got None "
                                 "(use callback.needs_anchor(timesteps) to decide when to run the anchor, or "
                                 "callback.reward(...) which does)")
            self._set_stats(0, b, 0, 0, None, zero)
            return zero

        if x0 is not None:
            x0_5, x0_anchor = _to_btchw(x0, layout, t_len), _to_btchw(anchor_x0, layout, t_len).detach()
        else:
            t_in = t_clip if t_clip is not None else s_clip
            pred5, x5 = _to_btchw(model_pred, layout, t_len), _to_btchw(noisy_latents, layout, t_len)
            x0_5 = predict_x0(self.scheduler, pred5, x5, t_in, s_clip)
            with torch.no_grad():
                x0_anchor = predict_x0(self.scheduler, _to_btchw(anchor_pred, layout, t_len).detach(), x5.detach(),
                                       t_in, s_clip)
        with torch.no_grad():
            finite = torch.isfinite(x0_5.detach()).flatten(1).all(1) & torch.isfinite(x0_anchor).flatten(1).all(1)
            # One host transfer gives the gated indices and the skip count together.
            flags = (gate.to(torch.uint8) | ((gate & ~finite).to(torch.uint8) << 1)).cpu().tolist()
        gated = [i for i, f in enumerate(flags) if f & 1]
        skipped = [i for i, f in enumerate(flags) if f & 2]
        keep = sorted(set(gated) - set(skipped))
        if keep:
            idx = torch.tensor(keep, device=x0_5.device)
            gen_px, anc_px, ok = self._pixels(x0_5.index_select(0, idx), x0_anchor.index_select(0, idx), t_len,
                                              face_boxes, idx)
            if ok is not None:  # non-finite decoded pixels (an fp16 VAE overflow): drop those clips too
                skipped = skipped + [k for k, good in zip(keep, ok) if not good]
                keep = [k for k, good in zip(keep, ok) if good]
                sel = torch.tensor([i for i, good in enumerate(ok) if good], device=gen_px.device, dtype=torch.long)
                gen_px, anc_px = gen_px.index_select(0, sel), anc_px.index_select(0, sel)
        self._warn_nonfinite(len(skipped))
        if not keep:
            self._set_stats(len(gated), b, 0, len(skipped), None, zero)
            return zero
        if self.config.get("placebo", False):
            # Placebo arm (issue 22): the anchor's frames in a random order, same weight; its own CPU
            # generator (seeded from `seed`), so the metric's sampling stream is the real arm's.
            from .placebo import shuffle_time

            if self._placebo_generator is None:
                self._placebo_generator = torch.Generator().manual_seed(int(self.config.seed) + 7919)
            anc_px = shuffle_time(anc_px, self._placebo_generator)
        out = self.metric(anc_px, gen_px, generator=generator if generator is not None else self.generator(gen_px.device))
        loss = float(self.config.weight) * out.loss.float()
        loss = torch.where(torch.isfinite(loss), loss, zero)  # a NaN never reaches the optimizer
        self._set_stats(len(gated), b, len(keep), len(skipped), out, loss)
        return loss

    # -- helpers -----------------------------------------------------------------------------------
    def _require(self, name):
        if getattr(self, name) is None:
            hint = f": pass scheduler= or preconditioning= (one of {sorted(PRECONDITIONINGS)})" if name == "scheduler" else ""
            raise ValueError(f"expected a {name} on STCCLRewardCallback, got None{hint}")

    def _warn_nonfinite(self, n):
        if n and not self._warned_nonfinite:
            warnings.warn(
                f"STCCLRewardCallback: non-finite x0-hat or decoded pixels for {n} gated sample(s); they are "
                "dropped from the reward (counted in last_stats['num_skipped']). Warned once.",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned_nonfinite = True

    def _clips(self, ref, name, layout, num_frames):
        """-> (B, T) of ``ref`` read in ``layout``; checks the channel count against the decoder's."""
        if layout is None:
            layout = "btchw" if ref.ndim == 5 else "flat"
        want = 5 if layout in ("btchw", "bcfhw") else 4
        if ref.ndim != want:
            raise ValueError(f"expected {name} {_LAYOUTS[layout]} for layout={layout!r}, got {tuple(ref.shape)}")
        if layout == "flat":
            t_len = int(num_frames or self.config.num_frames or 1)
            if ref.shape[0] % t_len:
                raise ValueError(f"expected {name} with a batch divisible by num_frames={t_len} for (B*T, C, h, w), "
                                 f"got {tuple(ref.shape)}")
            b, c = ref.shape[0] // t_len, ref.shape[1]
        elif layout == "btchw":
            b, t_len, c = ref.shape[:3]
        else:
            b, c, t_len = ref.shape[:3]
        cfg = getattr(self.decoder, "config", None) if self.decode_fn is None else None
        want_c = getattr(cfg, "latent_channels", None)
        if want_c is not None and c != want_c:
            hint = ""
            if layout == "btchw" and ref.shape[1] == want_c:
                hint = "; for (B, C, F, h, w) latents (UNet3D) pass layout='bcfhw'"
            elif layout == "bcfhw" and ref.shape[2] == want_c:
                hint = "; for (B, T, C, h, w) latents pass layout='btchw'"
            elif c > want_c:
                hint = ("; pass the denoiser's latent output and the unscaled noisy latents, not the UNet input "
                        "concatenated with its conditioning")
            raise ValueError(f"expected {name} with {want_c} latent channels (the decoder's latent_channels) in "
                             f"{_LAYOUTS[layout]}, got {tuple(ref.shape)} (C={c}){hint}")
        return b, t_len

    def _scaling(self):
        cfg = getattr(self.decoder, "config", None) if self.decode_fn is None else None
        scale = self.config.scaling_factor
        if scale is None:
            scale = getattr(cfg, "scaling_factor", None) if cfg is not None else None
        shift = self.config.shift_factor
        if shift is None:
            shift = getattr(cfg, "shift_factor", None) if cfg is not None else None
        return float(1.0 if scale is None else scale), float(0.0 if shift is None else shift)

    def _pixels(self, x0, x0_anchor, t_len, face_boxes, idx):
        subset = self.config.frame_subset
        if subset is not None:
            subset = list(subset)
            if max(subset) >= t_len or min(subset) < -t_len:
                raise ValueError(f"expected frame_subset indices within T={t_len}, got {subset}")
            subset = [i % t_len for i in subset]  # index_select takes no negative indices
            sub = torch.tensor(subset, device=x0.device)
            x0, x0_anchor = x0.index_select(1, sub), x0_anchor.index_select(1, sub)
        scale, shift = self._scaling()
        kw = dict(decoder=self.decoder, decode_fn=self.decode_fn, scaling_factor=scale, shift_factor=shift,
                  chunk_size=self.config.decode_chunk_size)
        gen = decode_latents(x0, gradient_checkpointing=self.config.gradient_checkpointing, **kw)
        with torch.no_grad():
            anc = decode_latents(x0_anchor, **kw)
            fin = torch.isfinite(gen.detach()).flatten(1).all(1) & torch.isfinite(anc).flatten(1).all(1)
            ok = fin.cpu().tolist()
        ok = None if all(ok) else ok
        if face_boxes is not None:
            boxes = torch.as_tensor(face_boxes, device=gen.device).float()
            if boxes.ndim == 2:
                boxes = boxes[:, None].expand(-1, t_len, 4)
            if boxes.ndim != 3 or boxes.shape[1:] != (t_len, 4):
                raise ValueError(f"expected face_boxes (B, 4) or (B, {t_len}, 4), got {tuple(face_boxes.shape)}")
            boxes = boxes.index_select(0, idx)
            if subset is not None:
                boxes = boxes.index_select(1, sub)
            size = self.config.face_crop_size
            size = (size, size) if size else gen.shape[-2:]
            n, k = gen.shape[:2]
            flat = boxes.reshape(n * k, 4)
            gen = crop_faces(gen.flatten(0, 1), flat, size).reshape(n, k, -1, *size)
            anc = crop_faces(anc.flatten(0, 1), flat, size).reshape(n, k, -1, *size)
        if self.config.clamp_pixels:
            gen, anc = gen.clamp(-1, 1), anc.clamp(-1, 1)
        self._move_metric(gen.device)
        return gen, anc, ok

    def _move_metric(self, device):
        if isinstance(self.metric, torch.nn.Module):
            p = next(self.metric.parameters(), None)
            if p is not None and p.device != device:
                self.metric.to(device)

    def _set_stats(self, n_gated, b, n_scored, n_skipped, out, loss):
        dev = loss.device
        stats = {
            "gated_fraction": n_gated / max(b, 1),
            "num_gated": n_gated,
            "num_scored": n_scored,
            "num_skipped": n_skipped,
            "stccl_loss": loss.detach(),
        }
        for key in _STAT_KEYS:
            if out is None:
                # No clip scored: losses are 0, similarities undefined.
                stats[key] = torch.full((), float("nan") if "sim" in key else 0.0, device=dev)
            else:
                val = getattr(out, key, None)
                stats[key] = (torch.full((), float("nan"), device=dev) if val is None
                              else torch.as_tensor(val).detach().float())
        self.last_stats = stats

    def log_dict(self, prefix: str = "stccl/") -> dict[str, float]:
        """``last_stats`` as plain floats for ``accelerator.log`` (one host sync; call at log intervals)."""
        return {prefix + k: float(v) for k, v in self.last_stats.items()}


# ----------------------------------------------------------------------------------------------
# Inference side: validation scores during sampling
# ----------------------------------------------------------------------------------------------
class STCCLValidationCallback(PipelineCallback):
    """Records the STCCL score of x0-hat against a neutral anchor run while a pipeline samples.

    Use two runs with the same seed: first the neutral run with ``mode="anchor"`` (stores the anchor
    x0-hat per step), then the emotional run with ``mode="score"``; ``scores[step_index]`` holds the
    ``metric(...)`` output per scored step (``out.loss`` etc.)::

        cb = STCCLValidationCallback(reward=reward_callback, num_frames=T)
        pipe(neutral_inputs, generator=g0, callback_on_step_end=cb.set_mode("anchor"))
        pipe(emotional_inputs, generator=g1, callback_on_step_end=cb.set_mode("score"))

    Pipelines hand callbacks the latents *after* each step, not the noise prediction, so x0-hat is
    recovered from two consecutive latents of a deterministic first-order sigma sampler
    (Euler with ``s_churn=0``, EDMEuler, FlowMatchEuler): ``x_next = x + (x - x0)/s (s_next - s)`` gives
    ``x0 = x - s (x_next - x)/(s_next - s)``. The first step (no previous latents) is not scored.
    Latents are ``(B, T, C, h, w)`` or ``(B*T, C, h, w)`` as in ``STCCLRewardCallback``.
    """

    tensor_inputs = ["latents"]
    ignore_for_config = ["reward"]

    @register_to_config
    def __init__(self, cutoff_step_ratio=1.0, cutoff_step_index=None, num_frames: Optional[int] = None,
                 every_n_steps: int = 1, reward: Optional[STCCLRewardCallback] = None):
        super().__init__(cutoff_step_ratio=cutoff_step_ratio, cutoff_step_index=cutoff_step_index)
        self.reward = reward
        self.mode = "anchor"
        self.anchor_x0: dict[int, torch.Tensor] = {}
        self.scores: dict[int, Any] = {}
        self._prev: Optional[torch.Tensor] = None

    def set_mode(self, mode: str) -> "STCCLValidationCallback":
        if mode not in ("anchor", "score"):
            raise ValueError(f"expected mode 'anchor' or 'score', got {mode!r}")
        self.mode = mode
        self._prev = None
        if mode == "anchor":
            self.anchor_x0, self.scores = {}, {}
        else:
            self.scores = {}
        return self

    @staticmethod
    def x0_from_consecutive(x: torch.Tensor, x_next: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
        """x0-hat of a deterministic Euler step ``x -> x_next`` between noise levels ``sigma -> sigma_next``."""
        if sigma_next == sigma:
            raise ValueError(f"expected distinct consecutive sigmas, got {sigma} twice")
        xf = x.float()
        return (xf - sigma * (x_next.float() - xf) / (sigma_next - sigma)).to(x.dtype)

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        latents = callback_kwargs["latents"]
        sch = pipeline.scheduler
        if not hasattr(sch, "sigmas") or getattr(sch, "step_index", None) is None:
            raise ValueError(
                f"STCCLValidationCallback needs a sigma scheduler with a step index (EulerDiscreteScheduler, "
                f"EDMEulerScheduler, FlowMatchEulerDiscreteScheduler), got {type(sch).__name__}"
            )
        prev, self._prev = self._prev, latents.detach().clone()
        if prev is None or step_index % self.config.every_n_steps or step_index >= self._cutoff(pipeline):
            return callback_kwargs
        j = int(sch.step_index) - 1  # the step just taken went sigmas[j] -> sigmas[j + 1]
        x0 = self.x0_from_consecutive(prev, latents.detach(), float(sch.sigmas[j]), float(sch.sigmas[j + 1]))
        if self.mode == "anchor":
            self.anchor_x0[step_index] = x0
        elif step_index in self.anchor_x0:
            self.scores[step_index] = self.score(x0, self.anchor_x0[step_index])
        return callback_kwargs

    def _cutoff(self, pipeline) -> float:
        """PipelineCallback's cutoff: no scoring from this step index on (ratio of the pipeline's steps)."""
        if self.config.cutoff_step_index is not None:
            return self.config.cutoff_step_index
        total = getattr(pipeline, "num_timesteps", None)
        return float("inf") if total is None else int(total * self.config.cutoff_step_ratio)

    @torch.no_grad()
    def score(self, x0: torch.Tensor, anchor_x0: torch.Tensor):
        """Metric output for decoded x0-hat vs decoded anchor x0-hat (both latents, same layout)."""
        r = self.reward
        if r is None or r.metric is None:
            raise ValueError("expected reward=STCCLRewardCallback with a metric, got none")
        t_len = x0.shape[1] if x0.ndim == 5 else int(self.config.num_frames or r.config.num_frames or 1)
        gen5 = x0 if x0.ndim == 5 else x0.reshape(-1, t_len, *x0.shape[1:])
        anc5 = anchor_x0 if anchor_x0.ndim == 5 else anchor_x0.reshape(-1, t_len, *anchor_x0.shape[1:])
        idx = torch.arange(gen5.shape[0], device=gen5.device)
        gen, anc, _ = r._pixels(gen5, anc5, t_len, None, idx)
        # A fresh generator per score: identical pipeline seeds give identical scores, global RNG untouched.
        return r.metric(anc, gen, generator=torch.Generator(device=gen.device).manual_seed(int(r.config.seed)))
