"""EDM preconditioning (SVD / DICE-Talk training) as pure functions."""

import math

import pytest
import torch

from stccl_diffusers import edm


def test_preconditioning_matches_the_formulas_at_known_sigma():
    s = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(edm.c_in(s), torch.tensor([1 / math.sqrt(2), 1 / math.sqrt(5)]))
    torch.testing.assert_close(edm.c_skip(s), torch.tensor([0.5, 0.2]))
    torch.testing.assert_close(edm.c_out(s), torch.tensor([-1 / math.sqrt(2), -2 / math.sqrt(5)]))
    torch.testing.assert_close(edm.c_noise(s), torch.tensor([0.0, 0.25 * math.log(2)]))
    torch.testing.assert_close(edm.loss_weight(s), torch.tensor([2.0, 1.25]))
    torch.testing.assert_close(edm.sigma_from_timestep(edm.c_noise(s)), s)


def test_v_target_makes_x0_hat_exact_and_loss_zero():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 5, 5, generator=g), torch.randn(3, 2, 4, 5, 5, generator=g)
    s = torch.tensor([0.1, 1.6, 30.0])
    x_t = edm.add_noise(x0, eps, s)
    x0_hat = edm.x0_from_v(edm.v_target(x0, eps, s), x_t, s)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)
    assert edm.edm_loss(x0_hat, x0, s).abs().max() < 1e-6
    assert edm.edm_loss(x0_hat + 1, x0, s).shape == (3,)


def test_x0_from_v_agrees_with_diffusers_euler_scheduler():
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(prediction_type="v_prediction", timestep_type="continuous", use_karras_sigmas=True,
                                   sigma_min=0.002, sigma_max=700.0)
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(1)
    x_t, v = torch.randn(1, 4, 6, 6, generator=g), torch.randn(1, 4, 6, 6, generator=g)
    t = sched.timesteps[2]
    sigma = sched.sigmas[2]
    out = sched.step(v, t, x_t, generator=g).pred_original_sample
    torch.testing.assert_close(out, edm.x0_from_v(v, x_t, sigma.reshape(1)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t.float(), edm.c_noise(sigma.reshape(1))[0].float(), atol=1e-5, rtol=1e-5)


def test_sigma_sampling_is_lognormal_with_requested_moments():
    g = torch.Generator().manual_seed(0)
    ln = torch.log(edm.sample_sigmas(20000, 0.7, 1.6, generator=g))
    assert abs(ln.mean().item() - 0.7) < 0.05 and abs(ln.std().item() - 1.6) < 0.05


def test_gate_500_is_sigma_about_1_62():
    assert edm.sigma_for_ddpm_timestep(500) == pytest.approx(1.62, abs=0.01)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="sigma must be > 0"):
        edm.c_in(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="must match"):
        edm.edm_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2))
