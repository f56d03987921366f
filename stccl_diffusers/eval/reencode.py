"""Codec-stable sync (``stccl-eval --sync_protocol reencode``): every clip goes once through one
fixed encoder before SyncNet, so that LSE-D / LSE-C of two methods do not differ by how each
method's videos happened to be encoded (THEval, 2025: LSE moves by 0.4-1.2 with the codec alone).

The fixed setting (:data:`REENCODE_PROTOCOL`, written into every report): the video is resampled to
25 fps by nearest-frame index (SyncNet's rate, the same resampling LSE applies anyway), encoded
with libx264, CRF 23, preset medium, yuv420p, one encoder thread (a deterministic bitstream), in
an mp4, through the ffmpeg binary of ``imageio-ffmpeg``, and decoded back to RGB. The audio track
is not re-encoded: SyncNet hears the given speech. Odd frame sizes are padded by one edge pixel for
yuv420p and cropped back after decoding.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from .eval_io import nearest_frame_indices

__all__ = ["REENCODE_PROTOCOL", "reencode_frames"]

REENCODE_PROTOCOL = {
    "codec": "libx264 (H.264)",
    "crf": 23,
    "preset": "medium",
    "pix_fmt": "yuv420p",
    "fps": 25.0,
    "encoder_threads": 1,
    "container": "mp4",
    "audio": "not re-encoded (SyncNet hears the given track)",
    "resampling": "nearest-frame index to 25 fps before encoding",
}


def reencode_frames(frames: np.ndarray, fps: float, protocol: dict = REENCODE_PROTOCOL) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB at ``fps`` -> the same clip at ``protocol['fps']`` after one pass
    through the fixed encoder, (T', H, W, 3) uint8 RGB (T' = the 25 fps frame count)."""
    import imageio_ffmpeg

    from ..data.video_io import read_video

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 1:
        raise ValueError(f"expected frames (T >= 1, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
    out_fps = float(protocol["fps"])
    frames = frames[nearest_frame_indices(len(frames), fps, out_fps)]
    _, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "reencoded.mp4")
        writer = imageio_ffmpeg.write_frames(
            path, (frames.shape[2], frames.shape[1]), fps=out_fps, codec="libx264", pix_fmt_out=protocol["pix_fmt"], macro_block_size=1,
            output_params=["-crf", str(protocol["crf"]), "-preset", protocol["preset"], "-threads", str(protocol["encoder_threads"])],
            ffmpeg_log_level="error",
        )
        writer.send(None)
        for f in frames:
            writer.send(np.ascontiguousarray(f))
        writer.close()
        out = read_video(path, with_audio=False).frames
    if len(out) != len(frames):
        raise ValueError(f"re-encoding changed the frame count ({len(frames)} -> {len(out)})")
    return np.ascontiguousarray(out[:, :h, :w])
