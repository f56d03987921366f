"""Talking-head training clips: video + audio + emotion label, for the generator training scripts.

A folder is read recursively for `.mp4` files; a clip's emotion is the nearest parent folder
whose name is in the emotion vocabulary (MEAD layout: `<speaker>/video/front/<emotion>/level_1/
001.mp4`; also `<emotion>/<anything>.mp4`). Clips are decoded once into memory at the training
resolution. A clip that cannot be read, has no audio, has no emotion folder or is shorter than
`num_frames` is reported by name and counted (`dataset.skipped`), never silently dropped; if no
clip is usable the error lists why.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class _Clip:
    name: str
    frames: np.ndarray  # (T, H, W, 3) uint8 at the training resolution
    audio: np.ndarray  # (N,) float32 in [-1, 1]
    fps: float
    emotion: int
    face_boxes: np.ndarray | None = None  # (T, 4) x1, y1, x2, y2 at the training resolution (face_boxes="track")
    reference: np.ndarray | None = None  # (H, W, 3) uint8 identity image; None: frames[0]
    neutral_audio: np.ndarray | None = None  # (N,) the same sentence's neutral recording (reference="neutral")


#: Reference images a dataset can give (see TalkingClipDataset's `reference`).
REFERENCES = ("first_frame", "neutral")


def _neutral_sibling(path: Path, root: Path, emotion: str) -> Path:
    """The same speaker's neutral recording of the same sentence: MEAD's `<speaker>/video/front/
    <emotion>/level_k/001.mp4` -> `<speaker>/video/front/neutral/level_1/001.mp4`."""
    parts = list(path.relative_to(root).parts)
    i = len(parts) - 1 - parts[::-1].index(emotion)
    parts[i] = "neutral"
    if i + 1 < len(parts) - 1 and parts[i + 1].startswith("level_"):
        parts[i + 1] = "level_1"  # MEAD records neutral at one level only
    return root.joinpath(*parts)


#: Marks a folder whose clips this package synthesized (the only folders synthesis may write to).
SYNTHETIC_MARKER = ".stccl_synthetic"


def demo_data_roots() -> list[Path]:
    """Folders the demos own: `./outputs` and the package cache (`$XDG_CACHE_HOME/stccl_diffusers`)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stccl_diffusers"
    return [(Path.cwd() / "outputs").resolve(), cache.resolve()]


def _found_summary(folder: Path) -> str:
    kinds = Counter((p.suffix.lower() or "<no suffix>") for p in folder.rglob("*") if p.is_file())
    return ", ".join(f"{n} {k}" for k, n in kinds.most_common(6)) or "nothing"


def ensure_synthetic_clips(
    data_dir: str | Path, speakers: int = 4, clips: int = 2, size: int = 64, seed: int = 0,
    emotions: Sequence[str] | None = None, coupling: float | None = None, loudness_normalised: bool = False,
) -> Path:
    """Write a MEAD-like synthetic set with `stccl-synth` unless `data_dir` already holds .mp4 clips.

    ``coupling``: the κ of the issue-22 world (`stccl-synth --coupling`); None writes the original
    world and reuses any set. A number refuses to reuse a set written with another κ (its
    ``ground_truth.json`` says which; a set without the key is the original world, κ = 0).
    ``loudness_normalised``: every clip's audio at one RMS (`stccl-synth --normalise-loudness`); with
    a ``coupling``, a set written the other way is refused too."""
    import json

    from .synthetic import synth_main

    data_dir = Path(data_dir)
    if data_dir.is_dir() and any(data_dir.rglob("*.mp4")):
        truth = data_dir / "ground_truth.json"
        if coupling is not None:
            record = json.loads(truth.read_text()) if truth.is_file() else None
            have = None if record is None else float(record.get("coupling", 0.0))
            if have is None or have != float(coupling):
                raise ValueError(f"expected the synthetic set in {data_dir} to have coupling kappa={coupling:g}, found "
                                 f"{'no ground_truth.json' if have is None else f'kappa={have:g}'}: use another folder")
            normalised = bool(record.get("loudness_normalised", False))
            if normalised != bool(loudness_normalised):
                raise ValueError(f"expected the synthetic set in {data_dir} to have "
                                 f"{'loudness-normalised' if loudness_normalised else 'raw (not normalised)'} audio, "
                                 f"found {'normalised' if normalised else 'raw'} audio: use another folder")
        return data_dir
    argv = ["--out", str(data_dir), "--speakers", str(speakers), "--clips", str(clips), "--size", str(size),
            "--seed", str(seed)]
    if coupling is not None:
        argv += ["--coupling", str(float(coupling))]
    if emotions:
        argv += ["--emotions", *emotions]
    if loudness_normalised:
        argv += ["--normalise-loudness"]
    synth_main(argv)
    return data_dir


def prepare_clip_folder(data_dir: str | Path, synthesize: bool = False, **synth_kwargs) -> bool:
    """Check `data_dir` holds .mp4 clips; synthesize demo clips only into a folder the demo owns.

    Synthesis (`synthesize=True`, keyword arguments as in `ensure_synthetic_clips`) happens only
    when `data_dir` lies under `outputs/` or the cache and is missing, empty or already marked as
    synthetic: never in a folder of the user's. Anything else without clips is an error naming the
    folder and what it holds. Returns True when the folder holds synthetic (demo) clips.
    """
    folder = Path(data_dir)
    marked = (folder / SYNTHETIC_MARKER).is_file()
    if folder.is_dir() and any(folder.rglob("*.mp4")):
        return marked
    resolved = folder.resolve()
    owned = any(resolved == root or root in resolved.parents for root in demo_data_roots())
    empty = not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))
    if synthesize and owned and (empty or marked):
        ensure_synthetic_clips(folder, **synth_kwargs)
        (folder / SYNTHETIC_MARKER).write_text("clips written by stccl_diffusers' demo synthesis\n")
        return True
    fix = ("pass --data_dir a folder of .mp4 clips (with audio) under emotion-named folders (MEAD layout)"
           + ("; demo clips are synthesized only into a missing or empty folder under outputs/ or the cache"
              if synthesize else ""))
    if not folder.exists():
        raise FileNotFoundError(f"--data_dir {folder} does not exist; {fix}")
    if not folder.is_dir():
        raise NotADirectoryError(f"--data_dir {folder} is a file, not a folder; {fix}")
    raise ValueError(f"--data_dir {folder} holds no .mp4 clip (found: {_found_summary(folder)}); {fix}")


CROPS = ("center", "face")


def square_window(frames: np.ndarray, crop: str = "center", face_margin: float = 1.6) -> tuple[int, int, int]:
    """(top, left, side) of the square a non-square clip is cut to; never a squash.

    `crop="center"`: the largest centred square. `crop="face"`: a square of `face_margin` times
    the clip's face box (`data.face_align.clip_face_box`), centred on the face and kept inside the
    frame; a clip without a detectable face raises `NoFaceError` (the dataset skips and names it).
    """
    if crop not in CROPS:
        raise ValueError(f"expected crop in {CROPS}, got {crop!r}")
    h, w = frames.shape[1:3]
    side = min(h, w)
    if crop == "center":
        return (h - side) // 2, (w - side) // 2, side
    from .face_align import NoFaceError, clip_face_box

    box = clip_face_box(frames)
    if box is None:
        raise NoFaceError("no face found for crop='face' (use crop='center' for clips without a detectable face)")
    x, y, bw, bh = (float(v) for v in box)
    side = int(min(side, max(8, round(max(bw, bh) * face_margin))))
    cx, cy = x + bw / 2, y + bh / 2
    top = int(np.clip(round(cy - side / 2), 0, h - side))
    left = int(np.clip(round(cx - side / 2), 0, w - side))
    return top, left, side


def _resize(frames: np.ndarray, size: int, crop: str = "center") -> np.ndarray:
    """Cut a non-square clip to a square (`square_window`: centre or face; never squash), then
    resize to `size`."""
    import cv2

    h, w = frames.shape[1:3]
    if h != w or crop == "face":
        top, left, side = square_window(frames, crop)
        frames = frames[:, top:top + side, left:left + side]
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    interp = cv2.INTER_AREA if frames.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in frames])


def _track_boxes(frames: np.ndarray, size: int, crop: str = "center") -> tuple[np.ndarray, int]:
    """Per-frame face boxes of a clip at the training resolution: ((T, 4) float32 x1, y1, x2, y2,
    frames without a face). Detected on the original frames (a 32-px frame has no detectable
    face), then mapped through the same square window and resize as the frames (`_resize`)."""
    from .face_align import face_track

    boxes, found = face_track(frames)  # NoFaceError (a ValueError) when the clip has no face
    h, w = frames.shape[1:3]
    top, left, side = square_window(frames, crop) if (h != w or crop == "face") else (0, 0, h)
    s = size / side
    x, y, bw, bh = boxes.T
    out = np.stack([(x - left) * s, (y - top) * s, (x + bw - left) * s, (y + bh - top) * s], 1)
    return np.clip(out, 0, size).astype(np.float32), int((~found).sum())


class TalkingClipDataset(Dataset):
    """Windows of `num_frames` frames from a folder of labelled talking-head clips.

    Item: {"frames": (T, 3, H, W) float32 in [-1, 1], "reference": (3, H, W) (the identity image,
    see `reference`), "audio": (T * sr / fps,) float32 waveform of the window,
    "emotion": int index into `emotions`, "face_box": (4,) x1, y1, x2, y2 in pixels (the whole
    frame: clips are face crops), "clip_index": int}.

    `face_boxes="track"`: items also carry "face_boxes" (T, 4) x1, y1, x2, y2 pixels per frame, a
    face track over the clip (`data.face_align.face_track`, running median, frames without a face
    take the nearest detected box); EAT's `bboxs` come from it (`adapters.eat.eat_collate`). A clip
    without any face is skipped and named; the frames without a face are counted in
    `dataset.faceless_frames` {clip path: count}. `"frame"` (default): the whole frame.

    `target_fps` (DICE-Talk: 12.5): frames are first resampled from each clip's real fps to this
    rate (nearest frame), and items also carry the whole clip's audio for models that encode it
    as a whole: "clip_audio" (zero-padded to the longest clip, so items batch), "clip_audio_len"
    and "start_frame" (the window's first frame at `target_fps`).
    """

    def __init__(
        self,
        root: str | Path,
        emotions: Sequence[str],
        num_frames: int = 8,
        resolution: int = 32,
        sample_rate: int = 16000,
        windows_per_clip: int = 4,
        max_clips: int | None = None,
        progress: bool = True,
        target_fps: float | None = None,
        crop: str = "center",
        face_boxes: str = "frame",
        reference: str = "first_frame",
    ) -> None:
        from tqdm.auto import tqdm

        from .video_io import read_video

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"training data folder not found: {root}")
        if num_frames < 1 or resolution < 8:
            raise ValueError(f"expected num_frames >= 1 and resolution >= 8, got {num_frames}, {resolution}")
        self.emotions = list(emotions)
        self.num_frames, self.resolution, self.sample_rate = num_frames, resolution, sample_rate
        self.windows_per_clip, self.target_fps = windows_per_clip, target_fps
        if crop not in CROPS:
            raise ValueError(f"expected crop in {CROPS}, got {crop!r}")
        self.crop = crop
        if face_boxes not in ("frame", "track"):
            raise ValueError(f"expected face_boxes 'frame' or 'track', got {face_boxes!r}")
        self.face_boxes = face_boxes
        self.faceless_frames: dict[str, int] = {}
        if reference not in REFERENCES:
            raise ValueError(f"expected reference in {REFERENCES}, got {reference!r}")
        self.reference = reference
        files = sorted(root.rglob("*.mp4"))
        if max_clips is not None:
            files = files[:max_clips]
        self.clips: list[_Clip] = []
        self.skipped: list[tuple[str, str]] = []
        for path in tqdm(files, desc=f"reading clips in {root.name}", disable=not progress):
            emo = next((p.name for p in path.relative_to(root).parents if p.name in self.emotions), None)
            if emo is None:
                self.skipped.append((str(path), f"no parent folder named one of {self.emotions}"))
                continue
            try:
                clip = read_video(str(path), sample_rate=sample_rate, require_audio=True)
            except ValueError as err:  # VideoReadError / NoAudioError are ValueErrors
                self.skipped.append((str(path), str(err)))
                continue
            if target_fps is not None:
                keep = np.arange(int(clip.frames.shape[0] * target_fps / clip.fps))
                keep = np.minimum(np.round(keep * clip.fps / target_fps).astype(int), clip.frames.shape[0] - 1)
                clip.frames, clip.fps = clip.frames[keep], float(target_fps)
            if clip.frames.shape[0] < num_frames:
                self.skipped.append((str(path), f"{clip.frames.shape[0]} frames < num_frames={num_frames}"))
                continue
            try:
                frames = _resize(clip.frames, resolution, crop)
                boxes = _track_boxes(clip.frames, resolution, crop) if face_boxes == "track" else None
            except ValueError as err:  # NoFaceError with crop="face" or face_boxes="track"
                self.skipped.append((str(path), str(err)))
                continue
            if boxes is not None:
                boxes, missing = boxes
                if missing:
                    self.faceless_frames[str(path)] = missing
            self.clips.append(_Clip(str(path), frames, clip.audio.astype(np.float32), clip.fps,
                                    self.emotions.index(emo), boxes))
        self.reference_fallbacks = 0
        if reference == "neutral":
            by_path = {c.name: c for c in self.clips}
            neutral = next((e for e in self.emotions if e == "neutral"), None)
            for c in self.clips:
                emo = self.emotions[c.emotion]
                sib = by_path.get(str(_neutral_sibling(Path(c.name), root, emo))) if neutral else None
                if sib is None:
                    self.reference_fallbacks += 1
                else:
                    c.reference = sib.frames[0]
                    c.neutral_audio = sib.audio  # the rollout reward's deployment-case audio (issue 22)
        if self.skipped:
            shown = min(5, len(self.skipped))
            warnings.warn(
                f"{len(self.skipped)} of {len(files)} clips in {root} skipped"
                + (f" (first {shown} named; all in `dataset.skipped`, written to <output_dir>/skipped_clips.tsv by "
                   "the training scripts)" if len(self.skipped) > shown else "")
                + ": " + "; ".join(f"{n} ({why})" for n, why in self.skipped[:shown])
            )
        if not self.clips:
            raise ValueError(f"no usable .mp4 clip with audio under {root} (found {len(files)} files; "
                             f"skipped: {self.skipped[:3]})")

    def __len__(self) -> int:
        return len(self.clips) * self.windows_per_clip

    def window(self, index: int) -> tuple[_Clip, int]:
        clip = self.clips[index % len(self.clips)]
        k = index // len(self.clips)
        span = clip.frames.shape[0] - self.num_frames
        start = int(round(span * k / max(1, self.windows_per_clip - 1))) if self.windows_per_clip > 1 else span // 2
        return clip, start

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, num_frames: int | None = None) -> dict:
        """Like `dataset[index]`, optionally with a longer window (validation videos), clamped to the clip."""
        clip, start = self.window(index)
        T, H = self.num_frames, self.resolution
        if num_frames is not None:
            T = min(int(num_frames), clip.frames.shape[0])
            start = min(start, clip.frames.shape[0] - T)
        frames = torch.from_numpy(clip.frames[start:start + T]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        ref = clip.frames[0] if clip.reference is None else clip.reference
        reference = torch.from_numpy(ref).permute(2, 0, 1).float() / 127.5 - 1.0
        spf = self.sample_rate / clip.fps
        a0, n = int(round(start * spf)), int(round(T * spf))
        audio = np.zeros(n, np.float32)
        seg = clip.audio[a0:a0 + n]
        audio[: len(seg)] = seg
        extra = {}
        if self.target_fps is not None:
            longest = max(len(c.audio) for c in self.clips)
            whole = np.zeros(longest, np.float32)
            whole[: len(clip.audio)] = clip.audio
            extra = {"clip_audio": torch.from_numpy(whole), "clip_audio_len": torch.tensor(len(clip.audio)),
                     "start_frame": torch.tensor(start)}
        if clip.face_boxes is not None:
            extra["face_boxes"] = torch.from_numpy(clip.face_boxes[start:start + T])
        if self.reference == "neutral":
            # The neutral recording of the same sentence, a window as long as `audio` from the same
            # start (its own timing: a neutral voice saying those words, not an aligned copy); zero-
            # padded past its end. A clip without a neutral sibling (counted in reference_fallbacks)
            # gives its own audio window and neutral_audio_own = True, so a batch can tell.
            src = clip.neutral_audio if clip.neutral_audio is not None else clip.audio
            na = np.zeros(n, np.float32)
            seg = src[a0:a0 + n]
            na[: len(seg)] = seg
            extra["neutral_audio"] = torch.from_numpy(na)
            extra["neutral_audio_own"] = torch.tensor(clip.neutral_audio is None)
        return {
            **extra,
            "frames": frames,
            "reference": reference,
            "audio": torch.from_numpy(audio),
            "emotion": torch.tensor(clip.emotion),
            "face_box": torch.tensor([0.0, 0.0, float(H), float(H)]),
            "fps": torch.tensor(float(clip.fps)),
            "clip_index": torch.tensor(index % len(self.clips)),
        }
