"""Decoding for ``stccl-eval``, in the shapes evaluation wants, on top of
:mod:`stccl_diffusers.data.video_io` (one decoder for the whole package).

Frames are returned as (T, H, W, 3) uint8 RGB; audio as (S,) int16 mono at 16 kHz (the scale
SyncNet's MFCCs were trained on). Errors are ``ValueError`` subclasses naming the file.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from ..data import video_io

__all__ = [
    "VIDEO_EXTS",
    "IMAGE_EXTS",
    "read_video",
    "read_frame_folder",
    "extract_audio_16k",
    "read_wav_16k",
    "nearest_frame_indices",
]

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_EXTS = video_io.IMAGE_EXTS


def read_video(path: str | os.PathLike, max_frames: Optional[int] = None) -> Tuple[np.ndarray, float]:
    """Decode a video's frames. Returns (frames (T, H, W, 3) uint8 RGB, fps)."""
    clip = video_io.read_video(os.fspath(path), with_audio=False, max_frames=max_frames)
    return clip.frames, clip.fps


def read_frame_folder(path: str | os.PathLike, max_frames: Optional[int] = None) -> np.ndarray:
    """Read the images of a folder, sorted by file name, as (T, H, W, 3) uint8 RGB."""
    path = os.fspath(path)
    names = video_io.list_frame_files(path)[:max_frames]
    if not names:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in frame folder {path}")
    frames = [video_io.read_image(os.path.join(path, n)) for n in names]
    shapes = {fr.shape for fr in frames}
    if len(shapes) != 1:
        raise ValueError(f"frames of {path} differ in size: {sorted(shapes)}")
    return np.stack(frames)


def extract_audio_16k(path: str | os.PathLike) -> np.ndarray:
    """Audio track of a video (or any audio file) as (S,) int16 mono 16 kHz."""
    audio = video_io.read_audio(os.fspath(path), 16000)
    return np.round(audio * 32768.0).clip(-32768, 32767).astype(np.int16)


def read_wav_16k(path: str | os.PathLike) -> np.ndarray:
    """A wav file as (S,) int16 mono 16 kHz (decoded and resampled by ffmpeg, like a video's track)."""
    if not os.path.isfile(path):
        raise ValueError(f"audio file not found: {path}")
    return extract_audio_16k(path)


def nearest_frame_indices(num_frames: int, src_fps: float, dst_fps: float = 25.0) -> np.ndarray:
    """Indices that resample ``num_frames`` frames at ``src_fps`` to ``dst_fps`` by nearest earlier frame.

    Output frame t (time t / dst_fps) takes source frame floor(t * src_fps / dst_fps); the clip
    duration is kept (floor(num_frames * dst_fps / src_fps) output frames). Identity when fps are equal.
    """
    if src_fps <= 0 or dst_fps <= 0:
        raise ValueError(f"frame rates must be positive, got src {src_fps}, dst {dst_fps}")
    if abs(src_fps - dst_fps) < 1e-6:
        return np.arange(num_frames)
    n_out = int(np.floor(num_frames * dst_fps / src_fps + 1e-9))
    idx = np.floor(np.arange(n_out) * src_fps / dst_fps + 1e-9).astype(int)
    return np.clip(idx, 0, num_frames - 1)
