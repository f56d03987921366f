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

import time
from pathlib import Path
from typing import Optional

import torch

from stccl_diffusers.adapters.eat import EAT_EMOTION_NAMES, ReferenceEATGeneratorFull
from stccl_diffusers.adapters.eat.build import build_adapter, build_backend, build_data, check_config
from stccl_diffusers.adapters.eat.config import EATSTCCLConfig
from stccl_diffusers.training import build_accelerator, parse_config, train
from stccl_diffusers.training.demo import ensure_config_metric
from stccl_diffusers.training.validation import (BeforeSTCCLRow, make_validation_fn, plot_loss_curves, run_summary,
                                                  write_metrics_json)
from stccl_diffusers.data.datasets import write_skipped_report
from stccl_diffusers.utils.jsonio import dumps_strict
from stccl_diffusers.utils.safety import cli_errors, save_pretrained_atomic

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "eat_stccl_demo.yaml"


def main(argv=None, stop_after_steps: Optional[int] = None):
    """Parse flags over the config (default: the embedded demo) and train. ``stop_after_steps`` ends
    the run early as a kill would (tests)."""
    cfg = parse_config(EATSTCCLConfig, argv, default_config=DEMO_CONFIG, description=__doc__.split("\n")[0])
    check_config(cfg)  # a wrong checkout fails before any data or metric work, naming every missing file
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
    adapter = build_adapter(cfg, generator_full, metric, image_size)

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
        info = {"config": cfg.config, **metric_info, "num_clips": len(clips),
                "skipped_clips": getattr(train_set, "skipped", []),
                "anchor": cfg.anchor, "anchor_copy_bytes": adapter.anchor_copy_bytes(),
                **run_summary(result, started)}
        write_metrics_json(out / "metrics.json", info)
        accelerator.print(dumps_strict({k: info[k] for k in ("wall_time_s", "first_validation", "last_validation")},
                                    indent=1))
    return result


if __name__ == "__main__":
    cli_errors(main)()
