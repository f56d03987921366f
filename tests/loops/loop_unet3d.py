"""A tiny UNet3D video loop (AnimateDiff / hallo style): latents (B, C, F, h, w), DDPM epsilon, frames
encoded by an image VAE. Lines ending in ``# STCCL`` are the callback.

Anchor: a neutral-conditioning callable (the same UNet with the neutral emotion embedding).
"""

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel

from stccl_diffusers import STCCLMetric, STCCLRewardCallback  # STCCL

NEUTRAL = 0


def main(steps=6, seed=0, record=None):
    torch.manual_seed(0)
    B, C, Fr, h, w = 2, 4, 3, 8, 8
    unet = UNet3DConditionModel(
        sample_size=h, in_channels=C, out_channels=C, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=C, norm_num_groups=8,
                        layers_per_block=1)
    vae.requires_grad_(False)
    emotion = torch.nn.Embedding(8, 8)
    noise_scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    opt = torch.optim.AdamW(list(unet.parameters()) + list(emotion.parameters()), lr=1e-4)
    stccl = STCCLRewardCallback(metric=STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False), scheduler=noise_scheduler, decoder=vae, layout="bcfhw", anchor_fn=lambda x, t: unet(x, t, emotion(torch.full((x.shape[0], 1), NEUTRAL))).sample)  # STCCL

    torch.manual_seed(seed)
    frames = torch.rand(B * Fr, 3, 16, 16) * 2 - 1
    labels = torch.tensor([[3], [5]])
    record = [] if record is None else record
    unet.train()
    for _ in range(steps):
        latents = vae.encode(frames).latent_dist.sample() * vae.config.scaling_factor
        latents = latents.reshape(B, Fr, C, h, w).transpose(1, 2)  # (B, C, F, h, w)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (B,)).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        model_pred = unet(noisy_latents, timesteps, emotion(labels)).sample
        loss = F.mse_loss(model_pred.float(), noise.float())
        loss = loss + stccl.reward(model_pred, noisy_latents, timesteps, anchor_args=(noisy_latents, timesteps))  # STCCL
        record.append({"noise": noise, "timesteps": timesteps, "reward": stccl.last_stats["stccl_loss"] if "stccl" in locals() else None})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return record


if __name__ == "__main__":
    for r in main():
        print(r["timesteps"].tolist(), None if r["reward"] is None else float(r["reward"]))
