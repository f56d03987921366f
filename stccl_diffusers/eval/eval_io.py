"""Video, frame-folder and audio decoding for ``stccl-eval`` (kept inside ``eval/`` on purpose;
named ``eval_io`` to avoid confusion with ``stccl_diffusers.data.video_io``).

Frames are returned as (T, H, W, 3) uint8 RGB; audio as (S,) int16 mono at 16 kHz (the scale
SyncNet's MFCCs were trained on).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional, Tuple

import cv2
import numpy as np

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
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def read_video(path: str | os.PathLike, max_frames: Optional[int] = None) -> Tuple[np.ndarray, float]:
    """Decode a video with OpenCV. Returns (frames (T, H, W, 3) uint8 RGB, fps).

    Raises ``ValueError`` naming the file if it cannot be opened or has no frames.
    """
    cap = cv2.VideoCapture(os.fspath(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {path}")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    frames = []
    while max_frames is None or len(frames) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    if not fps > 0:
        raise ValueError(f"{path}: container reports no frame rate")
    return np.stack(frames), fps


def read_frame_folder(path: str | os.PathLike, max_frames: Optional[int] = None) -> np.ndarray:
    """Read the images of a folder, sorted by file name, as (T, H, W, 3) uint8 RGB."""
    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if max_frames is not None:
        files = files[:max_frames]
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in frame folder {path}")
    frames = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read image {f}")
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    shapes = {fr.shape for fr in frames}
    if len(shapes) != 1:
        raise ValueError(f"frames of {path} differ in size: {sorted(shapes)}")
    return np.stack(frames)


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def extract_audio_16k(path: str | os.PathLike) -> np.ndarray:
    """Audio track of a video (or any audio file) as (S,) int16 mono 16 kHz, via imageio-ffmpeg's binary.

    Raises ``ValueError`` naming the file when there is no audio stream or ffmpeg fails.
    """
    cmd = [_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", os.fspath(path), "-vn", "-ac", "1", "-ar", "16000",
           "-acodec", "pcm_s16le", "-f", "s16le", "pipe:1"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    audio = np.frombuffer(proc.stdout, dtype="<i2").copy()
    if proc.returncode != 0 or audio.size == 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no audio samples"]
        raise ValueError(f"no decodable audio track in {path}: {err[0]}")
    return audio


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
