"""``stccl-analyze``: did the metric learn anything? (paper Fig. 3, Fig. 7-8)

For held-out pairs, the mean *positive* similarity (a correlation of the neutral clip vs
the same correlation of the emotional clip) and the mean *negative* similarity (vs other
regions / frame pairs) per layer, spatial (``scc/l``) and temporal (``tcc/l``), for an
untrained metric (same architecture, fresh seeded init) and a trained one. A learned
metric separates the two: a larger ``pos - neg`` gap. Writes JSON and a bar chart PNG.

    stccl-analyze --trained demo_metric --data synthetic --out analysis/
    stccl-analyze --trained demo_metric --data real_pairs --data_root ../shared/data/real_pairs --out analysis_real/
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["layer_similarities", "mean_similarities", "frame_pair_batches", "untrained_like", "plot_similarities", "analyze_main"]


def _collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in ("anchor", "target")}


def mean_similarities(results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Average of several ``{"pos_sim", "neg_sim", "per_layer": {...}}`` results (batches, clips),
    per layer and overall; ``gap = pos - neg`` is recomputed from the means."""
    if not results:
        raise ValueError("expected at least one similarity result to average, got none")
    per: Dict[str, Dict[str, List[float]]] = {}
    for r in results:
        for k, v in r["per_layer"].items():
            d = per.setdefault(k, {"pos_sim": [], "neg_sim": []})
            d["pos_sim"].append(float(v["pos_sim"]))
            d["neg_sim"].append(float(v["neg_sim"]))
    per_layer = {k: {"pos_sim": float(np.mean(v["pos_sim"])), "neg_sim": float(np.mean(v["neg_sim"]))} for k, v in per.items()}
    for v in per_layer.values():
        v["gap"] = v["pos_sim"] - v["neg_sim"]
    p = float(np.mean([float(r["pos_sim"]) for r in results]))
    n = float(np.mean([float(r["neg_sim"]) for r in results]))
    return {"pos_sim": p, "neg_sim": n, "gap": p - n, "per_layer": per_layer}


@torch.no_grad()
def layer_similarities(metric, batches: Sequence[Dict[str, torch.Tensor]], seed: int = 0) -> Dict[str, Any]:
    """Mean pos/neg similarity per layer and overall of ``metric`` (eval mode) on ``batches``
    of ``{"anchor", "target"}`` (B, T, 3, H, W) in [-1, 1]. Region sampling is seeded with
    ``seed`` so that two metrics are compared on the same regions.

    Returns ``{"pos_sim", "neg_sim", "gap", "per_layer": {"scc/1": {"pos_sim", "neg_sim", "gap"}, ...}}``.
    """
    if not batches:
        raise ValueError("expected at least one batch of held-out pairs, got none")
    was_training = metric.training
    metric.eval()
    g = torch.Generator(device="cpu").manual_seed(seed)
    dev = next(metric.parameters()).device
    per_batch = []
    for b in batches:
        out = metric(b["anchor"].to(dev), b["target"].to(dev), generator=g)
        per_batch.append({"pos_sim": float(out.pos_sim), "neg_sim": float(out.neg_sim), "per_layer": out.per_layer})
    metric.train(was_training)
    return mean_similarities(per_batch)


def frame_pair_batches(anchor: np.ndarray, target: np.ndarray, size: int, num_frames: int = 2, batch_size: int = 8) -> List[Dict[str, torch.Tensor]]:
    """Batches for :func:`layer_similarities` from two clips paired by frame index.

    anchor, target: (T, H, W, 3) uint8 RGB (sizes may differ; both are resized to ``size``).
    The first ``min(T_a, T_t)`` frames are cut into consecutive windows of ``num_frames``
    (a remainder shorter than a window is left out). Returns batches of
    ``{"anchor", "target"}`` (B, num_frames, 3, size, size) in [-1, 1]. ValueError when not even
    one window fits.
    """
    from .data.datasets import frames_to_tensor

    n = min(len(anchor), len(target))
    w = n // num_frames if num_frames >= 1 else 0
    if w < 1:
        raise ValueError(f"expected at least num_frames={num_frames} paired frames, got {len(anchor)} anchor and {len(target)} target frames")
    a = frames_to_tensor(np.asarray(anchor[: w * num_frames]), size).reshape(w, num_frames, 3, size, size)
    t = frames_to_tensor(np.asarray(target[: w * num_frames]), size).reshape(w, num_frames, 3, size, size)
    return [{"anchor": a[s : s + batch_size], "target": t[s : s + batch_size]} for s in range(0, w, batch_size)]


def untrained_like(metric, seed: int = 0):
    """A freshly initialised metric with ``metric``'s configuration (seeded, frozen)."""
    torch.manual_seed(seed)
    fresh = type(metric).from_config(metric.config)
    return fresh.freeze()


def plot_similarities(results: Dict[str, Dict[str, Any]], path: str, title: str = "") -> None:
    """Bar chart: per layer, positive and negative similarity of each metric (top) and the gap (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    layers = list(next(iter(results.values()))["per_layer"])
    x = np.arange(len(layers))
    width = 0.8 / (2 * len(names))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, 1.1 * len(layers) + 2), 6.5), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, n in enumerate(names):
        pl = results[n]["per_layer"]
        c = colours[i % len(colours)]
        ax1.bar(x + (2 * i) * width - 0.4 + width / 2, [pl[l]["pos_sim"] for l in layers], width, color=c, label=f"{n}: positive")
        ax1.bar(x + (2 * i + 1) * width - 0.4 + width / 2, [pl[l]["neg_sim"] for l in layers], width, color=c, alpha=0.4, hatch="//", label=f"{n}: negative")
        ax2.bar(x + i * (0.8 / len(names)) - 0.4 + 0.4 / len(names), [pl[l]["gap"] for l in layers], 0.8 / len(names), color=c, label=f"{n} (mean gap {results[n]['gap']:.3f})")
    ax1.set_ylabel("mean cosine similarity")
    ax1.legend(fontsize=7, ncol=2)
    ax1.set_title(title or "STCCL positive vs negative similarity per layer")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_ylabel("positive - negative")
    ax2.set_xticks(x)
    ax2.set_xticklabels(layers)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _batches(args, input_size: int) -> List[Dict[str, torch.Tensor]]:
    from .data.datasets import PairedClipDataset

    T = args.num_frames
    if args.data == "synthetic":
        ds = PairedClipDataset.from_synthetic(args.num_clips, T, input_size, seed=args.seed)
        idx = list(range(len(ds)))
    else:
        if not args.data_root or not os.path.isdir(args.data_root):
            raise SystemExit(f"stccl-analyze: --data {args.data} needs --data_root to be an existing folder, got {args.data_root!r}")
        if args.data == "real_pairs":
            ds = PairedClipDataset.from_real_pairs(args.data_root, args.target, T, input_size)
        elif args.data == "videos":
            ds = PairedClipDataset.from_videos(args.data_root, args.manifest, T, input_size)
        else:
            ds = PairedClipDataset.from_mead(args.data_root, args.manifest, T, input_size)
        # Spread the clips over the whole data set (every sequence contributes).
        idx = sorted(set(np.linspace(0, len(ds) - 1, min(args.num_clips, len(ds))).round().astype(int).tolist()))
        for n, r in ds.skipped:
            print(f"stccl-analyze: skipped {n}: {r}")
    items = [ds[i] for i in idx]
    bs = args.batch_size
    return [_collate(items[s : s + bs]) for s in range(0, len(items), bs)]


def analyze_main(argv: Optional[Sequence[str]] = None) -> int:
    """``stccl-analyze``: per-layer positive/negative similarity, untrained vs trained."""
    from .metric import STCCLMetric

    p = argparse.ArgumentParser(prog="stccl-analyze", description=analyze_main.__doc__)
    p.add_argument("--trained", required=True, help="save_pretrained folder of the trained metric")
    p.add_argument("--untrained", default=None, help="folder of another metric to compare (default: fresh init of the trained config)")
    p.add_argument("--data", default="synthetic", choices=["synthetic", "real_pairs", "videos", "mead"])
    p.add_argument("--data_root", default=None)
    p.add_argument("--manifest", default=None)
    p.add_argument("--target", default="stccl_vd", help="real_pairs: emotional tile (stccl_vd | ned)")
    p.add_argument("--num_clips", type=int, default=32)
    p.add_argument("--num_frames", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seed", type=int, default=7919, help="held-out synthetic seed and region-sampling seed")
    p.add_argument("--out", required=True, help="output folder (similarities.json, similarities.png)")
    args = p.parse_args(argv)

    trained = STCCLMetric.from_pretrained(args.trained)
    untrained = STCCLMetric.from_pretrained(args.untrained) if args.untrained else untrained_like(trained, args.seed)
    batches = _batches(args, int(trained.config.input_size))
    results = {
        "untrained": layer_similarities(untrained, batches, args.seed),
        "trained": layer_similarities(trained, batches, args.seed),
    }
    os.makedirs(args.out, exist_ok=True)
    report = {
        "data": args.data if args.data != "real_pairs" else f"real_pairs (source vs {args.target})",
        "num_clips": sum(len(b["anchor"]) for b in batches),
        "num_frames": args.num_frames,
        "trained": os.path.abspath(args.trained),
        "results": results,
    }
    with open(os.path.join(args.out, "similarities.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot_similarities(results, os.path.join(args.out, "similarities.png"), f"pos/neg similarity per layer on {report['data']}, {report['num_clips']} clips")
    for n, r in results.items():
        print(f"stccl-analyze: {n}: pos {r['pos_sim']:.4f} neg {r['neg_sim']:.4f} gap {r['gap']:.4f}")
    print(f"stccl-analyze: wrote {os.path.join(args.out, 'similarities.json')} and similarities.png")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .utils.safety import cli_errors

    raise SystemExit(cli_errors(analyze_main)())
