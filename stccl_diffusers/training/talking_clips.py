"""Audio-driven talking-head training clips: windows of frames with their audio and emotion.

Backend-neutral: items carry frames in ``[-1, 1]`` (the package convention), per-frame audio
features, the raw waveform of the window (for validation videos), the emotion *name* (each
backend maps names to its own labels: EAT indices, DICE priors) and per-frame face boxes.

The embedded default is :func:`synthetic_talking_clips` (procedural talking faces with sound,
:mod:`stccl_diffusers.data.synthetic`), cached on disk as ``.npz`` so a second run skips
rendering.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["TalkingClip", "audio_frame_features", "synthetic_talking_clips", "TalkingClipDataset"]


@dataclass
class TalkingClip:
    """One clip. frames: ``(T, H, W, 3)`` uint8 RGB; audio: ``(N,)`` float32 in ``[-1, 1]``;
    reference: ``(H, W, 3)`` uint8, a neutral frame of the same identity; bbox: ``(4,)`` face box
    ``[x0, y0, x1, y1]`` in pixels; name: where it came from (for error messages)."""

    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int
    fps: float
    emotion: str
    reference: np.ndarray
    bbox: np.ndarray
    name: str = ""


def audio_frame_features(audio: np.ndarray, sample_rate: int, fps: float, num_frames: int,
                         n_mels: int = 20, context: int = 1) -> np.ndarray:
    """Per-video-frame log-mel features: ``(num_frames, n_mels * (2 * context + 1))`` float32.

    The mel hop is one video frame (``sample_rate / fps`` samples, centred STFT), so mel column
    ``k`` sits at video frame ``k``; each frame stacks its ``context`` neighbours on each side
    (edge-replicated). Log-mel is scaled to roughly unit range: ``(log(mel + 1e-6) + 6) / 6``.
    """
    import librosa

    hop = int(round(sample_rate / fps))
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"expected a mono waveform (N,), got shape {audio.shape}")
    mel = librosa.feature.melspectrogram(y=audio.astype(np.float32), sr=sample_rate, n_fft=2 * hop,
                                         hop_length=hop, n_mels=n_mels, center=True)
    mel = (np.log(mel + 1e-6) + 6.0) / 6.0  # (n_mels, frames)
    if mel.shape[1] < num_frames:
        mel = np.pad(mel, ((0, 0), (0, num_frames - mel.shape[1])), mode="edge")
    mel = np.pad(mel[:, :num_frames], ((0, 0), (context, context)), mode="edge")
    stacked = [mel[:, i: i + num_frames] for i in range(2 * context + 1)]
    return np.concatenate(stacked, axis=0).T.astype(np.float32)


def _face_box(identity, size: int) -> np.ndarray:
    # The synthetic head is an ellipse centred at (0.5, face_cy) with half-axes (face_w, face_h).
    x0, x1 = (0.5 - identity.face_w) * size, (0.5 + identity.face_w) * size
    y0, y1 = (identity.face_cy - identity.face_h) * size, (identity.face_cy + identity.face_h) * size
    return np.clip(np.array([x0, y0, x1, y1], np.float32), 0, size)


def synthetic_talking_clips(num_pairs: int, size: int = 64, seed: int = 0,
                            cache_dir: Optional[str] = None, progress: bool = True) -> List[TalkingClip]:
    """``2 * num_pairs`` clips: for each synthetic pair, its neutral and its emotional clip.

    Deterministic for ``seed``. With ``cache_dir``, each pair is stored as ``pair_{seed}_{i}.npz``
    and read back on the next call instead of being rendered again.
    """
    from tqdm.auto import tqdm

    from ..data.synthetic import make_pair

    cache = Path(cache_dir) if cache_dir else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    clips: List[TalkingClip] = []
    for i in tqdm(range(num_pairs), desc="synthetic clips", disable=not progress):
        path = cache / f"pair_{seed}_{i}_{size}.npz" if cache is not None else None
        if path is not None and path.is_file():
            d = np.load(path)
            data = {k: d[k] for k in d.files}
        else:
            p = make_pair(seed * 100_003 + i, size=size)
            data = {
                "neutral": p.neutral.frames, "neutral_audio": p.neutral.audio,
                "emotional": p.emotional.frames, "emotional_audio": p.emotional.audio,
                "emotion": np.array(p.emotion), "bbox": _face_box(p.identity, size),
                "sample_rate": np.array(p.neutral.sample_rate), "fps": np.array(p.neutral.fps),
            }
            if path is not None:
                np.savez(path, **data)
        sr, fps, bbox = int(data["sample_rate"]), float(data["fps"]), data["bbox"]
        ref = data["neutral"][0]
        clips.append(TalkingClip(data["neutral"], data["neutral_audio"], sr, fps, "neutral", ref, bbox, f"pair{i}/neutral"))
        emo = str(data["emotion"])
        clips.append(TalkingClip(data["emotional"], data["emotional_audio"], sr, fps, emo, ref, bbox, f"pair{i}/{emo}"))
    return clips


class TalkingClipDataset(Dataset):
    """Non-overlapping windows of ``num_frames`` frames from a list of :class:`TalkingClip`.

    Item: ``frames`` ``(T, 3, H, W)`` and ``reference`` ``(3, H, W)`` in ``[-1, 1]``; ``audio``
    ``(T, F)`` per-frame features; ``waveform`` ``(T * sr / fps,)``; ``bbox`` ``(T, 4)`` pixels;
    ``emotion`` (name); ``sample_rate``, ``fps``. Clips shorter than one window are reported by
    name and counted in ``self.skipped``, never silently dropped.
    """

    def __init__(self, clips: Sequence[TalkingClip], num_frames: int = 5, n_mels: int = 20, context: int = 1):
        if num_frames < 1:
            raise ValueError(f"expected num_frames >= 1, got {num_frames}")
        self.num_frames = num_frames
        self.clips = list(clips)
        self.skipped: List[str] = []
        self.windows: List[tuple] = []
        self._features: Dict[int, np.ndarray] = {}
        for c, clip in enumerate(self.clips):
            t = clip.frames.shape[0]
            if clip.frames.ndim != 4 or clip.frames.shape[-1] != 3:
                raise ValueError(f"{clip.name}: expected frames (T, H, W, 3), got {clip.frames.shape}")
            if t < num_frames:
                self.skipped.append(f"{clip.name} ({t} frames < {num_frames})")
                continue
            self._features[c] = audio_frame_features(clip.audio, clip.sample_rate, clip.fps, t, n_mels, context)
            self.windows.extend((c, s) for s in range(0, t - num_frames + 1, num_frames))
        if self.skipped:
            import warnings

            warnings.warn(f"{len(self.skipped)} clip(s) too short for {num_frames}-frame windows: {self.skipped}")

    @property
    def audio_dim(self) -> int:
        return next(iter(self._features.values())).shape[1]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Dict[str, object]:
        c, s = self.windows[i]
        clip, t = self.clips[c], self.num_frames
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float().div(127.5).sub(1.0)  # noqa: E731
        hop = clip.sample_rate / clip.fps
        wav = clip.audio[int(round(s * hop)): int(round((s + t) * hop))]
        wav = np.pad(wav, (0, max(0, int(round(t * hop)) - wav.size)))
        return {
            "frames": to(clip.frames[s: s + t]).permute(0, 3, 1, 2),
            "reference": to(clip.reference).permute(2, 0, 1),
            "audio": torch.from_numpy(self._features[c][s: s + t]),
            "waveform": torch.from_numpy(wav.astype(np.float32)),
            "bbox": torch.from_numpy(np.tile(clip.bbox, (t, 1))).float(),
            "emotion": clip.emotion,
            "sample_rate": clip.sample_rate,
            "fps": clip.fps,
        }
