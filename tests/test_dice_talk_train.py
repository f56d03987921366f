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
    from stccl_diffusers.training.demo import ensure_synthetic_clips

    metric_dir = tmp / "metric"
    if not metric_dir.is_dir():
        _metric().save_pretrained(str(metric_dir))
    ensure_synthetic_clips(tmp / "data", 1, 1, size=64, seed=0)
    return ["--config", str(REPO_ROOT / "configs/dice_stccl.yaml"),
            "--dice_talk_root", cfg.dice_talk_root, "--dice_checkpoints", cfg.dice_checkpoints,
            "--svd_path", cfg.svd_path, "--whisper_path", cfg.whisper_path, "--metric_path", str(metric_dir),
            "--output_dir", str(tmp / "run"), "--data_dir", str(tmp / "data"), "--synthesize_if_missing", "false",
            "--synth_speakers", "1", "--synth_clips", "1", "--resolution", "64", "--num_frames", "2",
            "--validation_num_frames", "2", "--windows_per_clip", "2", "--frame_subset", "0", "1",
            "--decode_chunk_size", "2", "--rank", "4", "--lora_alpha", "8", "--max_train_steps", str(steps),
            "--gradient_accumulation_steps", "1", "--lr_warmup_steps", "0", "--checkpointing_steps", "1",
            "--validation_steps", "100", "--num_inference_steps", "1", "--report_to", "none",
            "--mixed_precision", "bf16", "--train_batch_size", "2", "--p_mean", "0.0", "--p_std", "1.6",
            "--learning_rate", "1e-2",
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


def _dice_pipeline_unet(cfg, unet_pth):
    """The UNet exactly as DICE-Talk's dice_talk.py builds it inside its DicePipeline."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPVisionModelWithProjection

    from stccl_diffusers.adapters.dice.dice_talk import import_dice_talk

    dt = import_dice_talk(DICE_ROOT)
    from src.pipelines.pipeline_dicetalk import DicePipeline

    unet = dt.UNetSpatioTemporalConditionModel.from_pretrained(cfg.svd_path, subfolder="unet")
    dt.add_ip_adapters(unet, [32, 32], [1.0, 1.0])
    pose_guider = dt.PoseGuider(conditioning_embedding_channels=32, block_out_channels=(16, 32, 96, 256))
    pose_guider.load_state_dict(torch.load(Path(cfg.dice_checkpoints) / "pose_guider.pth", map_location="cpu"), strict=True)
    unet.load_state_dict(torch.load(unet_pth, map_location="cpu"), strict=False)
    pipe = DicePipeline(unet=unet, image_encoder=CLIPVisionModelWithProjection.from_pretrained(cfg.svd_path, subfolder="image_encoder"),
                        vae=AutoencoderKLTemporalDecoder.from_pretrained(cfg.svd_path, subfolder="vae"),
                        pose_guider=pose_guider, scheduler=EulerDiscreteScheduler())
    return pipe


def _trained_output(cfg, run: Path):
    from dataclasses import replace

    from stccl_diffusers.adapters.dice.dice_talk import build_dice_talk_adapter
    from stccl_diffusers.training import configure_trainable
    from tests.test_dice_talk_real import _batch

    adapter = build_dice_talk_adapter(cfg, metric=None)
    base_adapter = build_dice_talk_adapter(cfg, metric=None)
    configure_trainable(adapter, replace(cfg, train_mode="lora", rank=4, lora_alpha=8))
    adapter.load_weights(run)
    batch = _batch()
    with torch.no_grad():
        cond = adapter.conditions(batch, adapter.target_prior(batch), (None, None, None))
        x = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        s = torch.tensor([1.5])
        trained = adapter.denoise(x, s, cond)
        base = base_adapter.denoise(x, s, cond)
    return adapter, cond, x, s, trained, base


def test_trained_lora_loads_into_dice_talks_pipeline_by_each_documented_route(trained, dice_weights, tmp_path):  # noqa: F811
    import diffusers

    from stccl_diffusers.merge_lora import main as merge_main

    run = trained[0] / "run"
    cfg = dice_weights
    adapter, cond, x, s, want, base = _trained_output(cfg, run)
    assert (want - base).abs().max() > 1e-3  # the LoRA changes the UNet: the comparison can fail

    # Route 1 (any diffusers): stccl-merge-lora writes a unet.pth that dice_talk.py loads unchanged.
    merged = merge_main(["--unet", str(Path(cfg.dice_checkpoints) / "unet.pth"),
                         "--lora", str(run / "pytorch_lora_weights.safetensors"), "--output", str(tmp_path / "unet.pth")])
    with pytest.raises(FileExistsError):
        merge_main(["--unet", str(Path(cfg.dice_checkpoints) / "unet.pth"),
                    "--lora", str(run / "pytorch_lora_weights.safetensors"), "--output", str(merged)])
    pipe = _dice_pipeline_unet(cfg, merged)
    adapter.unet = pipe.unet
    with torch.no_grad():
        got = adapter.denoise(x, s, cond)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    # Route 2 (DICE-Talk's pins, diffusers 0.29): load_attn_procs after add_ip_adapters and unet.pth.
    if diffusers.__version__ != "0.29.0":
        return  # no loading route of current diffusers accepts DICE-Talk's processors; route 1 covers it
    pipe = _dice_pipeline_unet(cfg, Path(cfg.dice_checkpoints) / "unet.pth")
    pipe.unet.load_attn_procs(str(run / "pytorch_lora_weights.safetensors"))
    adapter.unet = pipe.unet
    with torch.no_grad():
        got = adapter.denoise(x, s, cond)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
