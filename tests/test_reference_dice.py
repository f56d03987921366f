"""The built-in ReferenceDICE and its adapter (tiny sizes: 16x16 frames, 2 frames)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stccl_diffusers.adapters.dice import ReferenceDiceAdapter
from stccl_diffusers.models.reference_dice import (
    DICE_EMOTIONS,
    NEUTRAL_INDEX,
    ReferenceDICE,
    audio_frame_features,
    make_emotion_priors,
)


def tiny_model(**kw) -> ReferenceDICE:
    torch.manual_seed(0)
    return ReferenceDICE(resolution=16, num_frames=2, **kw)


def tiny_batch(B=2, T=2, H=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "frames": torch.rand(B, T, 3, H, H, generator=g) * 2 - 1,
        "reference": torch.rand(B, 3, H, H, generator=g) * 2 - 1,
        "audio": torch.randn(B, int(T * 640), generator=g) * 0.1,
        "emotion": torch.tensor([DICE_EMOTIONS.index("happy"), DICE_EMOTIONS.index("sad")][:B]),
        "face_box": torch.tensor([[0.0, 0.0, H, H]] * B),
    }


def test_emotion_priors_have_a_distinct_nonzero_neutral():
    p = make_emotion_priors()
    assert p.shape == (8, 256)
    assert p[NEUTRAL_INDEX].abs().sum() > 0
    cos = F.cosine_similarity(p[NEUTRAL_INDEX][None], p, dim=1)
    others = torch.cat([cos[:NEUTRAL_INDEX], cos[NEUTRAL_INDEX + 1:]])
    assert torch.all((others > 0.9) & (others < 0.99))  # DICE-Talk's priors: cosine 0.93-0.97


def test_denoiser_takes_eight_channels_and_returns_latent_shape():
    m = tiny_model()
    assert m.unet.config.in_channels == 8
    b = tiny_batch()
    x0 = m.encode_frames(b["frames"])
    assert x0.shape == (2, 2, 4, 8, 8)  # 16 px / 2
    feats = audio_frame_features(b["audio"], 16000, 25.0, 2)
    cond = m.encode_conditions(b["reference"], feats, m.emotion_prior(b["emotion"]), x0.shape[-2:])
    v = m(x0, torch.tensor([0.5, 3.0]), cond)
    assert v.shape == x0.shape and torch.isfinite(v).all()


def test_condition_dropout_equals_the_zero_input_not_neutral():
    m = tiny_model()
    b = tiny_batch()
    feats = audio_frame_features(b["audio"], 16000, 25.0, 2)
    prior = m.emotion_prior(b["emotion"])
    drop = torch.tensor([True, False])
    dropped = m.encode_conditions(b["reference"], feats, prior, (8, 8), drop_emotion=drop)
    zeros = m.encode_conditions(b["reference"], feats, torch.zeros_like(prior), (8, 8))
    neutral = m.encode_conditions(b["reference"], feats, m.neutral_prior(2), (8, 8))
    full = m.encode_conditions(b["reference"], feats, prior, (8, 8))
    torch.testing.assert_close(dropped.tokens[0], zeros.tokens[0])
    torch.testing.assert_close(dropped.tokens[1], full.tokens[1])
    assert not torch.allclose(zeros.tokens[0], neutral.tokens[0])
    ref_dropped = m.encode_conditions(b["reference"], feats, prior, (8, 8), drop_reference=drop)
    assert ref_dropped.ref_latent[0].abs().sum() == 0 and ref_dropped.ref_latent[1].abs().sum() > 0


def test_audio_features_follow_the_sound_per_frame():
    sr, fps, T = 16000, 25.0, 4
    t = torch.arange(int(T * sr / fps)) / sr
    tone = torch.sin(2 * torch.pi * 440 * t) * (t > 2 / fps)  # silent for two frames, then a tone
    f = audio_frame_features(tone[None], sr, fps, T, context=0)
    assert f.shape == (1, T, 20)
    assert f[0, 3].mean() > f[0, 0].mean() + 0.5


def test_training_step_decreases_the_loss_on_a_fixed_batch():
    m = tiny_model()
    adapter = ReferenceDiceAdapter(m, callback=None, dropout_probs=(0.0, 0.0, 0.0))
    params = [p for n, p in adapter.named_parameters() if not n.startswith("model.vae")]
    opt = torch.optim.Adam(params, lr=3e-3)
    batch = tiny_batch()
    losses = []
    for _ in range(8):
        out = adapter.training_step(batch, 0, torch.Generator().manual_seed(0))  # same sigma and noise
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_render_validation_shares_noise_and_differs_only_by_emotion():
    m = tiny_model()
    adapter = ReferenceDiceAdapter(m, num_inference_steps=2)
    b = tiny_batch()
    b["emotion"] = torch.tensor([NEUTRAL_INDEX, DICE_EMOTIONS.index("happy")])
    out = adapter.render_validation(b, torch.Generator().manual_seed(0))
    assert out["target"].shape == out["anchor"].shape == (2, 2, 3, 16, 16)
    assert out["target"].min() >= -1 and out["target"].max() <= 1
    torch.testing.assert_close(out["target"][0], out["anchor"][0])  # neutral target == neutral anchor
    assert not torch.allclose(out["target"][1], out["anchor"][1])


def test_save_and_load_pretrained_round_trip(tmp_path):
    m = tiny_model(vae_scaling_factor=0.5)
    m.save_pretrained(str(tmp_path))
    n = ReferenceDICE.from_pretrained(str(tmp_path))
    assert n.scaling_factor == 0.5 and n.vae.config.scaling_factor == 0.5
    for (k, a), (_, b) in zip(m.state_dict().items(), n.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


def test_bad_frames_are_rejected_with_the_shape():
    adapter = ReferenceDiceAdapter(tiny_model())
    b = tiny_batch()
    b["frames"] = b["frames"][:, 0]
    with pytest.raises(ValueError, match=r"expected frames \(B, T, 3, 16, 16\).*got \(2, 3, 16, 16\)"):
        adapter.training_step(b, 0, None)


def test_emotion_time_embedding_alone_changes_the_denoiser_output_and_gets_gradient():
    m = tiny_model(emotion_time_embedding=True)
    b = tiny_batch()
    feats = audio_frame_features(b["audio"], 16000, 25.0, 2)
    x0 = m.encode_frames(b["frames"])
    happy = m.encode_conditions(b["reference"], feats, m.emotion_prior(b["emotion"]), (8, 8))
    neutral = m.encode_conditions(b["reference"], feats, m.neutral_prior(2), (8, 8))
    # Same tokens and conv_in map: only the time-embedding shift differs between the two.
    only_film = type(happy)(neutral.ref_latent, neutral.tokens, neutral.conv_in_residual, happy.time_embedding)
    sigma = torch.tensor([0.5, 3.0])
    assert not torch.allclose(m(x0, sigma, only_film), m(x0, sigma, neutral))
    m(x0, sigma, only_film).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.emotion_embedding.parameters())


def test_emotion_time_embedding_is_off_by_default_so_older_checkpoints_load_unchanged():
    assert tiny_model().emotion_embedding is None
    b = tiny_batch()
    m = tiny_model()
    cond = m.encode_conditions(b["reference"], audio_frame_features(b["audio"], 16000, 25.0, 2),
                               m.emotion_prior(b["emotion"]), (8, 8))
    assert cond.time_embedding is None


def test_emotion_time_embedding_round_trips_and_drops_to_the_zero_input(tmp_path):
    m = tiny_model(emotion_time_embedding=True)
    m.save_pretrained(str(tmp_path))
    n = ReferenceDICE.from_pretrained(str(tmp_path))
    assert n.emotion_embedding is not None
    torch.testing.assert_close(n.emotion_embedding[0].weight, m.emotion_embedding[0].weight)
    b = tiny_batch()
    feats = audio_frame_features(b["audio"], 16000, 25.0, 2)
    prior = m.emotion_prior(b["emotion"])
    dropped = m.encode_conditions(b["reference"], feats, prior, (8, 8), drop_emotion=torch.tensor([True, False]))
    zeros = m.encode_conditions(b["reference"], feats, torch.zeros_like(prior), (8, 8))
    full = m.encode_conditions(b["reference"], feats, prior, (8, 8))
    torch.testing.assert_close(dropped.time_embedding[0], zeros.time_embedding[0])
    torch.testing.assert_close(dropped.time_embedding[1], full.time_embedding[1])
