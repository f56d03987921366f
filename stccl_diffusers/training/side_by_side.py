"""Validation media and scores for any talking-head adapter: target vs neutral anchor, side by side.

Generic over :class:`~stccl_diffusers.training.adapter.TalkingHeadAdapter`: it calls
``adapter.render_validation(batch, generator)`` -> ``{"target", "anchor"}`` ``(B, T, 3, H, W)`` in
``[-1, 1]`` and writes, per validation step,

- ``step_{k:06d}.mp4``: each frame is ``[target | anchor]`` for every clip (clips stacked
  vertically), with the batch's audio track when it has one (``waveform``, ``sample_rate``, ``fps``);
- ``step_{k:06d}.png``: a grid, per clip one row of target frames above one row of anchor frames
  (and the ground truth, when given, below);

and returns scores: the STCCL loss of the target against the anchor under the frozen metric and
its positive / negative similarities (paper Fig. 3), plus the L1 to the ground truth when given.
:func:`write_summary` turns the run's logs into ``metrics.json`` and ``loss_curves.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

__all__ = ["to_uint8", "side_by_side_frames", "grid_image", "make_validation_fn", "write_summary"]


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``(..., 3, H, W)`` in ``[-1, 1]`` -> ``(..., H, W, 3)`` uint8."""
    x = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def _label(img: np.ndarray, text: str) -> np.ndarray:
    import cv2

    img = np.ascontiguousarray(img)
    scale = max(0.3, img.shape[0] / 256)
    cv2.putText(img, text, (2, int(12 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, (255, 255, 0), 1, cv2.LINE_AA)
    return img


def _upscale(frames: np.ndarray, min_size: int = 128) -> np.ndarray:
    """Nearest-neighbour upscaling of small frames so the media are readable."""
    f = max(1, int(np.ceil(min_size / frames.shape[-2])))
    return frames.repeat(f, axis=-3).repeat(f, axis=-2) if f > 1 else frames


def side_by_side_frames(target: torch.Tensor, anchor: torch.Tensor) -> np.ndarray:
    """``(B, T, 3, H, W)`` x 2 in ``[-1, 1]`` -> video ``(T, B * H', 2 * W', 3)`` uint8, target left."""
    t, a = _upscale(to_uint8(target)), _upscale(to_uint8(anchor))
    rows = np.concatenate([t, a], axis=3)  # (B, T, H, 2W, 3)
    video = np.ascontiguousarray(np.concatenate(list(rows), axis=1))  # (T, B*H, 2W, 3)
    w = rows.shape[3] // 2
    for i in range(video.shape[0]):
        video[i] = _label(video[i], "target")
        video[i, :, w:] = _label(video[i, :, w:], "neutral anchor")
        video[i, :, w] = 255  # a separator between the two streams
    return video


def grid_image(target: torch.Tensor, anchor: torch.Tensor, truth: Optional[torch.Tensor] = None,
               max_frames: int = 8) -> np.ndarray:
    """Per clip: a row of target frames, a row of anchor frames (and of ground truth), at most
    ``max_frames`` evenly spaced frames per row: ``(rows * H', frames * W', 3)`` uint8."""
    t = target.shape[1]
    keep = torch.linspace(0, t - 1, min(t, max_frames)).round().long()
    target, anchor = target[:, keep], anchor[:, keep]
    truth = truth[:, keep] if truth is not None else None
    streams = [("target", target), ("neutral anchor", anchor)] + ([("ground truth", truth)] if truth is not None else [])
    rows = []
    for b in range(target.shape[0]):
        for name, frames in streams:
            imgs = _upscale(to_uint8(frames[b]))
            row = np.concatenate(list(imgs), axis=1)
            rows.append(_label(row, name))
    return np.concatenate(rows, axis=0)


def make_validation_fn(
    batch: Dict[str, Any],
    metric: torch.nn.Module,
    out_dir: str | Path,
    seed: int = 0,
    truth_key: Optional[str] = None,
    truth_range: str = "[-1,1]",
) -> Callable[[Any, int], Dict[str, float]]:
    """The loop's ``validation_fn(adapter, step)``: render, score, write MP4 + PNG, return scalars.

    ``truth_key`` names ground-truth frames ``(B, T, 3, H, W)`` in the batch (``truth_range`` is
    ``"[-1,1]"`` or ``"[0,1]"``) for an L1 score and a third grid row. The metric's region sampling
    uses a fixed seed, so numbers from different steps are comparable.
    """
    out_dir = Path(out_dir)

    def validation_fn(adapter, step: int) -> Dict[str, float]:
        import imageio.v3 as iio

        from ..data.video_io import write_video

        out_dir.mkdir(parents=True, exist_ok=True)
        device = next(adapter.parameters()).device
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        frames = adapter.render_validation(moved, torch.Generator(device=device).manual_seed(seed))
        target, anchor = frames["target"].float(), frames["anchor"].float()
        score = metric(anchor, target, generator=torch.Generator(device=device).manual_seed(seed))
        result = {"stccl": float(score.loss), "pos_sim": float(score.pos_sim), "neg_sim": float(score.neg_sim),
                  "pos_minus_neg": float(score.pos_sim - score.neg_sim),
                  "anchor_l1": float((target - anchor).abs().mean())}
        truth = None
        if truth_key is not None and truth_key in batch:
            truth = moved[truth_key].float()
            truth = truth * 2 - 1 if truth_range == "[0,1]" else truth
            result["l1_to_ground_truth"] = float((target - truth).abs().mean())
        iio.imwrite(out_dir / f"step_{step:06d}.png", grid_image(target, anchor, truth))
        video = side_by_side_frames(target, anchor)
        audio, sr, fps = batch.get("waveform"), batch.get("sample_rate", 16000), batch.get("fps", 25.0)
        wav = audio[0].detach().cpu().numpy() if isinstance(audio, torch.Tensor) else None
        write_video(str(out_dir / f"step_{step:06d}.mp4"), video, float(fps), wav, int(sr))
        return result

    return validation_fn


def write_summary(result, cfg, out_dir: str | Path, wall_time_s: float) -> Dict[str, Any]:
    """``metrics.json`` (config, wall time, every validation, first/last) and ``loss_curves.png``."""
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    vals = list(result.validations)
    summary = {
        "wall_time_s": round(wall_time_s, 1),
        "global_step": result.global_step,
        "skipped_steps": result.skipped_steps,
        "resumed_from": result.resumed_from,
        "first_validation": vals[0] if vals else None,
        "last_validation": vals[-1] if vals else None,
        "validations": vals,
        "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg),
    }
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=str))
    log = result.step_log
    if log:
        keys = [k for k in ("loss", "rec", "stccl", "stccl_raw") if any(k in r for r in log)]
        fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3))
        for ax, k in zip(axes, keys):
            pts = [(r["step"], r[k]) for r in log if k in r]
            ax.plot(*zip(*pts))
            ax.set_title(k)
            ax.set_xlabel("step")
        if vals:
            ax = axes[-1]
            for k in ("stccl", "pos_minus_neg"):
                ax.plot([v["step"] for v in vals], [v.get(k, np.nan) for v in vals], marker="o", label=f"val {k}")
            ax.legend()
            ax.set_xlabel("step")
            ax.set_title("validation")
        fig.tight_layout()
        fig.savefig(out_dir / "loss_curves.png", dpi=80)
        plt.close(fig)
    return summary
