#!/usr/bin/env python
"""Seconds per training step and peak memory of the real DICE-Talk backend, with and without STCCL.

    python benchmarks/bench_dice_step.py                       # tiny random weights, CPU (minutes)
    python benchmarks/bench_dice_step.py --full                # DICE-Talk's size on a GPU: 512 px, 25 frames,
                                                               # fp16 weights (bf16/fp16 autocast), LoRA rank 64

DICE-Talk's modules are imported from --dice_talk_root (default ../shared/third_party/DICE-Talk);
random weights in its file layout are written to a temporary folder. Modes, measured side by side
in one run: "no STCCL" (stccl_weight 0) and STCCL with gated fraction 0, 0.5 and 1 (the share of
steps whose sigma is under the t < 500 gate, forced through p_mean). Ratios are against "no STCCL".

    python benchmarks/bench_dice_step.py --reference           # the built-in ReferenceDICE (demo size, CPU):
                                                               # reward modes side by side (issue 22)

``--reference`` times the demo's ReferenceDICE (configs/dice_stccl_demo.yaml: 32 px, 8 frames,
LoRA rank 8, 10 sampler steps, guidance 3.0, frame subset of 4) per training step: no STCCL, the
``single_step`` reward with every sample gated (its most expensive case), and the ``rollout`` reward
(every step, K = 1 and K = 5 grad steps; a rollout every k-th step costs about 1/k of the extra).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dice_talk_root", default=str(REPO.parent / "shared/third_party/DICE-Talk"))
    p.add_argument("--full", action="store_true", help="DICE-Talk's real size on CUDA (fp16, 512 px, 25 frames, rank 64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 3 tiny, 4 full)")
    p.add_argument("--reference", action="store_true", help="time the reward modes on the built-in ReferenceDICE")
    args = p.parse_args(argv)
    if args.reference:
        return reference_modes(args.steps or 3)
    from stccl_diffusers import STCCLMetric
    from stccl_diffusers.adapters.dice import DiceTrainingConfig
    from stccl_diffusers.adapters.dice.dice_talk import build_dice_talk_adapter, write_random_dice_talk_weights
    from stccl_diffusers.models.reference_dice import DICE_EMOTIONS
    from stccl_diffusers.training import config_from_dict, configure_trainable

    cuda = torch.cuda.is_available()
    if args.full and not cuda:
        raise SystemExit("--full needs a CUDA GPU (DICE-Talk's real size does not fit a CPU run)")
    device = torch.device("cuda" if cuda else "cpu")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res, frames, rank = (512, 25, 64) if args.full else (64, 2, 4)
    steps = args.steps or (4 if args.full else 3)
    dtype = torch.float16 if args.full else torch.bfloat16
    tmp = tempfile.mkdtemp(prefix="bench_dice_")
    t0 = time.perf_counter()
    paths = write_random_dice_talk_weights(tmp, args.dice_talk_root, full=args.full)
    print(f"random DICE-Talk weights ({'full' if args.full else 'tiny'}) written in {time.perf_counter() - t0:.0f} s")
    cfg = config_from_dict(DiceTrainingConfig, dict(
        backend="dice_talk", **paths, num_frames=frames, resolution=res, stccl_weight=0.1, train_mode="lora", rank=rank,
        frame_subset=[0, 6, 12, 18, 24] if args.full else [0, 1], decode_chunk_size=5 if args.full else 2,
        gradient_checkpointing=args.full))
    torch.manual_seed(0)
    metric = STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False)
    adapter = build_dice_talk_adapter(cfg, metric)
    configure_trainable(adapter, cfg)
    if cfg.gradient_checkpointing:
        adapter.enable_gradient_checkpointing()
    adapter.to(device)
    adapter.set_weight_dtype(dtype)
    from diffusers.training_utils import cast_training_params

    cast_training_params(adapter, dtype=torch.float32)
    opt = torch.optim.AdamW(adapter.trainable_parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    batch = {"frames": (torch.rand(1, frames, 3, res, res, generator=g) * 2 - 1).to(device),
             "reference": (torch.rand(1, 3, res, res, generator=g) * 2 - 1).to(device),
             "audio_prompts": torch.randn(1, frames, 10, 5, 384, generator=g).to(device),
             "emotion": torch.tensor([DICE_EMOTIONS.index("happy")], device=device)}
    callback = adapter.callback

    def run(mode: str, gated_fraction: float | None) -> tuple[float, float]:
        adapter.callback = None if gated_fraction is None else callback
        times = []
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for i in range(steps + 1):  # the first step warms up
            gated = gated_fraction is not None and (i % 2 == 0 if gated_fraction == 0.5 else gated_fraction == 1.0)
            adapter.p_mean, adapter.p_std = (-3.0, 0.0) if gated else (3.0, 0.0)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype):
                out = adapter.training_step(batch, i, torch.Generator().manual_seed(i))
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        return sum(times) / len(times), peak

    results = {}
    for mode, frac in (("no STCCL", None), ("STCCL gated 0", 0.0), ("STCCL gated 0.5", 0.5), ("STCCL gated 1", 1.0)):
        results[mode] = run(mode, frac)
    base_t, base_m = results["no STCCL"]
    mem = "peak GPU memory GiB" if cuda else "process max RSS GiB (monotonic on CPU)"
    print(f"\n{'full' if args.full else 'tiny'} DICE-Talk, {res}px, {frames} frames, LoRA rank {rank}, {dtype}, "
          f"{device}, {steps} timed steps/mode")
    print(f"{'mode':<18}{'s/step':>10}{'ratio':>8}{mem:>42}")
    for mode, (t, m) in results.items():
        print(f"{mode:<18}{t:>10.3f}{t / base_t:>8.2f}{m:>42.2f}")
    return results


def reference_modes(steps: int) -> dict:
    """Seconds per training step of the demo-size ReferenceDICE (random weights; the cost does not
    depend on them) in each reward mode, CPU, one thread per the caller's torch setting."""
    from stccl_diffusers import STCCLMetric
    from stccl_diffusers.adapters.dice import DiceTrainingConfig, build_callback, build_reference_adapter
    from stccl_diffusers.models.reference_dice import DICE_EMOTIONS, ReferenceDICE
    from stccl_diffusers.training import configure_trainable
    from stccl_diffusers.training.config import parse_config

    base = parse_config(DiceTrainingConfig, ["--output_dir", tempfile.mkdtemp(prefix="bench_ref_")],
                        default_config=REPO / "configs" / "dice_stccl_demo.yaml")
    torch.manual_seed(0)
    metric = STCCLMetric(backbone=(1, 1, 1, 1), input_size=base.metric_input_size, embedding_head=False)
    g = torch.Generator().manual_seed(0)
    B, T, R = base.train_batch_size, base.num_frames, base.resolution
    batch = {"frames": torch.rand(B, T, 3, R, R, generator=g) * 2 - 1, "reference": torch.rand(B, 3, R, R, generator=g) * 2 - 1,
             "audio": torch.randn(B, T * 640, generator=g) * 0.1, "neutral_audio": torch.randn(B, T * 640, generator=g) * 0.1,
             "emotion": torch.tensor([DICE_EMOTIONS.index("happy")] * B)}
    modes = {"no STCCL": dict(stccl_weight=0.0), "single_step (all gated)": dict(p_mean=-3.0, p_std=0.0),
             "rollout K=1": dict(reward_mode="rollout", rollout_grad_steps=1),
             "rollout K=5": dict(reward_mode="rollout", rollout_grad_steps=5)}
    results = {}
    for name, over in modes.items():
        cfg = replace(base, **over)
        torch.manual_seed(0)
        model = ReferenceDICE(resolution=R, num_frames=T, emotion_time_embedding=cfg.emotion_time_embedding)
        adapter = build_reference_adapter(cfg, model, build_callback(cfg, metric, decoder=model.vae))
        configure_trainable(adapter, cfg)
        opt = torch.optim.AdamW(adapter.trainable_parameters(), lr=1e-4)
        times = []
        for i in range(steps + 1):  # the first step warms up
            start = time.perf_counter()
            out = adapter.training_step(batch, i, torch.Generator().manual_seed(i))
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - start)
        results[name] = sum(times) / len(times)
    base_t = results["no STCCL"]
    print(f"\nReferenceDICE (demo config: {R}px, {T} frames, batch {B}, LoRA rank {base.rank}, "
          f"{base.num_inference_steps} sampler steps, guidance {base.guidance_scale}), CPU, "
          f"{torch.get_num_threads()} thread(s), {steps} timed steps/mode")
    print(f"{'mode':<26}{'s/step':>10}{'ratio':>8}")
    for name, t in results.items():
        print(f"{name:<26}{t:>10.3f}{t / base_t:>8.2f}")
    return results


if __name__ == "__main__":
    main()
