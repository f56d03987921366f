"""The placebo arm: the anchor's frames shuffled in time, at the same weight (callback, EAT hook, config)."""

from __future__ import annotations

import pytest
import torch

from _stccl_metric_for_tests import build_metric, single_torch_thread  # noqa: F401 (autouse fixture)
from stccl_diffusers.placebo import derangement, enable_placebo, shuffle_time


def test_shuffle_time_moves_every_frame_and_keeps_them():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 5):
        p = derangement(n, g)
        assert sorted(p.tolist()) == list(range(n)) and not (p == torch.arange(n)).any()
    x = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1, 1, 1).expand(2, 4, 3, 2, 2).clone().requires_grad_(True)
    y = shuffle_time(x, torch.Generator().manual_seed(1))
    for b in range(2):
        frames = y[b, :, 0, 0, 0].tolist()
        assert sorted(frames) == x[b, :, 0, 0, 0].tolist()
        assert all(f != o for f, o in zip(frames, x[b, :, 0, 0, 0].tolist()))
    y.sum().backward()  # gradient still reaches every frame once
    assert torch.equal(x.grad, torch.ones_like(x))
    with pytest.raises(ValueError, match="at least 2 frames"):
        shuffle_time(torch.zeros(1, 1, 3))


def _scores(placebo: bool, anchor_x0: torch.Tensor, x0: torch.Tensor) -> float:
    from stccl_diffusers.callback import STCCLRewardCallback

    cb = STCCLRewardCallback(metric=build_metric()[0], decode_fn=lambda z: z[:, :3].repeat_interleave(4, -1)
                             .repeat_interleave(4, -2).tanh(), gate_timestep=1000, placebo=placebo, seed=3,
                             preconditioning="ddpm_eps")
    return float(cb(x0=x0, anchor_x0=anchor_x0, timesteps=torch.zeros(x0.shape[0]), layout="btchw"))


def test_the_callback_placebo_scores_the_time_shuffled_anchor():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 4, 16, 16, generator=g)
    moving = torch.randn(2, 4, 4, 16, 16, generator=g)
    still = moving[:, :1].expand_as(moving).clone()
    # an anchor constant in time is the same anchor shuffled: the placebo changes nothing there
    assert _scores(True, still, x0) == pytest.approx(_scores(False, still, x0), rel=1e-5)
    # a moving anchor out of order is another anchor
    assert _scores(True, moving, x0) != pytest.approx(_scores(False, moving, x0), rel=1e-4)


def test_the_eat_placebo_shuffles_the_anchor_before_scoring():
    from stccl_diffusers.adapters.eat import stccl_on_frames

    metric = build_metric()[0]
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 4, 3, 32, 32, generator=g)
    anchor = torch.rand(1, 4, 3, 32, 32, generator=g)
    plain = stccl_on_frames(metric, target, anchor, None, None, torch.Generator().manual_seed(5)).loss
    placebo = stccl_on_frames(metric, target, anchor, None, None, torch.Generator().manual_seed(5),
                              placebo_generator=torch.Generator().manual_seed(1)).loss
    expected = stccl_on_frames(metric, target, shuffle_time(anchor, torch.Generator().manual_seed(1)), None, None,
                               torch.Generator().manual_seed(5)).loss
    assert float(placebo) == pytest.approx(float(expected), rel=1e-6) and float(placebo) != pytest.approx(float(plain))
    mod = enable_placebo(torch.nn.Module(), seed=2)
    assert isinstance(mod.placebo_generator, torch.Generator)


def test_the_training_config_has_the_placebo_flag_and_dice_passes_it_on():
    from stccl_diffusers.adapters.dice import DiceTrainingConfig, build_callback
    from stccl_diffusers.training.config import parse_config

    cfg = parse_config(DiceTrainingConfig, ["--stccl_placebo", "true", "--output_dir", "x"])
    assert cfg.stccl_placebo is True
    assert build_callback(cfg, build_metric()[0]).config.placebo is True
    assert parse_config(DiceTrainingConfig, ["--output_dir", "x"]).stccl_placebo is False
