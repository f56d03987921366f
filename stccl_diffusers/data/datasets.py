"""``PairedClipDataset``: aligned (neutral anchor, emotional target) clips for metric learning.

Every source is reduced to the same thing: a list of *aligned sequences*, each a DTW-style
path ``(2, L)`` ``[[neutral_idx...], [emotional_idx...]]`` plus two frame readers. An item
is ``T`` consecutive aligned steps of one sequence::

    {"anchor": (T, 3, H, W) float32 in [-1, 1]   # neutral frames
     "target": (T, 3, H, W) float32 in [-1, 1]}  # emotional frames saying the same thing

Sources: MEAD prepared the official way (``align_img`` JPEGs + the official manifest),
folders of paired videos (a ``stccl-pair`` manifest, or DTW on the fly), synthetic pairs
rendered on the fly, and the tiled comparison videos of ``real_pairs/``.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .pairing import ClipPair, discover_pairs, manifest_frame_paths, pair_clips, read_manifest, split_pair_key
from .video_io import VideoReadError, read_frames_dir, read_image, read_video

logger = logging.getLogger(__name__)

SKIPPED_REPORT = "skipped_clips.tsv"


def write_skipped_report(skipped: Sequence[Tuple[str, str]], out_dir: str) -> Optional[str]:
    """Every skipped clip as `name<TAB>reason` in `out_dir/skipped_clips.tsv` (None when none was skipped)."""
    path = os.path.join(out_dir, SKIPPED_REPORT)
    if not skipped:
        if os.path.isfile(path):
            os.remove(path)  # this run skipped nothing: no stale report from an earlier one
        return None
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\t{' '.join(str(why).split())}\n" for name, why in skipped))
    return path


__all__ = [
    "write_skipped_report",
    "AlignedSequence",
    "PairedClipDataset",
    "REAL_PAIR_TILES",
    "frames_to_tensor",
    "mead_sequences",
    "video_sequences",
    "real_pair_sequences",
    "select_sequences",
]

# real_pairs/ tiles (x offsets of the 256-wide tiles) and the label-free square crop inside
# a tile: the green label sits at y < 60, the face is centred, so (x0, y0, side) = (30, 60, 196).
REAL_PAIR_TILES = {"source": 0, "reference": 256, "stccl_vd": 512, "ned": 768}
REAL_PAIR_CROP = (30, 60, 196)


def frames_to_tensor(frames: np.ndarray, size: Optional[int] = None) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB -> (T, 3, size, size) float32 in [-1, 1] (area resize)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected frames (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if size is not None and frames.shape[1:3] != (size, size):
        interp = cv2.INTER_AREA if frames.shape[1] > size else cv2.INTER_LINEAR
        frames = np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in frames])
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass
class AlignedSequence:
    """One aligned clip pair. ``read_neutral(idx)`` / ``read_emotional(idx)`` return
    (len(idx), H, W, 3) uint8 RGB; ``path`` is (2, L) int64."""

    name: str
    path: np.ndarray
    read_neutral: Callable[[Sequence[int]], np.ndarray]
    read_emotional: Callable[[Sequence[int]], np.ndarray]
    emotion: str = ""


class _VideoCache:
    """Decoded videos, least recently used evicted (clips are small; decoding is the cost)."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._d: "OrderedDict[str, np.ndarray]" = OrderedDict()

    def get(self, path: str) -> np.ndarray:
        if path in self._d:
            self._d.move_to_end(path)
            return self._d[path]
        if os.path.isdir(path):
            frames = read_frames_dir(path, with_audio=False).frames
        else:
            frames = read_video(path, with_audio=False).frames
        self._d[path] = frames
        if len(self._d) > self.capacity:
            self._d.popitem(last=False)
        return frames


def _take(frames: np.ndarray, idx: Sequence[int], name: str) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(frames)):
        # Official manifests occasionally run one frame past a decoded clip: clamp, but only by a little.
        if idx.max() >= len(frames) + 2:
            raise VideoReadError(f"frame {int(idx.max())} requested but {name!r} has {len(frames)} frames")
        idx = np.clip(idx, 0, len(frames) - 1)
    return frames[idx]


def mead_sequences(root: str, manifest: str, ext: str = ".jpg", emotions: Optional[Sequence[str]] = None) -> Tuple[List[AlignedSequence], List[Tuple[str, str]]]:
    """Official MEAD preparation: ``root/<spk>/align_img/<emo>/<clip>/<idx:06d>.jpg`` + the manifest.

    Returns ``(sequences, skipped)``; a pair whose first/last frame files are missing is skipped
    with a reason (a partial MEAD download is common).
    """
    man = read_manifest(manifest)
    seqs, skipped = [], []
    for spk, es in sorted(man.items()):
        for emo, ps in sorted(es.items()):
            if emotions is not None and emo not in emotions:
                continue
            for key, path in sorted(ps.items()):
                n_files, e_files = manifest_frame_paths(root, spk, emo, key, path, ext)
                missing = [f for f in (n_files[0], n_files[-1], e_files[0], e_files[-1]) if not os.path.isfile(f)]
                if missing:
                    skipped.append((f"{spk}/{emo}/{key}", f"missing frame file {missing[0]!r}"))
                    continue
                n_clip, e_clip = split_pair_key(key)
                n_dir = os.path.join(root, spk, "align_img", "neutral", n_clip)
                e_dir = os.path.join(root, spk, "align_img", emo, e_clip)

                def reader(d):
                    return lambda idx: np.stack([read_image(os.path.join(d, f"{int(i):06d}{ext}")) for i in idx])

                seqs.append(AlignedSequence(f"{spk}/{emo}/{key}", path, reader(n_dir), reader(e_dir), emo))
    return seqs, skipped


def video_sequences(
    root: str,
    manifest: Optional[str] = None,
    layout: str = "auto",
    level: Optional[str] = None,
    cache: Optional[_VideoCache] = None,
) -> Tuple[List[AlignedSequence], List[Tuple[str, str]]]:
    """Folders of paired videos (MEAD ``video/front`` layout or emotion-named files).

    With ``manifest`` (from ``stccl-pair``) pairs are looked up by (speaker, emotion, key);
    without it each pair is DTW-aligned now. Unreadable pairs are skipped with a reason.
    """
    cache = cache or _VideoCache()
    pairs = discover_pairs(root, layout, level)
    man = read_manifest(manifest) if manifest else None
    seqs, skipped = [], []
    for cp in pairs:
        name = f"{cp.speaker}/{cp.emotion}/{cp.key}"
        if man is not None:
            path = man.get(cp.speaker, {}).get(cp.emotion, {}).get(cp.key)
            if path is None:
                skipped.append((name, "not in manifest"))
                continue
        else:
            try:
                path = pair_clips(cp)
            except ValueError as e:
                skipped.append((name, str(e)))
                continue
        seqs.append(
            AlignedSequence(
                name,
                path,
                (lambda p: lambda idx: _take(cache.get(p), idx, p))(cp.neutral),
                (lambda p: lambda idx: _take(cache.get(p), idx, p))(cp.emotional),
                cp.emotion,
            )
        )
    return seqs, skipped


def real_pair_sequences(
    directory: str,
    target: str = "stccl_vd",
    anchor: str = "source",
    crop: Optional[Tuple[int, int, int]] = REAL_PAIR_CROP,
    cache: Optional[_VideoCache] = None,
    files: Optional[Sequence[str]] = None,
) -> Tuple[List[AlignedSequence], List[Tuple[str, str]]]:
    """The tiled comparison videos (1024x256: Source | Reference | STCCL_VD | NED).

    Frame k of the ``anchor`` tile pairs with frame k of the ``target`` tile (identity path).
    ``crop`` = (x0, y0, side) inside each tile removes the green label (y < 60).
    """
    for t in (target, anchor):
        if t not in REAL_PAIR_TILES:
            raise ValueError(f"expected a tile in {list(REAL_PAIR_TILES)}, got {t!r}")
    cache = cache or _VideoCache()
    names = sorted(files) if files is not None else sorted(n for n in os.listdir(directory) if n.endswith(".mp4"))
    seqs, skipped = [], []
    for n in names:
        p = os.path.join(directory, n)
        try:
            frames = cache.get(p)
        except VideoReadError as e:
            skipped.append((n, str(e)))
            continue
        if frames.shape[1:3] != (256, 1024):
            skipped.append((n, f"expected 1024x256 tiled frames, got {frames.shape[2]}x{frames.shape[1]}"))
            continue
        T = len(frames)

        def tile(p, x):
            def read(idx):
                f = _take(cache.get(p), idx, p)[:, :, x : x + 256]
                if crop is not None:
                    cx, cy, s = crop
                    f = f[:, cy : cy + s, cx : cx + s]
                return np.ascontiguousarray(f)

            return read

        path = np.stack([np.arange(T), np.arange(T)])
        emo = next((e for e in ("angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised", "neutral") if e in n), "")
        seqs.append(AlignedSequence(n, path, tile(p, REAL_PAIR_TILES[anchor]), tile(p, REAL_PAIR_TILES[target]), emo))
    return seqs, skipped


def select_sequences(sequences: Sequence[AlignedSequence], include: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None) -> List[AlignedSequence]:
    """The sequences whose name starts with one of ``include`` (all when None) and with none of
    ``exclude``. A non-empty selection that keeps nothing is an error naming the available clips."""
    inc = tuple(include) if include else None
    exc = tuple(exclude or ())
    kept = [q for q in sequences if (inc is None or q.name.startswith(inc)) and not (exc and q.name.startswith(exc))]
    if sequences and not kept and (inc or exc):
        raise ValueError(f"no clip left after include={list(inc or [])} exclude={list(exc)}; clips: {[q.name for q in sequences][:20]}")
    return kept


class _SyntheticSequences:
    """Marker for on-the-fly synthetic pairs (rendered per item, nothing cached)."""

    def __init__(self, num_pairs: int, seed: int):
        self.num_pairs = num_pairs
        self.seed = seed


class PairedClipDataset(Dataset):
    """Aligned (anchor = neutral, target = emotional) clips of ``num_frames`` steps.

    Build with one of the ``from_*`` constructors. ``size``: output frames are ``size x size``
    (the metric resizes again to its ``input_size``). ``stride``: step between window starts
    (default ``num_frames``: non-overlapping windows). ``aligner``: optional callable
    ``(anchor_frames, target_frames) -> (anchor_frames, target_frames)`` on uint8 (T, H, W, 3)
    arrays, e.g. :class:`stccl_diffusers.data.face_align.FaceAligner` (pose alignment, §4.1).

    ``include`` / ``exclude``: clip-name prefixes (a speaker id such as ``M003``, or a file name):
    keep only the matching sequences / drop them, e.g. to hold speakers out of training.

    ``skipped`` lists ``(name, reason)`` of the pairs that could not be used.
    """

    def __init__(
        self,
        sequences,
        num_frames: int = 4,
        size: int = 224,
        stride: Optional[int] = None,
        aligner: Optional[Callable] = None,
        skipped: Optional[List[Tuple[str, str]]] = None,
        include: Optional[Sequence[str]] = None,
        exclude: Optional[Sequence[str]] = None,
    ):
        if num_frames < 1:
            raise ValueError(f"expected num_frames >= 1, got {num_frames}")
        self.num_frames = int(num_frames)
        self.size = int(size)
        self.stride = int(stride or num_frames)
        self.aligner = aligner
        self.skipped = list(skipped or [])
        self.synthetic = sequences if isinstance(sequences, _SyntheticSequences) else None
        self.sequences: List[AlignedSequence] = [] if self.synthetic else select_sequences(sequences, include, exclude)
        self.windows: List[Tuple[int, int]] = []
        for s, seq in enumerate(self.sequences):
            L = seq.path.shape[1]
            if L < self.num_frames:
                self.skipped.append((seq.name, f"only {L} aligned steps, need num_frames={self.num_frames}"))
                continue
            self.windows.extend((s, start) for start in range(0, L - self.num_frames + 1, self.stride))
        if not self.synthetic and not self.windows:
            raise ValueError(f"no usable clip pairs (skipped {len(self.skipped)}: {self.skipped[:3]})")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_synthetic(cls, num_pairs: int = 1000, num_frames: int = 4, size: int = 64, seed: int = 0) -> "PairedClipDataset":
        """Synthetic pairs rendered on the fly; item ``i`` is deterministic (seed ``seed * 1_000_003 + i``)."""
        return cls(_SyntheticSequences(int(num_pairs), int(seed)), num_frames, size)

    @classmethod
    def from_mead(cls, root: str, manifest: str, num_frames: int = 4, size: int = 224, ext: str = ".jpg", **kw) -> "PairedClipDataset":
        seqs, skipped = mead_sequences(root, manifest, ext)
        return cls(seqs, num_frames, size, skipped=skipped, **kw)

    @classmethod
    def from_videos(cls, root: str, manifest: Optional[str] = None, num_frames: int = 4, size: int = 224, layout: str = "auto", level: Optional[str] = None, **kw) -> "PairedClipDataset":
        seqs, skipped = video_sequences(root, manifest, layout, level)
        return cls(seqs, num_frames, size, skipped=skipped, **kw)

    @classmethod
    def from_real_pairs(cls, directory: str, target: str = "stccl_vd", num_frames: int = 4, size: int = 224, files: Optional[Sequence[str]] = None, **kw) -> "PairedClipDataset":
        if files is None and (kw.get("include") or kw.get("exclude")):
            # Decode only the selected videos (names are the file names).
            probe = [AlignedSequence(n, np.zeros((2, 0), np.int64), None, None) for n in sorted(os.listdir(directory)) if n.endswith(".mp4")]
            files = [q.name for q in select_sequences(probe, kw.get("include"), kw.get("exclude"))]
        seqs, skipped = real_pair_sequences(directory, target, files=files)
        return cls(seqs, num_frames, size, skipped=skipped, **kw)

    # ------------------------------------------------------------------ access
    def num_clips(self) -> int:
        """Number of whole aligned clips (:meth:`clip`); synthetic: the number of pairs."""
        return self.synthetic.num_pairs if self.synthetic else len(self.sequences)

    def clip(self, s: int) -> Tuple[str, torch.Tensor, torch.Tensor]:
        """Whole aligned clip ``s``: ``(name, anchor, target)``, each (L, 3, size, size) in [-1, 1]
        with frame k of one paired with frame k of the other (the aligner applied to the whole clip).
        Raises ``NoFaceError`` when the aligner finds no face."""
        if self.synthetic:
            from .synthetic import make_pair

            seed = self.synthetic.seed * 1_000_003 + s
            p = make_pair(seed, size=self.size, with_audio=False)
            a, t = p.neutral.frames[p.path[0]], p.emotional.frames[p.path[1]]
            name = f"synthetic/{seed}"
        else:
            seq = self.sequences[s]
            a, t, name = seq.read_neutral(seq.path[0]), seq.read_emotional(seq.path[1]), seq.name
        if self.aligner is not None:
            a, t = self.aligner(a, t)
        return name, frames_to_tensor(a, self.size), frames_to_tensor(t, self.size)

    def __len__(self) -> int:
        return self.synthetic.num_pairs if self.synthetic else len(self.windows)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        if self.synthetic:
            from .synthetic import pair_clip_tensors

            a, t = pair_clip_tensors(self.synthetic.seed * 1_000_003 + i, self.num_frames, self.size)
            return {"anchor": a, "target": t}
        from .face_align import NoFaceError

        for attempt in range(len(self.windows)):
            s, start = self.windows[(i + attempt) % len(self.windows)]
            seq = self.sequences[s]
            steps = seq.path[:, start : start + self.num_frames]
            a = seq.read_neutral(steps[0])
            t = seq.read_emotional(steps[1])
            if self.aligner is not None:
                try:
                    a, t = self.aligner(a, t)
                except NoFaceError as e:
                    # Reported and counted; the next window is used instead (never a blank or copied frame).
                    self.skipped.append((f"{seq.name}@{start}", str(e)))
                    logger.warning("skipped %s window %d: %s", seq.name, start, e)
                    continue
            return {"anchor": frames_to_tensor(a, self.size), "target": frames_to_tensor(t, self.size)}
        raise ValueError(f"no face found in any clip window ({len(self.skipped)} skipped)")
