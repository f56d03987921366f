"""`train_dice_stccl.py --backend dice_talk` end to end on DICE-Talk's real code (tiny weights, CPU).

configs/dice_stccl.yaml as shipped (gradient checkpointing on), with the paths pointed at the tiny
real-format weights of tests/test_dice_talk_real.py, bf16 (CPU autocast), batch 2: trains, validates,
checkpoints, resumes, saves a LoRA; then the LoRA goes into DICE-Talk's own DicePipeline UNet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.test_dice_talk_real import DICE_ROOT, REPO_ROOT, _clear_src, _metric, dice_weights  # noqa: F401

pytestmark = pytest.mark.skipif(not (DICE_ROOT / "dice_talk.py").is_file(),
                                reason=f"DICE-Talk's source is not at {DICE_ROOT}")


def _argv(cfg, tmp: Path, steps: int, extra=()):
    metric_dir = tmp / "metric"
    if not metric_dir.is_dir():
        _metric().save_pretrained(str(metric_dir))
    return ["--config", str(REPO_ROOT / "configs/dice_stccl.yaml"),
            "--dice_talk_root", cfg.dice_talk_root, "--dice_checkpoints", cfg.dice_checkpoints,
            "--svd_path", cfg.svd_path, "--whisper_path", cfg.whisper_path, "--metric_path", str(metric_dir),
            "--output_dir", str(tmp / "run"), "--data_dir", str(tmp / "data"), "--synthesize_if_missing", "true",
            "--synth_speakers", "1", "--synth_clips", "1", "--resolution", "64", "--num_frames", "2",
            "--validation_num_frames", "2", "--windows_per_clip", "2", "--frame_subset", "0", "1",
            "--decode_chunk_size", "2", "--rank", "4", "--lora_alpha", "8", "--max_train_steps", str(steps),
            "--gradient_accumulation_steps", "1", "--lr_warmup_steps", "0", "--checkpointing_steps", "1",
            "--validation_steps", "100", "--num_inference_steps", "1", "--report_to", "none",
            "--mixed_precision", "bf16", "--train_batch_size", "2", "--p_mean", "0.0", "--p_std", "1.6",
            *extra]


@pytest.fixture(scope="module")
def trained(dice_weights, tmp_path_factory):  # noqa: F811
    import train_dice_stccl

    tmp = tmp_path_factory.mktemp("train")
    info = train_dice_stccl.main(_argv(dice_weights, tmp, 2))
    return tmp, info


def test_shipped_config_trains_bf16_batch_two_to_a_lora(trained):
    tmp, info = trained
    run = tmp / "run"
    assert info["global_step"] == 2 and info["skipped_steps"] == 0
    assert (run / "checkpoint-2").is_dir() and (run / "pytorch_lora_weights.safetensors").is_file()
    assert info["last_validation"] is not None  # the final validation ran before the save (it crashed under bf16)


def test_resume_continues_from_the_last_checkpoint(trained, dice_weights):  # noqa: F811
    import train_dice_stccl

    tmp, _ = trained
    info = train_dice_stccl.main(_argv(dice_weights, tmp, 3, ["--resume_from_checkpoint", "latest"]))
    assert info["resumed_from"].endswith("checkpoint-2") and info["global_step"] == 3
