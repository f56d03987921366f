"""The STCCL hook for EAT: tensor helpers over EAT's batches, EAT's batch layout for the clip data
set (:func:`eat_collate`), and :class:`EATWithSTCCL`, which adds ``loss_values['stccl']`` to EAT's
generator-full model (see the package docstring)."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ...callback import crop_faces as crop_box
from ...data.eat_mead import EAT_EMOTIONS
from ...models.reference_eat import NEUTRAL_INDEX
from ...training.warmup import warmup_weight

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
        from ...placebo import shuffle_time

        anchor = shuffle_time(anchor, placebo_generator)
    # The metric casts to its own dtype; keep the loss in fp32 under mixed precision (no fp16 NaNs).
    return metric(anchor.float() * 2 - 1, target.float() * 2 - 1, generator=generator)


#: The emotion vocabulary in EAT's label order (MEAD spellings, as the data folders are named):
#: ``TalkingClipDataset(root, EAT_EMOTION_NAMES, ...)`` then yields EAT labels directly.
EAT_EMOTION_NAMES = tuple(EMOTION_TO_EAT)


def eat_collate(items: Sequence[Dict[str, Any]], n_mels: int = 20, context: int = 1) -> Dict[str, Any]:
    """Talking-clip items (:class:`~stccl_diffusers.data.clips.TalkingClipDataset` built with
    :data:`EAT_EMOTION_NAMES`) -> an EAT-style batch: ``source`` ``(B, 3, H, W)`` and ``driving``
    ``(B, T, 3, H, W)`` in ``[0, 1]``, ``audio`` ``(B, T, n_mels * (2 * context + 1))`` per-frame
    log-mel, ``y_trg`` ``(B,)`` EAT labels, ``bboxs`` ``(B, T, 4)`` x1, y1, x2, y2 pixels (the items'
    per-frame ``face_boxes`` from a face track when present, else their ``face_box``), ``waveform`` ``(B, N)``
    (for validation videos), ``fps``."""
    from ...models.reference_dice import audio_frame_features

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
