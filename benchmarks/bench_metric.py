"""Forward+backward time and peak memory of the STCCL loss: ours vs a straightforward loop version.

The reference below is written the way research code usually is: Python loops over layers,
samples and frame pairs, one small InfoNCE per sample. It uses the same backbone, heads and
sampling rule, so both compute the same quantity; only the vectorisation differs.

    python benchmarks/bench_metric.py                      # B=2, T=5, 224x224, iresnet50, VD and CM
    python benchmarks/bench_metric.py --backbone 1,1,1,1 --size 64 --repeats 2   # quick check

Prints, for each correlation, the time of the full step (backbone + loss, forward+backward), the
time of the loss alone on precomputed features, and the peak memory, with ratios reference/ours.
Memory is CUDA's max_memory_allocated of one step on a GPU; on CPU, the bytes autograd saves for
backward in the forward pass, each storage counted once (the activation memory at a step's peak).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from stccl_diffusers import STCCLMetric
from stccl_diffusers import correlation as corr


def reference_loss(metric: STCCLMetric, fx, fy, batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    """STCCL as research code writes it: a Python loop over layers and over samples (frames for
    SCC, clips for TCC), with each sample's regions indexed directly, paper-style negatives, CAAS
    per region, and a separate InfoNCE per sample and layer."""
    cfg = metric.config
    g = torch.Generator().manual_seed(seed)
    ring = torch.tensor(corr.NEIGHBOUR_OFFSETS)
    total = 0.0
    for l in cfg.layers:
        x, y = fx[l - 1], fy[l - 1]
        n, c, h, w = x.shape
        for b in range(n):  # SCC, one image at a time
            anchors = corr.sample_anchor_locations(1, h, w, metric._num_samples[l - 1], cfg.sample_window, g)[0]
            r, col = anchors // w, anchors % w
            nr, nc = r[:, None] + ring[:, 0], col[:, None] + ring[:, 1]          # (S, 8)
            zx = corr.correlate(cfg.correlation, x[b, :, r, col].T[:, None], x[b, :, nr, nc].permute(1, 2, 0))
            zy = corr.correlate(cfg.correlation, y[b, :, r, col].T[:, None], y[b, :, nr, nc].permute(1, 2, 0))
            k = torch.randint(0, h * w, (len(anchors), cfg.num_negatives), generator=g)
            zn = corr.correlate(cfg.correlation, y[b, :, r, col].T[:, None], y[b, :, k // w, k % w].permute(1, 2, 0))
            head = metric.scc_heads[l - 1]
            q, kp, kn = (F.normalize(head(z), dim=-1) for z in (zx, zy, zn))
            lp = (q * kp).sum(-1)                                                 # (S, 8)
            ln = torch.einsum("sjd,smd->sjm", q, kn)
            logits = torch.cat([lp[..., None], ln], -1) / cfg.tau
            wts = corr.caas_weights(corr.caas_strength(zx))
            total = total + (wts * (torch.logsumexp(logits, -1) - logits[..., 0])).mean() / n
        if cfg.use_tcc:
            xs, ys = x.view(batch, frames, c, h, w), y.view(batch, frames, c, h, w)
            head = metric.tcc_heads[l - 1]
            for b in range(batch):  # TCC, one clip at a time, one frame pair at a time
                locs = corr.sample_anchor_locations(1, h, w, metric._temporal_samples[l - 1], cfg.sample_window, g)[0]
                r, col = locs // w, locs % w
                k = torch.randint(0, h * w, (len(locs), cfg.num_negatives), generator=g)
                pair_losses = []
                for i in range(frames):
                    for j in range(i + 1, frames):
                        zx = corr.correlate(cfg.correlation, xs[b, i, :, r, col].T, xs[b, j, :, r, col].T)
                        zy = corr.correlate(cfg.correlation, ys[b, i, :, r, col].T, ys[b, j, :, r, col].T)
                        zn = corr.correlate(cfg.correlation, ys[b, i, :, k // w, k % w].permute(1, 2, 0),
                                            ys[b, j, :, k // w, k % w].permute(1, 2, 0))
                        q, kp, kn = (F.normalize(head(z), dim=-1) for z in (zx, zy, zn))
                        logits = torch.cat([(q * kp).sum(-1, keepdim=True), torch.einsum("pd,pmd->pm", q, kn)], -1) / cfg.tau
                        wts = corr.caas_weights(corr.caas_strength(zx))
                        pair_losses.append((wts * (torch.logsumexp(logits, -1) - logits[:, 0])).mean())
                total = total + torch.stack(pair_losses).mean() / batch
    return total


def make_inputs(args, device):
    g = torch.Generator().manual_seed(0)
    low = torch.rand(args.batch * args.frames, 3, args.size // 16, args.size // 16, generator=g)
    x = F.interpolate(low, size=(args.size, args.size), mode="bilinear") * 2 - 1
    anchor = x.view(args.batch, args.frames, 3, args.size, args.size).to(device)
    generated = (anchor * 0.9 + 0.05).clone()
    return anchor, generated


def build(args, correlation, device):
    backbone = args.backbone if "," not in args.backbone else tuple(int(v) for v in args.backbone.split(","))
    metric = STCCLMetric(backbone=backbone, correlation=correlation, input_size=args.size).to(device)
    metric.validate_inputs = False
    return metric


def forward(kind, metric, anchor, gen):
    if kind == "ours":
        return metric(anchor, gen, generator=torch.Generator(device=anchor.device).manual_seed(0)).loss
    with torch.no_grad():
        fx = metric.extract_features(anchor)
    fy = metric.extract_features(gen)
    return reference_loss(metric, fx, fy, anchor.shape[0], anchor.shape[1])


def step(kind, metric, anchor, generated):
    gen = generated.clone().requires_grad_(True)
    loss = forward(kind, metric, anchor, gen)
    loss.backward()
    return loss


def loss_only(kind, metric, fx, fy, batch, frames):
    fy = [f.detach().requires_grad_(True) for f in fy]
    if kind == "ours":
        loss = metric._stccl(fx, fy, batch, frames, torch.Generator(device=fx[0].device).manual_seed(0)).loss
    else:
        loss = reference_loss(metric, fx, fy, batch, frames)
    loss.backward()


def timed(fn, repeats, device):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_mb(args, metric, anchor, generated, kind, device) -> float:
    """CUDA: peak allocated memory of one step. CPU: the bytes autograd saves for backward during
    the forward pass, each storage once (the activation memory a step holds at its peak)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(kind, metric, anchor, generated)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    storages = {}

    def pack(t):
        # Count each underlying storage once: expanded views and shared inputs cost no memory.
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    gen = generated.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward(kind, metric, anchor, gen)
    loss.backward()
    return sum(storages.values()) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="r50", help="r18|r34|r50|r100 or 4 comma-separated depths")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--correlations", default="vd,cm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"STCCL loss benchmark: backbone={args.backbone} B={args.batch} T={args.frames} {args.size}x{args.size} "
          f"device={device} torch={torch.__version__} threads={args.threads}")
    header = f"{'corr':4} {'measure':26} {'reference':>12} {'ours':>12} {'ratio ref/ours':>15}"
    print(header)
    print("-" * len(header))
    for correlation in args.correlations.split(","):
        metric = build(args, correlation, device)
        anchor, generated = make_inputs(args, device)
        with torch.no_grad():
            fx = metric.extract_features(anchor)
            fy = metric.extract_features(generated)
        rows = []
        for label, fn_of in (
            ("step fwd+bwd time (s)", lambda k: (lambda: step(k, metric, anchor, generated))),
            ("loss-only fwd+bwd time (s)", lambda k: (lambda: loss_only(k, metric, fx, fy, args.batch, args.frames))),
        ):
            ref = timed(fn_of("reference"), args.repeats, device)
            ours = timed(fn_of("ours"), args.repeats, device)
            rows.append((label, ref, ours))
        ref_mem = peak_memory_mb(args, metric, anchor, generated, "reference", device)
        our_mem = peak_memory_mb(args, metric, anchor, generated, "ours", device)
        label = "peak step memory (MiB)" if device.type == "cuda" else "saved for backward (MiB)"
        rows.append((label, ref_mem, our_mem))
        for label, ref, ours in rows:
            print(f"{correlation:4} {label:26} {ref:12.3f} {ours:12.3f} {ref / max(ours, 1e-9):15.2f}")


if __name__ == "__main__":
    main()
