"""Face crops for evaluation: insightface 112x112 5-point alignment and SyncNet 224x224 crops.

- :func:`align_face_112` warps a frame with the least-squares similarity (Umeyama) that maps
  five landmarks (eyes, nose tip, mouth corners) onto insightface's ArcFace template (facts §3),
  exactly what ``insightface.utils.face_align.norm_crop`` does.
- Without a landmark detector, :func:`landmarks_from_box` places the template inside a face
  detector box (:func:`stccl_diffusers.data.face_align.detect_face_box`). That is an APPROXIMATE alignment
  (no per-frame landmark precision); pass real landmarks when you have them.
- :func:`syncnet_crop` follows the crop geometry of syncnet_python's pipeline (crop_scale 0.4
  around a face box of half-size ``s``), resized to 224x224.
- :func:`mask_tile_label` removes the green text label of the ``real_pairs`` tiles (inpainting).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

# The face module of the package (one detector family, one similarity estimator) lives in
# data.face_align; these names are re-exported here for the evaluation code.
from ..data.face_align import ARCFACE_TEMPLATE_112, NoFaceError, clip_face_box, detect_face_box, face_track, umeyama_similarity

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "umeyama_similarity",
    "align_face_112",
    "detect_face_box",
    "clip_face_box",
    "face_track",
    "landmarks_from_box",
    "syncnet_crop",
    "find_label_mask",
    "mask_tile_label",
]


# Where the template's eyes sit inside a frontal Haar box, measured by eye on MEAD faces:
# left eye at (0.31 w, 0.38 h), inter-ocular distance 0.38 w. The other points follow the template.
_BOX_LEFT_EYE = (0.31, 0.38)
_BOX_EYE_DIST = 0.38


def align_face_112(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 frame + (5, 2) landmarks (x, y) -> (112, 112, 3) ArcFace-aligned crop."""
    lmk = np.asarray(landmarks, np.float64)
    if lmk.shape != (5, 2):
        raise ValueError(f"expected 5 landmarks (5, 2) as (x, y), got {lmk.shape}")
    m = umeyama_similarity(lmk, ARCFACE_TEMPLATE_112)
    return cv2.warpAffine(image, m, (112, 112), borderValue=0.0)


def landmarks_from_box(box: Sequence[float]) -> np.ndarray:
    """Approximate 5 landmarks (5, 2) from a frontal face box (x, y, w, h) by placing the template."""
    x, y, w, h = [float(v) for v in box]
    scale = _BOX_EYE_DIST * w / (ARCFACE_TEMPLATE_112[1, 0] - ARCFACE_TEMPLATE_112[0, 0])
    origin = np.array([x + _BOX_LEFT_EYE[0] * w, y + _BOX_LEFT_EYE[1] * h])
    return origin + (ARCFACE_TEMPLATE_112 - ARCFACE_TEMPLATE_112[0]) * scale


def syncnet_crop(image: np.ndarray, box: Sequence[float], crop_scale: float = 0.4, size: int = 224) -> np.ndarray:
    """Face crop for SyncNet: s = max(w, h) / 2 around the box centre, rows centre-s .. centre+s(1+2c),
    columns centre +- s(1+c) (syncnet_python ``crop_video`` geometry), padded with grey 110, resized."""
    x, y, w, h = [float(v) for v in box]
    s = max(w, h) / 2
    cx, cy = x + w / 2, y + h / 2
    pad = int(s * (1 + 2 * crop_scale)) + 1
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(110, 110, 110))
    cy, cx = cy + pad, cx + pad
    face = padded[int(cy - s):int(cy + s * (1 + 2 * crop_scale)), int(cx - s * (1 + crop_scale)):int(cx + s * (1 + crop_scale))]
    return cv2.resize(face, (size, size))


def find_label_mask(tile: np.ndarray, max_y: int = 60) -> np.ndarray:
    """Mask (H, W) uint8 of the green text label of a ``real_pairs`` tile (RGB), confined to y < max_y.

    The label is a dark pure-green box (about RGB (0, 62, 0)) with white text; the studio
    background is a greyish green, so "green much larger than red and blue" separates them.
    The whole bounding rectangle of the box (text included) is masked, grown by 2 pixels.
    """
    top = tile[:max_y].astype(np.int16)
    r, g, b = top[..., 0], top[..., 1], top[..., 2]
    green = (g > 40) & (g - r > 40) & (g - b > 40)
    mask = np.zeros(tile.shape[:2], np.uint8)
    ys, xs = np.nonzero(green)
    if len(ys) < 20:
        return mask
    mask[max(0, ys.min() - 2):min(max_y, ys.max() + 3), max(0, xs.min() - 2):xs.max() + 3] = 255
    return mask


def mask_tile_label(tile: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Inpaint the label region so that detectors and encoders see hair/forehead, not text."""
    if not mask.any():
        return tile
    return cv2.inpaint(np.ascontiguousarray(tile), mask, 3, cv2.INPAINT_TELEA)
