"""Mouth preservation on synthetic faces: does a generated emotional clip keep the neutral
clip's mouth motion?

Functional core (numpy, no I/O):

* :func:`mouth_opening` / :func:`mouth_opening_curve`: a pixel-based mouth-opening detector for
  the cartoon faces of :mod:`stccl_diffusers.data.synthetic`. It never reads the generator's
  ground truth; ``tests/test_eval_mouth.py`` validates it against that ground truth
  (correlation > 0.9 over seeds, emotions and identities).
* :func:`mouth_preservation`: compares two mouth-opening curves (anchor = neutral clip,
  generated = emotional clip, frames paired by index): Pearson correlation, mean absolute
  error and the lag of best cross-correlation.
* :func:`mouth_pair_metric`: the same as a ``stccl-eval`` plug-in pair metric (``--mouth``),
  with the real/anchor clip of each pair as the reference.

How the detector works (one frame, (H, W, 3) uint8 RGB):

1. **Skin colour**: the synthetic skin is one flat colour, so it is the most frequent exact RGB
   triplet in the central box of the image (rows 35-80 %, columns 30-70 %), where the face
   always is; the facial features there are thin and cover far fewer pixels.
2. **Face**: pixels within ``skin_tol`` (per channel) of that colour; the largest connected
   component is the face (the neck, ears and nose are darker *shades* of skin and fall outside
   the tolerance). Its bounding box gives the face's top, bottom and width, and its centroid
   the face's centre column. Fewer than 3 % of the image -> ``ValueError`` (not a synthetic face).
3. **Mouth-ness** of a pixel: the angle between its RGB vector and the skin's (``sin`` of it,
   i.e. the chromaticity difference). Shades of skin (the nose line, its anti-aliasing) have
   angle ~0 whatever their brightness; lips (red), the mouth interior (dark red) and teeth
   (white) have a clearly different chromaticity. ``m = clip(sin(angle) / chroma_scale, 0, 1)``
   with ``chroma_scale = 0.25``, i.e. nearly linear (anti-aliased edge pixels count in
   proportion to their coverage instead of saturating: that keeps sub-pixel resolution).
4. **Opening**: in a narrow band of columns around the face's centre column (half-width
   ``band`` = 0.08 x face width: inside the narrowest mouth, away from the cheeks) and the lower
   60 % of the face rows (below the eyes, which sit off the centre line anyway), the per-row mean mouth-ness summed over rows is the soft vertical
   extent of the mouth in pixels: upper lip + teeth + interior + lower lip. It grows linearly
   with the drawn opening (the lips add a constant). Divided by the face width in pixels, the
   result is in **face-width units** (independent of the image size): these are the units of
   :func:`mouth_preservation`'s MAE.

It is meant for the synthetic faces (flat skin, drawn lips); on real photographs step 2 finds
no flat skin region and raises ``ValueError`` rather than returning a number.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

__all__ = [
    "mouth_opening",
    "mouth_opening_curve",
    "mouth_preservation",
    "mouth_pair_metric",
]


def _skin_colour(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    box = frame[int(0.35 * h): int(0.80 * h), int(0.30 * w): int(0.70 * w)].reshape(-1, 3).astype(np.int64)
    packed = (box[:, 0] << 16) | (box[:, 1] << 8) | box[:, 2]
    vals, counts = np.unique(packed, return_counts=True)
    v = int(vals[np.argmax(counts)])
    return np.array([(v >> 16) & 255, (v >> 8) & 255, v & 255], np.float64)


def mouth_opening(frame: np.ndarray, skin_tol: float = 6.0, band: float = 0.08, chroma_scale: float = 0.25,
                  min_face_fraction: float = 0.03) -> float:
    """Mouth opening of one synthetic face frame, in face-width units (see the module docstring).

    frame: (H, W, 3) uint8 RGB. Returns the soft vertical extent of the lips + mouth interior
    at the face's centre line divided by the face width (about 0.03 closed, up to ~0.3 wide open).
    Raises ValueError when the frame has the wrong shape or no flat-coloured face is found.
    """
    import cv2

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a frame (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
    h, w = frame.shape[:2]
    if min(h, w) < 16:
        raise ValueError(f"expected a frame of at least 16x16 pixels, got {h}x{w}")
    skin = _skin_colour(frame)
    f = frame.astype(np.float64)
    mask = (np.abs(f - skin).max(-1) <= skin_tol).astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=4)
    if n < 2:
        raise ValueError("no flat skin region found: mouth_opening expects a synthetic face (data.synthetic)")
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    area = int(stats[k, cv2.CC_STAT_AREA])
    if area < min_face_fraction * h * w:
        raise ValueError(f"no synthetic face found: largest flat skin region covers {area / (h * w):.1%} of the frame "
                         f"(expected >= {min_face_fraction:.0%}); mouth_opening works on data.synthetic faces only")
    top, face_w = int(stats[k, cv2.CC_STAT_TOP]), int(stats[k, cv2.CC_STAT_WIDTH])
    bottom = top + int(stats[k, cv2.CC_STAT_HEIGHT])
    cx = float(cents[k][0])
    half = max(1.0, band * face_w)
    c0, c1 = max(0, int(np.floor(cx - half))), min(w, int(np.ceil(cx + half)) + 1)
    r0 = top + int(round(0.4 * (bottom - top)))
    region = f[r0:bottom, c0:c1]
    # sin(angle to the skin colour) = |p x s| / (|p| |s|): zero for any shade of skin.
    s_unit = skin / max(np.linalg.norm(skin), 1e-6)
    norm = np.linalg.norm(region, axis=-1)
    cross = np.linalg.norm(np.cross(region, s_unit), axis=-1)
    sin_angle = np.where(norm > 1e-6, cross / np.maximum(norm, 1e-6), 0.0)
    m = np.clip(sin_angle / chroma_scale, 0.0, 1.0)
    return float(m.mean(axis=1).sum() / face_w)


def mouth_opening_curve(frames: np.ndarray, **kw) -> np.ndarray:
    """(T,) :func:`mouth_opening` of each frame of (T, H, W, 3) uint8 RGB ``frames``."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected frames (T, H, W, 3) uint8 RGB, got shape {frames.shape}")
    return np.array([mouth_opening(fr, **kw) for fr in frames], np.float64)


def _pearson(a: np.ndarray, b: np.ndarray, eps: float = 1e-9) -> Optional[float]:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return None if den < eps else float((a * b).sum() / den)


def mouth_preservation(anchor_frames: np.ndarray, generated_frames: np.ndarray, max_lag: int = 5,
                       already_curves: bool = False, **detector_kw) -> Dict[str, object]:
    """Compare the mouth-opening curves of an anchor (neutral) and a generated (emotional) clip.

    anchor_frames, generated_frames: (T, H, W, 3) uint8 RGB clips paired by frame index (or
    (T,) curves when ``already_curves``). Unequal lengths are cut to the shorter (said in ``note``).

    Returns ``{"mouth_corr", "mouth_mae", "mouth_lag", "mouth_lag_corr", "mouth_frames", "note",
    "anchor_curve", "generated_curve"}``:

    * ``mouth_corr``: Pearson correlation of the two curves at lag 0. A curve that does not move
      (frozen mouth, variance ~0) has no linear relation to the other: 0.0, with a note.
    * ``mouth_mae``: mean |a_t - g_t| in the detector's face-width units.
    * ``mouth_lag``: the k in [-max_lag, max_lag] maximising corr(a_t, g_{t+k}) over the
      overlapping frames: k > 0 means the generated mouth lags the anchor by k frames.
    """
    if already_curves:
        a, g = np.asarray(anchor_frames, np.float64).ravel(), np.asarray(generated_frames, np.float64).ravel()
    else:
        a, g = mouth_opening_curve(anchor_frames, **detector_kw), mouth_opening_curve(generated_frames, **detector_kw)
    notes = []
    if len(a) != len(g):
        notes.append(f"clip lengths differ ({len(a)} vs {len(g)} frames): first {min(len(a), len(g))} paired")
    n = min(len(a), len(g))
    if n < 3:
        raise ValueError(f"expected at least 3 paired frames for mouth preservation, got {n}")
    a, g = a[:n], g[:n]
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(g))):
        raise ValueError("mouth-opening curves contain non-finite values")
    corr = _pearson(a, g)
    if corr is None:
        notes.append("a mouth-opening curve is constant (frozen mouth): correlation set to 0")
        corr = 0.0
    best_lag, best = 0, -np.inf
    max_lag = int(min(max_lag, n - 3))  # keep >= 3 overlapping frames per lag
    for k in range(-max_lag, max_lag + 1):
        x, y = (a[: n - k], g[k:]) if k >= 0 else (a[-k:], g[: n + k])
        c = _pearson(x, y)
        if c is not None and (c > best + 1e-12 or (abs(c - best) <= 1e-12 and abs(k) < abs(best_lag))):
            best, best_lag = c, k
    return {
        "mouth_corr": float(corr),
        "mouth_mae": float(np.mean(np.abs(a - g))),
        "mouth_lag": int(best_lag),
        "mouth_lag_corr": float(best) if np.isfinite(best) else 0.0,
        "mouth_frames": int(n),
        "note": "; ".join(notes),
        "anchor_curve": a.tolist(),
        "generated_curve": g.tolist(),
    }


def mouth_pair_metric(pair, ctx=None) -> dict:
    """``stccl-eval --mouth`` plug-in: mouth preservation of ``pair.generated`` against the
    pair's real (anchor) clip, frames paired by index. Real rows are skipped."""
    from .runner import MetricSkipped

    if pair.is_real or pair.real is None:
        raise MetricSkipped("no anchor (real) clip: mouth preservation not computed")
    r = mouth_preservation(pair.real, pair.generated)
    out = {k: r[k] for k in ("mouth_corr", "mouth_mae", "mouth_lag")}
    if r["note"]:
        out["mouth_note"] = r["note"]
    return out
