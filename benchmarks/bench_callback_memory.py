"""Activation memory the reward keeps for backward: frame_subset, decode_chunk_size, checkpointing.

SVD's temporal decoder (``AutoencoderKLTemporalDecoder()`` at its default, SVD-sized config, random
weights: memory does not depend on the weights) and the default ``STCCLMetric()``; one clip of T
frames, all gated. Counts the bytes of the tensors autograd saves for backward during one callback
call (``torch.autograd.graph.saved_tensors_hooks``, distinct storages), i.e. what stays allocated
until ``backward``; no backward is run. Also prints how far ``frame_subset`` moves the decoded pixels
(the temporal decoder mixes the frames it is given, so decoding a subset is not a subset of the decode).

    python benchmarks/bench_callback_memory.py [--latent 8] [--frames 14] [--threads 1]

Saved bytes scale with the pixel count: multiply by (H*W at your resolution) / (H*W here).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from diffusers import AutoencoderKLTemporalDecoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stccl_diffusers.callback import STCCLRewardCallback, decode_latents
from stccl_diffusers.metric import STCCLMetric


def saved_bytes(fn):
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent", type=int, default=8, help="latent side (pixels = 8x)")
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder().requires_grad_(False)
    metric = STCCLMetric()
    t_len, s = args.frames, args.latent
    pred = torch.randn(1, t_len, 4, s, s, requires_grad=True)
    x = torch.randn(1, t_len, 4, s, s)
    anchor = torch.randn(1, t_len, 4, s, s)
    subset = sorted({0, t_len // 3, (2 * t_len) // 3, t_len - 1})
    configs = [
        ("all frames", {}),
        ("decode_chunk_size=7", {"decode_chunk_size": 7}),
        ("decode_chunk_size=2", {"decode_chunk_size": 2}),
        ("chunk 2 + checkpointing", {"decode_chunk_size": 2, "gradient_checkpointing": True}),
        (f"frame_subset={subset}", {"frame_subset": subset}),
        ("subset + checkpointing", {"frame_subset": subset, "gradient_checkpointing": True}),
    ]
    print(f"torch={torch.__version__} threads={args.threads} frames={t_len} latent={s}x{s} (pixels {8 * s}x{8 * s}); "
          "AutoencoderKLTemporalDecoder() default config, STCCLMetric() default, fp32, CPU")
    print(f"{'configuration':<30}{'saved MiB':>11}{'ratio':>8}{'wall s':>9}")
    base = None
    for label, cfg in configs:
        cb = STCCLRewardCallback(metric=metric, preconditioning="edm_v", decoder=vae, **cfg)
        t0 = time.perf_counter()
        n = saved_bytes(lambda: cb(model_pred=pred, anchor_pred=anchor, noisy_latents=x, timesteps=torch.zeros(1),
                                   sigmas=torch.tensor([0.5])))
        dt = time.perf_counter() - t0
        base = base or n
        print(f"{label:<30}{n / 2**20:>11.1f}{n / base:>8.3f}{dt:>9.1f}")
    print("decoder only (decode_latents of the generated branch, no metric):")
    for label, kw in [("all frames", {}), ("chunk_size=2", {"chunk_size": 2}),
                      ("chunk_size=2 + checkpointing", {"chunk_size": 2, "gradient_checkpointing": True}),
                      (f"subset {subset}", {"subset": subset})]:
        kw = dict(kw)
        sub = kw.pop("subset", None)
        z = pred if sub is None else pred[:, sub]
        n = saved_bytes(lambda: decode_latents(z, decoder=vae, scaling_factor=vae.config.scaling_factor, **kw))
        print(f"  {label:<28}{n / 2**20:>11.1f}")
    with torch.no_grad():
        z = torch.randn(1, t_len, 4, s, s)
        full = decode_latents(z, decoder=vae, scaling_factor=vae.config.scaling_factor)[:, subset]
        part = decode_latents(z[:, subset], decoder=vae, scaling_factor=vae.config.scaling_factor)
    print(f"frame_subset through the temporal decoder: max |pixel diff| vs the full decode = "
          f"{float((full - part).abs().max()):.3f} (pixels in [-1, 1] scale)")


if __name__ == "__main__":
    main()
