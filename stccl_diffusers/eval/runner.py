"""The evaluation engine behind ``stccl-eval``: clip pairs in, per-clip and per-method metrics out.

Extensible by design: a *pair metric* is any callable ``fn(pair: ClipPair, ctx: EvalContext) -> dict``
(numbers are averaged per method, other values kept per clip), a *set metric* is
``fn(method: str, ctx: EvalContext) -> dict`` run once per method after all clips (FAD needs the
whole set). ``run_evaluation(..., pair_metrics=[...], set_metrics=[...])`` takes lists of them,
so further sections (correlation analysis, mouth preservation) plug in without touching this file.
A pair metric that cannot apply to a pair raises :class:`MetricSkipped` (recorded with its reason).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .csim import cosine_similarity_score, encode_faces
from .eval_io import nearest_frame_indices
from ..data.face_align import LandmarkTrack, backend_name, landmark_track, make_detector
from .faces import NoFaceError, align_face_112, clip_face_box, face_track, landmarks_from_box, syncnet_crop
from .fad import arcface_embeddings, fad_from_embeddings
from .lse import SYNCNET_FPS, compute_lse

__all__ = [
    "ClipPair",
    "EvalConfig",
    "EvalContext",
    "FaceCrops",
    "MetricSkipped",
    "prepare_faces",
    "lse_pair_metric",
    "csim_pair_metric",
    "csim_id_pair_metric",
    "sync_crops",
    "fad_collect_pair_metric",
    "fad_set_metric",
    "DEFAULT_PAIR_METRICS",
    "DEFAULT_SET_METRICS",
    "run_evaluation",
]


class MetricSkipped(Exception):
    """A metric does not apply to this pair (e.g. no audio for LSE); the reason is reported."""


@dataclass
class ClipPair:
    """One generated clip of one method and what it is compared with.

    Frames are (T, H, W, 3) uint8 RGB at ``fps``; audio (S,) int16 16 kHz (the speech the
    generated clip should follow). ``real`` feeds FAD's real set, ``reference`` CSIM.
    ``*_key`` identify shared clips so that, e.g., one real clip is embedded once for all methods.
    """

    name: str
    method: str
    generated: np.ndarray
    fps: float
    real: Optional[np.ndarray] = None
    reference: Optional[np.ndarray] = None
    audio: Optional[np.ndarray] = None
    generated_key: Optional[str] = None
    real_key: Optional[str] = None
    reference_key: Optional[str] = None
    is_real: bool = False  # a row of real clips (no FAD against itself)
    notes: List[str] = field(default_factory=list)

    def __post_init__(self):
        self.generated_key = self.generated_key or f"{self.method}/{self.name}"
        self.real_key = self.real_key or f"real/{self.name}"
        self.reference_key = self.reference_key or f"reference/{self.name}"


@dataclass
class EvalConfig:
    metrics: Tuple[str, ...] = ("fad", "lse", "csim")
    frame_stride: int = 1  # FAD/CSIM use every k-th frame
    max_faces_per_clip: Optional[int] = None
    aligned: bool = False  # frames are already face crops: resize instead of detect+align
    vshift: int = 15
    csim_mode: str = "frame"
    batch_size: int = 32
    device: str = "cpu"
    face_backend: str = "auto"  # landmarks for FAD/CSIM alignment and --mouth: auto (dlib if installed), dlib, insightface, haar
    insightface_root: Optional[str] = None  # local insightface model pack (backend insightface); never downloaded
    mouth_detector: str = "auto"  # --mouth: auto (synthetic detector on data.synthetic faces, else landmarks), synthetic, landmarks
    sync_protocol: str = "given"  # LSE on the clip as given, or "reencode": also after one fixed encoder pass (eval.reencode)


@dataclass
class FaceCrops:
    aligned112: np.ndarray  # (N, 112, 112, 3) uint8 RGB, subsampled by frame_stride
    sync_bgr: np.ndarray  # (T25, 224, 224, 3) uint8 BGR at 25 fps, all frames
    fps: float
    notes: List[str]


@dataclass
class EvalContext:
    config: EvalConfig
    arcface: Optional[torch.nn.Module] = None
    syncnet: Optional[torch.nn.Module] = None
    csim_encoder: Optional[Callable] = None
    # caches keyed by clip keys
    faces: Dict[str, FaceCrops] = field(default_factory=dict)
    arcface_emb: Dict[str, np.ndarray] = field(default_factory=dict)
    csim_feats: Dict[str, torch.Tensor] = field(default_factory=dict)
    # FAD sets: method -> {clip key -> embeddings}
    fad_real: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    fad_gen: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    detector: Optional[Callable] = None  # built from config.face_backend on first use
    tracks: Dict[str, LandmarkTrack] = field(default_factory=dict)
    # per-method counters of plug-ins (e.g. --mouth's faceless frames), read by their set metrics
    counters: Dict[str, Dict[str, object]] = field(default_factory=dict)

    def face_detector(self):
        if self.detector is None:
            self.detector = make_detector(self.config.face_backend, self.config.insightface_root)
        return self.detector

    def landmarks(self, key: str, frames: np.ndarray) -> LandmarkTrack:
        """The clip's landmark track (one detector pass per clip key, shared by all metrics)."""
        if key not in self.tracks:
            self.tracks[key] = landmark_track(np.asarray(frames), self.face_detector())
        return self.tracks[key]

    def crops(self, key: str, frames: np.ndarray, fps: float) -> FaceCrops:
        if key not in self.faces:
            track = None
            if not self.config.aligned and self.config.face_backend != "haar" and backend_name(self.face_detector()) != "haar":
                track = self.landmarks(key, frames)
            self.faces[key] = prepare_faces(frames, fps, self.config, track)
        return self.faces[key]

    def embed(self, key: str, frames: np.ndarray, fps: float) -> np.ndarray:
        if key not in self.arcface_emb:
            self.arcface_emb[key] = arcface_embeddings(self.arcface, self.crops(key, frames, fps).aligned112, self.config.batch_size, self.config.device)
        return self.arcface_emb[key]

    def csim_features(self, key: str, frames: np.ndarray, fps: float) -> torch.Tensor:
        if key not in self.csim_feats:
            self.csim_feats[key] = encode_faces(self.csim_encoder, self.crops(key, frames, fps).aligned112, self.config.batch_size, self.config.device)
        return self.csim_feats[key]

    def release(self, keep: Iterable[str] = ()) -> None:
        """Drop per-clip crop caches (embeddings stay, they are small)."""
        keep = set(keep)
        for cache in (self.faces, self.tracks):
            for k in [k for k in cache if k not in keep]:
                del cache[k]


def prepare_faces(frames: np.ndarray, fps: float, config: EvalConfig, track: Optional[LandmarkTrack] = None) -> FaceCrops:
    """Face crops of one clip: ArcFace-aligned 112x112 (every ``frame_stride``-th frame) and
    SyncNet 224x224 BGR crops resampled to 25 fps.

    FAD/CSIM alignment: with a landmark ``track`` giving 5 points (dlib, insightface), each frame
    is warped by its own 5 points onto insightface's template (``norm_crop``); a frame without a
    face uses the nearest frame's points, counted in the notes. Without one (Haar backend, or no
    landmarks in the whole clip) the template is placed in one Haar box per clip
    (``clip_face_box``), an approximation said in the notes. SyncNet: a Haar face track over the
    clip (``face_track``, running median of 9 frames; frames without a face take the nearest track
    box and are counted in the notes). Raises ValueError when no face is found."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected frames (T, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
    notes = []
    sub = np.arange(0, len(frames), max(1, config.frame_stride))
    if config.max_faces_per_clip:
        sub = sub[: config.max_faces_per_clip]
    if len(sub) < len(frames):
        notes.append(f"FAD/CSIM use {len(sub)} of {len(frames)} frames (stride {config.frame_stride})")
    if config.aligned:
        import cv2

        aligned = np.stack([cv2.resize(frames[i], (112, 112), interpolation=cv2.INTER_AREA) for i in sub])
        sync = sync_crops(frames, fps, True)[0] if "lse" in config.metrics else np.zeros((0, 224, 224, 3), np.uint8)
        return FaceCrops(aligned, sync, fps, notes + ["frames used as given face crops (--aligned)"])
    has5 = track is not None and track.points5 is not None and np.isfinite(track.points5[:, 0, 0]).any()
    if has5:
        ok = np.nonzero(np.isfinite(track.points5[:, 0, 0]))[0]
        nearest = ok[np.abs(sub[:, None] - ok[None]).argmin(1)]
        aligned = np.stack([align_face_112(frames[i], track.points5[j]) for i, j in zip(sub, nearest)])
        missing = int((nearest != sub).sum())
        if missing:
            notes.append(f"FAD/CSIM alignment: no {track.backend} landmarks in {missing} of {len(sub)} frames (nearest frame's 5 points used)")
    else:
        if track is not None:
            notes.append(f"FAD/CSIM alignment: no {track.backend} landmarks in any frame; fell back to the 5-point template placed in a Haar box")
        box = clip_face_box(frames)
        if box is None:
            raise ValueError("no face found by the Haar detector")
        lmk = landmarks_from_box(box)
        aligned = np.stack([align_face_112(frames[i], lmk) for i in sub])
    if "lse" in config.metrics:
        sync, sync_notes = sync_crops(frames, fps, False)
        notes += sync_notes
    else:
        sync = np.zeros((0, 224, 224, 3), np.uint8)
    return FaceCrops(aligned, sync, fps, notes)


def sync_crops(frames: np.ndarray, fps: float, aligned: bool) -> Tuple[np.ndarray, List[str]]:
    """SyncNet crops (T25, 224, 224, 3) uint8 BGR at 25 fps of (T, H, W, 3) uint8 RGB frames at
    ``fps``: resized frames when ``aligned``, else a Haar face track over the clip (running median
    of 9 frames; frames without a face take the nearest track box, counted in the notes)."""
    import cv2

    idx25 = nearest_frame_indices(len(frames), fps, SYNCNET_FPS)
    if aligned:
        return np.stack([cv2.resize(frames[i], (224, 224))[..., ::-1] for i in idx25]), []
    notes = []
    try:
        boxes, found = face_track(frames, window=9)
    except NoFaceError as err:
        raise ValueError(f"no face found by the Haar detector for the SyncNet track: {err}") from err
    if not found.all():
        notes.append(f"SyncNet face track: no face in {int((~found).sum())} of {len(found)} frames (nearest track box used)")
    return np.stack([np.ascontiguousarray(syncnet_crop(frames[i], boxes[i])[..., ::-1]) for i in idx25]), notes


# ---------------------------------------------------------------- built-in pair / set metrics


def lse_pair_metric(pair: ClipPair, ctx: EvalContext) -> dict:
    if pair.audio is None:
        raise MetricSkipped("no audio track: LSE not computed")
    key = pair.generated_key
    crops = ctx.crops(key, pair.generated, pair.fps)
    res = compute_lse(ctx.syncnet, crops.sync_bgr, pair.audio, fps=SYNCNET_FPS, vshift=ctx.config.vshift, batch_size=ctx.config.batch_size, device=ctx.config.device)
    if abs(pair.fps - SYNCNET_FPS) > 1e-6:
        res.notes.append(f"video resampled from {pair.fps:g} fps to 25 fps by nearest-frame index")
    out = {"LSE-D": res.lse_d, "LSE-C": res.lse_c, "offset": res.offset, "lse_windows": res.num_windows, "lse_curve": res.mean_dists, "lse_notes": res.notes}
    if ctx.config.sync_protocol == "reencode":
        from .reencode import REENCODE_PROTOCOL, reencode_frames

        # The whole frame goes through the codec (as a user's video would), then the same face
        # cropping and SyncNet run on the decoded frames.
        frames = reencode_frames(pair.generated, pair.fps)
        sync, notes = sync_crops(frames, REENCODE_PROTOCOL["fps"], ctx.config.aligned)
        rr = compute_lse(ctx.syncnet, sync, pair.audio, fps=SYNCNET_FPS, vshift=ctx.config.vshift, batch_size=ctx.config.batch_size, device=ctx.config.device)
        out.update({"LSE-D_reencoded": rr.lse_d, "LSE-C_reencoded": rr.lse_c, "offset_reencoded": rr.offset,
                    "lse_reencoded_windows": rr.num_windows})
        if notes:
            out["lse_reencoded_notes"] = notes
    elif ctx.config.sync_protocol != "given":
        raise ValueError(f"expected sync_protocol 'given' or 'reencode', got {ctx.config.sync_protocol!r}")
    return out


def csim_pair_metric(pair: ClipPair, ctx: EvalContext) -> dict:
    if pair.reference is None:
        raise MetricSkipped("no reference clip: CSIM not computed")
    g = ctx.csim_features(pair.generated_key, pair.generated, pair.fps)
    r = ctx.csim_features(pair.reference_key, pair.reference, pair.fps)
    out = {}
    if ctx.config.csim_mode == "frame" and len(g) != len(r):
        n = min(len(g), len(r))
        out["csim_note"] = f"frame counts differ ({len(g)} vs {len(r)}): first {n} frames paired"
        g, r = g[:n], r[:n]
    out["csim_expr"] = cosine_similarity_score(g, r, mode=ctx.config.csim_mode)
    out["CSIM"] = out["csim_expr"]  # deprecated alias of csim_expr, kept for one release
    return out


def csim_id_pair_metric(pair: ClipPair, ctx: EvalContext) -> dict:
    """``csim_id``: ArcFace identity cosine between the source (real) clip and the generated clip,
    on the aligned 112x112 crops, frames paired by index (the shorter length), mean over frames."""
    if pair.real is None:
        raise MetricSkipped("no source (real) clip: csim_id not computed")
    g = torch.from_numpy(ctx.embed(pair.generated_key, pair.generated, pair.fps))
    r = torch.from_numpy(ctx.embed(pair.real_key, pair.real, pair.fps))
    out = {}
    if len(g) != len(r):
        n = min(len(g), len(r))
        out["csim_id_note"] = f"frame counts differ ({len(g)} vs {len(r)}): first {n} frames paired"
        g, r = g[:n], r[:n]
    out["csim_id"] = cosine_similarity_score(g, r, mode="frame")
    return out


def fad_collect_pair_metric(pair: ClipPair, ctx: EvalContext) -> dict:
    """Collects ArcFace embeddings for the set-level FAD (computed by :func:`fad_set_metric`)."""
    if pair.is_real:  # real rows are FAD's reference set; the table shows "—" (no per-clip skip noise)
        return {}
    if pair.real is None:
        raise MetricSkipped("no real clip for FAD")
    gen = ctx.embed(pair.generated_key, pair.generated, pair.fps)
    real_key = pair.real_key
    real = ctx.embed(real_key, pair.real, pair.fps)
    ctx.fad_gen.setdefault(pair.method, {})[pair.generated_key] = gen
    ctx.fad_real.setdefault(pair.method, {})[real_key] = real
    return {"fad_frames": int(len(gen))}


def fad_set_metric(method: str, ctx: EvalContext) -> dict:
    gen = ctx.fad_gen.get(method)
    real = ctx.fad_real.get(method)
    if not gen or not real:
        return {}
    g, r = np.concatenate(list(gen.values())), np.concatenate(list(real.values()))
    if len(g) < 2 or len(r) < 2:
        return {"fad_note": f"FAD needs >= 2 frames per set, got {len(r)} real and {len(g)} generated"}
    res = fad_from_embeddings(r, g)
    return {"FAD": res.fad, "fad_real_frames": res.n_real, "fad_generated_frames": res.n_generated, "fad_eps": res.eps, "fad_note": res.note}


PairMetric = Callable[[ClipPair, EvalContext], dict]
SetMetric = Callable[[str, EvalContext], dict]

DEFAULT_PAIR_METRICS: Dict[str, PairMetric] = {"fad": fad_collect_pair_metric, "lse": lse_pair_metric, "csim": csim_pair_metric,
                                               "csim_id": csim_id_pair_metric}
DEFAULT_SET_METRICS: Dict[str, SetMetric] = {"fad": fad_set_metric}


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def run_evaluation(
    groups: Iterable[Union[List[ClipPair], Tuple[str, str, Exception]]],
    ctx: EvalContext,
    pair_metrics: Optional[Sequence[PairMetric]] = None,
    set_metrics: Optional[Sequence[SetMetric]] = None,
    methods: Optional[Sequence[str]] = None,
    progress: bool = True,
    total: Optional[int] = None,
) -> dict:
    """Run pair metrics on every clip pair and set metrics per method.

    ``groups`` yields, per source clip, either the list of its ClipPairs (one per method; they
    may share real/reference keys) or ``(clip_name, path, exception)`` for a clip that could not
    be read: those are listed under ``unreadable``, never dropped silently.
    Returns a dict with ``clips`` (per pair), ``methods`` (aggregates), ``unreadable``, ``skipped``.
    """
    if pair_metrics is None:
        pair_metrics = [DEFAULT_PAIR_METRICS[m] for m in ctx.config.metrics if m in DEFAULT_PAIR_METRICS]
    if set_metrics is None:
        set_metrics = [DEFAULT_SET_METRICS[m] for m in ctx.config.metrics if m in DEFAULT_SET_METRICS]
    from tqdm.auto import tqdm

    clips, unreadable, skipped = [], [], []
    method_order: List[str] = list(methods or [])
    t0 = time.time()
    for group in tqdm(groups, desc="clips", total=total, disable=not progress):
        if isinstance(group, tuple):
            name, path, err = group
            unreadable.append({"clip": name, "path": str(path), "reason": f"{type(err).__name__}: {err}"})
            continue
        for pair in group:
            if pair.method not in method_order:
                method_order.append(pair.method)
            rec = {"clip": pair.name, "method": pair.method, "notes": list(pair.notes)}
            for fn in pair_metrics:
                fname = getattr(fn, "__name__", repr(fn))
                try:
                    rec.update({k: _jsonable(v) for k, v in fn(pair, ctx).items()})
                except MetricSkipped as e:
                    skipped.append({"clip": pair.name, "method": pair.method, "metric": fname, "reason": str(e)})
                except ValueError as e:  # e.g. no face found, clip too short: listed, not dropped
                    unreadable.append({"clip": pair.name, "method": pair.method, "metric": fname, "reason": f"ValueError: {e}"})
            face_notes = [n for key in (pair.generated_key,) if key in ctx.faces for n in ctx.faces[key].notes]
            rec["notes"] += face_notes
            clips.append(rec)
        ctx.release()
    per_method = {}
    for m in method_order:
        rows = [c for c in clips if c["method"] == m]
        agg: Dict[str, object] = {"num_clips": len(rows)}
        numeric_keys = sorted({k for c in rows for k, v in c.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("offset", "offset_reencoded")})
        for k in numeric_keys:
            vals = [c[k] for c in rows if isinstance(c.get(k), (int, float)) and c.get(k) is not None]
            if vals:
                agg[k] = float(np.mean(vals))
                agg[f"{k}_n"] = len(vals)
        for key in ("offset", "offset_reencoded"):
            offs = [c[key] for c in rows if key in c]
            if offs:
                agg[f"{key}_median"] = float(np.median(offs))
        curves = [c["lse_curve"] for c in rows if "lse_curve" in c]
        if curves:
            agg["lse_curve_mean"] = np.mean(np.array(curves), axis=0).tolist()
        for fn in set_metrics:
            agg.update({k: _jsonable(v) for k, v in fn(m, ctx).items()})
        per_method[m] = agg
    return {"clips": clips, "methods": per_method, "method_order": method_order, "unreadable": unreadable, "skipped": skipped, "seconds": time.time() - t0}
