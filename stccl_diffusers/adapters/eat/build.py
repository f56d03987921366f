"""What `train_eat_stccl.py` builds from its config: the generator (the user's EAT checkout or the
reference model), the data (clips or EAT's own data set) and the adapter; the config checks that
must fail before any data or metric work."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from ...models.reference_eat import ReferenceEATModel
from ...data.clips import TalkingClipDataset, prepare_clip_folder
from ...eval.effect import synthetic_validation
from ...utils.safety import from_pretrained_local
from .adapter import EATAdapter, ReferenceEATGeneratorFull
from .checkout import check_eat_checkout, eat_validation_batch, load_eat_dataset, load_eat_generator_full
from .config import EATSTCCLConfig
from .hook import EAT_EMOTION_NAMES, eat_collate


def eat_config_path(cfg: EATSTCCLConfig) -> Optional[Path]:
    """``eat_config`` as given, or relative to the checkout (EAT's configs live in ``config/``)."""
    if not cfg.eat_config:
        return None
    path = Path(cfg.eat_config)
    if not path.is_absolute() and not path.exists() and cfg.eat_root:
        path = Path(cfg.eat_root) / path
    return path


def check_config(cfg: EATSTCCLConfig) -> None:
    """What must fail before any data or metric work: LoRA, and a wrong or incomplete EAT checkout
    (every missing file named), EAT's data layout and its SyncNet's 5 frames."""
    if cfg.train_mode != "full":
        raise ValueError(f"train_mode must be 'full' for EAT (LoRA does not apply), got {cfg.train_mode!r}")
    if cfg.eat_root:
        if not cfg.eat_checkpoint or not cfg.eat_config:
            raise ValueError("--eat_root needs --eat_checkpoint and --eat_config")
        check_eat_checkout(cfg.eat_root, cfg.eat_checkpoint, eat_config_path(cfg))
        if cfg.data != "eat":
            raise ValueError(f"the real EAT (--eat_root) trains on EAT's own batch layout: set data: eat (and "
                             f"--eat_mead_path), got data: {cfg.data!r}")
        with open(eat_config_path(cfg), encoding="utf-8") as f:
            sync = ((yaml.safe_load(f) or {}).get("train_params") or {}).get("loss_weights", {}).get("sync", 0)
        if sync != 0 and cfg.num_frames != 5:
            raise ValueError(f"EAT's SyncNet loss (loss_weights.sync = {sync}) takes exactly 5 frames, got num_frames "
                             f"{cfg.num_frames}: set 5, or sync: 0 in your eat_config")


def build_backend(cfg: EATSTCCLConfig, audio_dim: int):
    """EAT's generator-full model from the user's checkout, or the reference model behind EAT's API."""
    if cfg.eat_root:
        if not cfg.eat_checkpoint or not cfg.eat_config:
            raise ValueError("--eat_root needs --eat_checkpoint and --eat_config")
        return load_eat_generator_full(cfg.eat_root, cfg.eat_checkpoint, eat_config_path(cfg)), 256
    if cfg.reference_model:
        model = from_pretrained_local(ReferenceEATModel, cfg.reference_model, "--reference_model")
    else:
        model = ReferenceEATModel(image_size=cfg.resolution, audio_dim=audio_dim,
                                  render_channels=cfg.reference_render_channels)
    if model.config.image_size != cfg.resolution or model.config.audio_dim != audio_dim:
        raise ValueError(f"reference model is {model.config.image_size}px with audio_dim {model.config.audio_dim}; "
                         f"the data is {cfg.resolution}px with audio_dim {audio_dim}")
    model.requires_grad_(True)
    return ReferenceEATGeneratorFull(model, motion_weight=cfg.motion_weight), cfg.resolution


def build_data(cfg: EATSTCCLConfig, progress: bool = True):
    """(train set, collate, validation batch, audio feature size, effect_fn) for the configured data.

    On synthetic demo data the validation clips are held-out synthetic clips and `effect_fn` scores
    them with the benchmark's emotion and mouth measures (renderer ground truth); else None."""
    if cfg.data == "clips":
        size = max(64, cfg.resolution)
        synthetic = prepare_clip_folder(cfg.data_dir, cfg.synthesize_if_missing, speakers=cfg.synth_speakers,
                                        clips=cfg.synth_clips, size=size, seed=cfg.seed)
        train_set = TalkingClipDataset(cfg.data_dir, EAT_EMOTION_NAMES, cfg.num_frames, cfg.resolution,
                                       windows_per_clip=cfg.windows_per_clip, progress=progress, crop=cfg.crop,
                                       face_boxes=cfg.face_boxes, reference=cfg.reference)
        if synthetic and not cfg.eat_root:
            val_batch, effect_fn, _ = synthetic_validation(
                cfg.num_validation_clips, cfg.validation_frames, cfg.resolution, EAT_EMOTION_NAMES, eat_collate,
                Path(cfg.output_dir) / "effect_probe", seed=cfg.validation_seed)
            return train_set, eat_collate, val_batch, val_batch["audio"].shape[-1], effect_fn
        if synthetic:
            # Validation (demo only): other identities and sentences than training, in a sibling the demo owns.
            prepare_clip_folder(f"{cfg.data_dir}_val", True, speakers=1, clips=1, size=size, seed=cfg.validation_seed)
        val_dir = f"{cfg.data_dir}_val" if Path(f"{cfg.data_dir}_val").is_dir() else cfg.data_dir
        held_out = TalkingClipDataset(val_dir, EAT_EMOTION_NAMES, cfg.validation_frames, cfg.resolution,
                                      windows_per_clip=1, progress=progress, crop=cfg.crop, face_boxes=cfg.face_boxes,
                                      reference=cfg.reference)
        emotional = [held_out[i] for i in range(len(held_out)) if int(held_out[i]["emotion"]) != 5]
        val_batch = eat_collate((emotional or [held_out[0]])[: cfg.num_validation_clips])
        return train_set, eat_collate, val_batch, val_batch["audio"].shape[-1], None
    if cfg.data == "eat":
        if not cfg.eat_root:
            raise ValueError("data: eat reads EAT's prepared MEAD through EAT's own data set: it needs --eat_root "
                             "and --eat_config")
        mead = cfg.eat_mead_path
        paths = dict(root_dir=Path(mead) / "images_evp_25" if mead else None, mead_path=mead,
                     poseimg_path=cfg.eat_poseimg_path or mead, vox_path=cfg.eat_vox_path or mead)
        train_set = load_eat_dataset(cfg.eat_root, eat_config_path(cfg), is_train=True, num_frames=cfg.num_frames,
                                     **paths)
        # EAT's test split, whole validation_frames-long windows (rendered num_frames at a time).
        held_out = load_eat_dataset(cfg.eat_root, eat_config_path(cfg), is_train=False,
                                    num_frames=cfg.validation_frames, **paths)
        val_batch = eat_validation_batch(held_out, cfg.num_validation_clips, seed=cfg.validation_seed)
        return train_set, None, val_batch, None, None
    raise ValueError(f"data must be 'clips' or 'eat', got {cfg.data!r}")


def build_adapter(cfg: EATSTCCLConfig, generator_full, metric, image_size: int) -> EATAdapter:
    """`EATAdapter` from the config's STCCL fields (weight, warm-up, ramp, crop, anchor, trainable
    modules), switched to the placebo arm when `stccl_placebo` is set."""
    adapter = EATAdapter(
        generator_full, metric, weight=cfg.stccl_weight, warmup_steps=cfg.stccl_warmup_steps,
        ramp_steps=cfg.stccl_ramp_steps, crop_size=cfg.crop_size, image_size=image_size,
        num_frames=cfg.num_frames, trainable_modules=cfg.trainable_modules, anchor=cfg.anchor,
    )
    if cfg.stccl_placebo:  # the benchmark's placebo arm: anchor frames shuffled in time
        from ...placebo import enable_placebo

        enable_placebo(adapter.stccl, cfg.seed)
    return adapter
