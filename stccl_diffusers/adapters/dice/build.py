"""What `train_dice_stccl.py` builds from its config: the STCCL reward callback, the reference
adapter (single-step or rollout reward) and the reference model pre-trained from scratch. The real
DICE-Talk adapter is built by :func:`.dice_talk.build_dice_talk_adapter`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ...models.reference_dice import ReferenceDICE, fit_autoencoder
from ...utils.safety import save_pretrained_atomic
from .adapter import ReferenceDiceAdapter, make_svd_scheduler
from .config import DiceTrainingConfig


def build_callback(cfg: DiceTrainingConfig, metric, decoder=None, decode_fn=None):
    """`STCCLRewardCallback` for SVD's scheduler with the configured gate, weight and decoding."""
    from ...callback import STCCLRewardCallback

    return STCCLRewardCallback(
        metric=metric, scheduler=make_svd_scheduler(), decoder=decoder, decode_fn=decode_fn,
        gate_timestep=cfg.gate_timestep, weight=cfg.stccl_weight, num_frames=cfg.num_frames,
        frame_subset=[int(i) for i in cfg.frame_subset] if cfg.frame_subset else None,
        decode_chunk_size=cfg.decode_chunk_size, placebo=bool(cfg.stccl_placebo),
    )


def build_reference_adapter(cfg: DiceTrainingConfig, model: ReferenceDICE, callback=None) -> ReferenceDiceAdapter:
    mode = cfg.reward_mode
    if mode not in ("single_step", "rollout"):
        raise ValueError(f"expected reward_mode 'single_step' or 'rollout', got {mode!r}")
    cls, extra = ReferenceDiceAdapter, {}
    if mode == "rollout":  # issue 22: the reward on sampled clips (a training-loop feature, see adapters/dice/rollout.py)
        from .rollout import RolloutDiceAdapter

        cls, extra = RolloutDiceAdapter, dict(rollout_every=cfg.rollout_every, rollout_grad_steps=cfg.rollout_grad_steps,
                                              rollout_audio=cfg.rollout_audio)
    return cls(
        model, callback, **extra, p_mean=cfg.p_mean, p_std=cfg.p_std,
        dropout_probs=(cfg.drop_reference, cfg.drop_audio, cfg.drop_emotion),
        num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
        use_face_boxes=cfg.use_face_boxes, motion_weight=cfg.motion_weight, anchor=cfg.anchor,
    )


def pretrain_reference_dice(cfg: DiceTrainingConfig, dataset, save_dir: str | Path) -> tuple[ReferenceDICE, dict]:
    """Build a ReferenceDICE and train it from scratch (VAE fit, then the EDM loss in full, no STCCL).

    Deterministic for `cfg.seed`, so every rank of a multi-process run builds the same model.
    """
    import time

    from ...training.loop import train

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = ReferenceDICE(resolution=cfg.resolution, num_frames=cfg.num_frames,
                          emotion_time_embedding=cfg.emotion_time_embedding)
    frames = torch.cat([torch.from_numpy(c.frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0 for c in dataset.clips])
    info = {"vae": fit_autoencoder(model, frames, steps=cfg.vae_fit_steps, batch_size=16, seed=cfg.seed)}
    base_cfg = replace(
        cfg, output_dir=str(Path(save_dir) / "base_run"), train_mode="full",
        trainable_modules=["model.unet", "model.image_encoder", "model.audio_model", "model.emotion_model"]
        + (["model.emotion_embedding"] if model.emotion_embedding is not None else []),
        max_train_steps=cfg.base_train_steps, learning_rate=cfg.base_learning_rate, checkpointing_steps=0,
        validation_steps=0, validate_at_start=False, report_to="none", resume_from_checkpoint=None,
        lr_scheduler="cosine", lr_warmup_steps=min(20, cfg.base_train_steps // 10),
    )
    adapter = build_reference_adapter(base_cfg, model, callback=None)
    result = train(adapter, dataset, base_cfg)
    model.requires_grad_(False)
    save_pretrained_atomic(model, save_dir)
    info.update(base_steps=result.global_step, base_loss_first=result.step_log[0]["loss"] if result.step_log else None,
                base_loss_last=result.step_log[-1]["loss"] if result.step_log else None,
                base_pretrain_s=time.perf_counter() - t0)
    return model, info
