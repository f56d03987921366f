"""Input files: a renamed image is 'not a video', grayscale is converted and said, non-square is
cropped (never squashed), and every skipped clip is named in a file."""

from __future__ import annotations

import numpy as np
import pytest

from stccl_diffusers.data.datasets import SKIPPED_REPORT, write_skipped_report
from stccl_diffusers.data.video_io import VideoReadError, read_video, write_video
from stccl_diffusers.data.clips import TalkingClipDataset, _resize


def test_png_renamed_mp4_is_not_a_video(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "face.png"), np.zeros((16, 16, 3), np.uint8))
    fake = tmp_path / "001.mp4"
    fake.write_bytes((tmp_path / "face.png").read_bytes())
    with pytest.raises(VideoReadError, match="001.mp4.* is not a video: it is a PNG image"):
        read_video(str(fake), require_audio=True)


def test_grayscale_clip_is_converted_and_said(tmp_path):
    gray = np.repeat(np.linspace(0, 255, 16 * 16, dtype=np.uint8).reshape(1, 16, 16, 1), 4, axis=0)
    path = str(tmp_path / "gray.mp4")
    write_video(path, np.repeat(gray, 3, axis=-1), fps=25)
    with pytest.warns(UserWarning, match="grayscale video, converted to RGB"):
        clip = read_video(path, with_audio=False)
    assert clip.frames.shape[-1] == 3


def test_non_square_frames_are_centre_cropped_not_squashed():
    frames = np.zeros((1, 20, 40, 3), np.uint8)
    frames[:, :, 10:30] = 255  # a centred white square, 20x20
    out = _resize(frames, 10)
    assert out.shape == (1, 10, 10, 3)
    assert out.min() == 255  # squashing 40 -> 10 wide would have mixed in the black sides


def test_every_skipped_clip_is_named_in_the_report(tmp_path):
    root = tmp_path / "data"
    (root / "happy").mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_video(str(root / "happy" / "good.mp4"), rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8), fps=25,
                audio=(0.1 * np.sin(np.arange(16000 * 8 // 25) / 5)).astype(np.float32))
    names = []
    for i in range(6):
        d = root / ("happy" if i % 2 else "nolabel")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.mp4").write_bytes(b"junk")
        names.append(str(d / f"{i:03d}.mp4"))
    with pytest.warns(UserWarning, match="6 of 7 clips .* skipped .first 5 named"):
        ds = TalkingClipDataset(root, ["happy"], num_frames=4, resolution=16, progress=False)
    assert len(ds.clips) == 1
    path = write_skipped_report(ds.skipped, str(tmp_path / "out"))
    lines = (tmp_path / "out" / SKIPPED_REPORT).read_text().splitlines()
    assert path.endswith(SKIPPED_REPORT)
    assert sorted(line.split("\t")[0] for line in lines) == sorted(names)
    assert write_skipped_report([], str(tmp_path / "out")) is None
    assert not (tmp_path / "out" / SKIPPED_REPORT).exists()


def test_face_crop_keeps_an_off_centre_real_face_that_the_centre_crop_cuts(shared_data):
    from stccl_diffusers.data.face_align import clip_face_box
    from stccl_diffusers.data.clips import square_window

    tiles = read_video(str(sorted((shared_data / "real_pairs").glob("*.mp4"))[0]), with_audio=False).frames[:8]
    face = tiles[:, :, :256]  # the first 256x256 tile of the comparison video: a real MEAD face
    canvas = np.zeros((8, 256, 700, 3), np.uint8)
    canvas[:, :, 20:276] = face  # the face at the left of a wide frame
    x, _, w, _ = clip_face_box(canvas)
    top, left, side = square_window(canvas, "face")
    assert left <= x and x + w <= left + side  # the whole face box is inside the face crop
    _, c_left, c_side = square_window(canvas, "center")
    assert not (c_left <= x and x + w <= c_left + c_side)  # ...and the centre crop would have cut it


def test_face_crop_skips_and_names_a_clip_without_a_face(tmp_path):
    root = tmp_path / "data" / "happy"
    root.mkdir(parents=True)
    audio = (0.1 * np.sin(np.arange(16000 * 8 // 25) / 5)).astype(np.float32)
    write_video(str(root / "blank.mp4"), np.zeros((8, 16, 32, 3), np.uint8), fps=25, audio=audio)
    write_video(str(root / "other.mp4"), np.zeros((8, 16, 32, 3), np.uint8), fps=25, audio=audio)
    with pytest.raises(ValueError, match="no usable .mp4"):
        with pytest.warns(UserWarning, match="no face found for crop='face'"):
            TalkingClipDataset(tmp_path / "data", ["happy"], num_frames=4, resolution=16, progress=False, crop="face")
    ds = TalkingClipDataset(tmp_path / "data", ["happy"], num_frames=4, resolution=16, progress=False, crop="center")
    assert len(ds.clips) == 2


def test_unknown_crop_is_an_error_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"expected crop in \('center', 'face'\), got 'squash'"):
        TalkingClipDataset(tmp_path, ["happy"], crop="squash")
