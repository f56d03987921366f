"""Does an STCCL metric see how wide the mouth opens? The amplitude check of the κ world (issue 22).

The κ world's failure is a mouth that opens too wide or too little (the gain an emotion had in the
training data), not one out of time. The sync check (``metric_sync_check``) shows the metric sees
timing; this one asks about amplitude. For held-out sentences of the training speakers (the
deployment case of ``bench_kappa.py``), the target is the emotion's face with the mouth opening of
the neutral audio scaled by a gain g (g = 1 is the exact ground truth; the κ = 1 shortcut draws
angry 1.35, sad 0.70), the anchor is the neutral rendering of the same audio, and the score is the
one bench_kappa.py uses (:func:`~benchmarks.world.windowed_stccl`, windows of the training length).
Beside it: the ground truth against the anchor delayed by 3 frames (a timing error, for scale).

A metric that can repair the κ world's drift scores g = 1 lowest and rises on both sides.

    python benchmarks/metric_gain_check.py [--metric DIR] [--gains 0.5 0.7 0.85 1 1.15 1.35 1.6]
        [--sentences 3] [--frames 25] [--window 5] [--size 64] [--out outputs/metric_gain_check]

``--metric``: a metric folder (`STCCLMetric.save_pretrained`); default: the 200-step benchmark metric
of bench_kappa.py (built into ``<out>/cache`` when absent, a few minutes). Writes
``<out>/run-<time>/gain.json`` and ``gain.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import clean_json, new_run_dir, write_report  # noqa: E402
from benchmarks.world import windowed_stccl  # noqa: E402


@torch.no_grad()
def gain_check(metric, gains, sentences: int = 3, frames: int = 25, window: int = 5, size: int = 64,
               identities=None, emotions=("happy", "angry", "sad", "surprised"), seed: int = 60_000) -> dict:
    """``{"gains": {g: (mean, std)}, "shift_3": (mean, std), "rows": [...]}``: the STCCL score of the
    emotional face with the neutral mouth scaled by g against the neutral anchor, over ``sentences``
    x ``emotions`` clips (the deployment sentences of :func:`~stccl_diffusers.eval.effect.deployment_clips`:
    seed 60000 + i). ``identities``: the faces (None: new ones)."""
    from stccl_diffusers.data import synthetic as syn
    from stccl_diffusers.eval.effect import frames_to_tensor

    if sentences < 1 or frames < 2:
        raise ValueError(f"expected sentences >= 1 and frames >= 2, got {sentences}, {frames}")
    gains = [float(g) for g in gains]
    if any(not (g > 0 and np.isfinite(g)) for g in gains):
        raise ValueError(f"expected finite gains > 0, got {gains}")
    scores = {g: [] for g in gains}
    shift, rows = [], []
    for i in range(sentences):
        rng = np.random.default_rng([seed, i])
        face = identities[i % len(identities)] if identities else syn.sample_identity(rng)
        utt = syn.sample_utterance(rng)
        neutral = syn.render_clip(face, "neutral", utt, 1.0, size=size, seed=seed + i, with_audio=False)
        T = min(frames, neutral.num_frames)
        anchor = frames_to_tensor(neutral.frames[:T])
        for emo in emotions:
            row = {"sentence": i, "emotion": emo}
            render = lambda g: frames_to_tensor(syn.render_clip(  # noqa: E731
                face, emo, utt, 1.0, size=size, seed=seed + i, with_audio=False, mouth_gain=g, frame_indices=range(T)).frames)
            truth = render(1.0)  # the ground truth: g = 1 below and the timing reference
            for g in gains:
                row[f"g{g:g}"] = windowed_stccl(metric, truth if g == 1.0 else render(g), anchor, window, None, seed=i)
                scores[g].append(row[f"g{g:g}"])
            row["shift_3"] = windowed_stccl(metric, truth, torch.roll(anchor, 3, 0), window, None, seed=i)
            shift.append(row["shift_3"])
            rows.append(row)
    ms = lambda v: (float(np.mean(v)), float(np.std(v)))  # noqa: E731
    return {"gains": {g: ms(v) for g, v in scores.items()}, "shift_3": ms(shift), "rows": rows}


def markdown(res: dict) -> str:
    lines = ["| target | STCCL vs neutral anchor (mean ± std over clips) |", "|---|---|"]
    for g, (m, s) in res["gains"].items():
        lines.append(f"| mouth gain {g:g}" + (" (ground truth)" if g == 1.0 else "") + f" | {m:.4f} ± {s:.4f} |")
    lines.append(f"| ground truth, anchor 3 frames late | {res['shift_3'][0]:.4f} ± {res['shift_3'][1]:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metric", default=None)
    ap.add_argument("--gains", nargs="+", type=float, default=[0.5, 0.7, 0.85, 1.0, 1.15, 1.35, 1.6])
    ap.add_argument("--sentences", type=int, default=3)
    ap.add_argument("--frames", type=int, default=25, help="frames per clip (bench_kappa.py: EAT 25, DICE 16)")
    ap.add_argument("--window", type=int, default=5, help="the training num_frames (EAT demo 5, DICE demo 8)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "metric_gain_check"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from stccl_diffusers.metric import STCCLMetric
    from stccl_diffusers.training.demo import ensure_metric

    t0 = time.perf_counter()
    out = Path(args.out)
    if args.metric:
        metric = STCCLMetric.from_pretrained(args.metric).eval()
    else:
        metric, _ = ensure_metric(None, out / "cache" / "metric_200steps", backbone=[1, 1, 1, 1], input_size=64,
                                  steps=200, seed=0, progress=False)
    res = gain_check(metric, args.gains, args.sentences, args.frames, args.window, args.size)
    run_dir = new_run_dir(out)
    wall = time.perf_counter() - t0
    payload = clean_json({"args": vars(args), "gains": {f"{g:g}": v for g, v in res["gains"].items()},
                          "shift_3": res["shift_3"], "rows": res["rows"], "wall_time_s": wall})
    write_report(run_dir, "gain", payload, markdown(res), wall)
    return {"run_dir": str(run_dir), **payload}


if __name__ == "__main__":
    main()
