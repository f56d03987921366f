"""STCCLRewardCallback: gating, decoding only what is gated, anchors, decoders, stats, config."""

import json
import warnings

import pytest
import torch
import torch.nn as nn

from diffusers import (
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    AutoencoderTiny,
    DDPMScheduler,
    EulerDiscreteScheduler,
)

from _stccl_metric_for_tests import SpyMetric, build_metric, single_torch_thread  # noqa: F401 (autouse fixture)
from stccl_diffusers.callback import (
    STCCLRewardCallback,
    STCCLValidationCallback,
    adapters_disabled,
    anchor_forward,
    crop_faces,
    decode_latents,
)
from stccl_diffusers.diffusion import predict_x0

B, T, C, h, w = 3, 2, 4, 8, 8


def _pixels_fn(calls):
    """decode_fn: a fixed differentiable latent->pixel map (4 -> 3 channels, 2x up), recording batch sizes."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(3, C, 1, 1, generator=g) * 0.3

    def fn(z):
        calls.append(z.detach().clone())
        x = torch.nn.functional.conv2d(z, weight.to(z.dtype))
        return torch.tanh(torch.nn.functional.interpolate(x, scale_factor=2.0))

    return fn


def _callback(decode_calls=None, scheduler=None, **cfg):
    metric = SpyMetric(build_metric()[0])
    decode_calls = [] if decode_calls is None else decode_calls
    cb = STCCLRewardCallback(metric=metric, scheduler=scheduler or DDPMScheduler(clip_sample=False),
                             decode_fn=_pixels_fn(decode_calls), **cfg)
    return cb, metric


def _batch(seed=0, layout="flat", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shape = (B * T, C, h, w) if layout == "flat" else (B, T, C, h, w)
    pred = torch.randn(shape, generator=g).to(dtype).requires_grad_(True)
    anchor = torch.randn(shape, generator=g).to(dtype)
    x = torch.randn(shape, generator=g).to(dtype)
    return pred, anchor, x


def test_gate_skips_decode_and_metric_when_no_timestep_below_threshold():
    calls = []
    cb, metric = _callback(calls)
    pred, anchor, x = _batch()
    loss = cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([500, 700, 999]),
              num_frames=T)
    assert calls == [] and metric.calls == []
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()  # still a valid graph
    assert pred.grad is not None and torch.all(pred.grad == 0)
    assert cb.last_stats["gated_fraction"] == 0.0 and cb.last_stats["num_scored"] == 0


def test_only_gated_clips_are_decoded_and_scored():
    calls = []
    cb, metric = _callback(calls)
    pred, anchor, x = _batch()
    t = torch.tensor([100, 800, 499])  # clips 0 and 2 gated
    loss = cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=t.repeat_interleave(T), num_frames=T)
    assert loss.item() > 0
    # generated and anchor decoded once each, only the 2 gated clips x T frames
    assert [c.shape[0] for c in calls] == [2 * T, 2 * T]
    assert metric.calls[0][:2] == ((2, T, 3, 2 * h, 2 * w), (2, T, 3, 2 * h, 2 * w))
    want = predict_x0(cb.scheduler, pred.detach(), x, t.repeat_interleave(T))
    torch.testing.assert_close(calls[0], torch.cat([want[0:2], want[4:6]]))
    assert cb.last_stats["gated_fraction"] == pytest.approx(2 / 3)
    assert cb.last_stats["num_scored"] == 2


def test_gradient_reaches_gated_model_pred_and_never_the_anchor():
    cb, metric = _callback()
    pred, anchor, x = _batch()
    anchor.requires_grad_(True)
    t = torch.tensor([800, 100, 999])
    cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=t, num_frames=T).backward()
    assert anchor.grad is None
    assert metric.calls[0][2] is True and metric.calls[0][3] is False
    g = pred.grad.reshape(B, T, -1).abs().sum(-1)
    assert torch.all(g[1] > 0) and torch.all(g[[0, 2]] == 0)


def test_flat_and_video_layouts_give_the_same_loss():
    cb, _ = _callback()
    pred, anchor, x = _batch()
    t = torch.tensor([100, 700, 999])
    a = cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=t, num_frames=T,
           generator=torch.Generator().manual_seed(0))
    b = cb(model_pred=pred.reshape(B, T, C, h, w), anchor_pred=anchor.reshape(B, T, C, h, w),
           noisy_latents=x.reshape(B, T, C, h, w), timesteps=t, generator=torch.Generator().manual_seed(0))
    assert a.item() > 0
    torch.testing.assert_close(a, b)


def test_nonfinite_x0_sample_is_dropped_counted_and_warned_once():
    cb, metric = _callback()
    pred, anchor, x = _batch()
    with torch.no_grad():
        pred[0, 0, 0, 0] = float("nan")  # clip 0, gated
    t = torch.tensor([100, 200, 900])
    with pytest.warns(RuntimeWarning, match="non-finite x0-hat or decoded pixels for 1"):
        loss = cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=t, num_frames=T)
    assert torch.isfinite(loss) and loss.item() > 0
    assert cb.last_stats["num_skipped"] == 1 and cb.last_stats["num_scored"] == 1
    assert metric.calls[-1][1][0] == 1
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([100, 900, 900]),
                   num_frames=T)
    assert again.item() == 0.0 and cb.last_stats["num_skipped"] == 1 and len(metric.calls) == 1


def test_all_gated_samples_nonfinite_gives_zero_loss_without_metric_call():
    cb, metric = _callback()
    pred, anchor, x = _batch()
    anchor = anchor.clone()
    anchor[:] = float("inf")
    with pytest.warns(RuntimeWarning):
        loss = cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([1, 2, 3]),
                  num_frames=T)
    assert loss.item() == 0.0 and metric.calls == []
    assert cb.last_stats["num_skipped"] == 3


def test_needs_anchor_and_missing_anchor_rules():
    cb, _ = _callback()
    pred, _, x = _batch()
    assert cb.needs_anchor(torch.tensor([600, 999])) is False
    assert cb.needs_anchor(torch.tensor([600, 10])) is True
    loss = cb(model_pred=pred, anchor_pred=None, noisy_latents=x, timesteps=torch.tensor([600, 700, 800]),
              num_frames=T)
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="expected anchor_pred"):
        cb(model_pred=pred, anchor_pred=None, noisy_latents=x, timesteps=torch.tensor([600, 7, 800]), num_frames=T)


def test_sigma_scheduler_gate_uses_sigmas():
    sch = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 prediction_type="v_prediction", timestep_type="continuous")
    calls = []
    cb, _ = _callback(calls, scheduler=sch)
    pred, anchor, x = _batch()
    sig = torch.tensor([0.5, 1.7, 40.0])  # only the first is below ~1.62
    cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=0.25 * sig.log(), num_frames=T)
    assert cb.last_stats["num_gated"] == 1 and calls[0].shape[0] == T


def test_loss_is_fp32_for_bf16_inputs():
    cb, _ = _callback()
    pred, anchor, x = _batch(dtype=torch.bfloat16)
    loss = cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([1, 900, 900]),
              num_frames=T)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    zero = cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([900] * 3), num_frames=T)
    assert zero.dtype == torch.float32


def test_weight_scales_the_loss_and_stats_report_it():
    cb3, metric = _callback(weight=3.0)
    pred, anchor, x = _batch()
    l3 = cb3(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([1, 900, 900]),
             num_frames=T)
    torch.testing.assert_close(l3, 3 * metric.outputs[-1].loss)
    assert cb3.last_stats["spatial_loss"] == metric.outputs[-1].spatial_loss
    stats = cb3.log_dict()
    assert set(stats) >= {f"stccl/{k}" for k in ("gated_fraction", "spatial_loss", "temporal_loss", "pos_sim",
                                                   "neg_sim", "num_skipped", "stccl_loss")}
    assert stats["stccl/stccl_loss"] == pytest.approx(l3.item())


def test_scaling_factor_divides_latents_before_decoding():
    calls = []
    cb, _ = _callback(calls, scaling_factor=0.5, shift_factor=0.25)
    pred, anchor, x = _batch()
    t = torch.tensor([1, 900, 900])
    cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=t, num_frames=T)
    x0 = predict_x0(cb.scheduler, pred.detach(), x, t.repeat_interleave(T))[:T]
    torch.testing.assert_close(calls[0], x0 / 0.5 + 0.25)


def test_frame_subset_decodes_and_scores_only_those_frames():
    calls = []
    cb, metric = _callback(calls, frame_subset=[0, -2])
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, C, h, w, generator=g, requires_grad=True)
    anchor, x = torch.randn(2, 4, C, h, w, generator=g), torch.randn(2, 4, C, h, w, generator=g)
    cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([900, 2]))
    assert calls[0].shape[0] == 2 and metric.calls[0][1][:2] == (1, 2)
    x0 = predict_x0(cb.scheduler, pred.detach(), x, torch.tensor([900, 2]))
    torch.testing.assert_close(calls[0], x0[1, [0, 2]])


def test_face_boxes_crop_before_scoring():
    cb, metric = _callback(face_crop_size=8)
    pred, anchor, x = _batch()
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 12.0, 12.0], [8.0, 8.0, 16.0, 16.0]])
    cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([900, 2, 900]), num_frames=T,
       face_boxes=boxes)
    assert metric.calls[0][1] == (1, T, 3, 8, 8)


def test_crop_faces_with_integer_box_and_native_size_is_an_exact_slice():
    frames = torch.randn(2, 3, 16, 16)
    boxes = torch.tensor([[2.0, 4.0, 10.0, 12.0], [0.0, 0.0, 16.0, 16.0]])
    out = crop_faces(frames, boxes, (8, 8))
    torch.testing.assert_close(out[0], frames[0, :, 4:12, 2:10])
    torch.testing.assert_close(crop_faces(frames[1:], boxes[1:], (16, 16))[0], frames[1])
    with pytest.raises(ValueError, match=r"expected face boxes \(N, 4\)"):
        crop_faces(frames, boxes[:1], (8, 8))


# -- real decoders ---------------------------------------------------------------------------------
def _tiny_kl():
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                         layers_per_block=1)


def _tiny_taesd():
    torch.manual_seed(0)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4)


def _tiny_temporal():
    torch.manual_seed(0)
    return AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * 2, block_out_channels=(32, 32),
                                        latent_channels=4)


@pytest.mark.parametrize("make", [_tiny_kl, _tiny_taesd, _tiny_temporal])
def test_real_decoders_give_gradient_to_model_pred(make):
    vae = make().requires_grad_(False)
    cb = STCCLRewardCallback(metric=SpyMetric(build_metric()[0]), scheduler=DDPMScheduler(clip_sample=False),
                             decoder=vae)
    pred, anchor, x = _batch(layout="video")
    loss = cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([1, 900, 999]))
    loss.backward()
    assert loss.item() > 0 and pred.grad[0].abs().sum() > 0 and pred.grad[1:].abs().sum() == 0


def test_temporal_decoder_is_called_with_num_frames_within_clips():
    vae = _tiny_temporal()
    seen = []
    orig = vae.decode

    def spy(z, num_frames=None, **kw):
        seen.append((z.shape[0], num_frames))
        return orig(z, num_frames=num_frames, **kw)

    vae.decode = spy
    z = torch.randn(2, 3, C, h, w)
    px = decode_latents(z, decoder=vae, chunk_size=2, scaling_factor=vae.config.scaling_factor)
    assert seen == [(2, 2), (1, 1), (2, 2), (1, 1)]
    assert px.shape == (2, 3, 3, 2 * h, 2 * w)


def test_chunked_and_checkpointed_decoding_match_plain_decoding():
    vae = _tiny_kl().requires_grad_(False)
    z = torch.randn(2, 3, C, h, w, requires_grad=True)
    plain = decode_latents(z, decoder=vae)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), z)
    chunked = decode_latents(z, decoder=vae, chunk_size=4, gradient_checkpointing=True)
    (g_ck,) = torch.autograd.grad(chunked.square().sum(), z)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_ck, g_plain, atol=1e-5, rtol=1e-5)


def test_decoder_scaling_factor_is_read_from_its_config():
    vae = _tiny_kl()
    cb = STCCLRewardCallback(metric=build_metric()[0], scheduler=DDPMScheduler(), decoder=vae)
    assert cb._scaling() == (pytest.approx(0.18215), 0.0)


# -- config ----------------------------------------------------------------------------------------
def test_config_round_trip_keeps_settings_and_takes_runtime_objects(tmp_path):
    cb, _ = _callback(weight=0.25, frame_subset=[0, 1], decode_chunk_size=4, gate_timestep=300)
    cb.save_config(tmp_path)
    saved = json.loads((tmp_path / STCCLRewardCallback.config_name).read_text())
    assert saved["weight"] == 0.25 and "metric" not in saved and "scheduler" not in saved
    metric, sch = build_metric()[0], DDPMScheduler()
    cb2 = STCCLRewardCallback.from_config(STCCLRewardCallback.load_config(tmp_path), metric=metric, scheduler=sch)
    assert cb2.config.weight == 0.25 and list(cb2.config.frame_subset) == [0, 1] and cb2.config.gate_timestep == 300
    assert cb2.metric is metric and cb2.scheduler is sch
    assert cb2.needs_anchor(torch.tensor([350])) is False


def test_metric_is_held_frozen_in_eval_mode():
    m = build_metric()[0]
    m.train()
    m.requires_grad_(True)
    cb = STCCLRewardCallback(metric=m, scheduler=DDPMScheduler())
    assert not cb.metric.training and not any(p.requires_grad for p in cb.metric.parameters())


def test_missing_metric_and_bad_shapes_raise_clear_errors():
    cb = STCCLRewardCallback(scheduler=DDPMScheduler())
    pred, anchor, x = _batch()
    with pytest.raises(ValueError, match="expected a metric"):
        cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([1, 2, 3]), num_frames=T)
    cb, _ = _callback()
    with pytest.raises(ValueError, match="divisible by num_frames=4"):
        cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([1, 2, 3]), num_frames=4)
    with pytest.raises(ValueError, match=r"expected timesteps of shape \(3,\) per clip or \(6,\) per frame"):
        cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.tensor([1, 2]), num_frames=T)


# -- anchors ---------------------------------------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(4, 4)
        self.to_v = nn.Linear(4, 4)

    def forward(self, x):
        return self.to_v(torch.relu(self.to_q(x)))


def _with_lora(model):
    from peft import LoraConfig, inject_adapter_in_model

    model = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"],
                                               init_lora_weights="gaussian"), model)
    _perturb_lora_b(model)
    return model


def _perturb_lora_b(model):
    # peft initialises lora_B to zero (adapter = identity); make the adapter change the output.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)


def test_adapters_disabled_runs_the_base_model_and_restores_adapters():
    torch.manual_seed(0)
    base = _Tiny()
    x = torch.randn(5, 4)
    want = base(x).detach()
    lora = _with_lora(base)
    with_adapters = lora(x).detach()
    assert not torch.allclose(with_adapters, want)
    torch.testing.assert_close(anchor_forward(lora, x, use_base_model=True), want)
    torch.testing.assert_close(lora(x), with_adapters)  # state restored
    assert all(p.requires_grad for n, p in lora.named_parameters() if "lora_" in n)


def test_adapters_disabled_on_a_peft_model_uses_its_disable_adapter():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = _Tiny()
    x = torch.randn(5, 4)
    want = base(x).detach()
    pm = get_peft_model(base, LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"], init_lora_weights="gaussian"))
    _perturb_lora_b(pm)
    with adapters_disabled(pm):
        torch.testing.assert_close(pm(x), want)
    assert not torch.allclose(pm(x), want)


def test_adapters_disabled_without_adapters_raises():
    with pytest.raises(ValueError, match="expected a peft-wrapped model"):
        with adapters_disabled(_Tiny()):
            pass


def test_run_anchor_with_forward_fn_calls_the_wrapper_with_the_base_models_adapters_off():
    torch.manual_seed(0)
    base = _Tiny()
    x = torch.randn(5, 4)
    want = 2.0 * base(x).detach() + 1.0  # what a wrapper around the base model gives
    lora = _with_lora(base)
    wrapper = lambda inp: 2.0 * lora(inp) + 1.0  # noqa: E731 (an adapter's denoise around its UNet)
    assert not torch.allclose(wrapper(x).detach(), want)
    cb, _ = _callback()
    got = cb.run_anchor(lora, x, forward_fn=wrapper)
    torch.testing.assert_close(got, want)
    assert not got.requires_grad
    assert not torch.allclose(wrapper(x).detach(), want)  # adapters back on after
    frozen, _ = _callback(anchor="frozen_copy")
    with pytest.raises(ValueError, match="expected anchor='base_model' with forward_fn="):
        frozen.run_anchor(lora, x, forward_fn=wrapper)


def test_mask_keeps_masked_clips_out_of_the_gate_and_the_score():
    calls = []
    cb, metric = _callback(calls)
    pred, anchor, x = _batch()
    t = torch.tensor([10, 20, 30])  # every clip gated by its timestep
    mask = torch.tensor([True, False, True])  # the middle clip's target emotion is neutral
    assert cb.gate(t, mask=mask).tolist() == [True, False, True]
    assert not cb.needs_anchor(t, mask=torch.zeros(3, dtype=torch.bool))
    cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=t, num_frames=T, mask=mask)
    assert cb.last_stats["num_gated"] == 2 and cb.last_stats["num_scored"] == 2
    assert sum(c.shape[0] for c in calls) == 2 * 2 * T  # generated + anchor frames of the two kept clips only
    with pytest.raises(ValueError, match=r"expected mask \(N,\) bool with one value per sample, shape \(3,\), got \(2,\)"):
        cb.gate(t, mask=torch.tensor([True, False]))


def test_anchor_forward_returns_detached_output():
    m = _Tiny()
    out = anchor_forward(m, torch.randn(2, 4))
    assert not out.requires_grad


# -- inference-side validation callback ------------------------------------------------------------
def test_validation_callback_recovers_x0_from_consecutive_euler_latents_and_scores():
    sch = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 prediction_type="epsilon")
    reward = STCCLRewardCallback(metric=build_metric()[0], scheduler=sch, decode_fn=_pixels_fn([]))
    vcb = STCCLValidationCallback(reward=reward)

    class Pipe:
        scheduler = sch

    def sample(shift, mode, record=None):
        vcb.set_mode(mode)
        sch.set_timesteps(3)
        g = torch.Generator().manual_seed(0)
        lat = torch.randn(1, T, C, h, w, generator=g) * sch.init_noise_sigma
        for i, t in enumerate(sch.timesteps):
            eps = torch.tanh(lat) * 0.5 + shift  # a deterministic stand-in denoiser
            out = sch.step(eps, t, lat)
            if record is not None:
                record.append(out.pred_original_sample)
            lat = vcb(Pipe(), i, t, {"latents": out.prev_sample})["latents"]
        return lat

    want = []
    sample(0.0, "anchor", want)
    assert sorted(vcb.anchor_x0) == [1, 2]
    for i in (1, 2):
        torch.testing.assert_close(vcb.anchor_x0[i], want[i], atol=1e-4, rtol=1e-4)
    sample(0.1, "score")
    assert sorted(vcb.scores) == [1, 2]
    vcb.register_to_config(cutoff_step_index=2)  # PipelineCallback's cutoff: stop scoring from step 2 on
    sample(0.1, "score")
    assert sorted(vcb.scores) == [1]
    assert all(torch.isfinite(o.loss) and o.loss > 0 for o in vcb.scores.values())


# -- docs: the lines users add to diffusers' LoRA example ------------------------------------------
def test_lora_example_patch_adds_at_most_15_lines_removes_none_and_is_shown_in_the_docs():
    from pathlib import Path

    import stccl_diffusers.callback as cbmod

    docs = Path(__file__).resolve().parents[1] / "docs"
    patch = (docs / "train_text_to_image_lora.patch").read_text(encoding="utf-8")
    body = [l for l in patch.splitlines() if not l.startswith(("+++", "---"))]
    added = [l[1:] for l in body if l.startswith("+")]
    assert 0 < len(added) <= 15
    assert not [l for l in body if l.startswith("-")]
    assert patch.rstrip("\n") in (docs / "callback.md").read_text(encoding="utf-8")
    # the added lines only use names the package provides
    code = "\n".join(added)
    for name in ("STCCLRewardCallback", "neutral_captions"):
        assert name in code and hasattr(cbmod, name)
    for method in ("needs_anchor", "run_anchor", "log_dict"):
        assert f".{method}(" in code and hasattr(STCCLRewardCallback, method)


@pytest.mark.parametrize("target", ["main-58eb52c", "v0.29.0"])
def test_lora_example_patch_applies_with_git_apply_to_diffusers_main_and_v0_29(target, tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = Path("examples/text_to_image/train_text_to_image_lora.py")
    src = root.parent / "shared" / "third_party" / "diffusers-examples" / target / script
    if not src.is_file():
        pytest.skip(f"diffusers example {target} not found at {src}")
    if shutil.which("git") is None:
        pytest.skip("git not on PATH")
    (tmp_path / script).parent.mkdir(parents=True)
    shutil.copy(src, tmp_path / script)  # a temporary copy: the script never enters the project
    patch = root / "docs" / "train_text_to_image_lora.patch"
    run = subprocess.run(["git", "apply", "--check", str(patch)], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    subprocess.run(["git", "apply", str(patch)], cwd=tmp_path, check=True)
    patched = (tmp_path / script).read_text(encoding="utf-8")
    compile(patched, str(script), "exec")
    assert "neutral_captions(tokenizer.batch_decode(" in patched  # per-sample neutral caption
