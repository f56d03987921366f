"""STCCLRewardCallback's API for other people's loops (issue 13): preconditionings without a scheduler,
x0=, layouts, broadcastable noise levels, anchors, the callback's own generator, bad values."""

import warnings

import pytest
import torch

from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from _stccl_metric_for_tests import SpyMetric, build_metric, single_torch_thread  # noqa: F401 (autouse fixture)
from stccl_diffusers.callback import STCCLRewardCallback, STCCLValidationCallback
from stccl_diffusers.metric import STCCLMetric

B, T, C, h, w = 2, 2, 4, 8, 8
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _recording_decode(calls, nan_clip=None, value=float("nan")):
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(3, C, 1, 1, generator=g) * 0.3

    def fn(z):
        calls.append(z.detach().clone())
        x = torch.tanh(torch.nn.functional.interpolate(torch.nn.functional.conv2d(z, weight), scale_factor=2.0))
        if nan_clip is not None and len(calls) == 1:  # first (generated) decode: poison one clip's frames
            x = x.clone()
            x[nan_clip * T] = value
        return x

    return fn


def _cb(calls=None, **kw):
    calls = [] if calls is None else calls
    kw.setdefault("decode_fn", _recording_decode(calls))
    cb = STCCLRewardCallback(metric=SpyMetric(build_metric()[0]), **kw)
    return cb, cb.metric


def _tensors(shape=(B, T, C, h, w), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g).requires_grad_(True), torch.randn(shape, generator=g),
            torch.randn(shape, generator=g))


# -- x0 of each named preconditioning against diffusers' own schedulers ----------------------------
def _oracle_x0(name, out, x, idx):
    """pred_original_sample of diffusers' step (flow: the step to sigma 0 lands on x0)."""
    if name == "edm_v":
        sch = EulerDiscreteScheduler(**SD, prediction_type="v_prediction", timestep_type="continuous",
                                     use_karras_sigmas=True)
        sch.set_timesteps(10)
        t, s = sch.timesteps[idx], sch.sigmas[idx]
        return sch.step(out, t, x).pred_original_sample, t, s
    if name.startswith("ddpm_"):
        pred = {"ddpm_eps": "epsilon", "ddpm_v": "v_prediction", "ddpm_sample": "sample"}[name]
        sch = DDPMScheduler(**SD, prediction_type=pred, clip_sample=False)
        sch.set_timesteps(10)
        t = sch.timesteps[idx]
        return sch.step(out, t, x).pred_original_sample, t, None
    sch = FlowMatchEulerDiscreteScheduler()
    sch.set_timesteps(4)
    t, s = sch.timesteps[-1], sch.sigmas[-2]  # the last step goes to sigma 0, so it lands on x0
    return sch.step(out, t, x).prev_sample, t, s


@pytest.mark.parametrize("name", ["edm_v", "ddpm_eps", "ddpm_v", "ddpm_sample", "flow"])
def test_named_preconditioning_x0_matches_diffusers_scheduler_without_a_scheduler_object(name):
    g = torch.Generator().manual_seed(1)
    out, x = torch.randn(1, T, C, h, w, generator=g), torch.randn(1, T, C, h, w, generator=g)
    want, t, s = _oracle_x0(name, out.flatten(0, 1), x.flatten(0, 1), idx=8)
    calls = []
    cb, _ = _cb(calls, preconditioning=name, gate_timestep=1001)  # gate everything: only the x0 maths here
    cb(model_pred=out.requires_grad_(True), anchor_pred=out.detach(), noisy_latents=x, timesteps=t.reshape(1),
       sigmas=None if s is None else s.reshape(1, 1, 1, 1, 1))
    torch.testing.assert_close(calls[0], want.float(), atol=1e-4, rtol=1e-4)


def test_unknown_preconditioning_and_scheduler_plus_preconditioning_are_rejected():
    with pytest.raises(ValueError, match="preconditioning one of"):
        STCCLRewardCallback(preconditioning="edm_x")
    with pytest.raises(ValueError, match="scheduler= or preconditioning=, got both"):
        STCCLRewardCallback(preconditioning="edm_v", scheduler=DDPMScheduler())


def test_x0_given_needs_no_model_pred_and_is_decoded_as_given():
    calls = []
    cb, metric = _cb(calls, preconditioning="edm_v")
    x0, anchor_x0, _ = _tensors()
    loss = cb(x0=x0, anchor_x0=anchor_x0, sigmas=torch.tensor([0.5, 3.0]).reshape(B, 1, 1, 1, 1))
    assert cb.last_stats["num_scored"] == 1  # sigma 3.0 is above the 1.62 gate
    torch.testing.assert_close(calls[0], x0[0].detach())
    loss.backward()
    assert x0.grad[0].abs().sum() > 0 and torch.all(x0.grad[1] == 0)


# -- noise levels in any broadcastable shape; errors name the argument -----------------------------
def test_svd_style_sigmas_b11111_gate_and_score_like_flat_sigmas():
    pred, anchor, x = _tensors()
    sig = torch.tensor([0.3, 5.0])
    cb, _ = _cb(preconditioning="edm_v")
    a = cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=0.25 * sig.log().reshape(B, 1, 1, 1, 1),
           sigmas=sig.reshape(B, 1, 1, 1, 1))
    assert cb.needs_anchor(sigmas=sig.reshape(B, 1, 1, 1, 1))
    cb2, _ = _cb(preconditioning="edm_v")
    b = cb2(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=0.25 * sig.log(), sigmas=sig)
    assert cb.last_stats["num_scored"] == 1
    torch.testing.assert_close(a, b)


def test_shape_errors_name_sigmas_or_timesteps():
    pred, anchor, x = _tensors()
    cb, _ = _cb(preconditioning="edm_v")
    with pytest.raises(ValueError, match=r"expected sigmas of shape \(2,\)"):
        cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.zeros(B), sigmas=torch.ones(3))
    with pytest.raises(ValueError, match=r"expected timesteps of shape \(2,\)"):
        cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.zeros(3), sigmas=torch.ones(B))
    with pytest.raises(ValueError, match=r"expected sigmas of shape \(N,\) or \(N, 1, ..., 1\), got \(2, 2\)"):
        cb.needs_anchor(torch.zeros(B), sigmas=torch.ones(B, 2))


# -- layouts and the decoder's channel check ---------------------------------------------------------
def _tiny_kl():
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=C, norm_num_groups=8,
                         layers_per_block=1)


class _NeverDecode(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.inner, self.config = vae, vae.config

    def decode(self, *a, **k):
        raise AssertionError("decoder reached")


def test_bcfhw_latents_without_layout_fail_at_the_call_naming_layout_not_inside_the_vae():
    cb, _ = _cb(scheduler=DDPMScheduler(), decode_fn=None, decoder=_NeverDecode(_tiny_kl()))
    pred, anchor, x = _tensors((B, C, 14, h, w))
    with pytest.raises(ValueError, match=r"4 latent channels.*C=14.*layout='bcfhw'"):
        cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([10, 20]))


def test_bcfhw_layout_scores_frames_not_channels():
    calls = []
    cb, metric = _cb(calls, scheduler=DDPMScheduler(**SD, prediction_type="sample"), layout="bcfhw")
    pred, anchor, x = _tensors((B, C, 3, h, w))  # F = 3 frames
    cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([10, 20]))
    assert metric.calls[0][0][:2] == (B, 3)
    torch.testing.assert_close(calls[0], pred.detach().transpose(1, 2).flatten(0, 1))


def test_scaled_concatenated_unet_input_as_noisy_latents_is_named_as_the_mistake():
    cb, _ = _cb(preconditioning="edm_v")
    pred, anchor, x = _tensors()
    unet_input = torch.cat([x, x], dim=2)  # (B, T, 8, h, w): scaled latents + conditioning
    with pytest.raises(ValueError, match="not the UNet input"):
        cb(model_pred=pred, anchor_pred=anchor, noisy_latents=unet_input, timesteps=torch.zeros(B),
           sigmas=torch.ones(B))


# -- anchors: base model, frozen copy, neutral-conditioning callable -------------------------------
class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = torch.nn.Conv2d(C, C, 1)

    def forward(self, x, cond):
        return self.to_q(x) + cond


def test_reward_with_frozen_copy_anchors_on_the_initial_weights_and_skips_ungated_anchor_forward():
    torch.manual_seed(0)
    net = _Net()
    cb, metric = _cb(scheduler=DDPMScheduler(**SD, prediction_type="sample"), anchor="frozen_copy", num_frames=T)
    x = torch.randn(B * T, C, h, w)
    init = net(x, 0.0).detach()
    with torch.no_grad():
        net.to_q.weight.add_(1.0)  # training moved the weights
    assert cb.frozen_model is None
    pred = net(x, 0.0)
    cb.reward(pred, x, torch.tensor([900, 900]), model=net, anchor_args=(x, 0.0))  # ungated: copy made, no anchor
    assert cb.frozen_model is not None and metric.calls == []
    torch.testing.assert_close(cb.run_anchor(net, x, 0.0), net(x, 0.0).detach())  # copy taken at first call
    cb2, _ = _cb(scheduler=DDPMScheduler(**SD, prediction_type="sample"), anchor="frozen_copy", num_frames=T)
    cb2.make_frozen_copy(_Net().requires_grad_(False))
    cb2.frozen_model.load_state_dict({"to_q.weight": net.to_q.weight.detach() - 1.0, "to_q.bias": net.to_q.bias.detach()})
    torch.testing.assert_close(cb2.run_anchor(None, x, 0.0), init)
    assert not any(p.requires_grad for p in cb2.frozen_model.parameters())


def test_reward_with_anchor_fn_runs_the_neutral_callable_only_when_gated():
    seen = []

    def neutral(x):
        seen.append(x.shape)
        return x * 0.5

    cb, metric = _cb(scheduler=DDPMScheduler(**SD, prediction_type="sample"), anchor_fn=neutral, num_frames=T)
    pred, _, x = _tensors((B * T, C, h, w))
    assert float(cb.reward(pred, x, torch.tensor([800, 900]), anchor_args=(x,))) == 0.0 and seen == []
    loss = cb.reward(pred, x, torch.tensor([100, 900]), anchor_args=(x,))
    assert seen == [x.shape] and loss > 0 and cb.last_stats["num_scored"] == 1


def test_base_model_anchor_without_model_or_anchor_fn_says_what_to_pass():
    cb, _ = _cb(scheduler=DDPMScheduler(), num_frames=T)
    pred, _, x = _tensors((B * T, C, h, w))
    with pytest.raises(ValueError, match="expected model="):
        cb.reward(pred, x, torch.tensor([1, 2]), anchor_args=(x,))


# -- the callback's own generator ------------------------------------------------------------------
def test_scoring_never_touches_the_global_rng_and_is_reproducible_by_seed():
    pred, anchor, x = _tensors()
    losses = []
    for _ in range(2):
        cb, _ = _cb(preconditioning="edm_v", seed=7)
        state = torch.get_rng_state()
        losses.append(cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.zeros(B),
                         sigmas=torch.tensor([0.5, 0.7])))
        assert torch.equal(state, torch.get_rng_state())
    assert float(losses[0]) > 0 and torch.equal(losses[0], losses[1])
    assert cb.generator("cpu") is cb.generator("cpu")


def test_validation_scores_are_identical_for_identical_inputs_and_leave_the_global_rng_alone():
    cb, _ = _cb(preconditioning="edm_v")
    vcb = STCCLValidationCallback(reward=cb)
    x0, anchor_x0, _ = _tensors()
    state = torch.get_rng_state()
    a, b = vcb.score(x0.detach(), anchor_x0), vcb.score(x0.detach(), anchor_x0)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a.loss, b.loss)


# -- bad values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_decoded_pixels_drop_that_clip_counted_and_warned_once(value):
    calls = []
    cb, metric = _cb(calls, preconditioning="edm_v", decode_fn=_recording_decode(calls, nan_clip=0, value=value))
    pred, anchor, x = _tensors()
    with pytest.warns(RuntimeWarning, match="non-finite x0-hat or decoded pixels for 1"):
        loss = cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.zeros(B),
                  sigmas=torch.tensor([0.5, 0.7]))
    assert torch.isfinite(loss) and loss > 0
    assert cb.last_stats["num_scored"] == 1 and cb.last_stats["num_skipped"] == 1
    assert metric.calls[0][1][0] == 1  # only the finite clip reached the metric
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cb._warn_nonfinite(1)  # once only


def test_metric_with_tcc_on_single_frames_raises_at_construction():
    metric = STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False, use_tcc=True)
    with pytest.raises(ValueError, match="use_tcc=False for 1 scored frame"):
        STCCLRewardCallback(metric=metric, scheduler=DDPMScheduler(), num_frames=1)
    with pytest.raises(ValueError, match="use_tcc=False for 1 scored frame"):
        STCCLRewardCallback(metric=metric, scheduler=DDPMScheduler(), num_frames=4, frame_subset=[0])
    STCCLRewardCallback(metric=metric, scheduler=DDPMScheduler(), num_frames=4)  # video: fine


def test_neutral_captions_swap_each_emotion_word_and_keep_the_rest():
    from stccl_diffusers.callback import neutral_captions

    assert neutral_captions(["a photo of a happy man, smiling", "an Angry woman in a park", "a cat"]) == [
        "a photo of a neutral man, neutral", "an neutral woman in a park", "a cat"]
    with pytest.raises(ValueError, match="list of captions"):
        neutral_captions("a happy man")


def test_config_round_trip_keeps_preconditioning_layout_anchor_and_seed(tmp_path):
    cb = STCCLRewardCallback(preconditioning="edm_v", layout="bcfhw", anchor="frozen_copy", seed=5)
    cb.save_config(tmp_path)
    back = STCCLRewardCallback.from_config(STCCLRewardCallback.load_config(tmp_path))
    assert (back.config.preconditioning, back.config.layout, back.config.anchor, back.config.seed) == (
        "edm_v", "bcfhw", "frozen_copy", 5)
    assert isinstance(back.scheduler, EulerDiscreteScheduler) and back.scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="expected layout one of"):
        STCCLRewardCallback(preconditioning="edm_v", layout="bthwc")
    with pytest.raises(ValueError, match="expected anchor one of"):
        STCCLRewardCallback(preconditioning="edm_v", anchor="ema")
