"""EAT's ``bboxs`` from a face track: `TalkingClipDataset(face_boxes="track")` gives per-frame
boxes that follow the face, `eat_collate` passes them on, frames and clips without a face are
counted and named."""

import numpy as np
import pytest

from stccl_diffusers.data.video_io import write_video


@pytest.fixture(scope="module")
def moving_face_clips(tmp_path_factory):
    import cv2

    skdata = pytest.importorskip("skimage.data")
    face = cv2.resize(skdata.astronaut(), (256, 256))
    frames = np.stack([np.roll(face, 8 * i, axis=1) for i in range(10)])
    frames[6] = 128  # no face in frame 6
    root = tmp_path_factory.mktemp("clips")
    (root / "happy").mkdir()
    audio = (0.1 * np.sin(np.arange(16000 * 10 // 25) / 5)).astype(np.float32)
    write_video(str(root / "happy" / "moving.mp4"), frames, fps=25, audio=audio, crf=10)
    write_video(str(root / "happy" / "blank.mp4"), np.full_like(frames, 90), fps=25, audio=audio)
    return root


def test_face_track_boxes_follow_the_face_and_become_eats_bboxs(moving_face_clips):
    from stccl_diffusers.adapters.eat import EAT_EMOTION_NAMES, eat_collate
    from stccl_diffusers.data.clips import TalkingClipDataset

    with pytest.warns(UserWarning, match="blank.mp4 .no face found"):
        ds = TalkingClipDataset(moving_face_clips, EAT_EMOTION_NAMES, num_frames=10, resolution=64, windows_per_clip=1,
                                progress=False, face_boxes="track")
    assert [p.split("/")[-1] for p, _ in ds.skipped] == ["blank.mp4"]
    assert list(ds.faceless_frames.values()) == [1]
    item = ds[0]
    boxes = item["face_boxes"].numpy()
    assert boxes.shape == (10, 4) and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # The face moves 8 px a frame at 256 px, i.e. 2 px at 64 px: the boxes move with it.
    assert boxes[9, 0] - boxes[0, 0] == pytest.approx(18, abs=4)
    batch = eat_collate([item, item])
    assert batch["bboxs"].shape == (2, 10, 4)
    np.testing.assert_allclose(batch["bboxs"][1].numpy(), boxes)


def test_whole_frame_boxes_stay_the_default(moving_face_clips):
    from stccl_diffusers.adapters.eat import EAT_EMOTION_NAMES, eat_collate
    from stccl_diffusers.data.clips import TalkingClipDataset

    ds = TalkingClipDataset(moving_face_clips, EAT_EMOTION_NAMES, num_frames=4, resolution=32, progress=False)
    assert "face_boxes" not in ds[0] and len(ds.clips) == 2
    batch = eat_collate([ds[0]])
    np.testing.assert_allclose(batch["bboxs"][0].numpy(), np.tile([0.0, 0.0, 32.0, 32.0], (4, 1)))


def test_unknown_face_boxes_mode_is_an_error_naming_the_choices(tmp_path):
    from stccl_diffusers.data.clips import TalkingClipDataset

    with pytest.raises(ValueError, match="expected face_boxes 'frame' or 'track', got 'box'"):
        TalkingClipDataset(tmp_path, ["happy"], face_boxes="box")
