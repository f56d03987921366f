"""STCCL for EAT (Gan et al., ICCV 2023) with online pseudo-pairing (paper §8.3.2, facts §5).

Every training step renders two streams from the same batch (audio, pose, source frame and deep
prompt latent ``z_trg``): the **target** stream with the batch's emotion ``y_trg`` (with gradient)
and the **neutral anchor** stream with ``y_trg = 5`` (under ``no_grad``). Faces are cropped from
both with the batch's ``bboxs`` and STCCL pulls the target's spatial/temporal correlations onto
the anchor's:

    loss_values["stccl"] = w(step) * STCCL(anchor = crop(neutral) * 2 - 1, generated = crop(target) * 2 - 1)

with ``w(step)`` from :func:`stccl_diffusers.training.warmup.warmup_weight` (EAT has no diffusion
timestep, so there is no t < 500 gate; the term is switched on by step instead). Clips whose target
emotion is already neutral are left out of the term (target = anchor). The anchor is rendered with
the trainable weights as loaded at step 0 (``anchor="frozen"``, the default; a copy of the trainable
parameters is kept beside the model) or with the weights being trained (``anchor="current"``, the
paper's online form, which lets the anchor drift with the target).

Two backends share this code, both seen through EAT's stage-2 interface
``generator_full(x, train_with_img) -> (loss_values, generated)`` with
``generated["prediction"]`` ``(B * T, 3, H, W)`` in ``[0, 1]``:

- the **real EAT** ``GeneratorFullModelBatchDeepPromptSTEAM3D`` imported from the user's own
  checkout (:func:`load_eat_generator_full`; EAT's code is never vendored), wrapped by
  :class:`EATWithSTCCL`, which is a drop-in replacement inside EAT's own
  ``train_batch_deepprompt_eam3d_sidetuning`` loop;
- the built-in :class:`~stccl_diffusers.models.reference_eat.ReferenceEATModel` through
  :class:`ReferenceEATGeneratorFull`.

:class:`EATAdapter` plugs either into the shared training loop (``train_eat_stccl.py``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from ..callback import crop_faces as crop_box
from ..data.eat_mead import EAT_EMOTIONS
from ..models.reference_eat import NEUTRAL_INDEX, ReferenceEATModel
from ..training.adapter import TalkingHeadAdapter
from ..training.warmup import warmup_weight

__all__ = [
    "EAT_EMOTIONS",
    "NEUTRAL_INDEX",
    "EAT_REQUIRED_FILES",
    "neutral_batch",
    "check_prediction",
    "crop_faces",
    "stccl_on_frames",
    "EATWithSTCCL",
    "ReferenceEATGeneratorFull",
    "EATAdapter",
    "check_eat_checkout",
    "load_eat_generator_full",
    "load_eat_state",
    "fresh_batch",
    "losses_off",
    "eat_core",
    "working_directory",
    "set_eat_trainable",
    "EMOTION_TO_EAT",
    "EAT_EMOTION_NAMES",
    "eat_collate",
    "load_eat_dataset",
    "eat_validation_batch",
    "time_window",
    "PER_FRAME_KEYS",
]

#: MEAD emotion names (as the synthetic data and MEAD folders spell them) -> EAT label.
EMOTION_TO_EAT = {"angry": 0, "contempt": 1, "disgusted": 2, "fear": 3, "happy": 4, "neutral": 5, "sad": 6,
                  "surprised": 7}
_RANGE_TOLERANCE = 1e-3
#: The frozen anchor's weights (step 0) in each checkpoint, for a resume (``anchor="frozen"``).
ANCHOR_WEIGHTS_NAME = "anchor_weights.safetensors"


# ----------------------------------------------------------------------------- functional core


def fresh_batch(x: Any) -> Any:
    """A copy of an EAT batch that EAT's forward may mutate without touching ``x``.

    EAT's forward changes its batch in place: it reassigns ``x['driving']`` and calls
    ``he_source['t'].unsqueeze_(1)`` (which changes the tensor object's shape). Dicts and lists
    are copied recursively and every tensor becomes a new view of the same storage (no data
    copied, autograd kept), except ``z_trg``, which stays the very same object.
    """
    if isinstance(x, dict):
        return {k: (v if k == "z_trg" else fresh_batch(v)) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(fresh_batch(v) for v in x)
    if isinstance(x, torch.Tensor):
        return x.view(x.shape)
    return x


def neutral_batch(x: Dict[str, Any]) -> Dict[str, Any]:
    """The neutral-anchor batch: :func:`fresh_batch` of ``x`` with ``y_trg`` set to 5 (neutral).

    Both streams share audio, pose, source frame and the very same deep-prompt latent ``z_trg``
    (facts §5: never a None prompt, which breaks EAT's positional encoding).
    """
    if "y_trg" not in x or "z_trg" not in x or x["z_trg"] is None:
        raise ValueError(
            "expected an EAT batch with 'y_trg' (B,) emotion indices and 'z_trg' (B, 16) deep-prompt "
            f"latents; got keys {sorted(x)}"
        )
    y = x["y_trg"]
    out = fresh_batch(x)
    out["y_trg"] = torch.full_like(y, NEUTRAL_INDEX) if isinstance(y, torch.Tensor) else [NEUTRAL_INDEX] * len(y)
    return out


def check_prediction(
    prediction: Any, batch_size: int, num_frames: int, image_size: Optional[int] = None
) -> torch.Tensor:
    """Validate EAT's ``generated["prediction"]`` and return it as ``(B, T, 3, H, W)``.

    Expected ``(B * T, 3, H, W)`` (``H = W = image_size`` when given; 256 for EAT) in ``[0, 1]``
    (EAT's renderer ends in a sigmoid). Anything else is a ``ValueError`` naming both.
    """
    size = "H, W" if image_size is None else f"{image_size}, {image_size}"
    want = f"generated['prediction'] of shape ({batch_size}*{num_frames}, 3, {size}) in [0, 1]"
    if not isinstance(prediction, torch.Tensor):
        raise ValueError(f"expected {want}, got {type(prediction).__name__}")
    shape = tuple(prediction.shape)
    ok = prediction.ndim == 4 and shape[0] == batch_size * num_frames and shape[1] == 3
    if ok and image_size is not None:
        ok = shape[2] == image_size and shape[3] == image_size
    if not ok:
        raise ValueError(f"expected {want}, got {shape}")
    lo, hi, finite = torch.stack(
        [prediction.detach().amin().float(), prediction.detach().amax().float(),
         prediction.detach().isfinite().all().float()]
    ).tolist()
    if finite < 1:
        raise ValueError(f"expected {want}, got NaN or inf values")
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"expected {want}, got values in [{lo:.3g}, {hi:.3g}]")
    return prediction.view(batch_size, num_frames, *shape[1:])


def crop_faces(frames: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable bilinear face crops.

    frames: ``(N, C, H, W)``; boxes: ``(N, 4)`` as ``[x0, y0, x1, y1]`` in pixels of the frame (as
    EAT's ``x['bboxs']``, which it divides by 256). Returns ``(N, C, size, size)``: the box
    resampled on a ``size x size`` grid (``x = x0 + (x1 - x0) * u``, ``u`` in ``[0, 1]``).
    """
    if frames.ndim != 4 or boxes.shape != (frames.shape[0], 4):
        raise ValueError(
            f"expected frames (N, C, H, W) and boxes (N, 4) [x0, y0, x1, y1] in pixels, got "
            f"{tuple(frames.shape)} and {tuple(boxes.shape)}"
        )
    if bool((boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any()):
        raise ValueError(f"expected boxes with x1 > x0 and y1 > y0, got {boxes.tolist()}")
    # The crop-and-resize itself is the reward callback's; EAT only adds the box-order check.
    return crop_box(frames, boxes, (size, size)).to(frames.dtype)


def stccl_on_frames(
    metric: nn.Module,
    target: torch.Tensor,
    anchor: torch.Tensor,
    bboxs: Optional[torch.Tensor],
    crop_size: Optional[int],
    generator: Optional[torch.Generator] = None,
    placebo_generator: Optional[torch.Generator] = None,
):
    """STCCL between the target and the neutral-anchor stream, faces cropped.

    ``placebo_generator``: when given, the placebo arm (issue 22): the cropped anchor's frames are
    shuffled in time with it (:func:`~stccl_diffusers.placebo.shuffle_time`) before scoring.

    target, anchor: ``(B, T, 3, H, W)`` in ``[0, 1]`` (EAT's range; gradient through ``target``);
    bboxs: ``(B, T, 4)`` pixel boxes or None (whole frame). The metric takes ``[-1, 1]``:
    ``x -> 2x - 1``. Returns the metric's output (``.loss``, ``.pos_sim``, ``.neg_sim``, ...).
    """
    b, t = target.shape[:2]
    if bboxs is not None and crop_size:
        boxes = torch.as_tensor(bboxs, device=target.device).reshape(b * t, 4)
        target = crop_faces(target.flatten(0, 1), boxes, crop_size).view(b, t, 3, crop_size, crop_size)
        anchor = crop_faces(anchor.flatten(0, 1), boxes, crop_size).view(b, t, 3, crop_size, crop_size)
    if placebo_generator is not None:
        from ..placebo import shuffle_time

        anchor = shuffle_time(anchor, placebo_generator)
    # The metric casts to its own dtype; keep the loss in fp32 under mixed precision (no fp16 NaNs).
    return metric(anchor.float() * 2 - 1, target.float() * 2 - 1, generator=generator)


#: The emotion vocabulary in EAT's label order (MEAD spellings, as the data folders are named):
#: ``TalkingClipDataset(root, EAT_EMOTION_NAMES, ...)`` then yields EAT labels directly.
EAT_EMOTION_NAMES = tuple(EMOTION_TO_EAT)


def eat_collate(items: Sequence[Dict[str, Any]], n_mels: int = 20, context: int = 1) -> Dict[str, Any]:
    """Talking-clip items (:class:`~stccl_diffusers.training.clips.TalkingClipDataset` built with
    :data:`EAT_EMOTION_NAMES`) -> an EAT-style batch: ``source`` ``(B, 3, H, W)`` and ``driving``
    ``(B, T, 3, H, W)`` in ``[0, 1]``, ``audio`` ``(B, T, n_mels * (2 * context + 1))`` per-frame
    log-mel, ``y_trg`` ``(B,)`` EAT labels, ``bboxs`` ``(B, T, 4)`` x1, y1, x2, y2 pixels (the items'
    per-frame ``face_boxes`` from a face track when present, else their ``face_box``), ``waveform`` ``(B, N)``
    (for validation videos), ``fps``."""
    from ..models.reference_dice import audio_frame_features

    stack = lambda k: torch.stack([torch.as_tensor(it[k]) for it in items])  # noqa: E731
    frames = stack("frames")
    b, t = frames.shape[:2]
    fps = float(items[0]["fps"])
    waveform = stack("audio")
    y = stack("emotion").long().view(b)
    if int(y.min()) < 0 or int(y.max()) >= len(EAT_EMOTIONS):
        raise ValueError(f"expected EAT emotion labels in [0, 8) ({EAT_EMOTION_NAMES}), got {y.tolist()}")
    return {
        "source": stack("reference").add(1).div(2),
        "driving": frames.add(1).div(2),
        "audio": audio_frame_features(waveform, 16000, fps, t, n_mels=n_mels, context=context),
        "y_trg": y,
        # Per-frame face tracks when the dataset has them (face_boxes="track"), else one box per clip.
        "bboxs": (stack("face_boxes").float() if all("face_boxes" in it for it in items)
                  else stack("face_box").float().view(b, 1, 4).expand(b, t, 4).contiguous()),
        "waveform": waveform,
        "fps": fps,
    }


#: Batch entries with a time axis (dim 1): EAT's per-frame inputs (``he_driving`` is a dict of
#: ``(B, T, ...)`` tensors) and the reference model's ``audio``. Everything else is per clip
#: (``source``, ``he_source``, ``z_trg``, ``y_trg``, ``sync_mel``, names); selecting by key, not by
#: shape, keeps e.g. ``source`` (B, 3, H, W) whole in a 3-frame clip.
PER_FRAME_KEYS = ("driving", "he_driving", "mel", "pose", "deep", "bboxs", "audio")


def time_window(batch: Dict[str, Any], start: int, end: int) -> Dict[str, Any]:
    """Frames ``[start, end)`` of a clip batch: every tensor under :data:`PER_FRAME_KEYS`
    (recursively through dicts, e.g. ``he_driving['yaw']`` ``(B, T, 66)``) sliced on dim 1; the
    rest shared as is."""
    def cut(v):
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if isinstance(v, torch.Tensor):
            if v.ndim < 2:
                raise ValueError(f"expected per-frame tensors (B, T, ...), got shape {tuple(v.shape)}")
            return v[:, start:end]
        return v

    return {k: (cut(v) if k in PER_FRAME_KEYS else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------- the EAT hook


def eat_core(model: nn.Module) -> nn.Module:
    """The generator-full model inside any ``.module`` wrappers (DataParallel, EATWithSTCCL)."""
    while isinstance(getattr(model, "module", None), nn.Module) and model.module is not model:
        model = model.module
    return model


@contextlib.contextmanager
def losses_off(model: nn.Module):
    """Run EAT's forward without its losses: every ``loss_weights`` entry of the generator-full
    model reads 0 inside the block (EAT computes each loss only when its weight is non-zero), so
    a render skips VGG, SyncNet and the rest. A model without ``loss_weights`` is left alone."""
    core = eat_core(model)
    weights = getattr(core, "loss_weights", None)
    if not isinstance(weights, dict):
        yield
        return
    core.loss_weights = {k: ([0] * len(v) if isinstance(v, (list, tuple)) else 0) for k, v in weights.items()}
    try:
        yield
    finally:
        core.loss_weights = weights


class EATWithSTCCL(nn.Module):
    """Adds ``loss_values['stccl']`` to an EAT stage-2 generator-full model; nothing else changes.

    ``generator_full(x, train_with_img) -> (loss_values, generated)`` is EAT's
    ``GeneratorFullModelBatchDeepPromptSTEAM3D`` (or :class:`ReferenceEATGeneratorFull`). In EAT's
    own training loop, wrap the model *outside* ``DataParallelWithCallback`` (its replicas would
    lose the step counter)::

        generator_full = EATWithSTCCL(DataParallelWithCallback(generator_full), metric, weight=1.0)
        losses_generator, generated = generator_full(x, train_params['train_with_img'])

    Args:
        generator_full: the wrapped model.
        metric: a frozen :class:`~stccl_diffusers.STCCLMetric`.
        weight: full weight of the STCCL term.
        warmup_steps / ramp_steps: steps without the term, then a linear ramp (see
            :func:`~stccl_diffusers.training.warmup.warmup_weight`).
        crop_size: side of the face crops fed to the metric (None: whole frames).
        image_size: expected side of ``generated['prediction']`` (256 for EAT; None: any).
        num_frames: frames per clip when ``x`` carries no ``bboxs`` (EAT: 5).
        anchor: ``"frozen"`` renders the neutral anchor with a copy of the parameters that require
            grad, taken at construction (or at :meth:`snapshot_anchor`), through
            ``torch.func.functional_call``: what the copy costs is those parameters' bytes
            (:meth:`anchor_copy_bytes`). ``"current"`` renders it with the live weights.
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
        anchor: str = "frozen",
    ):
        super().__init__()
        if weight < 0:
            raise ValueError(f"expected a non-negative STCCL weight, got {weight}")
        if anchor not in ("frozen", "current"):
            raise ValueError(f"expected anchor one of ('frozen', 'current'), got {anchor!r}")
        self.generator_full = generator_full
        self.metric = metric
        self.weight, self.warmup_steps, self.ramp_steps = float(weight), int(warmup_steps), int(ramp_steps)
        warmup_weight(0, self.weight, self.warmup_steps, self.ramp_steps)  # validates the schedule
        self.crop_size, self.image_size, self.num_frames = crop_size, image_size, num_frames
        self.anchor = anchor
        self.num_updates = 0  # training calls seen, the step when none is passed
        self.last: Dict[str, float] = {}
        self.last_active = False  # whether the last training call added a live STCCL term
        #: The placebo arm's generator (anchor frames shuffled in time); None scores the real anchor.
        self.placebo_generator: Optional[torch.Generator] = None
        # Plain tensors, not buffers: kept out of state_dict and of DDP's per-step buffer broadcast;
        # moved to the live parameters' device at first use.
        self.frozen_params: Dict[str, torch.Tensor] = {}
        if anchor == "frozen":
            self.snapshot_anchor()

    # -- the frozen anchor ------------------------------------------------------------------
    def snapshot_anchor(self) -> None:
        """Copy the parameters that require grad now (detached, same dtype) as the anchor's weights."""
        if self.anchor != "frozen":
            return
        self.frozen_params = {n: p.detach().clone() for n, p in self.generator_full.named_parameters()
                              if p.requires_grad}

    def anchor_copy_bytes(self) -> int:
        """Bytes held by the frozen anchor copy (0 with ``anchor="current"``)."""
        return sum(t.numel() * t.element_size() for t in self.frozen_params.values())

    def _frozen_on_device(self) -> Dict[str, torch.Tensor]:
        live = dict(self.generator_full.named_parameters())
        for n, t in self.frozen_params.items():
            p = live.get(n)
            if p is None:
                raise ValueError(f"frozen anchor weight {n!r} is not a parameter of {type(self.generator_full).__name__} "
                                 "any more (the model was changed after the snapshot)")
            if t.device != p.device or t.dtype != p.dtype:
                self.frozen_params[n] = t.to(p.device, p.dtype)
        return self.frozen_params

    @property
    def module(self) -> nn.Module:
        """EAT's generator-full model: EAT's loop reaches it as ``generator_full.module``
        (``clip_grad_norm_(generator_full.module.audio2kptransformer.parameters(), 0.05)``),
        with or without ``DataParallelWithCallback`` around it."""
        return eat_core(self.generator_full)

    def render(self, x: Dict[str, Any], neutral: bool = False, frozen: bool = False) -> torch.Tensor:
        """EAT's rendered frames ``(B, T, 3, H, W)`` in ``[0, 1]`` for ``x`` (or its neutral
        anchor), without EAT's losses; the caller's batch is not changed. ``frozen``: with the
        frozen anchor weights (when ``anchor="frozen"``; the live ones otherwise)."""
        b, t = self._shape(x)
        args = (neutral_batch(x) if neutral else fresh_batch(x), True)
        with losses_off(self.generator_full):
            if frozen and self.frozen_params:
                # Only the trainable parameters are swapped in; frozen ones and buffers are shared.
                _, generated = torch.func.functional_call(self.generator_full, self._frozen_on_device(), args)
            else:
                _, generated = self.generator_full(*args)
        return check_prediction(generated.get("prediction"), b, t, self.image_size)

    def render_anchor(self, x: Dict[str, Any]) -> torch.Tensor:
        """The neutral anchor ``(B, T, 3, H, W)`` in ``[0, 1]``, no gradient, from the model ``anchor`` names."""
        with torch.no_grad():
            return self.render(x, neutral=True, frozen=self.anchor == "frozen").detach()

    def current_weight(self, step: int) -> float:
        return warmup_weight(step, self.weight, self.warmup_steps, self.ramp_steps)

    def _shape(self, x: Dict[str, Any]):
        if "source" not in x:
            raise ValueError(f"expected an EAT batch with 'source' (B, 3, H, W), got keys {sorted(x)}")
        b = int(x["source"].shape[0])
        t = int(x["bboxs"].shape[1]) if x.get("bboxs") is not None else self.num_frames
        return b, t

    def forward(self, x: Dict[str, Any], train_with_img: bool = True, step: Optional[int] = None,
                generator: Optional[torch.Generator] = None):
        """EAT's signature plus an optional ``step`` (default: the count of training calls so far)."""
        if step is None:
            step = self.num_updates
            if torch.is_grad_enabled():
                self.num_updates += 1
        w = self.current_weight(step)
        loss_values, generated = self.generator_full(fresh_batch(x), train_with_img)
        if not isinstance(loss_values, dict) or not isinstance(generated, dict):
            raise ValueError(
                "expected generator_full(x, train_with_img) to return (loss_values: dict, generated: dict), "
                f"got ({type(loss_values).__name__}, {type(generated).__name__})"
            )
        if "stccl" in loss_values:
            raise ValueError("generator_full already returned a 'stccl' loss; refusing to overwrite it")
        b, t = self._shape(x)
        target = check_prediction(generated.get("prediction"), b, t, self.image_size)
        self.last = {"stccl_weight": w, "stccl_skipped_neutral": 0.0}
        self.last_active = False
        if w == 0.0:
            # Warm-up: no anchor forward, no metric; a zero keeps the log columns stable.
            loss_values["stccl"] = target.new_zeros(())
            return loss_values, generated
        # A clip whose target emotion is neutral has target = anchor: left out of the term, counted.
        emotional = torch.as_tensor(x["y_trg"]).reshape(-1).to(target.device) != NEUTRAL_INDEX
        keep = emotional.nonzero().reshape(-1)
        self.last["stccl_skipped_neutral"] = float(b - keep.numel())
        if keep.numel() == 0:  # an all-neutral batch: no anchor render, no metric
            loss_values["stccl"] = target.new_zeros(())
            return loss_values, generated
        anchor = self.render_anchor(x)
        boxes = x.get("bboxs")
        if keep.numel() < b:
            target, anchor = target.index_select(0, keep), anchor.index_select(0, keep)
            boxes = None if boxes is None else torch.as_tensor(boxes, device=target.device).index_select(0, keep)
        out = stccl_on_frames(self.metric, target, anchor, boxes, self.crop_size, generator,
                              placebo_generator=self.placebo_generator)
        loss_values["stccl"] = w * out.loss
        self.last_active = True
        self.last.update(stccl_raw=float(out.loss.detach()), pos_sim=float(out.pos_sim), neg_sim=float(out.neg_sim))
        return loss_values, generated


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
        self.last_clipped: Optional[float] = None
        self.latent_dim = latent_dim
        metric.requires_grad_(False)
        # EAT trains a hand-picked subset (prompt, EAM, side-tuning; see `load_eat_generator_full`),
        # chosen parameter by parameter: the adapter sets it here and tells the shared loop's
        # `configure_trainable` (module-level on/off) to leave it as is.
        self._trainable_configured = True
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


# ----------------------------------------------------------------------------- real EAT


#: Files of the user's EAT checkout that the generator-full model is built from.
EAT_REQUIRED_FILES = (
    "modules/model_transformer.py",
    "modules/generator.py",
    "modules/discriminator.py",
    "modules/keypoint_detector.py",
    "modules/transformer.py",
    "modules/prompt.py",
    "modules/syncnet.py",
    "sync_batchnorm/__init__.py",
    "Utils/JDC/model.py",  # StarGANv2-VC's JDCNet (EAT's README: the Utils download)
    "Utils/JDC/bst.t7",  # its weights; EAT's transformer loads ./Utils/JDC/bst.t7
    "expPCAnorm_fin/U_mead.npy",  # EAT's expression PCA, read as ./expPCAnorm_fin/*.npy
    "expPCAnorm_fin/mean_mead.npy",
)
#: EAT's SyncNet checkpoint (read as ./ckpt/... when train_params.loss_weights.sync != 0).
EAT_SYNCNET_CHECKPOINT = "ckpt/checkpoint_epoch02600_testloss0.8152778898516009_testacc0.5245564512668117.pth"

#: Checkpoint entries (EAT's Logger saves one state_dict per module name). A stage-1 checkpoint
#: (EAT's README starts stage 2 from ``qvt_img_pca_sync_4_01_11_304.pth.tar``) has the first three.
EAT_CHECKPOINT_KEYS = ("generator", "kp_detector", "audio2kptransformer", "emotionprompt", "sidetuning")
EAT_STAGE1_KEYS = EAT_CHECKPOINT_KEYS[:3]
#: The file in each saved checkpoint folder that EAT's own loaders (demo.py) read.
EAT_EXPORT_NAME = "eat_checkpoint.pth.tar"


def check_eat_checkout(eat_root: Union[str, os.PathLike], eat_checkpoint: Optional[Union[str, os.PathLike]] = None,
                       eat_config: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Raise ``FileNotFoundError`` naming every missing file of the EAT checkout; return its root."""
    root = Path(eat_root)
    if not root.is_dir():
        raise FileNotFoundError(f"EAT checkout not found: --eat_root {root} is not a directory")
    missing = [str(root / f) for f in EAT_REQUIRED_FILES if not (root / f).is_file()]
    if eat_config is not None and Path(eat_config).is_file():
        import yaml

        with open(eat_config, encoding="utf-8") as f:
            weights = ((yaml.safe_load(f) or {}).get("train_params") or {}).get("loss_weights") or {}
        if weights.get("sync", 0) != 0 and not (root / EAT_SYNCNET_CHECKPOINT).is_file():
            missing.append(f"{root / EAT_SYNCNET_CHECKPOINT} (SyncNet, for loss_weights.sync)")
    for name, path in (("--eat_checkpoint", eat_checkpoint), ("--eat_config", eat_config)):
        if path is not None and not Path(path).is_file():
            missing.append(f"{path} ({name})")
    if missing:
        raise FileNotFoundError("EAT checkout is missing: " + ", ".join(missing))
    return root


@contextlib.contextmanager
def working_directory(path: Union[str, os.PathLike]):
    """``chdir`` into ``path`` for the block (``contextlib.chdir`` needs Python 3.11)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _on_path(root: Path):
    # EAT's modules import each other as `modules.x` from the checkout root.
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))


def _purge_foreign_modules(root: Path, package: str = "modules") -> None:
    """Forget every cached ``modules`` (sub)module that does not live in ``root`` (another checkout).

    Submodules are checked one by one: a parent package can leave ``sys.modules`` while its
    submodules stay (a test's monkeypatch, an importer's cleanup), and a stale ``modules.syncnet``
    from another checkout would then be returned as it is."""
    here = Path(os.path.abspath(root))
    names = [n for n in sys.modules if n == package or n.startswith(package + ".")]

    def foreign(mod) -> bool:
        files = [getattr(mod, "__file__", None)] + list(getattr(mod, "__path__", []) or [])
        files = [Path(os.path.abspath(f)) for f in files if f]
        return bool(files) and not any(here in f.parents for f in files)

    if any(foreign(sys.modules[n]) for n in names):
        for n in names:
            del sys.modules[n]


def _import_from_checkout(root: Path, module: str):
    _purge_foreign_modules(root, module.split(".")[0])
    with _on_path(root):
        mod = importlib.import_module(module)
    # Not resolved: a checkout may symlink its files (the path it was found under is what counts).
    origin = Path(os.path.abspath(getattr(mod, "__file__", "") or ""))
    if Path(os.path.abspath(root)) not in origin.parents:
        raise ImportError(f"{module} was imported from {origin}, not from the EAT checkout {root}; "
                          "another package named 'modules' shadows it")
    return mod


def load_eat_generator_full(
    eat_root: Union[str, os.PathLike],
    eat_checkpoint: Union[str, os.PathLike],
    eat_config: Union[str, os.PathLike],
    device: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """Build EAT's stage-2 ``GeneratorFullModelBatchDeepPromptSTEAM3D`` from the user's checkout.

    Follows EAT's ``prompt_st_dp_eam3d.py``: ``OcclusionAwareSPADEGeneratorEam``,
    ``MultiScaleDiscriminator``, ``KPDetector`` (from ``generator_params``,
    ``discriminator_params``, ``kp_detector_params`` + ``common_params``),
    ``Audio2kpTransformerBBoxQDeepPrompt(**audio2kp_params, face_ea=True)``, ``EmotionDeepPrompt()``,
    ``EmotionalDeformationTransformer(**audio2kp_params)``; weights from the checkpoint's
    per-module state_dicts (``torch.load(weights_only=True)``). EAT's config is read with
    ``yaml.safe_load``. What trains is EAT's stage-2 choice (:func:`set_eat_trainable`).
    """
    import yaml

    from .eat_compat import apply_eat_compat

    root = check_eat_checkout(eat_root, eat_checkpoint, eat_config)
    eat_checkpoint, eat_config = Path(eat_checkpoint).absolute(), Path(eat_config).absolute()
    apply_eat_compat()
    with open(eat_config, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    try:
        mp, train_params = config["model_params"], config["train_params"]
        common = mp["common_params"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{eat_config}: expected EAT's config with model_params.common_params and train_params, "
                         f"missing {e}") from None
    state = torch.load(eat_checkpoint, map_location="cpu", weights_only=True)
    missing = [k for k in EAT_STAGE1_KEYS if k not in state]
    if missing:
        raise ValueError(f"{eat_checkpoint}: expected an EAT checkpoint with entries {list(EAT_STAGE1_KEYS)} "
                         f"(stage 1) or {list(EAT_CHECKPOINT_KEYS)} (stage 2), missing {missing} "
                         f"(found {sorted(state)[:10]})")
    # EAT reads ./Utils/JDC/bst.t7, ./expPCAnorm_fin/*.npy and ./ckpt/<SyncNet> relative to the
    # working directory: build everything inside the checkout.
    with _on_path(root), working_directory(root):
        gen_mod = _import_from_checkout(root, "modules.generator")
        disc_mod = _import_from_checkout(root, "modules.discriminator")
        kp_mod = _import_from_checkout(root, "modules.keypoint_detector")
        tr_mod = _import_from_checkout(root, "modules.transformer")
        pr_mod = _import_from_checkout(root, "modules.prompt")
        mt_mod = _import_from_checkout(root, "modules.model_transformer")
        generator = gen_mod.OcclusionAwareSPADEGeneratorEam(**mp["generator_params"], **common)
        discriminator = disc_mod.MultiScaleDiscriminator(**mp["discriminator_params"], **common)
        kp_detector = kp_mod.KPDetector(**mp["kp_detector_params"], **common)
        audio2kp = tr_mod.Audio2kpTransformerBBoxQDeepPrompt(**mp["audio2kp_params"], face_ea=True)
        emotionprompt = pr_mod.EmotionDeepPrompt()
        sidetuning = pr_mod.EmotionalDeformationTransformer(**mp["audio2kp_params"])
        load_eat_state(state, generator, discriminator, kp_detector, audio2kp, emotionprompt, sidetuning)
        full = mt_mod.GeneratorFullModelBatchDeepPromptSTEAM3D(
            kp_detector, audio2kp, emotionprompt, sidetuning, generator, discriminator, train_params,
            estimate_jacobian=common.get("estimate_jacobian", True),
        )
    # EAT puts its frozen loss networks in eval mode only when CUDA is available; do it always
    # (SyncNet's BatchNorm in training mode raises on a batch of one).
    for name in ("syncnet", "vgg", "hopenet", "dan", "fan", "clip_model"):
        if isinstance(getattr(full, name, None), nn.Module):
            getattr(full, name).eval()
    set_eat_trainable(full)
    return full.to(device)


def load_eat_state(state: Dict[str, Any], generator, discriminator, kp_detector, audio2kp, emotionprompt,
                   sidetuning) -> None:
    """Load an EAT checkpoint as EAT's ``Logger.load_cpk_a2kp_prompt_sidetuning`` does for stage 2:
    generator and audio2kp with ``strict=False``, kp_detector strictly, emotion prompt and
    side-tuning when present; a stage-1 checkpoint (no ``sidetuning``) initialises side-tuning
    from audio2kp (EAT's ``init_sidetuning_weight``); the discriminator when present."""
    generator.load_state_dict(state["generator"], strict=False)
    kp_detector.load_state_dict(state["kp_detector"])
    audio2kp.load_state_dict(state["audio2kptransformer"], strict=False)
    if "emotionprompt" in state:
        emotionprompt.load_state_dict(state["emotionprompt"])
    if "sidetuning" in state:
        sidetuning.load_state_dict(state["sidetuning"])
    else:
        sidetuning.init_sidetuning_weight(state["audio2kptransformer"])
    if "discriminator" in state:
        discriminator.load_state_dict(state["discriminator"])


def set_eat_trainable(full: nn.Module) -> None:
    """EAT's stage-2 choice of what trains (its ``prompt_st_dp_eam3d.py``), parameter by parameter.

    Trainable: the renderer's emotional adaptation (``ea1``, ``ea2``, ``ea3d`` in the name), the
    audio encoder's decode norms and the ``fea`` module of ``audio2kptransformer``, all of
    ``emotionprompt`` and ``sidetuning``. Everything else (keypoint detector, perceptual nets, the
    rest of the generator and transformer) is frozen.
    """
    full.requires_grad_(False)
    for name, p in full.generator.named_parameters():
        p.requires_grad_(any(k in name for k in ("ea1", "ea2", "ea3d")))
    a2kp = full.audio2kptransformer
    if hasattr(a2kp, "audioencoder"):
        for name, p in a2kp.audioencoder.named_parameters():
            p.requires_grad_("decode" in name and "norm" in name)
    if hasattr(a2kp, "fea"):
        a2kp.fea.requires_grad_(True)
    full.emotionprompt.requires_grad_(True)
    full.sidetuning.requires_grad_(True)


def load_eat_dataset(
    eat_root: Union[str, os.PathLike],
    eat_config: Union[str, os.PathLike],
    is_train: bool = True,
    num_frames: Optional[int] = None,
    root_dir: Optional[Union[str, os.PathLike]] = None,
    mead_path: Optional[Union[str, os.PathLike]] = None,
    poseimg_path: Optional[Union[str, os.PathLike]] = None,
    vox_path: Optional[Union[str, os.PathLike]] = None,
):
    """EAT's own stage-2 data set, ``FramesWavsDatasetMEL25VoxBoxQG2ImgPrompt`` from the user's
    ``frames_dataset_transformer25.py``, built from ``dataset_params`` of ``eat_config`` as EAT's
    ``prompt_st_dp_eam3d.py`` builds it.

    ``is_train=False`` gives EAT's test split (``test/`` or its random 20 %). ``num_frames``
    replaces ``dataset_params.syncnet_T`` (frames per item; EAT: 5). ``root_dir`` replaces
    ``dataset_params.root_dir``; ``mead_path``, ``poseimg_path`` and ``vox_path`` replace the
    module constants EAT's README has users edit, on the imported module only (the checkout's
    files are not touched). The layout is checked first (:func:`~stccl_diffusers.data.eat_mead.check_eat_mead`),
    since EAT's data set loops forever over clips it cannot read.
    """
    import yaml

    from ..data.eat_mead import check_eat_mead
    from .eat_compat import apply_eat_compat

    root = Path(eat_root)
    if not (root / "frames_dataset_transformer25.py").is_file():
        raise FileNotFoundError(f"EAT checkout is missing: {root / 'frames_dataset_transformer25.py'}")
    with open(eat_config, encoding="utf-8") as f:
        params = dict((yaml.safe_load(f) or {}).get("dataset_params") or {})
    if "root_dir" not in params and root_dir is None:
        raise ValueError(f"{eat_config}: expected EAT's config with dataset_params.root_dir (or pass root_dir)")
    apply_eat_compat()
    mod = _import_from_checkout(root, "frames_dataset_transformer25")
    # EAT formats these into f-strings ending in '/...': absolute, as strings.
    for name, value in (("mead_path", mead_path), ("poseimg_path", poseimg_path), ("vox_path", vox_path)):
        if value is not None:
            setattr(mod, name, str(Path(value).absolute()))
    if root_dir is not None:
        params["root_dir"] = str(Path(root_dir).absolute())
    if num_frames is not None:
        params["syncnet_T"] = int(num_frames)
    check_eat_mead(params["root_dir"], mod.mead_path, mod.poseimg_path, mod.vox_path,
                   min_frames=int(params.get("syncnet_T", 5)), split="train" if is_train else "test")
    with _on_path(root), working_directory(root), contextlib.redirect_stdout(None):  # EAT prints split and sizes
        return mod.FramesWavsDatasetMEL25VoxBoxQG2ImgPrompt(is_train=is_train, **params)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed Python's, numpy's and torch's global RNGs for the block (EAT's data set draws from all
    three), then restore them."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def eat_validation_batch(dataset, num_clips: int, seed: int = 0) -> Dict[str, Any]:
    """A fixed validation batch from EAT's data set: its emotional clips first (a neutral clip's
    target and anchor are the same), in name order, each item drawn with ``seed`` (EAT picks the
    window, the source frame and ``z_trg`` at random), collated as EAT's DataLoader does."""
    from torch.utils.data import default_collate

    from ..data.eat_mead import eat_clip_emotion

    names = list(dataset.videos)
    order = sorted(range(len(names)), key=lambda i: (eat_clip_emotion(names[i]) == NEUTRAL_INDEX, names[i]))
    if not order:
        raise ValueError("EAT's data set has no clips for validation")
    with _seeded(seed):
        return default_collate([dataset[i] for i in order[: max(1, num_clips)]])
