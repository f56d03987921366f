"""Step-time cost of the STCCL reward callback in a tiny diffusers LoRA loop.

Mean step time of the loop (UNet forward + backward + AdamW on LoRA weights) without the callback and
with it at gated fractions 0, 0.5 and 1.0 (the fraction is forced by the timesteps drawn: gated clips
get t < 500, the others t >= 500), for a tiny AutoencoderKL and a tiny AutoencoderTiny decoder. With
the callback the loop runs the neutral anchor forward only when ``callback.needs_anchor`` says so, as
the docs recommend. Configurations are interleaved step by step so that load from other processes
hits all of them alike; the cheap configurations (no callback, gated fraction 0) run ``--steps``
times, the decoding ones ``--gated-steps`` times (they cost seconds each on a CPU). Ratios are against
the no-callback mean from the same run; medians are printed beside the means because a shared
machine adds bursts of noise.

    python benchmarks/bench_callback.py [--steps 40] [--gated-steps 5] [--warmup 2] [--threads 1]

Target: ratio <= 1.05 at gated fraction 0 (ungated steps cost nothing extra).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from stccl_diffusers.callback import STCCLRewardCallback, anchor_forward
from stccl_diffusers.metric import STCCLMetric

NEUTRAL = 0


def build(device):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    )
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    kl = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                       layers_per_block=1).requires_grad_(False)
    taesd = AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                            num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1),
                            latent_channels=4).requires_grad_(False)
    emotion = torch.nn.Embedding(8, 16).requires_grad_(False)
    metric = STCCLMetric(backbone=(1, 1, 1, 1), input_size=64)
    metric.validate_inputs = False  # decoded frames are clamped by the callback; skip the host sync
    mods = [m.to(device) for m in (unet, kl, taesd, emotion, metric)]
    return mods


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="timed steps: no callback and gated fraction 0")
    ap.add_argument("--gated-steps", type=int, default=5, help="timed steps: gated fractions 0.5 and 1.0")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadier on a shared CPU)")
    ap.add_argument("--clips", type=int, default=2, help="clips per batch (gated fraction 0.5 needs an even number)")
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--latent", type=int, default=16, help="latent side (pixels = 2x)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.set_num_threads(args.threads)
    unet, kl, taesd, emotion, metric = build(dev)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)
    callbacks = {
        "kl": STCCLRewardCallback(metric=metric, scheduler=scheduler, decoder=kl),
        "tiny": STCCLRewardCallback(metric=metric, scheduler=scheduler, decoder=taesd),
    }
    b, t_len = args.clips, args.frames
    g = torch.Generator(device="cpu").manual_seed(0)
    latents = torch.randn(b * t_len, 4, args.latent, args.latent, generator=g).to(dev)
    emotions = torch.arange(1, b + 1).repeat_interleave(t_len).to(dev) % 8

    def timesteps_for(fraction):
        n_gated = round(fraction * b)
        t = torch.cat([torch.randint(0, 500, (n_gated,), generator=g), torch.randint(500, 1000, (b - n_gated,), generator=g)])
        return t.to(dev)

    def step(cb, fraction):
        t_clip = timesteps_for(fraction)
        t = t_clip.repeat_interleave(t_len)
        noise = torch.randn(latents.shape, generator=g).to(dev)
        noisy = scheduler.add_noise(latents, noise, t)
        model_pred = unet(noisy, t, emotion(emotions)[:, None]).sample
        loss = F.mse_loss(model_pred.float(), noise.float())
        if cb is not None:
            anchor = None
            if cb.needs_anchor(t_clip):
                anchor = anchor_forward(unet, noisy, t, emotion(torch.full_like(emotions, NEUTRAL))[:, None])
            loss = loss + cb(model_pred=model_pred, anchor_pred=anchor, noisy_latents=noisy, timesteps=t_clip,
                             num_frames=t_len)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    configs = [("no callback", None, 0.0)]
    for name in ("kl", "tiny"):
        for frac in (0.0, 0.5, 1.0):
            configs.append((f"{name} gated {frac:.1f}", name, frac))
    times = {c[0]: [] for c in configs}
    for i in tqdm(range(args.warmup + args.steps), desc="steps (all configs interleaved)"):
        for label, name, frac in configs:
            if frac > 0 and i >= args.warmup + args.gated_steps:
                continue
            cb = callbacks[name] if name else None
            t0 = time.perf_counter()
            step(cb, frac)
            if i >= args.warmup:
                times[label].append(time.perf_counter() - t0)

    def mean(v):
        return sum(v) / len(v)

    def median(v):
        return sorted(v)[len(v) // 2]

    base, base_med = mean(times["no callback"]), median(times["no callback"])
    print(f"device={dev} threads={args.threads} torch={torch.__version__} clips={b} frames={t_len} "
          f"latent={args.latent}x{args.latent} (pixels {2 * args.latent}) warm-up={args.warmup}")
    print(f"{'configuration':<22}{'steps':>6}{'mean ms':>10}{'ratio':>8}{'median ms':>11}{'ratio':>8}")
    for label, _, _ in configs:
        v = times[label]
        print(f"{label:<22}{len(v):>6}{mean(v) * 1e3:>10.1f}{mean(v) / base:>8.3f}"
              f"{median(v) * 1e3:>11.1f}{median(v) / base_med:>8.3f}")
    worst0 = max(mean(times[l]) / base for l, _, f in configs if _ and f == 0.0)
    print(f"gated fraction 0: worst ratio {worst0:.3f} (target <= 1.05): {'OK' if worst0 <= 1.05 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
