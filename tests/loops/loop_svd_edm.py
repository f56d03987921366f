"""A tiny SVD-style img2vid loop (as SVD_Xtend's train_svd.py): EDM v-prediction, sigma sampled by the
script, no scheduler object, full fine-tune. Lines ending in ``# STCCL`` are the callback.

Two noisy tensors: ``noisy_latents = latents + sigma * noise`` (unscaled, 4 channels: the callback's)
and ``inp_noisy_latents = cat(c_in * noisy_latents, conditional_latents)`` (8 channels: the UNet's, so
the anchor's). Anchor: a frozen copy of the UNet at its initial weights (no LoRA in a full fine-tune).
"""

import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

from stccl_diffusers import STCCLMetric, STCCLRewardCallback  # STCCL


def main(steps=6, seed=0, record=None):
    torch.manual_seed(0)
    B, T, C, h, w = 2, 2, 4, 8, 8
    unet = UNetSpatioTemporalConditionModel(
        sample_size=h, in_channels=2 * C, out_channels=C, down_block_types=("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
        up_block_types=("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"), block_out_channels=(32, 32),
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1,
        cross_attention_dim=8, transformer_layers_per_block=1, num_attention_heads=(2, 2), num_frames=T)
    vae = AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * 2, block_out_channels=(32, 32),
                                       latent_channels=C)
    vae.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    stccl = STCCLRewardCallback(metric=STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False), preconditioning="edm_v", anchor="frozen_copy", decoder=vae, layout="btchw")  # STCCL

    torch.manual_seed(seed)
    frames = torch.rand(B * T, 3, 16, 16) * 2 - 1
    record = [] if record is None else record
    unet.train()
    for _ in range(steps):
        latents = vae.encode(frames).latent_dist.sample().reshape(B, T, C, h, w) * vae.config.scaling_factor
        conditional_latents = latents[:, :1].expand(-1, T, -1, -1, -1)  # the first frame, repeated
        encoder_hidden_states = torch.randn(B, 1, 8)
        added_time_ids = torch.tensor([[6.0, 127.0, 0.02]]).repeat(B, 1)
        sigmas = torch.exp(torch.randn(B, 1, 1, 1, 1) * 1.6 + 0.7)  # ln sigma ~ N(0.7, 1.6)
        noise = torch.randn_like(latents)
        noisy_latents = latents + noise * sigmas
        timesteps = torch.Tensor([0.25 * s.log() for s in sigmas])
        inp_noisy_latents = torch.cat([noisy_latents / (sigmas**2 + 1) ** 0.5, conditional_latents], dim=2)
        model_pred = unet(inp_noisy_latents, timesteps, encoder_hidden_states, added_time_ids=added_time_ids).sample
        c_out, c_skip = -sigmas / (sigmas**2 + 1) ** 0.5, 1 / (sigmas**2 + 1)
        denoised_latents = model_pred * c_out + c_skip * noisy_latents
        weighing = (1 + sigmas**2) * sigmas**-2.0
        loss = torch.mean((weighing.float() * (denoised_latents.float() - latents.float()) ** 2).reshape(B, -1), dim=1).mean()
        loss = loss + stccl.reward(model_pred, noisy_latents, timesteps, sigmas=sigmas, model=unet, anchor_args=(inp_noisy_latents, timesteps, encoder_hidden_states), anchor_kwargs={"added_time_ids": added_time_ids})  # STCCL
        record.append({"noise": noise, "sigmas": sigmas, "reward": stccl.last_stats["stccl_loss"] if "stccl" in locals() else None})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return record


if __name__ == "__main__":
    for r in main():
        print(r["sigmas"].flatten().tolist(), None if r["reward"] is None else float(r["reward"]))
