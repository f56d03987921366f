"""Validation media and numbers shared by the training scripts.

- a side-by-side MP4 (target emotion | neutral anchor) with the clip's audio, and a PNG grid
  (row 1 target, row 2 anchor, one column per frame, per validation clip);
- the STCCL score between the two streams (`metric(anchor, target)`: loss, pos/neg similarity)
  with a fixed region-sampling seed, so numbers from different steps are comparable;
- a loss-curve PNG from the loop's step log and a metrics JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
    x = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def _check_pair(target: torch.Tensor, anchor: torch.Tensor) -> None:
    if target.ndim != 5 or target.shape[2] != 3 or target.shape != anchor.shape:
        raise ValueError(
            f"expected target and anchor (B, T, 3, H, W) of one shape, got {tuple(target.shape)} and {tuple(anchor.shape)}"
        )


def side_by_side_grid(target: torch.Tensor, anchor: torch.Tensor, upscale: int = 1, gap: int = 2,
                      max_columns: int | None = 8) -> np.ndarray:
    """PNG grid (rows: clip b target, clip b anchor, ...; columns: frames) as (rows*H, T*W, 3) uint8.

    Long clips show `max_columns` evenly spaced frames (the MP4 has them all).
    """
    _check_pair(target, anchor)
    if max_columns is not None and target.shape[1] > max_columns:
        idx = torch.linspace(0, target.shape[1] - 1, max_columns).round().long()
        target, anchor = target[:, idx], anchor[:, idx]
    B, T, _, H, W = target.shape
    t8, a8 = to_uint8(target), to_uint8(anchor)
    rows = []
    for b in range(B):
        for clip in (t8[b], a8[b]):
            row = np.full((H, T * (W + gap) - gap, 3), 255, np.uint8)
            for t in range(T):
                row[:, t * (W + gap): t * (W + gap) + W] = clip[t]
            rows.append(row)
        rows.append(np.full((gap * 2, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows[:-1], axis=0)
    if upscale > 1:
        grid = grid.repeat(upscale, 0).repeat(upscale, 1)
    return grid


def side_by_side_video(target: torch.Tensor, anchor: torch.Tensor, index: int = 0, upscale: int = 1) -> np.ndarray:
    """(T, H, 2W, 3) uint8: clip `index`, target on the left, neutral anchor on the right."""
    _check_pair(target, anchor)
    both = np.concatenate([to_uint8(target[index]), to_uint8(anchor[index])], axis=2)
    if upscale > 1:
        both = both.repeat(upscale, 1).repeat(upscale, 2)
    return both


def save_validation_media(
    target: torch.Tensor,
    anchor: torch.Tensor,
    out_dir: str | Path,
    name: str,
    fps: float,
    audio: torch.Tensor | np.ndarray | None = None,
    sample_rate: int = 16000,
    upscale: int = 4,
) -> dict[str, str]:
    """Write `{name}.png` (grid) and `{name}.mp4` (clip 0 side by side, with `audio` (N,) when given)."""
    import imageio.v2 as imageio

    from ..data.video_io import write_video

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, mp4 = out_dir / f"{name}.png", out_dir / f"{name}.mp4"
    imageio.imwrite(png, side_by_side_grid(target, anchor, upscale=upscale))
    if audio is not None:
        audio = np.asarray(torch.as_tensor(audio).detach().float().cpu().numpy(), np.float32).reshape(-1)
        audio = audio[: int(round(target.shape[1] * sample_rate / fps))]
    write_video(str(mp4), side_by_side_video(target, anchor, upscale=upscale), fps, audio, sample_rate)
    return {"png": str(png), "mp4": str(mp4)}


@torch.no_grad()
def stccl_scores(metric, target: torch.Tensor, anchor: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """STCCL between the neutral anchor and the target stream: loss, pos/neg similarity (floats)."""
    _check_pair(target, anchor)
    device = next(metric.parameters()).device if isinstance(metric, torch.nn.Module) else target.device
    g = torch.Generator(device=device).manual_seed(seed)
    out = metric(anchor.to(device).clamp(-1, 1), target.to(device).clamp(-1, 1), generator=g)
    scores = {"stccl": float(out.loss), "pos_sim": float(out.pos_sim), "neg_sim": float(out.neg_sim)}
    scores["pos_minus_neg"] = scores["pos_sim"] - scores["neg_sim"]
    return scores


def _to_device(value, device):
    """Tensors anywhere in nested dicts/lists/tuples moved to `device` (EAT's batch nests `he_driving`)."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def make_validation_fn(
    batch: dict[str, Any],
    metric,
    out_dir: str | Path,
    fps: float,
    sample_rate: int = 16000,
    seed: int = 0,
    upscale: int = 4,
    audio_key: str = "audio",
) -> Callable:
    """A `validation_fn(adapter, step)` for :func:`stccl_diffusers.training.loop.train`.

    Renders `batch` with `adapter.render_validation` (same seed every time), writes
    `validation/step-{step:06d}.{png,mp4}` and returns the STCCL scores of target vs anchor.
    """
    out_dir = Path(out_dir)

    def validation_fn(adapter, step: int) -> dict[str, float]:
        device = next(adapter.parameters()).device
        moved = _to_device(batch, device)
        g = torch.Generator(device=device).manual_seed(seed)
        rendered = adapter.render_validation(moved, generator=g)
        target, anchor = rendered["target"].float().cpu(), rendered["anchor"].float().cpu()
        audio = batch.get(audio_key)
        save_validation_media(target, anchor, out_dir / "validation", f"step-{step:06d}", fps,
                              audio[0] if audio is not None else None, sample_rate, upscale)
        scores = {}
        if metric is not None:
            scores = stccl_scores(metric, target, anchor, seed=seed)
        # How different the two streams are, in pixels: the emotion must show, the identity stay.
        scores["target_anchor_l1"] = float((target - anchor).abs().mean())
        return scores

    return validation_fn


def plot_loss_curves(step_log: list[dict], path: str | Path, keys: tuple[str, ...] = ("loss", "diffusion", "stccl"),
                     validations: list[dict] | None = None) -> str:
    """Training curves (one panel per key found in the log, plus validation STCCL) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in keys if any(k in r for r in step_log)]
    if validations:
        panels.append("validation")
    if not panels:
        raise ValueError(f"nothing to plot: none of {keys} in the step log and no validations")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "validation":
            steps = [r["step"] for r in validations]
            for k in ("stccl", "pos_sim", "neg_sim"):
                if all(k in r for r in validations):
                    ax.plot(steps, [r[k] for r in validations], marker="o", label=k)
            ax.legend()
        else:
            pts = [(r["step"], r[key]) for r in step_log if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def write_metrics_json(path: str | Path, payload: dict[str, Any]) -> str:
    def clean(v):
        if isinstance(v, torch.Tensor):
            return v.item() if v.numel() == 1 else v.tolist()
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    Path(path).write_text(json.dumps(clean(payload), indent=2))
    return str(path)
