"""The rollout reward mode of the DICE reference backend: sampled target and anchor from one noise,
gradient only through the target's last K denoising steps."""

from __future__ import annotations

import pytest
import torch

from _stccl_metric_for_tests import build_metric, single_torch_thread  # noqa: F401 (autouse fixture)
from stccl_diffusers import edm
from stccl_diffusers.adapters.dice import DiceTrainingConfig, build_callback, build_reference_adapter
from stccl_diffusers.models.reference_dice import DICE_EMOTIONS, ReferenceDICE
from stccl_diffusers.training import config_from_dict
from stccl_diffusers.adapters.dice.rollout import RolloutDiceAdapter, euler_sample_latents


def _setup(**over):
    torch.manual_seed(0)
    model = ReferenceDICE(resolution=16, num_frames=2)
    values = dict(resolution=16, num_frames=2, stccl_weight=1.0, reward_mode="rollout", num_inference_steps=4,
                  guidance_scale=2.0, rollout_grad_steps=2, rollout_audio="clip", drop_reference=0.0, drop_audio=0.0,
                  drop_emotion=0.0)
    cfg = config_from_dict(DiceTrainingConfig, {**values, **over})
    adapter = build_reference_adapter(cfg, model, build_callback(cfg, build_metric()[0], decoder=model.vae))
    g = torch.Generator().manual_seed(0)
    batch = {"frames": torch.rand(1, 2, 3, 16, 16, generator=g) * 2 - 1,
             "reference": torch.rand(1, 3, 16, 16, generator=g) * 2 - 1,
             "audio": torch.randn(1, 1280, generator=g) * 0.1,
             "emotion": torch.tensor([DICE_EMOTIONS.index("angry")])}
    return adapter, batch


def test_the_config_picks_the_rollout_adapter_and_checks_its_settings():
    adapter, _ = _setup()
    assert isinstance(adapter, RolloutDiceAdapter) and adapter.rollout_grad_steps == 2
    with pytest.raises(ValueError, match="rollout_grad_steps"):
        _setup(rollout_grad_steps=5)  # more than the sampler's 4 steps
    with pytest.raises(ValueError, match="reward_mode"):
        _setup(reward_mode="multi")


def test_the_sampler_is_the_validation_sampler():
    adapter, batch = _setup()
    m = adapter.model
    feats = adapter.audio_features(batch)
    noise = torch.randn(1, 2, m.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    prior = adapter.target_prior(batch)
    with torch.no_grad():
        want = m.sample(batch["reference"], feats, prior, num_inference_steps=4, guidance_scale=2.0, noise=noise)
        cond = m.encode_conditions(batch["reference"], feats, prior, (8, 8))
        ones = torch.ones(1, dtype=torch.bool)
        uncond = m.encode_conditions(batch["reference"], feats, prior, (8, 8), drop_audio=ones, drop_emotion=ones)
        lat = euler_sample_latents(m, cond, uncond, noise, edm.karras_sigmas(4, 0.002, 80.0), 2.0, grad_steps=0)
    torch.testing.assert_close(m.decode_latents(lat).clamp(-1, 1), want)


def test_gradient_flows_only_through_the_last_k_steps_of_the_target():
    adapter, batch = _setup()
    calls = []
    hook = adapter.model.register_forward_hook(lambda mod, args, out: calls.append(out.requires_grad))
    out = adapter.training_step(batch, 0, torch.Generator().manual_seed(0))
    hook.remove()
    # call 0: the EDM loss; then the anchor's 4 steps x 2 (guidance), then the target's 4 steps x 2
    assert len(calls) == 1 + 8 + 8
    edm_call, anchor, target = calls[0], calls[1:9], calls[9:]
    assert edm_call and not any(anchor)
    assert target == [False] * 4 + [True] * 4  # only the last K = 2 steps keep their graph
    assert out["rollout"] == 1.0 and not adapter.last_rollout["anchor"].requires_grad
    # the reward alone reaches the denoiser's weights
    adapter.model.zero_grad()
    stccl_only = adapter.callback.last_stats
    assert stccl_only["num_scored"] == 1
    from stccl_diffusers.adapters.dice.rollout import rollout_stccl

    r = rollout_stccl(adapter, batch, torch.Generator().manual_seed(0), grad_steps=2, audio="clip")
    r.backward()
    grads = [p.grad for p in adapter.model.unet.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_steps_between_rollouts_train_the_diffusion_loss_alone_and_neutral_audio_is_required():
    adapter, batch = _setup(rollout_every=3, rollout_audio="neutral")
    out = adapter.training_step(batch, 1, torch.Generator().manual_seed(0))
    assert out["rollout"] == 0.0 and float(out["stccl"]) == 0.0 and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="neutral_audio"):
        adapter.training_step(batch, 3, torch.Generator().manual_seed(0))
    batch["neutral_audio"] = torch.randn(1, 1280) * 0.1
    assert adapter.training_step(batch, 3, torch.Generator().manual_seed(0))["rollout"] == 1.0


def test_the_clip_dataset_gives_the_neutral_recording_for_the_deployment_case_audio(tmp_path):
    import numpy as np

    from stccl_diffusers.data.clips import TalkingClipDataset
    from stccl_diffusers.training.demo import ensure_synthetic_clips

    d = ensure_synthetic_clips(tmp_path / "d", speakers=1, clips=1, size=32, seed=1, emotions=["angry"], coupling=1.0)
    ds = TalkingClipDataset(str(d), DICE_EMOTIONS, 4, 32, progress=False, reference="neutral")
    by_emotion = {DICE_EMOTIONS[c.emotion]: c for c in ds.clips}
    for i in range(len(ds)):
        item = ds[i]
        clip, start = ds.window(i)
        neutral = by_emotion["neutral"].audio
        n = item["audio"].shape[0]
        a0 = int(round(start * ds.sample_rate / clip.fps))
        want = np.zeros(n, np.float32)
        want[: len(neutral[a0:a0 + n])] = neutral[a0:a0 + n]
        assert item["neutral_audio"].shape == item["audio"].shape and not bool(item["neutral_audio_own"])
        np.testing.assert_array_equal(item["neutral_audio"].numpy(), want)
    assert "neutral_audio" not in TalkingClipDataset(str(d), DICE_EMOTIONS, 4, 32, progress=False)[0]


@pytest.mark.parametrize("anchor", ["frozen", "current"])
def test_the_rollout_anchor_follows_the_anchor_option(anchor):
    from stccl_diffusers.training import TrainingConfig, configure_trainable
    from stccl_diffusers.adapters.dice.rollout import rollout_stccl

    adapter, batch = _setup(anchor=anchor)
    configure_trainable(adapter, config_from_dict(TrainingConfig, dict(rank=2)))

    def anchor_latents():
        rollout_stccl(adapter, batch, torch.Generator().manual_seed(0), grad_steps=2, audio="clip")
        return adapter.last_rollout["anchor"], adapter.last_rollout["target"]

    a0, t0 = anchor_latents()
    with torch.no_grad():
        for n, p in adapter.model.unet.named_parameters():
            if "lora_B" in n:  # peft starts B at 0: make LoRA change the output
                p.normal_(0, 0.5)
    a1, t1 = anchor_latents()
    assert float((t1 - t0).abs().max()) > 1e-4  # the target is the model being trained
    moved = float((a1 - a0).abs().max())
    assert (moved == 0.0) if anchor == "frozen" else (moved > 1e-4)


def test_an_all_neutral_batch_skips_the_rollout_and_counts_the_clips():
    from stccl_diffusers.models.reference_dice import NEUTRAL_INDEX

    adapter, batch = _setup()
    batch["emotion"] = torch.tensor([NEUTRAL_INDEX])
    calls = []
    hook = adapter.model.register_forward_hook(lambda mod, args, out: calls.append(1))
    out = adapter.training_step(batch, 0, torch.Generator().manual_seed(0))
    hook.remove()
    assert len(calls) == 1  # the EDM loss only: no sampling for a clip whose target is the anchor
    assert out["rollout"] == 0.0 and out["stccl_skipped_neutral"] == 1.0 and out["loss_terms"]["stccl"] is None
