#!/usr/bin/env python
"""Fine-tune DICE-Talk (or the built-in ReferenceDICE) with the STCCL reward.

    accelerate launch train_dice_stccl.py                                   # embedded CPU demo
    accelerate launch train_dice_stccl.py --config configs/dice_stccl.yaml  # your DICE-Talk

EDM training as for SVD (ln sigma ~ N(0.7, 1.6), v-prediction, weight (s^2+1)/s^2, condition
dropout) plus `STCCLRewardCallback`: for samples with t < 500 (sigma < ~1.62) the single-step
x0-hat is decoded and pulled, by the frozen STCCL metric, onto the correlations of a neutral-anchor
stream rendered from the same noisy latents, reference, audio and face mask with the neutral
emotion prior (paper §8.3). Flags override the YAML config; see `--help`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from stccl_diffusers.adapters.dice import (
    DiceTrainingConfig,
    build_callback,
    build_reference_adapter,
    pretrain_reference_dice,
)
from stccl_diffusers.models.reference_dice import DICE_EMOTIONS, ReferenceDICE
from stccl_diffusers.training import build_accelerator, parse_config, train
from stccl_diffusers.data.clips import TalkingClipDataset, prepare_clip_folder
from stccl_diffusers.training.demo import ensure_config_metric
from stccl_diffusers.eval.effect import synthetic_validation
from stccl_diffusers.training.validation import (lora_off_row, make_validation_fn, plot_loss_curves, run_summary,
                                                  write_metrics_json)
from stccl_diffusers.data.datasets import write_skipped_report
from stccl_diffusers.data.synthetic import speaker_identities
from stccl_diffusers.utils.safety import cli_errors, from_pretrained_local

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "dice_stccl_demo.yaml"


def validation_identities(cfg: DiceTrainingConfig):
    """[the face of training speaker `cfg.validation_speaker`] of the synthetic set in `cfg.data_dir`,
    or None (a new face)."""
    if cfg.validation_speaker is None:
        return None
    try:
        faces = speaker_identities(cfg.data_dir)
    except ValueError as e:
        raise ValueError(f"--validation_speaker {cfg.validation_speaker}: {e}; use null for a new face") from None
    if cfg.validation_speaker not in faces:
        raise ValueError(f"--validation_speaker {cfg.validation_speaker}: expected the index of a speaker of the "
                         f"synthetic set in {cfg.data_dir} (speakers {[f'S{k:03d}' for k in faces]}); "
                         f"use null for a new face")
    return [faces[cfg.validation_speaker]]


def main(argv=None) -> dict:
    started = time.perf_counter()
    cfg = parse_config(DiceTrainingConfig, argv, default_config=DEMO_CONFIG, description=__doc__.split("\n")[1])
    if cfg.anchor == "frozen" and cfg.train_mode != "lora" and cfg.stccl_weight > 0:
        raise ValueError(f"anchor: frozen renders the neutral anchor with the LoRA adapters off, so it needs "
                         f"train_mode: lora, got train_mode: {cfg.train_mode!r}; use anchor: current for a full fine-tune")
    accelerator = build_accelerator(cfg)
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    info: dict = {"config": cfg.config, "anchor": cfg.anchor}

    # 1. Data (synthesized on first run for the demo) and the frozen STCCL metric.
    with accelerator.main_process_first():
        synthetic = prepare_clip_folder(cfg.data_dir, cfg.synthesize_if_missing, speakers=cfg.synth_speakers,
                                        clips=cfg.synth_clips, size=max(64, cfg.resolution), seed=cfg.seed)
        dataset = TalkingClipDataset(cfg.data_dir, DICE_EMOTIONS, cfg.num_frames, cfg.resolution,
                                     windows_per_clip=cfg.windows_per_clip,
                                     progress=accelerator.is_local_main_process,
                                     target_fps=cfg.dice_fps if cfg.backend == "dice_talk" else None,
                                     crop=cfg.crop, reference=cfg.reference)
        metric, metric_info = ensure_config_metric(cfg, out, progress=accelerator.is_local_main_process)
    info.update(metric_info, num_clips=len(dataset.clips), skipped_clips=dataset.skipped)
    if accelerator.is_main_process:
        write_skipped_report(dataset.skipped, str(out))

    # 2. The generator behind the adapter interface.
    if cfg.backend == "reference":
        if cfg.pretrained_model_name_or_path:
            model = from_pretrained_local(ReferenceDICE, cfg.pretrained_model_name_or_path, "--pretrained_model_name_or_path")
        elif (out / "reference_dice" / "config.json").is_file():
            model = from_pretrained_local(ReferenceDICE, out / "reference_dice", "reference model")
        else:
            model, base_info = pretrain_reference_dice(cfg, dataset, out / "reference_dice")
            info["base"] = base_info
        callback = build_callback(cfg, metric, decoder=model.vae)
        adapter = build_reference_adapter(cfg, model, callback)
    elif cfg.backend == "dice_talk":
        from stccl_diffusers.adapters.dice.dice_talk import build_dice_talk_adapter

        adapter = build_dice_talk_adapter(cfg, metric)
    else:
        raise ValueError(f"backend must be 'reference' or 'dice_talk', got {cfg.backend!r}")

    # 3. A fixed validation clip in the target emotion (and, rendered by the adapter, in neutral).
    # On synthetic demo data: a held-out synthetic clip, so the benchmark's emotion and mouth measures
    # (renderer ground truth) go into metrics.json; otherwise the first training clip, relabelled.
    effect_fn = None
    if synthetic and cfg.backend == "reference":
        val_batch, effect_fn, probe_info = synthetic_validation(
            1, cfg.validation_num_frames, cfg.resolution, DICE_EMOTIONS, torch.utils.data.default_collate,
            out / "effect_probe", seed=cfg.validation_seed, emotions=(cfg.validation_emotion,),
            identities=validation_identities(cfg))
        info["effect_probe"] = probe_info
    else:
        val_item = dataset.item(0, num_frames=cfg.validation_num_frames)
        val_batch = {k: v[None] for k, v in val_item.items()}
        val_batch["emotion"] = torch.tensor([DICE_EMOTIONS.index(cfg.validation_emotion)])
    validation_fn = make_validation_fn(val_batch, metric, out, fps=float(val_batch["fps"][0]), seed=cfg.validation_seed,
                                       emotion=cfg.validation_emotion,
                                       no_stccl_fn=lora_off_row if cfg.train_mode == "lora" else None,
                                       effect_fn=effect_fn)

    # 4. Train (LoRA on the UNet's attention by default), checkpoint, validate.
    result = train(adapter, dataset, cfg, validation_fn=validation_fn)

    # 5. Loss curves and the metrics JSON.
    if accelerator.is_main_process:
        plot_loss_curves(result.step_log, out / "loss_curves.png", validations=result.validations)
        info.update(
            anchor_forward_fraction=sum(r.get("anchor_forward", 0) for r in result.step_log) / max(1, len(result.step_log)),
            **run_summary(result, started),
        )
        write_metrics_json(out / "metrics.json", info)
        accelerator.print(f"done in {info['wall_time_s']:.0f} s; outputs in {out}/")
    return info


if __name__ == "__main__":
    cli_errors(main)()
