"""Video + audio I/O through the ffmpeg binary that ``imageio-ffmpeg`` ships (no system ffmpeg).

Frames are (T, H, W, 3) uint8 RGB; audio is (N,) float32 mono in [-1, 1]. Every failure
raises a ``VideoReadError`` (a ``ValueError``) naming the file, so batch tools can report
bad clips by name and go on.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..utils.jsonio import dumps_strict

__all__ = [
    "VideoClip",
    "VideoReadError",
    "NoAudioError",
    "ffmpeg_exe",
    "write_video",
    "read_video",
    "read_audio",
    "probe_video",
    "write_wav",
    "read_wav",
    "write_frames_dir",
    "read_frames_dir",
    "IMAGE_EXTS",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


class VideoReadError(ValueError):
    """A clip could not be read; the message names the file."""


class NoAudioError(VideoReadError):
    """A clip has no audio stream (or no wav beside a frames folder)."""


@dataclass
class VideoClip:
    """frames: (T, H, W, 3) uint8 RGB; audio: (N,) float32 in [-1, 1] or None."""

    frames: np.ndarray
    fps: float
    audio: Optional[np.ndarray]
    sample_rate: int
    path: str

    @property
    def duration(self) -> float:
        return self.frames.shape[0] / self.fps


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run(cmd: Sequence[str], path: str, what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise VideoReadError(f"{what} failed for {path!r}: {' | '.join(err[-3:])}")
    return proc


def _check_frames(frames: np.ndarray, path: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"expected frames (T, H, W, 3) with T >= 1 for {path!r}, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames for {path!r}, got {frames.dtype}")
    return frames


def write_wav(path: str, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM mono wav."""
    from scipy.io import wavfile

    a = np.asarray(audio, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"expected mono audio (N,) for {path!r}, got {a.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    wavfile.write(path, int(sample_rate), (np.clip(a, -1, 1) * 32767).astype(np.int16))


def read_wav(path: str, sample_rate: Optional[int] = None) -> tuple:
    """``(audio (N,) float32, sample_rate)``; resampled (through ffmpeg) when ``sample_rate`` differs."""
    if not os.path.isfile(path):
        raise NoAudioError(f"no audio file at {path!r}")
    if sample_rate is not None:
        return read_audio(path, sample_rate), int(sample_rate)
    from scipy.io import wavfile

    try:
        sr, a = wavfile.read(path)
    except Exception as e:  # noqa: BLE001 - any parser failure is a bad file
        raise VideoReadError(f"could not read wav {path!r}: {e}") from e
    a = a.astype(np.float32) / (32768.0 if a.dtype == np.int16 else 1.0)
    if a.ndim == 2:
        a = a.mean(1)
    return a, int(sr)


def write_video(
    path: str,
    frames: np.ndarray,
    fps: float,
    audio: Optional[np.ndarray] = None,
    sample_rate: int = 16000,
    crf: int = 18,
) -> None:
    """Write an H.264 mp4 (yuv420p; even H, W) with an optional AAC audio track."""
    import imageio_ffmpeg

    frames = _check_frames(frames, path)
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"expected even frame height and width for H.264 in {path!r}, got {H}x{W}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as tmp:
        silent = os.path.join(tmp, "video.mp4")
        w = imageio_ffmpeg.write_frames(
            silent, (W, H), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1,
            output_params=["-crf", str(crf)], ffmpeg_log_level="error",
        )
        w.send(None)
        for f in frames:
            w.send(np.ascontiguousarray(f))
        w.close()
        if audio is None:
            os.replace(silent, path)
            return
        wav = os.path.join(tmp, "audio.wav")
        write_wav(wav, audio, sample_rate)
        out = os.path.join(tmp, "muxed.mp4")
        _run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", silent, "-i", wav, "-map", "0:v:0", "-map", "1:a:0",
              "-c:v", "copy", "-c:a", "aac", "-b:a", "128k", out], path, "muxing audio")
        os.replace(out, path)


def probe_video(path: str) -> dict:
    """``{"fps", "size": (W, H), "duration", "has_audio"}`` of a video file."""
    import imageio_ffmpeg

    if not os.path.isfile(path):
        raise VideoReadError(f"no video file at {path!r}")
    try:
        gen = imageio_ffmpeg.read_frames(path)
        meta = next(gen)
        gen.close()
    except Exception as e:  # noqa: BLE001
        raise VideoReadError(f"could not open video {path!r}: {e}") from e
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", path], capture_output=True)
    has_audio = "Audio:" in proc.stderr.decode("utf-8", "replace")
    return {"fps": float(meta.get("fps") or 0.0), "size": tuple(meta["size"]), "duration": float(meta.get("duration") or 0.0), "has_audio": has_audio}


def read_audio(path: str, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 audio of any file ffmpeg reads (mp4, wav, ...), resampled to ``sample_rate``."""
    if not os.path.isfile(path):
        raise NoAudioError(f"no audio file at {path!r}")
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", path, "-vn", "-ac", "1", "-ar", str(int(sample_rate)), "-f", "s16le", "-"],
        capture_output=True,
    )
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0 or not proc.stdout:
        if "does not contain any stream" in err or "matches no streams" in err or (proc.returncode == 0 and not proc.stdout):
            raise NoAudioError(f"no audio stream in {path!r}")
        raise VideoReadError(f"could not decode audio of {path!r}: {err.strip().splitlines()[-1:] }")
    return np.frombuffer(proc.stdout, np.int16).astype(np.float32) / 32768.0


_IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
                     (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _image_format(path: str) -> Optional[str]:
    """The still-image format a file's first bytes announce (whatever its extension), else None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for sig, name in _IMAGE_SIGNATURES if head.startswith(sig)), None)


def _is_grayscale(meta: dict, frames: np.ndarray) -> bool:
    if str(meta.get("pix_fmt", "")).startswith(("gray", "ya8", "y400")):
        return True
    sample = frames[:: max(1, len(frames) // 4)].astype(np.int16)
    return bool(np.abs(sample - sample[..., :1]).max() <= 2)


def read_video(
    path: str,
    with_audio: bool = True,
    sample_rate: int = 16000,
    max_frames: Optional[int] = None,
    require_audio: bool = False,
) -> VideoClip:
    """Decode a video to RGB frames (and mono audio when present).

    A missing audio track gives ``audio=None`` unless ``require_audio`` (then ``NoAudioError``).
    """
    import imageio_ffmpeg

    if not os.path.isfile(path):
        raise VideoReadError(f"no video file at {path!r}")
    image = _image_format(path)
    if image is not None:
        raise VideoReadError(f"{path!r} is not a video: it is a {image} image (renamed?); expected a video file (mp4, ...)")
    try:
        gen = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
        meta = next(gen)
        W, H = meta["size"]
        frames = []
        for buf in gen:
            frames.append(np.frombuffer(buf, np.uint8).reshape(H, W, 3))
            if max_frames is not None and len(frames) >= max_frames:
                gen.close()
                break
    except Exception as e:  # noqa: BLE001 - imageio raises several types for corrupt input
        raise VideoReadError(f"could not decode video {path!r}: {e}") from e
    if not frames:
        raise VideoReadError(f"no frames decoded from {path!r}")
    fps = float(meta.get("fps") or 0.0)
    if fps <= 0:
        raise VideoReadError(f"could not read the frame rate of {path!r}")
    stacked = np.stack(frames)
    if _is_grayscale(meta, stacked):
        warnings.warn(f"{path}: grayscale video, converted to RGB (3 equal channels)")
    audio = None
    if with_audio:
        try:
            audio = read_audio(path, sample_rate)
        except NoAudioError:
            if require_audio:
                raise
    return VideoClip(stacked, fps, audio, int(sample_rate), path)


def write_frames_dir(
    directory: str,
    frames: np.ndarray,
    audio: Optional[np.ndarray] = None,
    sample_rate: int = 16000,
    fps: Optional[float] = None,
    ext: str = ".png",
) -> None:
    """Frames as ``directory/<idx:06d><ext>`` (0-based, the MEAD ``align_img`` naming), audio as
    ``directory + ".wav"`` and, when given, fps in ``directory/meta.json``."""
    import cv2

    frames = _check_frames(frames, directory)
    os.makedirs(directory, exist_ok=True)
    for i, f in enumerate(frames):
        ok = cv2.imwrite(os.path.join(directory, f"{i:06d}{ext}"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"could not write frame {i} to {directory!r} (extension {ext!r})")
    if audio is not None:
        write_wav(directory.rstrip("/\\") + ".wav", audio, sample_rate)
    if fps is not None:
        with open(os.path.join(directory, "meta.json"), "w") as f:
            f.write(dumps_strict({"fps": float(fps)}))


def list_frame_files(directory: str) -> list:
    if not os.path.isdir(directory):
        raise VideoReadError(f"no frames folder at {directory!r}")
    return sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTS))


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    import cv2

    im = cv2.imread(path, cv2.IMREAD_COLOR)
    if im is None:
        raise VideoReadError(f"could not read image {path!r}")
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)


def read_frames_dir(
    directory: str,
    indices: Optional[Sequence[int]] = None,
    with_audio: bool = True,
    sample_rate: int = 16000,
    fps: Optional[float] = None,
) -> VideoClip:
    """Read a frames folder (sorted by name, or ``<idx:06d>.*`` for ``indices``) and its wav."""
    names = list_frame_files(directory)
    if not names:
        raise VideoReadError(f"no image files ({', '.join(IMAGE_EXTS)}) in {directory!r}")
    if indices is not None:
        by_idx = {}
        for n in names:
            stem = os.path.splitext(n)[0]
            if stem.isdigit():
                by_idx[int(stem)] = n
        missing = sorted({int(i) for i in indices if int(i) not in by_idx})
        if missing:
            raise VideoReadError(f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} missing in {directory!r}")
        names = [by_idx[int(i)] for i in indices]
    frames = np.stack([read_image(os.path.join(directory, n)) for n in names])
    meta = os.path.join(directory, "meta.json")
    if fps is None and os.path.isfile(meta):
        with open(meta) as f:
            fps = float(json.load(f)["fps"])
    audio = None
    wav = directory.rstrip("/\\") + ".wav"
    if with_audio and os.path.isfile(wav):
        audio = read_audio(wav, sample_rate)
    return VideoClip(frames, float(fps or 0.0), audio, int(sample_rate), directory)
