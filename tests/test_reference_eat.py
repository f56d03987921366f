"""The built-in EAT-style reference generator (stccl_diffusers.models.reference_eat)."""

import pytest
import torch

from stccl_diffusers.models.reference_eat import (
    NEUTRAL_INDEX,
    KeypointRenderer,
    ReferenceEATModel,
    make_grid,
    soft_argmax,
)

B, T, S, A = 2, 4, 32, 24


def tiny_model(**kw):
    cfg = dict(image_size=S, audio_dim=A, dim=32, num_layers=1, num_heads=2, num_kp=6, render_channels=8)
    cfg.update(kw)
    return ReferenceEATModel(**cfg)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(B, 3, S, S, generator=g),
        torch.randn(B, T, A, generator=g),
        torch.tensor([0, 4]),
        torch.randn(B, 16, generator=g),
    )


def test_prediction_is_eat_layout_in_unit_range():
    torch.manual_seed(0)
    out = tiny_model()(*batch())
    assert out["prediction"].shape == (B * T, 3, S, S)
    assert float(out["prediction"].min()) >= 0.0 and float(out["prediction"].max()) <= 1.0
    assert out["kp_source"].shape == (B, 6, 2)
    assert out["kp_driving"].shape == (B, T, 6, 2)


def test_emotion_label_and_latent_change_the_output_deterministically():
    torch.manual_seed(0)
    model = tiny_model()
    # Give the per-emotion prompt heads and the FiLM distinct, non-trivial weights.
    with torch.no_grad():
        model.audio2exp.film.weight.normal_(0, 0.5)
    src, aud, y, z = batch()
    a = model(src, aud, y, z)["exp"]
    assert torch.equal(a, model(src, aud, y, z)["exp"])
    neutral = model(src, aud, torch.full_like(y, NEUTRAL_INDEX), z)["exp"]
    other_z = model(src, aud, y, z + 1.0)["exp"]
    assert (a - neutral).abs().max() > 1e-4
    assert (a - other_z).abs().max() > 1e-4


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = tiny_model()
    src, aud, y, z = batch()
    # Target: the source shifted by 2 pixels; reachable by warping.
    driving = src.roll(2, dims=-1).unsqueeze(1).expand(B, T, 3, S, S)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        terms = ReferenceEATModel.reconstruction_losses(model(src, aud, y, z), driving)
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses


def test_bad_inputs_are_rejected_with_what_was_expected():
    model = tiny_model()
    src, aud, y, z = batch()
    with pytest.raises(ValueError, match=r"audio \(2, T, 24\)"):
        model(src, aud[..., :10], y, z)
    with pytest.raises(ValueError, match="z_trg"):
        model(src, aud, y, None)
    with pytest.raises(ValueError, match=r"y_trg in \[0, 8\)"):
        model(src, aud, torch.tensor([0, 8]), z)
    with pytest.raises(ValueError, match=r"source \(B, 3, H, W\)"):
        model(src[:, :1], aud, y, z)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    again = ReferenceEATModel.from_pretrained(tmp_path).eval()
    inputs = batch()
    assert torch.equal(model(*inputs)["prediction"], again(*inputs)["prediction"])


def test_soft_argmax_finds_a_sharp_peak():
    h = w = 9
    logits = torch.full((1, 1, h, w), -50.0)
    logits[0, 0, 2, 6] = 50.0  # row 2, column 6
    kp = soft_argmax(logits)[0, 0]
    grid = make_grid(h, w)
    assert torch.allclose(kp, grid[2, 6], atol=1e-4)


def test_renderer_without_motion_returns_the_source_at_init():
    torch.manual_seed(0)
    renderer = KeypointRenderer(num_kp=4, channels=8, sigma=0.1)
    src = torch.rand(3, 3, 16, 16) * 0.9 + 0.05
    kp = torch.rand(3, 4, 2) * 2 - 1
    out, warped = renderer(src, kp, kp)
    # Identical keypoints: every flow is the identity, and the residual starts at zero.
    assert torch.allclose(warped, src, atol=1e-5)
    assert torch.allclose(out, src, atol=1e-3)
