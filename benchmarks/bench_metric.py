"""Forward+backward time and peak memory of the STCCL loss: ours vs a straightforward loop version.

The reference below is written the way research code usually is: a Python loop over layers,
samples and anchor regions, one small InfoNCE per region. It uses the same backbone, heads and
sampling rule, so both compute the same quantity; only the vectorisation differs.

    python benchmarks/bench_metric.py                      # B=2, T=5, 224x224, iresnet50, VD and CM
    python benchmarks/bench_metric.py --backbone 1,1,1,1 --size 64 --repeats 2   # quick check

Prints, for each correlation, the time of the full step (backbone + loss, forward+backward), the
time of the loss alone on precomputed features, and the peak memory, with ratios reference/ours.
Peak memory is CUDA's max_memory_allocated on a GPU; on CPU each variant runs in a fresh process
and the peak RSS growth over the process's state before the step is reported.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from stccl_diffusers import STCCLMetric
from stccl_diffusers import correlation as corr


def reference_loss(metric: STCCLMetric, fx, fy, batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    """STCCL with explicit loops (per layer, per sample, per region), paper-style negatives."""
    cfg = metric.config
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for l in cfg.layers:
        x, y = fx[l - 1], fy[l - 1]
        n, c, h, w = x.shape
        head = metric.scc_heads[l - 1]
        count = metric._num_samples[l - 1]
        for b in range(n):
            anchors = corr.sample_anchor_locations(1, h, w, count, cfg.sample_window, g)[0].tolist()
            for a in anchors:
                r, col = divmod(a, w)
                zx, zy = [], []
                for dy, dx in corr.NEIGHBOUR_OFFSETS:
                    j = (r + dy, col + dx)
                    zx.append(corr.correlate(cfg.correlation, x[b, :, r, col], x[b, :, j[0], j[1]]))
                    zy.append(corr.correlate(cfg.correlation, y[b, :, r, col], y[b, :, j[0], j[1]]))
                negs = []
                for _ in range(cfg.num_negatives):
                    k = int(torch.randint(0, h * w, (1,), generator=g))
                    negs.append(corr.correlate(cfg.correlation, y[b, :, r, col], y[b, :, k // w, k % w]))
                q, kpos, kneg = head(torch.stack(zx)), head(torch.stack(zy)), head(torch.stack(negs))
                wts = corr.caas_weights(corr.caas_strength(torch.stack(zx)))
                for j in range(8):
                    qn = F.normalize(q[j], dim=0)
                    lp = qn @ F.normalize(kpos[j], dim=0)
                    ln = F.normalize(kneg, dim=1) @ qn
                    logits = torch.cat([lp[None], ln]) / cfg.tau
                    total = total + wts[j] * (torch.logsumexp(logits, 0) - logits[0]) / (n * len(anchors) * 8)
        if cfg.use_tcc:
            head = metric.tcc_heads[l - 1]
            xs, ys = x.view(batch, frames, c, h, w), y.view(batch, frames, c, h, w)
            for b in range(batch):
                locs = corr.sample_anchor_locations(1, h, w, metric._temporal_samples[l - 1], cfg.sample_window, g)[0].tolist()
                for p in locs:
                    r, col = divmod(p, w)
                    for i in range(frames):
                        for j in range(i + 1, frames):
                            zx = corr.correlate(cfg.correlation, xs[b, i, :, r, col], xs[b, j, :, r, col])
                            zy = corr.correlate(cfg.correlation, ys[b, i, :, r, col], ys[b, j, :, r, col])
                            negs = []
                            for _ in range(cfg.num_negatives):
                                k = int(torch.randint(0, h * w, (1,), generator=g))
                                negs.append(corr.correlate(cfg.correlation, ys[b, i, :, k // w, k % w], ys[b, j, :, k // w, k % w]))
                            qn = F.normalize(head(zx), dim=0)
                            lp = qn @ F.normalize(head(zy), dim=0)
                            ln = F.normalize(head(torch.stack(negs)), dim=1) @ qn
                            logits = torch.cat([lp[None], ln]) / cfg.tau
                            total = total + (torch.logsumexp(logits, 0) - logits[0]) / (batch * len(locs) * frames * (frames - 1) / 2)
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


def step(kind, metric, anchor, generated):
    gen = generated.clone().requires_grad_(True)
    if kind == "ours":
        loss = metric(anchor, gen, generator=torch.Generator(device=anchor.device).manual_seed(0)).loss
    else:
        with torch.no_grad():
            fx = metric.extract_features(anchor)
        fy = metric.extract_features(gen)
        loss = reference_loss(metric, fx, fy, anchor.shape[0], anchor.shape[1])
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


def _peak_worker(args, correlation, kind, queue):
    device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    metric = build(args, correlation, device)
    anchor, generated = make_inputs(args, device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(kind, metric, anchor, generated)
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0)


def peak_memory_mb(args, correlation, kind, device) -> float:
    if device.type == "cuda":
        metric = build(args, correlation, device)
        anchor, generated = make_inputs(args, device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(kind, metric, anchor, generated)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_worker, args=(args, correlation, kind, queue))
    proc.start()
    proc.join()
    return queue.get()


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
        ref_mem = peak_memory_mb(args, correlation, "reference", device)
        our_mem = peak_memory_mb(args, correlation, "ours", device)
        rows.append(("peak memory of step (MiB)", ref_mem, our_mem))
        for label, ref, ours in rows:
            print(f"{correlation:4} {label:26} {ref:12.3f} {ours:12.3f} {ref / max(ours, 1e-9):15.2f}")


if __name__ == "__main__":
    main()
