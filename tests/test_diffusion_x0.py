"""predict_x0 and timestep_gate, with diffusers' own schedulers as the oracle."""

import math

import pytest
import torch

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from stccl_diffusers.diffusion import (
    gate_threshold,
    gate_threshold_table,
    predict_x0,
    timestep_gate,
    timesteps_to_sigmas,
)

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SHAPE = (2, 4, 6, 6)  # per sample: (C, h, w) with an extra leading dim to check broadcasting


def _oracle_step(scheduler, model_output, t, sample):
    """pred_original_sample of one diffusers step (stateful schedulers get their step index reset)."""
    if hasattr(scheduler, "_step_index"):
        scheduler._step_index = None
        scheduler.is_scale_input_called = True
    return scheduler.step(model_output, t, sample).pred_original_sample


def _check_against_oracle(scheduler, timesteps, atol=1e-4):
    g = torch.Generator().manual_seed(0)
    n = len(timesteps)
    out = torch.randn(n, *SHAPE, generator=g)
    x = torch.randn(n, *SHAPE, generator=g) * 3
    t = torch.stack([torch.as_tensor(v) for v in timesteps])
    got = predict_x0(scheduler, out, x, t)
    assert got.shape == x.shape and got.dtype == x.dtype
    for i in range(n):
        want = _oracle_step(scheduler, out[i], timesteps[i], x[i])
        torch.testing.assert_close(got[i], want.to(got.dtype), atol=atol, rtol=1e-4)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_alpha_bar_schedulers_match_diffusers_step(cls, pred):
    sch = cls(**SD_BETAS, prediction_type=pred, clip_sample=False)
    if cls is DDIMScheduler:
        sch.set_timesteps(50)
    ts = [torch.tensor(v) for v in (0, 1, 17, 250, 499, 500, 731, 999)]
    _check_against_oracle(sch, ts)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("karras", [False, True])
def test_euler_discrete_matches_diffusers_step(pred, karras):
    sch = EulerDiscreteScheduler(**SD_BETAS, prediction_type=pred, use_karras_sigmas=karras)
    sch.set_timesteps(25)
    ts = list(sch.timesteps[::3]) + [sch.timesteps[-1]]
    _check_against_oracle(sch, ts, atol=2e-4)


def test_euler_continuous_karras_svd_setting_matches_diffusers_step():
    sch = EulerDiscreteScheduler(
        **SD_BETAS, prediction_type="v_prediction", timestep_type="continuous", use_karras_sigmas=True,
        sigma_min=0.002, sigma_max=700.0,
    )
    sch.set_timesteps(25)
    ts = list(sch.timesteps[::2])
    _check_against_oracle(sch, ts, atol=2e-4)


def test_euler_continuous_off_table_sigma_inverts_quarter_log():
    sch = EulerDiscreteScheduler(**SD_BETAS, prediction_type="v_prediction", timestep_type="continuous")
    s = torch.exp(torch.randn(64) * 1.6 + 0.7)  # SVD fine-tuning's ln s ~ N(0.7, 1.6)
    got = timesteps_to_sigmas(sch, 0.25 * s.log())
    torch.testing.assert_close(got, s, rtol=1e-4, atol=0)


def test_euler_discrete_fractional_timesteps_interpolate_training_table():
    # Timesteps from a Karras schedule are fractional indices; a fresh scheduler (no set_timesteps) must
    # recover the same sigmas through the training table alone.
    ref = EulerDiscreteScheduler(**SD_BETAS, use_karras_sigmas=True)
    ref.set_timesteps(30)
    fresh = EulerDiscreteScheduler(**SD_BETAS)
    got = timesteps_to_sigmas(fresh, ref.timesteps)
    torch.testing.assert_close(got, ref.sigmas[:-1].float(), rtol=2e-3, atol=0)


def test_explicit_sigmas_override_timestep_map():
    sch = EulerDiscreteScheduler(**SD_BETAS, prediction_type="epsilon")
    x, e = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    s = torch.tensor([0.1, 1.0, 7.0])
    got = predict_x0(sch, e, x, torch.zeros(3), sigmas=s)
    torch.testing.assert_close(got, x - s.view(3, 1, 1, 1) * e)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_edm_euler_matches_diffusers_step(pred):
    sch = EDMEulerScheduler(prediction_type=pred)
    sch.set_timesteps(20)
    ts = list(sch.timesteps[::3])
    _check_against_oracle(sch, ts, atol=2e-4)


def test_edm_off_table_timestep_uses_precondition_noise_inverse():
    sch = EDMEulerScheduler()
    s = torch.tensor([0.01, 0.3, 2.0, 40.0])
    torch.testing.assert_close(timesteps_to_sigmas(sch, sch.precondition_noise(s)), s, rtol=1e-4, atol=0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_closed_form_recovers_x0(shift):
    sch = FlowMatchEulerDiscreteScheduler(shift=shift)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 4, 3, 3, generator=g)
    eps = torch.randn(5, 4, 3, 3, generator=g)
    sigma = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.99])
    s = sigma.view(-1, 1, 1, 1)
    xt = s * eps + (1 - s) * x0
    v = eps - x0
    got = predict_x0(sch, v, xt, sigma * sch.config.num_train_timesteps)
    torch.testing.assert_close(got, x0, atol=1e-5, rtol=1e-5)


def test_video_shaped_latents_broadcast_per_sample_timesteps():
    sch = DDPMScheduler(**SD_BETAS, clip_sample=False)
    out = torch.randn(2, 3, 4, 5, 5)  # (B, T, C, h, w)
    x = torch.randn(2, 3, 4, 5, 5)
    t = torch.tensor([10, 900])
    got = predict_x0(sch, out, x, t)
    for b in range(2):
        torch.testing.assert_close(got[b], predict_x0(sch, out[b], x[b], t[b]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_computes_in_fp32_returns_input_dtype(dtype):
    sch = EulerDiscreteScheduler(**SD_BETAS, prediction_type="v_prediction", timestep_type="continuous")
    sch.set_timesteps(10)
    t = sch.timesteps[:4]
    out, x = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8) * 50
    got = predict_x0(sch, out.to(dtype), x.to(dtype), t)
    ref = predict_x0(sch, out.to(dtype).float(), x.to(dtype).float(), t)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), ref.to(dtype).float())


def test_unsupported_scheduler_error_names_the_supported_ones():
    for sch in (DPMSolverMultistepScheduler(), EulerAncestralDiscreteScheduler()):
        with pytest.raises(ValueError, match="DDPMScheduler.*EulerDiscreteScheduler.*FlowMatchEulerDiscreteScheduler"):
            predict_x0(sch, torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([1]))


def test_unsupported_prediction_type_error_names_it():
    sch = EDMEulerScheduler()
    sch.register_to_config(prediction_type="sample")
    with pytest.raises(ValueError, match="prediction_type 'sample'.*EDMEulerScheduler: epsilon, v_prediction"):
        predict_x0(sch, torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([1.0]))


def test_timesteps_of_wrong_length_are_rejected():
    with pytest.raises(ValueError, match=r"expected timesteps as a scalar or shape \(3,\)"):
        predict_x0(DDPMScheduler(), torch.zeros(3, 4, 2, 2), torch.zeros(3, 4, 2, 2), torch.tensor([1, 2]))


def test_svd_gate_sigma_is_about_1_62():
    sch = EulerDiscreteScheduler(**SD_BETAS, prediction_type="v_prediction", timestep_type="continuous",
                                 use_karras_sigmas=True)
    unit, thr = gate_threshold(sch, 500)
    ac = sch.alphas_cumprod[500].double()
    assert unit == "sigma"
    assert thr == pytest.approx(math.sqrt((1 - ac) / ac), rel=1e-5)
    assert thr == pytest.approx(1.62, abs=0.01)


def test_gate_compares_timesteps_for_ddpm():
    sch = DDPMScheduler()
    mask = timestep_gate(sch, torch.tensor([0, 499, 500, 999]))
    assert mask.tolist() == [True, True, False, False]


def test_gate_compares_sigmas_for_euler_continuous():
    sch = EulerDiscreteScheduler(**SD_BETAS, prediction_type="v_prediction", timestep_type="continuous")
    s = torch.tensor([0.002, 1.5, 1.7, 700.0])
    assert timestep_gate(sch, 0.25 * s.log()).tolist() == [True, True, False, False]
    assert timestep_gate(sch, torch.zeros(4), sigmas=s).tolist() == [True, True, False, False]


def test_gate_for_euler_discrete_agrees_with_ddpm_gate_on_integer_timesteps():
    sch = EulerDiscreteScheduler(**SD_BETAS)
    t = torch.arange(0, 1000, 7).float()
    assert torch.equal(timestep_gate(sch, t), t < 500)


def test_gate_for_flow_matching_is_sigma_below_half():
    sch = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sch.set_timesteps(20)
    mask = timestep_gate(sch, sch.timesteps)
    assert torch.equal(mask, sch.sigmas[:-1] < 0.5)


def test_gate_threshold_table_covers_every_supported_family():
    rows = gate_threshold_table()
    names = {r["scheduler"] for r in rows}
    assert names == {"DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EDMEulerScheduler",
                     "FlowMatchEulerDiscreteScheduler"}
    svd = [r for r in rows if "SVD" in r["setting"]][0]
    assert svd["threshold"] == pytest.approx(1.618, abs=1e-3)


def test_docs_gate_table_is_the_one_the_code_computes():
    from pathlib import Path

    from stccl_diffusers.diffusion import gate_threshold_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "callback.md").read_text(encoding="utf-8")
    assert gate_threshold_markdown(500) in doc
