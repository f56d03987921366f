"""Pose alignment of paired faces (paper §4.1): landmarks on both faces, a similarity transform
(``umeyama_similarity``, least squares) bringing the emotional frame onto the neutral one, and
a crop at the metric's input size.

Landmarks are three points, ``[left_eye, right_eye, mouth_centre]`` in pixels (x, y); "left"
is the image left. Backends:

* ``"haar"`` (default, offline, no downloads): OpenCV 4.x's bundled Haar cascades
  (``cv2.data.haarcascades``: frontal face + eyes). Chosen because it ships inside
  ``opencv-python-headless<5`` that the package already needs: nothing to download, no
  numpy<2 pin (mediapipe), no 100 MB model (dlib). The mouth point is placed from the eyes
  with the ArcFace template ratio (no bundled mouth cascade); when the eyes are not found the
  points come from the face box and ``Landmarks.method`` says so. Frontal faces only.
* ``"dlib"`` (the ``landmarks`` extra: ``dlib-bin`` + ``face_recognition_models``, offline):
  dlib's HOG detector and 68-point shape predictor; ``Landmarks.points68`` holds all 68 points.
* ``"insightface"``: RetinaFace 5-point keypoints from a locally installed insightface model
  pack (``insightface_root/models/<name>/``); never downloads.
* ``"auto"``: dlib when the ``landmarks`` extra is installed, else Haar (callers say which one ran:
  :func:`backend_name`).

``Landmarks.points5`` holds the 5 points of insightface's ArcFace template (eye centres, nose tip,
mouth corners) when a backend gives real landmarks (dlib: from the 68 points; insightface: its
keypoints); Haar gives none. :func:`landmark_track` runs a detector over a clip and keeps the
frames without a face as NaN rows with a ``found`` mask, so every consumer can count them.

A frame without a face raises ``NoFaceError`` (a ``ValueError``) naming it; batch helpers
report and skip such frames, never substitute another.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "Landmarks",
    "NoFaceError",
    "HaarLandmarkDetector",
    "InsightFaceLandmarkDetector",
    "DlibLandmarkDetector",
    "FaceAligner",
    "ARCFACE_TEMPLATE_112",
    "TEMPLATE_3PT_112",
    "similarity_transform",
    "umeyama_similarity",
    "make_detector",
    "backend_name",
    "landmarks_available",
    "five_points_from_68",
    "LandmarkTrack",
    "landmark_track",
    "detect_face_box",
    "face_track",
    "clip_face_box",
]

# insightface's 5-point template for 112x112 crops (eyes, nose, mouth corners).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float64
)
# Our 3 points on the same template: the two eyes and the mouth centre.
TEMPLATE_3PT_112 = np.array([ARCFACE_TEMPLATE_112[0], ARCFACE_TEMPLATE_112[1], ARCFACE_TEMPLATE_112[3:].mean(0)], np.float32)
_MOUTH_RATIO = float(
    (TEMPLATE_3PT_112[2] - TEMPLATE_3PT_112[:2].mean(0))[1] / np.linalg.norm(TEMPLATE_3PT_112[1] - TEMPLATE_3PT_112[0])
)


class NoFaceError(ValueError):
    """No face was found in a frame (the message names the frame)."""


@dataclass
class Landmarks:
    """points: (3, 2) float32 ``[left_eye, right_eye, mouth]`` in pixels; box: (x, y, w, h);
    method: how the points were found (``"eyes"``, ``"box"``, ``"insightface"``, ``"dlib68"``);
    points68: the (68, 2) iBUG landmarks when the backend gives them (dlib), else None;
    points5: (5, 2) ``[left_eye, right_eye, nose_tip, left_mouth, right_mouth]`` (insightface's
    order) from real landmarks (dlib, insightface), else None."""

    points: np.ndarray
    box: Tuple[int, int, int, int]
    method: str
    points68: Optional[np.ndarray] = None
    points5: Optional[np.ndarray] = None


def five_points_from_68(p68: np.ndarray) -> np.ndarray:
    """iBUG 68 points -> insightface's 5: eye centres (means of 36-41, 42-47), nose tip (30),
    mouth corners (48, 54). (68, 2) -> (5, 2) float32."""
    p68 = np.asarray(p68, np.float32)
    if p68.shape != (68, 2):
        raise ValueError(f"expected (68, 2) iBUG landmarks, got {p68.shape}")
    return np.stack([p68[36:42].mean(0), p68[42:48].mean(0), p68[30], p68[48], p68[54]]).astype(np.float32)


def _to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB image (H, W, 3) uint8, got {image.shape} {image.dtype}")
    return cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))


class HaarLandmarkDetector:
    """Face + eyes with OpenCV's bundled Haar cascades; the mouth from the eye geometry."""

    def __init__(self, min_face: float = 0.15):
        if not hasattr(cv2, "data") or not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError("the Haar backend needs opencv-python(-headless) 4.x (OpenCV 5 dropped cv2.data cascades)")
        root = cv2.data.haarcascades
        self.faces = [cv2.CascadeClassifier(os.path.join(root, n)) for n in ("haarcascade_frontalface_alt2.xml", "haarcascade_frontalface_default.xml")]
        self.eyes = cv2.CascadeClassifier(os.path.join(root, "haarcascade_eye.xml"))
        if any(c.empty() for c in self.faces) or self.eyes.empty():
            raise RuntimeError(f"could not load Haar cascades from {root!r}")
        self.min_face = min_face

    def _face_box(self, gray: np.ndarray, min_size: Optional[int] = None) -> Optional[Tuple[int, int, int, int]]:
        side = min(gray.shape)
        min_size = int(self.min_face * side) if min_size is None else int(min_size)
        for casc in self.faces:
            boxes = casc.detectMultiScale(gray, scaleFactor=1.08, minNeighbors=4, minSize=(min_size,) * 2)
            if len(boxes):
                return tuple(int(v) for v in max(boxes, key=lambda b: b[2] * b[3]))
        return None

    def _eyes(self, gray: np.ndarray, box) -> Optional[np.ndarray]:
        x, y, w, h = box
        roi = gray[y : y + int(0.6 * h), x : x + w]
        found = self.eyes.detectMultiScale(roi, scaleFactor=1.05, minNeighbors=3, minSize=(max(4, w // 10),) * 2, maxSize=(w // 3,) * 2)
        centres = [(x + ex + ew / 2, y + ey + eh / 2) for ex, ey, ew, eh in found]
        left = [c for c in centres if c[0] < x + 0.5 * w and c[1] > y + 0.15 * h]
        right = [c for c in centres if c[0] >= x + 0.5 * w and c[1] > y + 0.15 * h]
        best, best_cost = None, np.inf
        for l in left:
            for r in right:
                dx, dy = r[0] - l[0], r[1] - l[1]
                # A plausible pair: about 0.3-0.55 face widths apart, roughly level, centred.
                if not (0.25 * w < dx < 0.6 * w) or abs(dy) > 0.25 * dx:
                    continue
                cost = abs(dx / w - 0.42) + abs(dy) / w + abs((l[0] + r[0]) / 2 - (x + w / 2)) / w
                if cost < best_cost:
                    best, best_cost = np.array([l, r], np.float32), cost
        return best

    def _detect(self, image: np.ndarray) -> Optional[Landmarks]:
        gray = _to_gray(image)
        box = self._face_box(gray)
        if box is None:
            return None
        eyes = self._eyes(gray, box)
        x, y, w, h = box
        if eyes is None:
            # Typical eye positions inside an OpenCV frontal-face box.
            eyes = np.array([[x + 0.31 * w, y + 0.40 * h], [x + 0.69 * w, y + 0.40 * h]], np.float32)
            method = "box"
        else:
            method = "eyes"
        d = eyes[1] - eyes[0]
        normal = np.array([-d[1], d[0]], np.float32)  # points down the face for a left->right eye vector
        mouth = eyes.mean(0) + _MOUTH_RATIO * normal
        return Landmarks(np.vstack([eyes, mouth[None]]).astype(np.float32), box, method)

    def __call__(self, image: np.ndarray) -> Optional[Landmarks]:
        """Landmarks of the largest frontal face, or None. Tight face crops (the face fills the
        image, e.g. 112x112 ArcFace crops) are retried with a replicated border."""
        lm = self._detect(image)
        if lm is None:
            pad = max(image.shape[:2]) // 2
            padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            lm = self._detect(padded)
            if lm is not None:
                x, y, w, h = lm.box
                lm = Landmarks(lm.points - pad, (x - pad, y - pad, w, h), lm.method)
        return lm


class InsightFaceLandmarkDetector:
    """RetinaFace keypoints from a local insightface model pack (no downloads).

    ``root`` is either the pack folder itself (the unpacked ``buffalo_l/`` holding
    ``det_10g.onnx`` ...) or a folder holding ``models/<name>/``, as insightface's
    ``FaceAnalysis(name, root)`` expects. Only the detection model is loaded.
    """

    def __init__(self, root: str, name: str = "buffalo_l", det_size: int = 320, ctx_id: int = -1):
        root = os.path.abspath(os.path.expanduser(root))
        if os.path.isdir(root) and any(f.endswith(".onnx") for f in os.listdir(root)) and os.path.basename(os.path.dirname(root)) == "models":
            root, name = os.path.dirname(os.path.dirname(root)), os.path.basename(root)
        model_dir = os.path.join(root, "models", name)
        onnx = [f for f in os.listdir(model_dir) if f.endswith(".onnx")] if os.path.isdir(model_dir) else []
        if not onnx:
            raise ValueError(
                f"insightface model pack not found: expected .onnx files in {model_dir!r} "
                f"(this package never downloads; unpack {name}.zip there or use backend='haar')"
            )
        try:
            from insightface.app import FaceAnalysis
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("backend='insightface' needs `pip install insightface onnxruntime`") from e
        self.app = FaceAnalysis(name=name, root=root, allowed_modules=["detection"], providers=["CPUExecutionProvider"])
        self.app.prepare(ctx_id=ctx_id, det_size=(det_size, det_size))

    def __call__(self, image: np.ndarray) -> Optional[Landmarks]:
        faces = self.app.get(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not faces:
            return None
        f = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        k = np.asarray(f.kps, np.float32)
        x0, y0, x1, y1 = [int(v) for v in f.bbox]
        return Landmarks(np.array([k[0], k[1], k[3:].mean(0)], np.float32), (x0, y0, x1 - x0, y1 - y0), "insightface", points5=k[:5].copy())


def _face_recognition_models_dir() -> str:
    # face_recognition_models' __init__ needs pkg_resources (gone from recent setuptools): find the
    # package's model folder without importing it.
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("backend='dlib' needs the `landmarks` extra: pip install 'stccl-diffusers[landmarks]' (dlib-bin, face_recognition_models)")
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


class DlibLandmarkDetector:
    """dlib's HOG face detector + the 68-point shape predictor shipped by ``face_recognition_models``
    (the ``landmarks`` extra; nothing is downloaded). ``points``: the eye centres (mean of iBUG
    points 36-41 and 42-47) and the mouth centre (mean of 48-67); ``points68`` keeps all 68."""

    def __init__(self, upsample: Optional[int] = None):
        try:
            import dlib
        except ImportError as e:
            raise ImportError("backend='dlib' needs the `landmarks` extra: pip install 'stccl-diffusers[landmarks]' (dlib-bin, face_recognition_models)") from e
        path = os.path.join(_face_recognition_models_dir(), "shape_predictor_68_face_landmarks.dat")
        if not os.path.isfile(path):
            raise ValueError(f"expected dlib's 68-point predictor at {path!r} (from face_recognition_models), it is missing")
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(path)
        # None: the image as it is, then upsampled once only when no face was found. On 256-px
        # real_pairs tiles both find the same frames (1132 of 1146) and the first pass is 3x cheaper.
        self.upsample = None if upsample is None else int(upsample)

    def __call__(self, image: np.ndarray) -> Optional[Landmarks]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB image (H, W, 3) uint8, got {image.shape} {image.dtype}")
        image = np.ascontiguousarray(image)
        rects = self.detector(image, 0 if self.upsample is None else self.upsample)
        if len(rects) == 0 and self.upsample is None:
            rects = self.detector(image, 1)
        if len(rects) == 0:
            return None
        r = max(rects, key=lambda r: r.width() * r.height())
        shape = self.predictor(image, r)
        p68 = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)
        points = np.stack([p68[36:42].mean(0), p68[42:48].mean(0), p68[48:68].mean(0)]).astype(np.float32)
        return Landmarks(points, (r.left(), r.top(), r.width(), r.height()), "dlib68", p68, five_points_from_68(p68))


def landmarks_available() -> bool:
    """True when the ``landmarks`` extra (dlib + face_recognition_models) is importable."""
    import importlib.util

    return importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None


def backend_name(detector) -> str:
    """``"dlib"``, ``"insightface"`` or ``"haar"`` for a detector of this module (else its class name)."""
    return {DlibLandmarkDetector: "dlib", InsightFaceLandmarkDetector: "insightface", HaarLandmarkDetector: "haar"}.get(type(detector), type(detector).__name__)


def make_detector(backend: str = "haar", insightface_root: Optional[str] = None):
    """A landmark detector: ``"haar"``, ``"dlib"``, ``"insightface"`` (needs ``insightface_root``)
    or ``"auto"`` (dlib when installed, else Haar; check :func:`backend_name` on the result)."""
    if backend == "auto":
        backend = "dlib" if landmarks_available() else "haar"
    if backend == "haar":
        return HaarLandmarkDetector()
    if backend == "dlib":
        return DlibLandmarkDetector()
    if backend == "insightface":
        if not insightface_root:
            raise ValueError("backend='insightface' needs insightface_root (the folder holding models/<pack>/)")
        return InsightFaceLandmarkDetector(insightface_root)
    raise ValueError(f"expected backend 'auto', 'haar', 'dlib' or 'insightface', got {backend!r}")


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst.

    Args: src, dst: (K, 2) points, K >= 2. Returns the (2, 3) float64 matrix for ``cv2.warpAffine``.
    (Umeyama 1991; the same estimate as skimage's ``SimilarityTransform.estimate`` used by
    insightface's ``norm_crop``.) The package's one similarity estimator.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two (K, 2) point sets of equal shape with K >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("could not estimate a similarity transform (degenerate points: all source points coincide)")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = (sig * np.diag(sign)).sum() / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) float32 similarity mapping points ``src`` -> ``dst``, both (K, 2), K >= 2
    (:func:`umeyama_similarity`, least squares)."""
    return umeyama_similarity(src, dst).astype(np.float32)


_HAAR: Optional[HaarLandmarkDetector] = None


def _haar() -> HaarLandmarkDetector:
    global _HAAR
    if _HAAR is None:
        _HAAR = HaarLandmarkDetector()
    return _HAAR


def detect_face_box(image_rgb: np.ndarray, min_size: int = 40, detector=None) -> Optional[np.ndarray]:
    """Largest face (x, y, w, h) float64 in an RGB uint8 frame, or None.

    ``detector``: any landmark detector of this module (its ``Landmarks.box``); by default the
    Haar face cascades (``min_size`` pixels at least)."""
    if detector is not None:
        lm = detector(image_rgb)
        return None if lm is None else np.asarray(lm.box, np.float64)
    box = _haar()._face_box(_to_gray(image_rgb), min_size=min_size)
    return None if box is None else np.asarray(box, np.float64)


def face_track(frames: Sequence[np.ndarray], detector=None, window: int = 5, min_size: int = 40):
    """Per-frame face boxes over a clip, smoothed: ``(boxes, found)``.

    ``boxes``: (T, 4) float64 (x, y, w, h), a running median over ``window`` frames of the
    detected boxes; frames without a detection get the nearest detected frame's smoothed box.
    ``found``: (T,) bool, which frames had a face (count the misses; nothing is hidden).
    A clip without any face raises :class:`NoFaceError`.
    """
    raw = [detect_face_box(np.asarray(f), min_size=min_size, detector=detector) for f in frames]
    found = np.array([b is not None for b in raw], bool)
    if not found.any():
        raise NoFaceError(f"no face found in any of the {len(raw)} frames of the clip")
    det_idx = np.nonzero(found)[0]
    det = np.stack([raw[i] for i in det_idx])
    half = max(int(window), 1) // 2
    smooth = np.stack([np.median(det[max(0, j - half):j + half + 1], 0) for j in range(len(det))])
    nearest = np.abs(np.arange(len(raw))[:, None] - det_idx[None]).argmin(1)
    return smooth[nearest], found


@dataclass
class LandmarkTrack:
    """A detector run over a clip, one row per frame; frames without a face are NaN rows.

    found: (T,) bool; boxes: (T, 4) (x, y, w, h); points68: (T, 68, 2) or None when the backend
    has no 68 points; points5: (T, 5, 2) or None (Haar); backend: which detector ran."""

    found: np.ndarray
    boxes: np.ndarray
    points68: Optional[np.ndarray]
    points5: Optional[np.ndarray]
    backend: str

    @property
    def num_missing(self) -> int:
        return int((~self.found).sum())


def landmark_track(frames: Sequence[np.ndarray], detector=None) -> LandmarkTrack:
    """Run ``detector`` (default Haar) on every frame of a clip. Nothing is filled in: a frame
    without a face keeps NaN landmarks and ``found[t] = False`` (the caller counts and reports it)."""
    detector = detector if detector is not None else _haar()
    lms = [detector(np.ascontiguousarray(f)) for f in frames]
    t = len(lms)
    found = np.array([lm is not None for lm in lms], bool)
    boxes = np.full((t, 4), np.nan)
    has68 = any(lm is not None and lm.points68 is not None for lm in lms)
    has5 = any(lm is not None and lm.points5 is not None for lm in lms)
    p68 = np.full((t, 68, 2), np.nan, np.float32) if has68 else None
    p5 = np.full((t, 5, 2), np.nan, np.float32) if has5 else None
    for i, lm in enumerate(lms):
        if lm is None:
            continue
        boxes[i] = lm.box
        if p68 is not None and lm.points68 is not None:
            p68[i] = lm.points68
        if p5 is not None and lm.points5 is not None:
            p5[i] = lm.points5
    return LandmarkTrack(found, boxes, p68, p5, backend_name(detector))


def clip_face_box(frames: Sequence[np.ndarray], num_probe: int = 8, detector=None) -> Optional[np.ndarray]:
    """One face box (x, y, w, h) for a clip: the median of the boxes found on ``num_probe`` evenly
    spaced frames, or None when none has a face. For a per-frame track use :func:`face_track`.

    Talking-head clips are roughly face-centred, so one box per clip is steadier than per-frame
    Haar boxes. DICE-Talk's face box is this box enlarged 1.1x about its centre.
    """
    idx = np.unique(np.linspace(0, len(frames) - 1, min(num_probe, len(frames))).round().astype(int))
    boxes = [b for b in (detect_face_box(np.asarray(frames[i]), detector=detector) for i in idx) if b is not None]
    if not boxes:
        return None
    return np.median(np.stack(boxes), axis=0)


class _CachedDetector:
    """A detector that remembers its answer per frame (frames keyed by shape and a digest of their bytes)."""

    def __init__(self, detector, capacity: int = 100_000):
        self.detector, self.capacity, self._seen = detector, int(capacity), {}

    def __call__(self, image: np.ndarray) -> Optional[Landmarks]:
        import hashlib

        image = np.ascontiguousarray(image)
        key = (image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        if key not in self._seen:
            if len(self._seen) >= self.capacity:
                self._seen.clear()
            self._seen[key] = self.detector(image)
        return self._seen[key]


class FaceAligner:
    """Warp emotional frames onto neutral ones and crop both at ``size``.

    The crop maps the neutral face's landmarks onto the ArcFace template scaled to ``size``
    and zoomed out by ``margin`` (1.0 = the tight 112 ArcFace crop; 1.6 shows the whole head).
    The emotional frame goes through ``emotional -> neutral`` (similarity from the two landmark
    sets, the paper's pose alignment) and then the same crop.

    ``focus="mouth"`` centres the crop on the mouth instead of the face (same scale): the lower
    face fills the frame, so more of the metric's sampled regions fall on the mouth (a
    mouth-region emphasis for metric learning; not in the paper). ``cache=True`` remembers the
    landmarks of frames seen before (keyed by their bytes), so epochs after the first detect nothing.
    """

    def __init__(self, size: int = 224, backend: str = "haar", insightface_root: Optional[str] = None, margin: float = 1.5, detector=None,
                 focus: str = "face", cache: bool = False):
        if focus not in ("face", "mouth"):
            raise ValueError(f"focus: expected 'face' or 'mouth', got {focus!r}")
        self.size = int(size)
        self.margin = float(margin)
        self.focus = focus
        self.detector = detector if detector is not None else make_detector(backend, insightface_root)
        if cache:
            self.detector = _CachedDetector(self.detector)

    def landmarks(self, image: np.ndarray, name: str = "frame") -> Landmarks:
        lm = self.detector(image)
        if lm is None:
            raise NoFaceError(f"no face found in {name}")
        return lm

    def _template(self) -> np.ndarray:
        if self.focus == "face":
            c = dst = np.array([56.0, 56.0 + 8.0], np.float32)  # keep the face a little above centre
        else:
            c, dst = TEMPLATE_3PT_112[2], np.array([56.0, 56.0], np.float32)  # the mouth at the crop centre
        t = (TEMPLATE_3PT_112 - c) / self.margin + dst
        return t * (self.size / 112.0)

    def align_pair(self, neutral: np.ndarray, emotional: np.ndarray, names: Tuple[str, str] = ("neutral frame", "emotional frame")):
        """Both (H, W, 3) uint8 RGB -> ``(neutral_crop, emotional_crop)`` (size, size, 3) uint8."""
        ln = self.landmarks(neutral, names[0])
        le = self.landmarks(emotional, names[1])
        return self._warp(neutral, emotional, ln.points, le.points)

    def _warp(self, neutral, emotional, pn, pe):
        crop = similarity_transform(pn, self._template())
        pose = similarity_transform(pe, pn)
        both = np.vstack([crop, [0, 0, 1]]) @ np.vstack([pose, [0, 0, 1]])
        out = (self.size, self.size)
        n = cv2.warpAffine(neutral, crop, out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        e = cv2.warpAffine(emotional, both[:2].astype(np.float32), out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return n, e

    def align_frames(self, neutral: Sequence[np.ndarray], emotional: Sequence[np.ndarray], name: str = "clip"):
        """Frame by frame. Returns ``(neutral_crops, emotional_crops, kept, skipped)``: the crops of
        the kept frame indices and ``[(index, reason)]`` for frames without a face (logged)."""
        if len(neutral) != len(emotional):
            raise ValueError(f"expected as many neutral as emotional frames, got {len(neutral)} and {len(emotional)}")
        ns, es, kept, skipped = [], [], [], []
        for i, (a, b) in enumerate(zip(neutral, emotional)):
            try:
                n, e = self.align_pair(a, b, (f"{name} neutral frame {i}", f"{name} emotional frame {i}"))
            except NoFaceError as err:
                skipped.append((i, str(err)))
                logger.warning("face alignment skipped %s", err)
                continue
            ns.append(n)
            es.append(e)
            kept.append(i)
        empty = np.zeros((0, self.size, self.size, 3), np.uint8)
        return (np.stack(ns) if ns else empty), (np.stack(es) if es else empty), kept, skipped

    def __call__(self, neutral: np.ndarray, emotional: np.ndarray):
        """Clip aligner for ``PairedClipDataset``: (T, H, W, 3) uint8 each.

        One transform per clip from the median landmarks of the frames where a face was found
        (head pose is steady over a few frames; no frame is replaced by another). Frames without
        a face are logged; a clip with no face at all raises NoFaceError.
        """
        def median_points(frames, side):
            pts = []
            for i, f in enumerate(frames):
                lm = self.detector(f)
                if lm is None:
                    logger.warning("face alignment: no face in %s frame %d of the clip", side, i)
                else:
                    pts.append(lm.points)
            if not pts:
                raise NoFaceError(f"no face found in any {side} frame of the clip")
            return np.median(np.stack(pts), 0)

        pn, pe = median_points(neutral, "neutral"), median_points(emotional, "emotional")
        pairs = [self._warp(a, b, pn, pe) for a, b in zip(neutral, emotional)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
