"""Where each STCCL generator-loss form is minimal, and which way its gradient pulls: on pixels.

No generator in between: the "generated" clip is a pixel tensor optimised directly against a fixed
neutral anchor with the frozen metric, for every form in ``GENERATOR_LOSSES``. Three properties:

- **minimum**: start at generated = anchor. How far below its value at the anchor can descending
  the loss push it (``min_drop``: (L(anchor) - L(end)) / L(late start), 0 is ideal), and how far do
  the pixels wander (``min_drift``: mean |end - anchor|, 0 is ideal)?
- **pull**: start from the in-sync emotional clip shifted 3 frames late. ``pull_ratio``: mean
  |end - anchor| / mean |start - anchor| (< 1 pulls toward the anchor); on synthetic clips also the
  mouth-opening correlation with the in-sync clip before and after (``mouth_corr_start/end``, the
  renderer's own pixel detector, :func:`stccl_diffusers.eval.mouth.mouth_opening_curve`).
- **order**: the loss of the in-sync emotional clip against the anchor shifted by 0, 3 and 6
  frames, averaged over windows and region draws; ``order_ok`` when it increases.

Steps are plain gradient descent (no Adam: Adam turns the tiny, noisy gradient at a minimum into
full-size steps). Each form gets its own step size, set so that its first step from the late start
moves the pixels by the same RMS amount (``--step_rms``): the forms are compared at equal pull
strength, and the minimum test then uses that same step size.

Data: real MEAD frames (``../shared/data/real_pairs``: Source tile = anchor, STCCL_VD tile = the
paired emotional clip, frame k with frame k) and synthetic clips (the renderer's emotional clip
and its neutral twin at the same timing). The metric is a fresh seeded one (``--backbone``
1,1,1,1, 64 px) unless ``--metric DIR`` names a trained one.

    python benchmarks/loss_forms.py                       # every form, 2 real + 2 synthetic clips, 2 windows each
    python benchmarks/loss_forms.py --quick               # 1 + 1 clips, 20 steps
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stccl_diffusers.metric import GENERATOR_LOSSES, STCCLMetric  # noqa: E402
from stccl_diffusers.utils.jsonio import write_json  # noqa: E402

SHARED_REAL = ROOT.parent / "shared" / "data" / "real_pairs"
LATE, SHIFTS = 3, (0, 3, 6)


def fresh_metric(backbone, size: int, seed: int = 0) -> STCCLMetric:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return STCCLMetric(backbone=backbone, input_size=size, embedding_head=False)


def real_clips(n: int, frames: int, size: int, lag: int = 0):
    """(name, anchor clip, emotional clip): Source vs STCCL_VD tiles, emotional frame k paired with
    Source frame k + ``lag`` (the tiles' measured motion lag is 2; the README of the data says 0)."""
    from stccl_diffusers.data.datasets import PairedClipDataset

    files = sorted(f for f in os.listdir(SHARED_REAL) if f.endswith(".mp4"))[:n]
    ds = PairedClipDataset.from_real_pairs(str(SHARED_REAL), "stccl_vd", num_frames=frames, size=size, files=files)
    out = []
    for s in range(ds.num_clips()):
        name, a, t = ds.clip(s)
        out.append((name, a[lag:], t[: len(t) - lag]) if lag > 0 else (name, a, t))
    return out


def synthetic_clips(n: int, size: int, seed: int = 70_000):
    """(name, neutral twin, emotional clip, emotional mouth_open): same utterance, face and timing."""
    from stccl_diffusers.data.datasets import frames_to_tensor
    from stccl_diffusers.data.synthetic import EMOTIONS, make_pair, render_clip

    out = []
    for i in range(n):
        emo = EMOTIONS[1 + i % (len(EMOTIONS) - 1)]
        p = make_pair(seed + i, emotion=emo, size=size, with_audio=False)
        e = p.emotional
        twin = render_clip(p.identity, "neutral", p.utterance, p.tempo, fps=e.fps, size=size, with_audio=False)
        out.append((f"synthetic/{seed + i}/{emo}", frames_to_tensor(twin.frames), frames_to_tensor(e.frames)))
    return out


def windows(length: int, frames: int, count: int):
    """Window starts s with room for s - LATE >= 0 and s + max(SHIFTS) + frames <= length."""
    lo, hi = LATE, length - frames - max(SHIFTS)
    if hi < lo:
        raise ValueError(f"a clip of {length} frames is too short for windows of {frames} (+{LATE} late, +{max(SHIFTS)} shift)")
    return [int(s) for s in np.linspace(lo, hi, count).round()]


def mouth_curve(frames: torch.Tensor):
    from stccl_diffusers.eval.mouth import mouth_opening_curve

    u8 = ((frames.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    try:
        return mouth_opening_curve(u8)
    except ValueError:
        return None


def corr(a, b):
    if a is None or b is None:
        return None
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() < 1e-9 or b[ok].std() < 1e-9:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def loss_of(metric, anchor, x, form, step):
    g = torch.Generator().manual_seed(1000 + step)
    return metric(anchor[None], x[None], generator=g, form=form).loss


def descend(metric, anchor, start, form, lr, steps):
    """Plain gradient descent on pixels from ``start`` (T, 3, H, W); returns the end clip and the
    loss at the start and end (same region draw)."""
    x = start.clone().requires_grad_(True)
    for k in range(steps):
        loss = loss_of(metric, anchor, x, form, k)
        (g,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x -= lr * g
            x.clamp_(-1, 1)
    return x.detach()


def step_size(metric, anchor, start, form, step_rms, step_frac=None):
    """The form's learning rate (first step of RMS ``step_rms``, or of ``step_frac`` times the RMS
    distance from ``start`` to the anchor) and ``pull_cos``: the cosine between
    the descent direction at ``start`` and the way to the anchor (> 0: it points toward the anchor),
    averaged over 4 region draws."""
    if step_frac is not None:
        step_rms = step_frac * float((anchor - start).pow(2).mean().sqrt())
    lrs, coss = [], []
    for d in range(4):
        x = start.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of(metric, anchor, x, form, d), x)
        rms = float(g.pow(2).mean().sqrt())
        lrs.append(step_rms / rms if rms > 0 else 0.0)
        coss.append(float(torch.nn.functional.cosine_similarity(-g.flatten(), (anchor - start).flatten(), dim=0)))
    return lrs[0], float(np.mean(coss))


def mean_loss(metric, anchor, x, form, draws=4):
    with torch.no_grad():
        return float(np.mean([float(loss_of(metric, anchor, x, form, 500 + d)) for d in range(draws)]))


def study_clip(metric, anchor_clip, emo_clip, form, frames, nwin, steps, step_rms, synthetic, step_frac=None):
    L = min(len(anchor_clip), len(emo_clip))
    rows = []
    for s in windows(L, frames, nwin):
        anchor = anchor_clip[s : s + frames]
        sync = emo_clip[s : s + frames]
        late = emo_clip[s - LATE : s - LATE + frames]
        lr, pull_cos = step_size(metric, anchor, late, form, step_rms, step_frac)
        l_late = mean_loss(metric, anchor, late, form)
        l_anchor = mean_loss(metric, anchor, anchor, form)
        at = descend(metric, anchor, anchor, form, lr, steps)
        pulled = descend(metric, anchor, late, form, lr, steps)
        row = {
            "window": s,
            "loss_at_anchor": l_anchor,
            "loss_late": l_late,
            "min_drop": (l_anchor - mean_loss(metric, anchor, at, form)) / max(abs(l_late), 1e-12),
            "min_drift": float((at - anchor).abs().mean()),
            "pull_cos": pull_cos,
            "pull_ratio": float((pulled - anchor).abs().mean() / (late - anchor).abs().mean()),
            "order": [mean_loss(metric, anchor_clip[s + d : s + d + frames], sync, form) for d in SHIFTS],
        }
        if synthetic:
            ref = mouth_curve(sync)
            row["mouth_corr_start"] = corr(mouth_curve(late), ref)
            row["mouth_corr_end"] = corr(mouth_curve(pulled), ref)
        rows.append(row)
    return rows


def summarise(rows):
    out = {}
    for k in ("loss_at_anchor", "loss_late", "min_drop", "min_drift", "pull_cos", "pull_ratio", "mouth_corr_start", "mouth_corr_end"):
        v = [r[k] for r in rows if r.get(k) is not None]
        out[k] = float(np.mean(v)) if v else None
    order = np.mean([r["order"] for r in rows], axis=0)
    out["order"] = [float(o) for o in order]
    out["order_ok"] = bool(order[0] < order[1] < order[2])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forms", default=",".join(GENERATOR_LOSSES))
    ap.add_argument("--real", type=int, default=2, help="real MEAD clips (0 = none)")
    ap.add_argument("--synthetic", type=int, default=2, help="synthetic clips (0 = none)")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--windows", type=int, default=2, help="windows per clip")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--step_rms", type=float, default=0.005, help="RMS pixel change of each form's first pull step")
    ap.add_argument("--step_frac", type=float, default=None,
                    help="instead of --step_rms: the first pull step's RMS as a fraction of the late clip's RMS distance to the anchor")
    ap.add_argument("--real_lag", type=int, default=0,
                    help="pair the edited tile's frame k with the Source's frame k + lag (measured: 2)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--backbone", default="1,1,1,1")
    ap.add_argument("--metric", default=None, help="a trained metric folder (save_pretrained) instead of a fresh one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 real + 1 synthetic clip, 1 window, 20 steps")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.real, args.synthetic, args.windows, args.steps = min(args.real, 1), min(args.synthetic, 1), 1, 20
    torch.set_num_threads(args.threads)
    forms = [f for f in args.forms.split(",") if f]
    for f in forms:
        if f not in GENERATOR_LOSSES:
            raise SystemExit(f"--forms: expected names from {list(GENERATOR_LOSSES)}, got {f!r}")
    if args.metric:
        metric = STCCLMetric.from_pretrained(args.metric)
        size = metric.config.input_size
    else:
        metric = fresh_metric(tuple(int(v) for v in args.backbone.split(",")), args.size)
        size = args.size
    sets = []
    if args.real:
        if not SHARED_REAL.is_dir():
            print(f"skipping real clips: {SHARED_REAL} not found")
        else:
            sets.append(("real", real_clips(args.real, args.frames, size, args.real_lag), False))
    if args.synthetic:
        sets.append(("synthetic", synthetic_clips(args.synthetic, size), True))
    t0 = time.time()
    results = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "forms": {}}
    for form in forms:
        results["forms"][form] = {}
        for set_name, clips, synthetic in sets:
            rows = []
            for name, a, e in clips:
                rows += study_clip(metric, a, e, form, args.frames, args.windows, args.steps, args.step_rms, synthetic,
                                   args.step_frac)
            results["forms"][form][set_name] = summarise(rows)
    results["seconds"] = round(time.time() - t0, 1)
    print(table(results))
    if args.out:
        write_json(args.out, results)
    return 0


def table(results) -> str:
    lines = ["| form | data | loss@anchor | min_drop | min_drift | pull_cos | pull_ratio | mouth corr start -> end | order (0, 3, 6) | order ok |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for form, sets in results["forms"].items():
        for set_name, r in sets.items():
            mouth = "-" if r["mouth_corr_start"] is None else f"{fmt(r['mouth_corr_start'])} -> {fmt(r['mouth_corr_end'])}"
            lines.append(f"| {form} | {set_name} | {fmt(r['loss_at_anchor'])} | {fmt(r['min_drop'])} | {fmt(r['min_drift'])} | "
                         f"{fmt(r['pull_cos'])} | {fmt(r['pull_ratio'])} | {mouth} | {', '.join(f'{o:.3f}' for o in r['order'])} | {r['order_ok']} |")
    return "\n".join(lines) + f"\n({results['seconds']} s)"


if __name__ == "__main__":
    raise SystemExit(main())
