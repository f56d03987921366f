"""Paired reconstruction measures for the self-driven setting (a ground-truth clip exists): PSNR and
SSIM on aligned face crops, frames paired by index.

* **PSNR** per frame ``10 log10(255^2 / MSE)`` over all pixels and the three RGB channels, then
  the mean over frames (EAT's evaluation averages per-frame PSNR). A frame identical to its
  ground truth has an infinite PSNR: it is left out of the mean and counted
  (``psnr_identical_frames``); a clip whose frames are all identical reports ``PSNR: null``.
* **SSIM** (Wang et al. 2004) on the luma (ITU-R BT.601, Y = 0.299 R + 0.587 G + 0.114 B) with an
  11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, averaged over the valid
  window positions (no padding), then over frames.

Crops: the ArcFace-aligned 112x112 crops of :mod:`.runner` (each clip aligned by its own
landmarks), so head placement in the frame does not count, face content does.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

__all__ = ["psnr_frames", "ssim_frame", "reconstruction_measures", "reconstruction_pair_metric"]


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected two clips (T, H, W, 3) of equal shape, got {a.shape} and {b.shape}")


def psnr_frames(gen: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(T,) PSNR in dB of (T, H, W, 3) uint8 frames against their ground truth; inf where identical."""
    g, t = np.asarray(gen, np.float64), np.asarray(gt, np.float64)
    _check(g, t)
    mse = ((g - t) ** 2).reshape(len(g), -1).mean(1)
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)), np.inf)


def _luma(frame: np.ndarray) -> np.ndarray:
    f = np.asarray(frame, np.float64)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def ssim_frame(gen: np.ndarray, gt: np.ndarray, sigma: float = 1.5, win: int = 11) -> float:
    """SSIM of one (H, W, 3) uint8 frame against its ground truth, on the luma (module docstring)."""
    from scipy.ndimage import correlate1d

    x, y = _luma(gen), _luma(gt)
    if x.shape != y.shape or min(x.shape) < win:
        raise ValueError(f"expected two frames of equal size >= {win} px, got {np.shape(gen)} and {np.shape(gt)}")
    r = np.arange(win) - win // 2
    k = np.exp(-(r ** 2) / (2 * sigma ** 2))
    k /= k.sum()
    h = win // 2

    def blur(img):  # separable Gaussian, valid positions only
        out = correlate1d(correlate1d(img, k, axis=0, mode="constant"), k, axis=1, mode="constant")
        return out[h:-h, h:-h]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def reconstruction_measures(gen: np.ndarray, gt: np.ndarray) -> Dict[str, object]:
    """PSNR and SSIM of a clip (T, H, W, 3) uint8 against its ground truth, frames paired by index
    (unequal lengths: the first min(T_g, T_t) frames, said in ``reconstruction_note``)."""
    gen, gt = np.asarray(gen), np.asarray(gt)
    out: Dict[str, object] = {}
    n = min(len(gen), len(gt))
    if len(gen) != len(gt):
        out["reconstruction_note"] = f"clip lengths differ ({len(gen)} vs {len(gt)} frames): first {n} paired"
    gen, gt = gen[:n], gt[:n]
    p = psnr_frames(gen, gt)
    finite = np.isfinite(p)
    out["PSNR"] = float(p[finite].mean()) if finite.any() else None
    out["psnr_identical_frames"] = int((~finite).sum())
    out["SSIM"] = float(np.mean([ssim_frame(a, b) for a, b in zip(gen, gt)]))
    out["reconstruction_frames"] = int(n)
    return out


def reconstruction_pair_metric(pair, ctx) -> dict:
    """``stccl-eval --reconstruction`` plug-in: PSNR / SSIM of the generated clip against the real
    clip taken as its ground truth (the self-driven setting), on the aligned 112x112 face crops
    (every ``--frame_stride``-th frame). Real rows are skipped."""
    from .runner import MetricSkipped

    if pair.is_real or pair.real is None:
        raise MetricSkipped("no ground-truth (real) clip: PSNR/SSIM not computed")
    g = ctx.crops(pair.generated_key, pair.generated, pair.fps).aligned112
    t = ctx.crops(pair.real_key, pair.real, pair.fps).aligned112
    return reconstruction_measures(g, t)
