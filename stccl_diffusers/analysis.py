"""``stccl-analyze``: did the metric learn anything? (paper Fig. 3, Fig. 7-8)

For held-out pairs, the mean *positive* similarity (a correlation of the neutral clip vs
the same correlation of the emotional clip) and the mean *negative* similarity (vs other
regions / frame pairs) per layer, spatial (``scc/l``) and temporal (``tcc/l``), for an
untrained metric (same architecture, fresh seeded init) and a trained one. A learned
metric separates the two: a larger ``pos - neg`` gap. Writes JSON and a bar chart PNG.

It also asks whether the metric hears the speech (``speech_timing.json``): per clip, the metric's
loss of each aligned window (anchor frames ``s..s+T``, target frames ``s..s+T``) against the same
anchor window with the target shifted by ``k`` frames. The *speech-timing AUC* is the fraction of
windows where the aligned pair scores the lower loss (ties count half): 1 = the metric always
prefers the correctly timed mouth, 0.5 = blind to speech timing. This is the quantity the loss
must get right during generator training; no published STCCL tool reports it.

    stccl-analyze --trained demo_metric --data synthetic --out analysis/
    stccl-analyze --trained demo_metric --data real_pairs --data_root ../shared/data/real_pairs --out analysis_real/
    stccl-analyze --trained real_face_metric --data real_pairs --data_root ../shared/data/real_pairs \
        --clips M003,M030 --face_align dlib --shifts 2,4,8,16 --out analysis_heldout/
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .utils.safety import UsageError
from .utils.jsonio import dumps_strict

__all__ = [
    "layer_similarities",
    "mean_similarities",
    "frame_pair_batches",
    "untrained_like",
    "plot_similarities",
    "timing_auc",
    "shifted_window_starts",
    "speech_timing",
    "metric_window_losses",
    "mean_speech_timing",
    "DEFAULT_SHIFTS",
    "analyze_main",
]

# Target shifts (frames) of the speech-timing analysis: at 25-30 fps, from about a phoneme (2)
# to about a syllable and a half (16).
DEFAULT_SHIFTS = (2, 4, 8, 16)


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
        # The paper's InfoNCE: its positives and negatives are what Fig. 3 compares.
        out = metric(b["anchor"].to(dev), b["target"].to(dev), generator=g, form="paper")
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


def timing_auc(aligned: torch.Tensor, shifted: torch.Tensor) -> float:
    """Speech-timing AUC: the fraction of windows where the aligned pair has the lower loss.

    aligned, shifted: (W,) losses of the same W anchor windows against the correctly timed and the
    time-shifted target. Ties count 1/2, so a score that ignores timing gives exactly 0.5 and one
    that always prefers the correct timing gives 1. (A paired AUC: window w's aligned loss is only
    compared with window w's shifted loss.)
    """
    a, b = torch.as_tensor(aligned, dtype=torch.float64).flatten(), torch.as_tensor(shifted, dtype=torch.float64).flatten()
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"expected two non-empty (W,) loss vectors of equal length, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("expected finite losses for the speech-timing AUC, got NaN or inf")
    return float(((a < b).double() + 0.5 * (a == b).double()).mean())


def shifted_window_starts(num_steps: int, num_frames: int, shift: int, stride: Optional[int] = None) -> np.ndarray:
    """Starts ``s`` of the windows for which both ``s..s+T`` and ``s+shift..s+shift+T`` lie inside a
    clip of ``num_steps`` aligned frames (``shift`` may be negative: the target earlier). Windows
    step by ``stride`` (default ``num_frames``: non-overlapping). May be empty."""
    if num_frames < 1:
        raise ValueError(f"expected num_frames >= 1, got {num_frames}")
    lo, hi = max(0, -shift), num_steps - num_frames - max(0, shift)
    return np.arange(lo, hi + 1, int(stride or num_frames), dtype=np.int64) if hi >= lo else np.zeros(0, np.int64)


def speech_timing(
    window_losses: Callable[[torch.Tensor, torch.Tensor], Dict[str, torch.Tensor]],
    anchor: torch.Tensor,
    target: torch.Tensor,
    num_frames: int = 2,
    shifts: Sequence[int] = DEFAULT_SHIFTS,
    stride: Optional[int] = None,
) -> Dict[str, Any]:
    """Speech-timing AUC of a loss on one pair of frame-aligned clips.

    Args:
        window_losses: ``(anchor_windows, target_windows) -> {"overall": (W,), "scc/1": (W,), ...}``,
            both windows (W, T, 3, H, W); lower = more alike (e.g. :func:`metric_window_losses`).
        anchor, target: (L, 3, H, W) frame-aligned clips (frame k of one says what frame k of the
            other says); only the first ``min`` frames are used.
        shifts: target shifts in frames (non-zero).

    Returns ``{"auc": mean over shifts of the overall AUC, "per_layer": {name: mean AUC},
    "per_shift": {k: {"auc", "per_layer", "windows"}}}``; a shift longer than the clip allows
    is left out (and named nowhere else: ``per_shift`` lists the shifts that were measured).
    """
    n = min(len(anchor), len(target))
    if any(int(k) == 0 for k in shifts) or not shifts:
        raise ValueError(f"expected non-zero shifts (frames), got {list(shifts)}")
    per_shift: Dict[str, Dict[str, Any]] = {}
    for k in (int(k) for k in shifts):
        starts = shifted_window_starts(n, num_frames, k, stride)
        if len(starts) == 0:
            continue
        offs = torch.arange(num_frames)
        idx = torch.as_tensor(starts)[:, None] + offs[None]
        a_w = anchor[idx]
        aligned = window_losses(a_w, target[idx])
        shifted = window_losses(a_w, target[idx + k])
        aucs = {name: timing_auc(aligned[name], shifted[name]) for name in aligned}
        per_shift[str(k)] = {"auc": aucs.pop("overall"), "per_layer": aucs, "windows": int(len(starts))}
    if not per_shift:
        raise ValueError(f"clip of {n} frames is too short for windows of {num_frames} frames shifted by {list(shifts)}")
    return _average_timing(per_shift)


def _average_timing(per_shift: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    layers = list(next(iter(per_shift.values()))["per_layer"])
    return {
        "auc": float(np.mean([v["auc"] for v in per_shift.values()])),
        "per_layer": {l: float(np.mean([v["per_layer"][l] for v in per_shift.values()])) for l in layers},
        "per_shift": per_shift,
    }


def mean_speech_timing(results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Pool several clips' :func:`speech_timing` results: per shift, the AUCs weighted by each
    clip's number of windows (= the AUC over all windows of all clips)."""
    if not results:
        raise ValueError("expected at least one speech-timing result to pool, got none")
    pooled: Dict[str, Dict[str, Any]] = {}
    for r in results:
        for k, v in r["per_shift"].items():
            d = pooled.setdefault(k, {"w": [], "auc": [], "per_layer": {}})
            d["w"].append(v["windows"])
            d["auc"].append(v["auc"])
            for l, a in v["per_layer"].items():
                d["per_layer"].setdefault(l, []).append(a)
    per_shift = {
        k: {"auc": float(np.average(d["auc"], weights=d["w"])), "windows": int(sum(d["w"])),
            "per_layer": {l: float(np.average(a, weights=d["w"])) for l, a in d["per_layer"].items()}}
        for k, d in sorted(pooled.items(), key=lambda kv: int(kv[0]))
    }
    return _average_timing(per_shift)


def metric_window_losses(metric, seed: int = 0, batch_size: int = 8) -> Callable[[torch.Tensor, torch.Tensor], Dict[str, torch.Tensor]]:
    """``window_losses`` for :func:`speech_timing` from an STCCL metric (eval mode, no grad): the
    loss per window, overall (``sample_loss``, eq. 16) and per layer. Region sampling restarts from
    ``seed`` on every call, so the aligned and the shifted windows are scored on the same regions
    and with the same anchor-side CAAS weights: only the target's timing differs."""

    @torch.no_grad()
    def losses(anchor: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        was_training = metric.training
        metric.eval()
        dev = next(metric.parameters()).device
        g = torch.Generator(device="cpu").manual_seed(seed)
        out: Dict[str, List[torch.Tensor]] = {}
        for s in range(0, len(anchor), batch_size):
            o = metric(anchor[s : s + batch_size].to(dev), target[s : s + batch_size].to(dev), generator=g, form="paper")
            out.setdefault("overall", []).append(o.sample_loss.cpu())
            for name, v in o.per_layer.items():
                out.setdefault(name, []).append(v["sample_loss"].cpu())
        metric.train(was_training)
        return {k: torch.cat(v) for k, v in out.items()}

    return losses


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


def _dataset(args, input_size: int):
    from .data.datasets import PairedClipDataset

    T = args.num_frames
    if args.data == "synthetic":
        return PairedClipDataset.from_synthetic(args.num_clips, T, input_size, seed=args.seed)
    if not args.data_root or not os.path.isdir(args.data_root):
        raise UsageError(f"stccl-analyze: --data {args.data} needs --data_root to be an existing folder, got {args.data_root!r}")
    kw: Dict[str, Any] = {"include": [c for c in args.clips.split(",") if c] if args.clips else None}
    if args.face_align:
        from .data.face_align import FaceAligner

        kw["aligner"] = FaceAligner(input_size, backend=args.face_align, insightface_root=args.insightface_root, focus=args.face_focus, cache=True)
    if args.data == "real_pairs":
        ds = PairedClipDataset.from_real_pairs(args.data_root, args.target, T, input_size, **kw)
    elif args.data == "videos":
        ds = PairedClipDataset.from_videos(args.data_root, args.manifest, T, input_size, **kw)
    else:
        ds = PairedClipDataset.from_mead(args.data_root, args.manifest, T, input_size, **kw)
    for n, r in ds.skipped:
        print(f"stccl-analyze: skipped {n}: {r}")
    return ds


def _batches(args, ds) -> List[Dict[str, torch.Tensor]]:
    if ds.synthetic:
        idx = list(range(len(ds)))
    else:
        # Spread the clips over the whole data set (every sequence contributes).
        idx = sorted(set(np.linspace(0, len(ds) - 1, min(args.num_clips, len(ds))).round().astype(int).tolist()))
    items = [ds[i] for i in idx]
    bs = args.batch_size
    return [_collate(items[s : s + bs]) for s in range(0, len(items), bs)]


def _timing(args, ds, metrics: Dict[str, Any], shifts: Sequence[int]) -> Dict[str, Any]:
    """Speech-timing AUC of each metric over whole clips of ``ds`` (every clip; synthetic: num_clips pairs)."""
    from tqdm.auto import tqdm

    from .data.face_align import NoFaceError

    per_clip: Dict[str, List[Dict[str, Any]]] = {k: [] for k in metrics}
    clips, skipped = [], []
    for s in tqdm(range(ds.num_clips()), desc="stccl-analyze: speech timing", disable=args.no_progress):
        try:
            name, a, t = ds.clip(s)
        except NoFaceError as e:
            skipped.append((f"clip {s}", str(e)))
            continue
        try:
            for k, m in metrics.items():
                per_clip[k].append(speech_timing(metric_window_losses(m, args.seed, args.batch_size), a, t, args.num_frames, shifts))
        except ValueError as e:  # too short for the shifts
            skipped.append((name, str(e)))
            continue
        clips.append(name)
    if not clips:
        raise UsageError(f"stccl-analyze: no clip usable for the speech-timing analysis: {skipped[:3]}")
    return {"results": {k: mean_speech_timing(v) for k, v in per_clip.items()}, "clips": clips, "skipped": skipped,
            "shifts": list(shifts), "num_frames": args.num_frames}


def analyze_main(argv: Optional[Sequence[str]] = None) -> int:
    """``stccl-analyze``: per-layer positive/negative similarity and speech-timing AUC, untrained vs trained."""
    from .metric import STCCLMetric

    p = argparse.ArgumentParser(prog="stccl-analyze", description=analyze_main.__doc__)
    p.add_argument("--trained", required=True, help="save_pretrained folder of the trained metric")
    p.add_argument("--untrained", default=None, help="folder of another metric to compare (default: fresh init of the trained config)")
    p.add_argument("--data", default="synthetic", choices=["synthetic", "real_pairs", "videos", "mead"])
    p.add_argument("--data_root", default=None)
    p.add_argument("--manifest", default=None)
    p.add_argument("--target", default="stccl_vd", help="real_pairs: emotional tile (stccl_vd | ned)")
    p.add_argument("--clips", default=None, help="comma list of clip-name prefixes to analyse (speaker ids such as M003,M030, or file names), "
                   "e.g. the clips stccl-pretrain held out")
    p.add_argument("--face_align", default=None, choices=["haar", "dlib", "insightface"],
                   help="pose-align the pairs with this landmark backend, as stccl-pretrain's face_align did (default: none)")
    p.add_argument("--face_focus", default="face", choices=["face", "mouth"], help="with --face_align: crop centred on the face or the mouth")
    p.add_argument("--insightface_root", default=None)
    p.add_argument("--num_clips", type=int, default=32, help="windows for the similarity analysis (synthetic: also the clips of the timing analysis)")
    p.add_argument("--num_frames", type=int, default=2)
    p.add_argument("--shifts", default=",".join(str(k) for k in DEFAULT_SHIFTS),
                   help="speech-timing analysis: target shifts in frames, comma list (empty string: skip the analysis)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seed", type=int, default=7919, help="held-out synthetic seed and region-sampling seed")
    p.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy shared machine)")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--out", required=True, help="output folder (similarities.json/.png, speech_timing.json)")
    args = p.parse_args(argv)
    try:
        shifts = [int(k) for k in args.shifts.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"stccl-analyze: --shifts: expected a comma list of non-zero frame shifts, got {args.shifts!r}") from None
    if any(k == 0 for k in shifts):
        raise UsageError(f"stccl-analyze: --shifts: expected non-zero frame shifts, got {args.shifts!r}")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)

    trained = STCCLMetric.from_pretrained(args.trained)
    untrained = STCCLMetric.from_pretrained(args.untrained) if args.untrained else untrained_like(trained, args.seed)
    metrics = {"untrained": untrained, "trained": trained}
    ds = _dataset(args, int(trained.config.input_size))
    batches = _batches(args, ds)
    results = {k: layer_similarities(m, batches, args.seed) for k, m in metrics.items()}
    os.makedirs(args.out, exist_ok=True)
    data = args.data if args.data != "real_pairs" else f"real_pairs (source vs {args.target})"
    if args.clips:
        data += f", clips {args.clips}"
    if args.face_align:
        data += f", {args.face_align} pose alignment ({args.face_focus})"
    report = {
        "data": data,
        "num_clips": sum(len(b["anchor"]) for b in batches),
        "num_frames": args.num_frames,
        "trained": os.path.abspath(args.trained),
        "results": results,
    }
    with open(os.path.join(args.out, "similarities.json"), "w") as f:
        f.write(dumps_strict(report, indent=2, explain_nulls=True))
    plot_similarities(results, os.path.join(args.out, "similarities.png"), f"pos/neg similarity per layer on {report['data']}, {report['num_clips']} clips")
    for n, r in results.items():
        print(f"stccl-analyze: {n}: pos {r['pos_sim']:.4f} neg {r['neg_sim']:.4f} gap {r['gap']:.4f}")
    print(f"stccl-analyze: wrote {os.path.join(args.out, 'similarities.json')} and similarities.png")
    if shifts:
        timing = _timing(args, ds, metrics, shifts)
        timing.update({"data": data, "trained": os.path.abspath(args.trained)})
        with open(os.path.join(args.out, "speech_timing.json"), "w") as f:
            f.write(dumps_strict(timing, indent=2, explain_nulls=True))
        print(f"stccl-analyze: speech-timing AUC (aligned window scores lower than the target shifted by k frames; 0.5 = blind to timing), "
              f"{len(timing['clips'])} clips, windows of {args.num_frames} frames:")
        for n in metrics:
            r = timing["results"][n]
            per = "  ".join(f"k={k}: {v['auc']:.3f}" for k, v in r["per_shift"].items())
            print(f"stccl-analyze: {n}: speech-timing AUC {r['auc']:.3f}  ({per})")
        print(f"stccl-analyze: per layer in {os.path.join(args.out, 'speech_timing.json')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .utils.safety import cli_errors

    raise SystemExit(cli_errors(analyze_main)())
