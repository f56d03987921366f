"""Mouth preservation: does a generated emotional clip keep the anchor clip's mouth motion?

Two detectors, one comparison (:func:`mouth_preservation`):

* **synthetic faces** (:mod:`stccl_diffusers.data.synthetic`): :func:`mouth_opening`, an exact
  pixel detector (below), in face-width units;
* **real faces**: 68-point iBUG landmarks from the package's face module
  (:func:`stccl_diffusers.data.face_align.landmark_track`, dlib backend of the ``landmarks``
  extra): :func:`lip_opening_curve` (inner-lip opening, points 60-67, in inter-ocular units) and
  :func:`landmark_distances` (M-LMD, F-LMD). Frames without a face stay NaN and are counted.

Real-face conventions (stated once, used everywhere):

* **inter-ocular distance (IOD)**: outer eye corners, points 36 and 45 (the 300-W normalisation).
* **opening**: mean of the three inner-lip gaps |61-67|, |62-66|, |63-65| divided by the IOD.
* **M-LMD / F-LMD**: mean Euclidean distance between the anchor's and the generated frame's
  landmarks over the 20 mouth points (48-67) / all 68 points, frames paired by index, averaged
  over the frames where both clips have a face. Before measuring, each generated frame's
  landmarks are mapped onto the anchor frame's by a least-squares similarity (Umeyama) fitted on
  the **stable points** (nose 27-35, eye corners 36, 39, 42, 45), so head motion and scale do not
  count as mouth error (EAT and most papers measure on aligned 256x256 crops; the similarity is our
  per-frame version of that alignment). **Pixel scale**: pixels of the anchor frame rescaled to a
  256-pixel frame height (the papers' 256x256), i.e. ``distance * 256 / H``.

Synthetic detector, one frame, (H, W, 3) uint8 RGB:

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
    "MOUTH_POINTS",
    "STABLE_POINTS",
    "LMD_FRAME_HEIGHT",
    "inter_ocular_distance",
    "lip_opening_curve",
    "landmark_distances",
    "is_synthetic_face",
    "real_mouth_measures",
    "mouth_set_metric",
]

MOUTH_POINTS = np.arange(48, 68)
STABLE_POINTS = np.array([27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45])
_INNER_UPPER, _INNER_LOWER = np.array([61, 62, 63]), np.array([67, 66, 65])
LMD_FRAME_HEIGHT = 256  # M-LMD / F-LMD are reported in pixels of a frame this tall


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


def _lagged(a: np.ndarray, g: np.ndarray, k: int):
    return (a[: len(a) - k], g[k:]) if k >= 0 else (a[-k:], g[: len(g) + k])


def _pearson_valid(a: np.ndarray, b: np.ndarray, min_frames: int = 3):
    ok = np.isfinite(a) & np.isfinite(b)
    return (_pearson(a[ok], b[ok]), int(ok.sum())) if ok.sum() >= min_frames else (None, int(ok.sum()))


def mouth_preservation(anchor_frames: np.ndarray, generated_frames: np.ndarray, max_lag: int = 5,
                       already_curves: bool = False, **detector_kw) -> Dict[str, object]:
    """Compare the mouth-opening curves of an anchor (neutral / source) and a generated clip.

    anchor_frames, generated_frames: (T, H, W, 3) uint8 RGB synthetic-face clips paired by frame
    index (or (T,) curves when ``already_curves``; NaN marks a frame without a face, see
    :func:`lip_opening_curve`). Unequal lengths are cut to the shorter (said in ``note``).

    Returns ``{"mouth_corr", "mouth_mae", "mouth_lag", "mouth_lag_corr", "mouth_frames",
    "mouth_missing", "note", "anchor_curve", "generated_curve"}``:

    * ``mouth_corr``: Pearson correlation of the two curves at lag 0 over the frames where both
      are finite. A curve that does not move (frozen mouth, variance ~0) has no linear relation
      to the other: 0.0, with a note.
    * ``mouth_mae``: mean |a_t - g_t| in the detector's units (face widths for synthetic faces,
      inter-ocular distances for landmarks).
    * ``mouth_lag``: the k in [-max_lag, max_lag] maximising corr(a_t, g_{t+k}) over the
      overlapping frames: k > 0 means the generated mouth lags the anchor by k frames.
    * ``mouth_frames``: paired frames used at lag 0; ``mouth_missing``: paired frames left out
      because either curve is NaN there (no face).
    """
    if already_curves:
        a, g = np.asarray(anchor_frames, np.float64).ravel(), np.asarray(generated_frames, np.float64).ravel()
    else:
        a, g = mouth_opening_curve(anchor_frames, **detector_kw), mouth_opening_curve(generated_frames, **detector_kw)
    notes = []
    if len(a) != len(g):
        notes.append(f"clip lengths differ ({len(a)} vs {len(g)} frames): first {min(len(a), len(g))} paired")
    n = min(len(a), len(g))
    a, g = a[:n], g[:n]
    if np.isinf(a).any() or np.isinf(g).any():
        raise ValueError("mouth-opening curves contain infinite values")
    ok = np.isfinite(a) & np.isfinite(g)
    if ok.sum() < 3:
        raise ValueError(f"expected at least 3 paired frames for mouth preservation, got {int(ok.sum())} "
                         f"({n - int(ok.sum())} of {n} without a face in one of the clips)")
    if not ok.all():
        notes.append(f"{n - int(ok.sum())} of {n} paired frames without a face in one of the clips: left out")
    corr, _ = _pearson_valid(a, g)
    if corr is None:
        notes.append("a mouth-opening curve is constant (frozen mouth): correlation set to 0")
        corr = 0.0
    best_lag, best = 0, -np.inf
    max_lag = int(max(0, min(max_lag, n - 3)))  # keep >= 3 overlapping frames per lag
    for k in range(-max_lag, max_lag + 1):
        c, _ = _pearson_valid(*_lagged(a, g, k))
        if c is not None and (c > best + 1e-12 or (abs(c - best) <= 1e-12 and abs(k) < abs(best_lag))):
            best, best_lag = c, k
    return {
        "mouth_corr": float(corr),
        "mouth_mae": float(np.mean(np.abs(a[ok] - g[ok]))),
        "mouth_lag": int(best_lag),
        "mouth_lag_corr": float(best) if np.isfinite(best) else 0.0,
        "mouth_frames": int(ok.sum()),
        "mouth_missing": int(n - ok.sum()),
        "note": "; ".join(notes),
        "anchor_curve": [float(v) if np.isfinite(v) else None for v in a],
        "generated_curve": [float(v) if np.isfinite(v) else None for v in g],
    }


# ------------------------------------------------------------------ real faces: 68-point landmarks


def _check68(points68: np.ndarray, name: str = "points68") -> np.ndarray:
    p = np.asarray(points68, np.float64)
    if p.ndim != 3 or p.shape[1:] != (68, 2):
        raise ValueError(f"expected {name} (T, 68, 2) iBUG landmarks in pixels (NaN rows = no face), got {p.shape}")
    return p


def inter_ocular_distance(points68: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T,) distance between the outer eye corners (points 36 and 45)."""
    p = _check68(points68)
    return np.linalg.norm(p[:, 45] - p[:, 36], axis=-1)


def lip_opening_curve(points68: np.ndarray) -> np.ndarray:
    """Inner-lip opening per frame: mean of |61-67|, |62-66|, |63-65| over the inter-ocular distance.

    (T, 68, 2) pixels -> (T,) float64, about 0 closed and 0.1-0.4 open; NaN where the frame has no
    face (NaN landmarks) or a degenerate IOD."""
    p = _check68(points68)
    gap = np.linalg.norm(p[:, _INNER_UPPER] - p[:, _INNER_LOWER], axis=-1).mean(-1)
    iod = inter_ocular_distance(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(iod > 1e-6, gap / iod, np.nan)


def landmark_distances(anchor68: np.ndarray, generated68: np.ndarray, frame_height: float, align: str = "stable") -> Dict[str, object]:
    """M-LMD and F-LMD of a generated clip against its anchor, frames paired by index.

    anchor68, generated68: (T, 68, 2) pixels, NaN rows for frames without a face; unequal lengths
    are cut to the shorter. ``frame_height``: the anchor frames' height H; distances are reported
    at a 256-pixel frame height (``* 256 / H``). ``align``: ``"stable"`` maps each generated
    frame onto the anchor frame by a similarity fitted on :data:`STABLE_POINTS` (see the module
    docstring), ``"none"`` compares raw pixel positions.

    Returns ``{"M-LMD", "F-LMD", "lmd_frames", "lmd_missing", "m_lmd_per_frame", "f_lmd_per_frame"}``
    (per-frame lists hold None where a frame was left out); M-LMD/F-LMD are None when no frame pairs.
    """
    from ..data.face_align import umeyama_similarity

    if align not in ("stable", "none"):
        raise ValueError(f"expected align 'stable' or 'none', got {align!r}")
    a, g = _check68(anchor68, "anchor68"), _check68(generated68, "generated68")
    n = min(len(a), len(g))
    a, g = a[:n], g[:n]
    scale = LMD_FRAME_HEIGHT / float(frame_height)
    m_d, f_d = np.full(n, np.nan), np.full(n, np.nan)
    for t in range(n):
        if not (np.isfinite(a[t]).all() and np.isfinite(g[t]).all()):
            continue
        gt = g[t]
        if align == "stable":
            m = umeyama_similarity(g[t, STABLE_POINTS], a[t, STABLE_POINTS])
            gt = gt @ m[:, :2].T + m[:, 2]
        d = np.linalg.norm(gt - a[t], axis=-1) * scale
        m_d[t], f_d[t] = d[MOUTH_POINTS].mean(), d.mean()
    ok = np.isfinite(m_d)
    as_list = lambda x: [float(v) if np.isfinite(v) else None for v in x]  # noqa: E731
    return {
        "M-LMD": float(m_d[ok].mean()) if ok.any() else None,
        "F-LMD": float(f_d[ok].mean()) if ok.any() else None,
        "lmd_frames": int(ok.sum()),
        "lmd_missing": int(n - ok.sum()),
        "m_lmd_per_frame": as_list(m_d),
        "f_lmd_per_frame": as_list(f_d),
    }


def is_synthetic_face(frame: np.ndarray) -> bool:
    """True when the exact synthetic-face detector (:func:`mouth_opening`) recognises the frame."""
    try:
        mouth_opening(frame)
    except ValueError:
        return False
    return True


def real_mouth_measures(anchor_track, generated_track, frame_height: float, max_lag: int = 5, align: str = "stable") -> Dict[str, object]:
    """All real-face mouth measures from two :class:`~stccl_diffusers.data.face_align.LandmarkTrack`
    (68-point backend): M-LMD, F-LMD, the opening comparison (corr, MAE in IOD units, best lag) and
    the face accounting (``faceless_anchor``, ``faceless_generated``, ``landmark_coverage`` = share
    of paired frames with a face in both clips)."""
    if anchor_track.points68 is None or generated_track.points68 is None:
        raise ValueError(f"real-face mouth measures need 68-point landmarks; the {anchor_track.backend!r} backend gives none "
                         "(install the `landmarks` extra for the dlib backend)")
    n = min(len(anchor_track.found), len(generated_track.found))
    both = anchor_track.found[:n] & generated_track.found[:n]
    out = {
        "faceless_anchor": int((~anchor_track.found[:n]).sum()),
        "faceless_generated": int((~generated_track.found[:n]).sum()),
        "landmark_coverage": float(both.mean()) if n else 0.0,
        "paired_frames": int(n),
    }
    lmd = landmark_distances(anchor_track.points68, generated_track.points68, frame_height, align)
    out.update({k: lmd[k] for k in ("M-LMD", "F-LMD", "lmd_frames")})
    if both.sum() >= 3:
        r = mouth_preservation(lip_opening_curve(anchor_track.points68), lip_opening_curve(generated_track.points68),
                               max_lag=max_lag, already_curves=True)
        out.update({k: r[k] for k in ("mouth_corr", "mouth_mae", "mouth_lag", "mouth_lag_corr", "mouth_frames", "anchor_curve", "generated_curve")})
        if r["note"]:
            out["mouth_note"] = r["note"]
    else:
        out["mouth_note"] = f"only {int(both.sum())} of {n} paired frames have a face in both clips: opening not compared"
    return out


def mouth_pair_metric(pair, ctx=None) -> dict:
    """``stccl-eval --mouth`` plug-in: mouth preservation of ``pair.generated`` against the
    pair's real (anchor) clip, frames paired by index. Real rows are skipped.

    Synthetic faces (recognised by :func:`is_synthetic_face` on the anchor's first frame, or
    forced by ``ctx.config.mouth_detector``) keep the exact pixel detector: mouth_corr, mouth_mae
    (face widths), mouth_lag. Real faces get :func:`real_mouth_measures` from the context's
    landmark tracks (one detector pass per clip, shared by all methods)."""
    from .runner import MetricSkipped

    if pair.is_real or pair.real is None:
        raise MetricSkipped("no anchor (real) clip: mouth preservation not computed")
    mode = getattr(getattr(ctx, "config", None), "mouth_detector", "auto")
    if mode == "auto":
        mode = "synthetic" if is_synthetic_face(np.asarray(pair.real[0])) else "landmarks"
    if mode == "synthetic":
        r = mouth_preservation(pair.real, pair.generated)
        out = {k: r[k] for k in ("mouth_corr", "mouth_mae", "mouth_lag", "mouth_lag_corr")}
        out["mouth_detector"] = "synthetic"
        if r["note"]:
            out["mouth_note"] = r["note"]
        if ctx is not None:
            ctx.counters.setdefault(pair.method, {}).setdefault("lags", []).append(out["mouth_lag"])
        return out
    if mode != "landmarks":
        raise ValueError(f"expected mouth_detector 'auto', 'synthetic' or 'landmarks', got {mode!r}")
    if ctx is None:
        from .runner import EvalConfig, EvalContext

        ctx = EvalContext(EvalConfig(metrics=()))
    anchor = ctx.landmarks(pair.real_key, pair.real)
    generated = ctx.landmarks(pair.generated_key, pair.generated)
    out = real_mouth_measures(anchor, generated, frame_height=np.asarray(pair.real).shape[1])
    out["mouth_detector"] = f"landmarks ({anchor.backend})"
    c = ctx.counters.setdefault(pair.method, {})
    for k in ("faceless_anchor", "faceless_generated", "paired_frames"):
        c[k] = c.get(k, 0) + out[k]
    c["both_found"] = c.get("both_found", 0) + out["lmd_frames"]
    if "mouth_lag" in out:
        c.setdefault("lags", []).append(out["mouth_lag"])
    return out


def mouth_set_metric(method: str, ctx) -> dict:
    """``stccl-eval --mouth`` per method: the median best lag over clips (a mean of lags hides that
    most clips agree), and the totals of the landmark accounting: frames without a face in the
    anchor / generated clips (summed over clips) and the overall landmark coverage."""
    c = ctx.counters.get(method) or {}
    out = {"mouth_lag_median": float(np.median(c["lags"]))} if c.get("lags") else {}
    if c.get("paired_frames"):
        out.update({"faceless_anchor_total": int(c["faceless_anchor"]), "faceless_generated_total": int(c["faceless_generated"]),
                    "paired_frames_total": int(c["paired_frames"]), "landmark_coverage_total": float(c["both_found"] / c["paired_frames"])})
    return out
