"""A tiny SD text-to-image LoRA loop (as diffusers' train_text_to_image_lora.py) with STCCL attached.

Run: ``python tests/loops/loop_sd_lora.py``. Lines ending in ``# STCCL`` are the callback; the loop
without them is the script as it was (tests/test_callback_loops.py runs both and compares them).
Anchor: the base model (LoRA off) on each sample's caption with the emotion word swapped for "neutral".
"""

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig

from stccl_diffusers import STCCLMetric, STCCLRewardCallback  # STCCL
from stccl_diffusers.callback import neutral_captions  # STCCL

VOCAB = ["a", "photo", "of", "face", "happy", "angry", "sad", "neutral", "man", "woman", "smiling"]


def encode(captions, embed):
    """A toy text encoder: (B, 6, 8) token embeddings of whitespace tokens."""
    ids = [[VOCAB.index(w) for w in c.split()][:6] + [0] * (6 - len(c.split()[:6])) for c in captions]
    return embed(torch.tensor(ids))


def main(steps=6, seed=0, record=None):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        layers_per_block=1)
    embed = torch.nn.Embedding(len(VOCAB), 8)
    for m in (unet, vae, embed):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    noise_scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-3)
    stccl = STCCLRewardCallback(metric=STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False, use_tcc=False), scheduler=noise_scheduler, decoder=vae, num_frames=1)  # STCCL

    torch.manual_seed(seed)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    captions = ["a photo of happy man", "a photo of angry woman"]
    record = [] if record is None else record
    unet.train()
    for _ in range(steps):
        latents = vae.encode(images).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        model_pred = unet(noisy_latents, timesteps, encode(captions, embed), return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), noise.float())
        loss = loss + stccl.reward(model_pred, noisy_latents, timesteps, model=unet, anchor_args=(noisy_latents, timesteps, encode(neutral_captions(captions), embed)))  # STCCL
        record.append({"noise": noise, "timesteps": timesteps, "reward": stccl.last_stats["stccl_loss"] if "stccl" in locals() else None})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return record


if __name__ == "__main__":
    for r in main():
        print(r["timesteps"].tolist(), None if r["reward"] is None else float(r["reward"]))
