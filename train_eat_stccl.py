#!/usr/bin/env python
"""Fine-tune EAT (or the built-in EAT-style reference model) with STCCL.

    accelerate launch train_eat_stccl.py                       # embedded demo, CPU, a few minutes
    accelerate launch train_eat_stccl.py --config configs/eat_stccl.yaml \\
        --eat_root /path/to/EAT_code --eat_checkpoint ckpt/deepprompt_eam3d_all_final_313.pth.tar \\
        --metric_path /path/to/stccl-metric

Online pseudo-pairing (paper §8.3.2): each step renders the target emotion (with gradient) and a
neutral anchor (label 5, same audio, source and ``z_trg``, no gradient); STCCL between the cropped
faces is added to EAT's own loss dict as ``loss_values['stccl']``, after an optional warm-up.
The loop (accelerate, checkpoints, resume, NaN guard, trackers) is the package's shared one, the
same that ``train_dice_stccl.py`` runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

from stccl_diffusers import STCCLMetric
from stccl_diffusers.adapters.eat import (
    EAT_EMOTION_NAMES,
    EATAdapter,
    ReferenceEATGeneratorFull,
    check_eat_checkout,
    eat_collate,
    load_eat_generator_full,
)
from stccl_diffusers.models.reference_eat import ReferenceEATModel
from stccl_diffusers.training import TalkingClipsConfig, build_accelerator, parse_config, train
from stccl_diffusers.training.clips import TalkingClipDataset, prepare_clip_folder
from stccl_diffusers.training.demo import ensure_config_metric
from stccl_diffusers.training.effect import synthetic_validation
from stccl_diffusers.training.validation import BeforeSTCCLRow, make_validation_fn, plot_loss_curves, write_metrics_json
from stccl_diffusers.data.datasets import write_skipped_report
from stccl_diffusers.utils.safety import cli_errors, from_pretrained_local, save_pretrained_atomic

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "eat_stccl_demo.yaml"


@dataclass
class EATSTCCLConfig(TalkingClipsConfig):
    """`TalkingClipsConfig` (diffusers' argument names, clips, metric) plus what EAT needs."""

    # -- backend: the user's EAT checkout, or the built-in reference model -------------------
    eat_root: Optional[str] = None
    """EAT checkout (github yuangan/EAT_code); None trains the built-in reference model."""
    eat_checkpoint: Optional[str] = None
    """EAT stage-2 checkpoint, e.g. `deepprompt_eam3d_all_final_313.pth.tar`."""
    eat_config: Optional[str] = None
    """EAT's YAML, e.g. `config/deepprompt_eam3d_st_tanh_304_3090_all.yaml` (relative to eat_root)."""
    reference_model: Optional[str] = None
    """A `save_pretrained` ReferenceEATModel to start from; None starts from scratch."""
    reference_render_channels: int = 16
    motion_weight: float = 0.0
    """Reference model: extra L1 weight where a frame differs from its source (mouth, brows,
    eyes; `ReferenceEATModel.reconstruction_losses`). 0 is a plain L1."""
    train_mode: str = "full"
    """EAT trains modules in full (prompt, EAM, side-tuning); LoRA does not apply."""

    # -- STCCL (metric_path, metric_backbone, ...: TalkingClipsConfig) ------------------------
    stccl_weight: float = 1.0
    stccl_warmup_steps: int = 0
    """Optimizer steps without the STCCL term (no anchor render, no metric)."""
    stccl_ramp_steps: int = 0
    """Then a linear ramp of the weight over this many steps."""
    crop_size: int = 112
    """Face crops (from `bboxs`) fed to the metric; the metric resizes to its input_size."""
    face_boxes: str = "frame"
    """`bboxs` of `data=clips`: `frame` (the whole frame: clips are face crops) or `track` (per-frame
    boxes of a face track over each clip, `data.face_align.face_track`; faceless clips are skipped)."""

    # -- data ------------------------------------------------------------------------------
    data: str = "clips"
    """`clips` (a folder of labelled .mp4 clips with audio, MEAD layout; synthesized for the demo)
    or `eat` (EAT's own data set from `eat_config`)."""
    data_dir: str = "outputs/eat_demo_data"
    eat_mead_path: Optional[str] = None
    """`data: eat`: EAT's prepared MEAD (holding `images_evp_25/`, `latent_evp_25/`, `deepfeature32/`,
    `wav_16000/`, `bboxs/`, `poseimg/`, `voxselect/`). Sets `dataset_params.root_dir` to its
    `images_evp_25/` and EAT's module constants `mead_path`, `poseimg_path`, `vox_path` for this run;
    None keeps what the user's checkout and eat_config say (EAT's README way: edit them there)."""
    eat_poseimg_path: Optional[str] = None
    """Folder holding `poseimg/`, if not eat_mead_path (EAT keeps it on another disk)."""
    eat_vox_path: Optional[str] = None
    """Folder holding `voxselect/`, if not eat_mead_path."""
    resolution: int = 256
    num_frames: int = 5
    num_validation_clips: int = 2
    validation_frames: int = 25
    """Frames per validation clip (rendered num_frames at a time, one z_trg per clip)."""


def _eat_config_path(cfg: EATSTCCLConfig) -> Optional[Path]:
    """``eat_config`` as given, or relative to the checkout (EAT's configs live in ``config/``)."""
    if not cfg.eat_config:
        return None
    path = Path(cfg.eat_config)
    if not path.is_absolute() and not path.exists() and cfg.eat_root:
        path = Path(cfg.eat_root) / path
    return path


def build_backend(cfg: EATSTCCLConfig, audio_dim: int):
    """EAT's generator-full model from the user's checkout, or the reference model behind EAT's API."""
    if cfg.eat_root:
        if not cfg.eat_checkpoint or not cfg.eat_config:
            raise ValueError("--eat_root needs --eat_checkpoint and --eat_config")
        return load_eat_generator_full(cfg.eat_root, cfg.eat_checkpoint, _eat_config_path(cfg)), 256
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
        from stccl_diffusers.adapters.eat import eat_validation_batch, load_eat_dataset

        mead = cfg.eat_mead_path
        paths = dict(root_dir=Path(mead) / "images_evp_25" if mead else None, mead_path=mead,
                     poseimg_path=cfg.eat_poseimg_path or mead, vox_path=cfg.eat_vox_path or mead)
        train_set = load_eat_dataset(cfg.eat_root, _eat_config_path(cfg), is_train=True, num_frames=cfg.num_frames,
                                     **paths)
        # EAT's test split, whole validation_frames-long windows (rendered num_frames at a time).
        held_out = load_eat_dataset(cfg.eat_root, _eat_config_path(cfg), is_train=False,
                                    num_frames=cfg.validation_frames, **paths)
        val_batch = eat_validation_batch(held_out, cfg.num_validation_clips, seed=cfg.validation_seed)
        return train_set, None, val_batch, None, None
    raise ValueError(f"data must be 'clips' or 'eat', got {cfg.data!r}")


def main(argv=None, stop_after_steps: Optional[int] = None):
    """Parse flags over the config (default: the embedded demo) and train. ``stop_after_steps`` ends
    the run early as a kill would (tests)."""
    cfg = parse_config(EATSTCCLConfig, argv, default_config=DEMO_CONFIG, description=__doc__.split("\n")[0])
    if cfg.train_mode != "full":
        raise ValueError(f"train_mode must be 'full' for EAT (LoRA does not apply), got {cfg.train_mode!r}")
    if cfg.eat_root:  # fail on a wrong checkout before any data or metric work, naming every missing file
        if not cfg.eat_checkpoint or not cfg.eat_config:
            raise ValueError("--eat_root needs --eat_checkpoint and --eat_config")
        check_eat_checkout(cfg.eat_root, cfg.eat_checkpoint, _eat_config_path(cfg))
        if cfg.data != "eat":
            raise ValueError(f"the real EAT (--eat_root) trains on EAT's own batch layout: set data: eat (and "
                             f"--eat_mead_path), got data: {cfg.data!r}")
        with open(_eat_config_path(cfg), encoding="utf-8") as f:
            sync = ((yaml.safe_load(f) or {}).get("train_params") or {}).get("loss_weights", {}).get("sync", 0)
        if sync != 0 and cfg.num_frames != 5:
            raise ValueError(f"EAT's SyncNet loss (loss_weights.sync = {sync}) takes exactly 5 frames, got num_frames "
                             f"{cfg.num_frames}: set 5, or sync: 0 in your eat_config")
    started = time.perf_counter()
    accelerator = build_accelerator(cfg)
    torch.manual_seed(cfg.seed)

    # 1. Data (synthesized on first run for the demo) and the frozen STCCL metric.
    out = Path(cfg.output_dir)
    with accelerator.main_process_first():
        train_set, collate, val_batch, audio_dim, effect_fn = build_data(cfg, progress=accelerator.is_local_main_process)
        if accelerator.is_main_process:
            write_skipped_report(getattr(train_set, "skipped", []), str(out))
        metric, metric_info = ensure_config_metric(cfg, out, progress=accelerator.is_local_main_process)

    if getattr(metric.config, "use_tcc", False) and cfg.num_frames < 2:
        raise ValueError(f"the metric's temporal term (use_tcc) needs windows of num_frames >= 2, got "
                         f"{cfg.num_frames}; "
                         "use more frames or a spatial-only metric (use_tcc=False)")

    # 2. The generator behind EAT's interface, wrapped with the STCCL term.
    generator_full, image_size = build_backend(cfg, audio_dim)
    adapter = EATAdapter(
        generator_full, metric, weight=cfg.stccl_weight, warmup_steps=cfg.stccl_warmup_steps,
        ramp_steps=cfg.stccl_ramp_steps, crop_size=cfg.crop_size, image_size=image_size,
        num_frames=cfg.num_frames, trainable_modules=cfg.trainable_modules, anchor=cfg.anchor,
    )
    if cfg.stccl_placebo:  # the benchmark's placebo arm: anchor frames shuffled in time
        from stccl_diffusers.placebo import enable_placebo

        enable_placebo(adapter.stccl, cfg.seed)

    # 3. Fixed validation clips, rendered in their emotion and in neutral (the adapter renders both).
    validation_fn = make_validation_fn(val_batch, metric, out, fps=float(val_batch.get("fps", 25.0)),
                                       seed=cfg.validation_seed, audio_key="waveform",
                                       emotion=EAT_EMOTION_NAMES[int(val_batch["y_trg"][0])],
                                       no_stccl_fn=BeforeSTCCLRow(adapter.stccl.current_weight),
                                       effect_fn=effect_fn)

    # 4. The shared loop: checkpoints, resume, NaN guard, trackers, validation.
    result = train(adapter, train_set, cfg, accelerator=accelerator, collate_fn=collate, validation_fn=validation_fn,
                   stop_after_steps=stop_after_steps)

    # 5. The trained model, loss curves and the metrics JSON.
    if accelerator.is_main_process and result.global_step >= cfg.max_train_steps:
        if isinstance(generator_full, ReferenceEATGeneratorFull):
            save_pretrained_atomic(generator_full.model, out / "reference_eat")
        plot_loss_curves(result.step_log, out / "loss_curves.png", keys=("loss", "rec", "stccl", "stccl_raw"),
                         validations=result.validations)
        clips = getattr(train_set, "clips", None) or getattr(train_set, "videos", [])  # ours / EAT's data set
        info = {"config": cfg._config_path, **metric_info, "num_clips": len(clips),
                "skipped_clips": getattr(train_set, "skipped", []), "global_step": result.global_step,
                "skipped_steps": result.skipped_steps, "resumed_from": result.resumed_from,
                "anchor": cfg.anchor, "anchor_copy_bytes": adapter.anchor_copy_bytes(),
                "validations": result.validations,
                "first_validation": result.validations[0] if result.validations else None,
                "last_validation": result.validations[-1] if result.validations else None,
                "wall_time_s": time.perf_counter() - started}
        write_metrics_json(out / "metrics.json", info)
        accelerator.print(json.dumps({k: info[k] for k in ("wall_time_s", "first_validation", "last_validation")},
                                     indent=1))
    return result


if __name__ == "__main__":
    cli_errors(main)()
