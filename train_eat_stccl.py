#!/usr/bin/env python
"""Fine-tune EAT (or the built-in EAT-style reference model) with STCCL.

    accelerate launch train_eat_stccl.py                       # embedded demo, CPU, a few minutes
    accelerate launch train_eat_stccl.py --config configs/eat_stccl.yaml \\
        --eat_root /path/to/EAT_code --eat_checkpoint ckpt/deepprompt_eam3d_all_final_313.pth.tar \\
        --stccl_metric /path/to/stccl-metric

Online pseudo-pairing (paper §8.3.2): each step renders the target emotion (with gradient) and a
neutral anchor (label 5, same audio, source and ``z_trg``, no gradient); STCCL between the cropped
faces is added to EAT's own loss dict as ``loss_values['stccl']``, after an optional warm-up.
The loop (accelerate, checkpoints, resume, NaN guard, trackers) is the package's shared one, the
same that ``train_dice_stccl.py`` runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from stccl_diffusers import STCCLMetric
from stccl_diffusers.adapters.eat import (
    EATAdapter,
    ReferenceEATGeneratorFull,
    check_eat_checkout,
    eat_collate,
    load_eat_generator_full,
)
from stccl_diffusers.models.reference_eat import ReferenceEATModel
from stccl_diffusers.training import TrainingConfig, build_accelerator, parse_config, train
from stccl_diffusers.training.demo_metric import load_or_pretrain_metric
from stccl_diffusers.training.talking_clips import TalkingClipDataset, synthetic_talking_clips
from stccl_diffusers.training.side_by_side import make_validation_fn, write_summary

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "eat_stccl_demo.yaml"


@dataclass
class EATSTCCLConfig(TrainingConfig):
    """`TrainingConfig` (diffusers' argument names) plus what EAT needs."""

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
    train_mode: str = "full"
    """EAT trains modules in full (prompt, EAM, side-tuning); LoRA does not apply."""

    # -- STCCL -----------------------------------------------------------------------------
    stccl_metric: Optional[str] = None
    """A `save_pretrained` STCCLMetric; None pretrains a small one into `output_dir/stccl_metric`."""
    stccl_weight: float = 1.0
    stccl_warmup_steps: int = 0
    """Optimizer steps without the STCCL term (no anchor render, no metric)."""
    stccl_ramp_steps: int = 0
    """Then a linear ramp of the weight over this many steps."""
    crop_size: int = 112
    """Face crops (from `bboxs`) fed to the metric; the metric resizes to its input_size."""
    metric_backbone: list = field(default_factory=lambda: ["r50"])
    """Demo metric: `r18|r34|r50|r100` or 4 stage depths."""
    metric_input_size: int = 224
    metric_pretrain_steps: int = 0
    metric_pretrain_batch_size: int = 8

    # -- data ------------------------------------------------------------------------------
    data: str = "synthetic"
    """`synthetic` (embedded default) or `eat` (EAT's own data set from `eat_config`)."""
    data_dir: Optional[str] = None
    """Cache of the synthetic clips (default `output_dir/data`)."""
    num_synthetic_pairs: int = 8
    resolution: int = 256
    num_frames: int = 5
    num_validation_clips: int = 2
    validation_frames: int = 25
    """Frames per validation clip (rendered num_frames at a time, one z_trg per clip)."""
    validation_seed: int = 1234


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
        model = ReferenceEATModel.from_pretrained(cfg.reference_model)
    else:
        model = ReferenceEATModel(image_size=cfg.resolution, audio_dim=audio_dim,
                                  render_channels=cfg.reference_render_channels)
    if model.config.image_size != cfg.resolution or model.config.audio_dim != audio_dim:
        raise ValueError(f"reference model is {model.config.image_size}px with audio_dim {model.config.audio_dim}; "
                         f"the data is {cfg.resolution}px with audio_dim {audio_dim}")
    model.requires_grad_(True)
    return ReferenceEATGeneratorFull(model), cfg.resolution


def build_data(cfg: EATSTCCLConfig):
    """(train set, collate, validation batch) for the configured data."""
    if cfg.data == "synthetic":
        cache = cfg.data_dir or str(Path(cfg.output_dir) / "data")
        train_set = TalkingClipDataset(
            synthetic_talking_clips(cfg.num_synthetic_pairs, cfg.resolution, cfg.seed, cache), cfg.num_frames)
        held_out = TalkingClipDataset(
            synthetic_talking_clips(cfg.num_validation_clips, cfg.resolution, cfg.validation_seed, cache),
            cfg.validation_frames)
        # The first window of each emotional clip of unseen identities and sentences.
        firsts = [i for i, (c, s) in enumerate(held_out.windows) if s == 0]
        val_items = [held_out[i] for i in firsts if held_out[i]["emotion"] != "neutral"]
        val_batch = eat_collate(val_items[: cfg.num_validation_clips])
        return train_set, eat_collate, val_batch, train_set.audio_dim
    if cfg.data == "eat":
        from stccl_diffusers.adapters.eat import load_eat_dataset

        train_set = load_eat_dataset(cfg.eat_root, _eat_config_path(cfg))
        val_batch = torch.utils.data.default_collate([train_set[i] for i in range(cfg.num_validation_clips)])
        return train_set, None, val_batch, None
    raise ValueError(f"data must be 'synthetic' or 'eat', got {cfg.data!r}")


def main(argv=None, stop_after_steps: Optional[int] = None):
    """Parse flags over the config (default: the embedded demo) and train. ``stop_after_steps`` ends
    the run early as a kill would (tests)."""
    cfg = parse_config(EATSTCCLConfig, argv, default_config=DEMO_CONFIG, description=__doc__.split("\n")[0])
    if cfg.train_mode != "full":
        raise ValueError(f"train_mode must be 'full' for EAT (LoRA does not apply), got {cfg.train_mode!r}")
    if cfg.eat_root:  # fail on a wrong checkout before any data or metric work, naming every missing file
        check_eat_checkout(cfg.eat_root, cfg.eat_checkpoint, _eat_config_path(cfg))
    started = time.perf_counter()
    accelerator = build_accelerator(cfg)
    torch.manual_seed(cfg.seed)

    # 1. Data, 2. the frozen STCCL metric, 3. the generator behind EAT's interface.
    train_set, collate, val_batch, audio_dim = build_data(cfg)
    with accelerator.main_process_first():
        metric = load_or_pretrain_metric(cfg.stccl_metric, Path(cfg.output_dir) / "stccl_metric",
                                         backbone=cfg.metric_backbone, input_size=cfg.metric_input_size,
                                         steps=cfg.metric_pretrain_steps, batch_size=cfg.metric_pretrain_batch_size,
                                         seed=cfg.seed)
    generator_full, image_size = build_backend(cfg, audio_dim)
    adapter = EATAdapter(
        generator_full, metric, weight=cfg.stccl_weight, warmup_steps=cfg.stccl_warmup_steps,
        ramp_steps=cfg.stccl_ramp_steps, crop_size=cfg.crop_size, image_size=image_size,
        num_frames=cfg.num_frames, trainable_modules=cfg.trainable_modules,
    )

    # 4. The shared loop; validation renders the fixed clips in the target emotion and in neutral.
    validation_fn = make_validation_fn(val_batch, metric, Path(cfg.output_dir) / "validation", seed=cfg.seed,
                                       truth_key="driving" if cfg.data == "synthetic" else None, truth_range="[0,1]")
    result = train(adapter, train_set, cfg, accelerator=accelerator, collate_fn=collate, validation_fn=validation_fn,
                   stop_after_steps=stop_after_steps)

    if accelerator.is_main_process and result.global_step >= cfg.max_train_steps:
        if isinstance(generator_full, ReferenceEATGeneratorFull):
            generator_full.model.save_pretrained(Path(cfg.output_dir) / "reference_eat")
        summary = write_summary(result, cfg, Path(cfg.output_dir), wall_time_s=time.perf_counter() - started)
        print(json.dumps({k: summary[k] for k in ("wall_time_s", "first_validation", "last_validation")}, indent=1))
    return result


if __name__ == "__main__":
    main()
