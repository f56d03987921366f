"""A tiny diffusers-style LoRA training loop with the STCCL callback attached (issue 4, 'done when')."""

import pytest
import torch
import torch.nn.functional as F

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from _stccl_metric_for_tests import build_metric, single_torch_thread  # noqa: F401 (autouse fixture)
from stccl_diffusers.callback import STCCLRewardCallback, anchor_forward

NEUTRAL = 0  # emotion id whose embedding is the neutral conditioning
T = 2  # frames per clip; latents are (B*T, C, h, w) like an image UNet sees them


def _tiny_models():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
    )
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        layers_per_block=1)
    emotion = torch.nn.Embedding(8, 8)  # the conditioning; row NEUTRAL is the anchor's
    for m in (unet, vae, emotion):
        m.requires_grad_(False)
    return unet, vae, emotion


def _add_lora(unet):
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    return [p for p in unet.parameters() if p.requires_grad]


def test_lora_loop_with_callback_trains_only_lora_and_rewards_only_gated_steps():
    unet, vae, emotion = _tiny_models()
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    lora_params = _add_lora(unet)
    assert lora_params and all("lora_" in n for n, p in unet.named_parameters() if p.requires_grad)
    base_before = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}
    opt = torch.optim.AdamW(lora_params, lr=1e-2)
    callback = STCCLRewardCallback(metric=build_metric()[0], scheduler=scheduler, decoder=vae, weight=1.0)

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2 * T, 3, 16, 16, generator=g) * 2 - 1  # 2 clips x T frames
    emotions = torch.tensor([3, 4]).repeat_interleave(T)  # non-neutral emotions per clip
    plan = [torch.tensor([700, 900]), torch.tensor([100, 300]), torch.tensor([50, 800])]  # per-clip timesteps
    stccl_terms, lora_grad_from_stccl = [], []
    unet.train()
    for t_clip in plan:
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample(generator=g) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g)
        t = t_clip.repeat_interleave(T)
        noisy = scheduler.add_noise(latents, noise, t)
        cond = emotion(emotions)[:, None]
        model_pred = unet(noisy, t, cond).sample
        loss = F.mse_loss(model_pred.float(), noise.float())
        anchor_pred = None
        if callback.needs_anchor(t_clip):
            anchor_pred = anchor_forward(unet, noisy, t, emotion(torch.full_like(emotions, NEUTRAL))[:, None])
        stccl = callback(model_pred=model_pred, anchor_pred=anchor_pred, noisy_latents=noisy, timesteps=t_clip,
                         num_frames=T)
        stccl_terms.append(stccl.item())
        opt.zero_grad()
        # Gradient of the STCCL term alone first, to see that it reaches the LoRA weights.
        stccl.backward(retain_graph=True)
        lora_grad_from_stccl.append(sum(float(p.grad.abs().sum()) for p in lora_params if p.grad is not None))
        loss.backward()
        opt.step()

    assert stccl_terms[0] == 0.0 and lora_grad_from_stccl[0] == 0.0  # nothing gated
    assert stccl_terms[1] > 0 and stccl_terms[2] > 0
    assert lora_grad_from_stccl[1] > 0 and lora_grad_from_stccl[2] > 0
    assert callback.last_stats["gated_fraction"] == pytest.approx(0.5)
    after = dict(unet.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in base_before.items())
    assert any(not torch.equal(after[n], v) for n, v in lora_before.items())
