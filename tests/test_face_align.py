import os

import cv2
import numpy as np
import pytest

from stccl_diffusers.data.face_align import (
    TEMPLATE_3PT_112,
    FaceAligner,
    HaarLandmarkDetector,
    InsightFaceLandmarkDetector,
    NoFaceError,
    similarity_transform,
)


@pytest.fixture(scope="module")
def detector():
    return HaarLandmarkDetector()


@pytest.fixture(scope="module")
def astronaut():
    skdata = pytest.importorskip("skimage.data")
    return skdata.astronaut()


def test_similarity_transform_recovers_a_known_rotation_scale_shift():
    src = np.array([[10, 10], [50, 12], [30, 60]], np.float32)
    a, s, t = np.deg2rad(12), 1.3, np.array([5, -7])
    R = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = src @ R.T + t
    M = similarity_transform(src, dst)
    np.testing.assert_allclose(M[:, :2], R, atol=1e-3)
    np.testing.assert_allclose(M[:, 2], t, atol=1e-2)
    with pytest.raises(ValueError, match="K >= 2"):
        similarity_transform(src[:1], dst[:1])


def test_haar_finds_the_astronauts_eyes(detector, astronaut):
    lm = detector(astronaut)
    assert lm is not None and lm.method == "eyes"
    (lx, ly), (rx, ry), (mx, my) = lm.points
    # Eileen Collins' face sits around x 170-280, y 60-200 of the 512x512 image.
    assert 170 < lx < rx < 280 and 70 < ly < 140 and 70 < ry < 140
    assert my > ly + 25 and 190 < mx < 260


def test_haar_matches_the_arcface_template_on_tom_hanks(detector):
    insightface_data = pytest.importorskip("insightface.data", reason="insightface not installed (pip install insightface --no-deps)")
    face = cv2.cvtColor(insightface_data.get_image("Tom_Hanks_54745"), cv2.COLOR_BGR2RGB)
    lm = detector(face)  # a tight 112x112 ArcFace crop: found through the padded retry
    assert lm is not None and lm.method == "eyes"
    err = np.linalg.norm(lm.points[:2] - TEMPLATE_3PT_112[:2], axis=1)
    assert err.max() < 6.0, f"eye error {err} px on a 112 px crop aligned to the template"


def test_aligner_undoes_a_pose_change_of_a_real_face(detector, astronaut):
    aligner = FaceAligner(size=128, detector=detector, margin=1.6)
    M = cv2.getRotationMatrix2D((224, 130), 10, 0.85)
    M[:, 2] += (20, 15)
    moved = cv2.warpAffine(astronaut, M, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    n, e = aligner.align_pair(astronaut, moved)
    assert n.shape == e.shape == (128, 128, 3)
    naive = cv2.warpAffine(moved, similarity_transform(detector(astronaut).points, aligner._template()), (128, 128))
    inner = (slice(24, 104), slice(24, 104))
    aligned_err = np.abs(n[inner].astype(float) - e[inner]).mean()
    naive_err = np.abs(n[inner].astype(float) - naive[inner]).mean()
    assert aligned_err < 0.6 * naive_err, (aligned_err, naive_err)


def test_frames_without_a_face_are_reported_and_skipped(detector, astronaut):
    aligner = FaceAligner(size=64, detector=detector)
    blank = np.full((256, 256, 3), 128, np.uint8)
    with pytest.raises(NoFaceError, match="emotional frame"):
        aligner.align_pair(astronaut, blank)
    n, e, kept, skipped = aligner.align_frames([astronaut, astronaut, astronaut], [astronaut, blank, astronaut], name="clipX")
    assert kept == [0, 2] and len(n) == len(e) == 2
    assert skipped[0][0] == 1 and "clipX emotional frame 1" in skipped[0][1]
    with pytest.raises(NoFaceError):
        aligner(np.stack([blank, blank]), np.stack([blank, blank]))


def test_insightface_backend_refuses_to_download(tmp_path):
    with pytest.raises(ValueError, match="never downloads"):
        InsightFaceLandmarkDetector(str(tmp_path))


def test_real_pair_tiles_are_detected_and_aligned(shared_data, detector):
    from stccl_diffusers.data.video_io import read_video

    d = shared_data / "real_pairs"
    files = sorted(os.listdir(d))[:3]
    aligner = FaceAligner(size=112, detector=detector, margin=1.4)
    found, total, moved_less = 0, 0, 0
    for f in files:
        frames = read_video(str(d / f), with_audio=False, max_frames=31).frames
        for k in (0, 15, 30):
            src = frames[k][:, 0:256].copy()
            ned = frames[k][:, 768:1024].copy()
            src[:60, :150] = 0  # mask the green label
            ned[:60, :150] = 0
            total += 1
            ls, ln = detector(src), detector(ned)
            if ls is None or ln is None:
                continue
            found += 1
            n, e = aligner.align_pair(src, ned)
            assert n.shape == (112, 112, 3)
            # After alignment the NED face's landmarks land on the Source face's.
            le = detector(e)
            lsrc = detector(n)
            if le is not None and lsrc is not None:
                moved_less += np.linalg.norm(le.points[:2] - lsrc.points[:2], axis=1).mean() < 4.0
    assert found >= 0.8 * total, f"faces found in {found}/{total} real frames"
    assert moved_less >= 0.6 * found


def test_face_track_follows_a_moving_face_and_counts_frames_without_one(astronaut):
    from stccl_diffusers.data.face_align import face_track

    img = cv2.resize(astronaut, (256, 256))
    frames = [np.roll(img, 4 * i, axis=1) for i in range(6)]
    frames[3] = np.full_like(img, 128)  # no face in frame 3
    boxes, found = face_track(frames, window=1)
    assert found.tolist() == [True, True, True, False, True, True]
    assert boxes.shape == (6, 4)
    # The box moves with the face (4 px a frame); the faceless frame takes a neighbour's box.
    assert boxes[5, 0] - boxes[0, 0] == pytest.approx(20, abs=4)
    assert any(np.allclose(boxes[3], boxes[j]) for j in (2, 4))
    with pytest.raises(NoFaceError, match="any of the 2 frames"):
        face_track([frames[3], frames[3]])


def test_eval_faces_reexports_the_one_face_module():
    from stccl_diffusers.data import face_align
    from stccl_diffusers.eval import faces

    for name in ("umeyama_similarity", "detect_face_box", "clip_face_box", "face_track", "ARCFACE_TEMPLATE_112"):
        assert getattr(faces, name) is getattr(face_align, name)


def test_syncnet_crops_follow_the_face_track_and_note_faceless_frames(astronaut):
    from stccl_diffusers.eval.runner import EvalConfig, prepare_faces

    img = cv2.resize(astronaut, (256, 256))
    frames = np.stack([np.roll(img, 3 * i, axis=1) for i in range(10)])
    frames[4] = 128
    crops = prepare_faces(frames, 25.0, EvalConfig(metrics=("lse",)))
    assert crops.sync_bgr.shape == (10, 224, 224, 3)
    assert any("no face in 1 of 10 frames" in n for n in crops.notes)
    # Frame 9's face moved 27 px: the tracked crop matches frame 0's crop better than a crop of
    # frame 9 at frame 0's box (what one box per clip would give).
    from stccl_diffusers.eval.faces import detect_face_box, syncnet_crop

    fixed = syncnet_crop(frames[9], detect_face_box(frames[0]))[..., ::-1]
    ref = crops.sync_bgr[0].astype(int)
    assert np.abs(crops.sync_bgr[9].astype(int) - ref).mean() < np.abs(fixed.astype(int) - ref).mean()


def test_dlib_backend_finds_68_landmarks_on_a_real_mead_tile():
    pytest.importorskip("dlib", reason="the `landmarks` extra (dlib-bin, face_recognition_models) is not installed")
    from pathlib import Path

    from stccl_diffusers.data.face_align import make_detector

    clips = sorted((Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_pairs").glob("*.mp4"))
    if not clips:
        pytest.skip("../shared/data/real_pairs not found")
    cap = cv2.VideoCapture(str(clips[0]))
    ok, bgr = cap.read()
    cap.release()
    assert ok, f"could not read a frame of {clips[0]}"
    frame = np.ascontiguousarray(bgr[..., ::-1])
    h, w = frame.shape[:2]
    tile = frame[:, :h]  # the tiles are 4-up comparisons side by side: the first (source) face
    lm = make_detector("dlib")(np.ascontiguousarray(tile))
    assert lm is not None and lm.method == "dlib68" and lm.points68.shape == (68, 2)
    left, right, mouth = lm.points
    assert left[0] < right[0] and mouth[1] > max(left[1], right[1])  # eyes level-ish, mouth below
    x, y, bw, bh = lm.box
    assert (lm.points68[:, 0] > x - bw).all() and (lm.points68[:, 0] < x + 2 * bw).all()


def test_insightface_backend_accepts_the_unpacked_pack_folder_itself(tmp_path):
    import importlib.util

    if importlib.util.find_spec("insightface") is not None:
        pytest.skip("insightface is installed: an empty .onnx would be handed to onnxruntime (no real pack here)")
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"")
    # The folder check passes for the pack folder itself (no 'models/buffalo_l/' under it); what is
    # missing next is the insightface package, named with its install command.
    with pytest.raises(ImportError, match="pip install insightface onnxruntime"):
        InsightFaceLandmarkDetector(str(pack))
    with pytest.raises(ValueError, match="model pack not found"):
        InsightFaceLandmarkDetector(str(tmp_path / "models"))


def test_dlib_five_points_are_insightface_order_from_the_68():
    from stccl_diffusers.data.face_align import five_points_from_68

    p68 = np.zeros((68, 2), np.float32)
    p68[36:42], p68[42:48], p68[30], p68[48], p68[54] = (10, 20), (50, 20), (30, 40), (15, 60), (45, 60)
    np.testing.assert_allclose(five_points_from_68(p68), [[10, 20], [50, 20], [30, 40], [15, 60], [45, 60]])
    with pytest.raises(ValueError, match=r"expected \(68, 2\)"):
        five_points_from_68(p68[:5])


def test_dlib_backend_upsamples_only_when_the_face_is_too_small(astronaut):
    pytest.importorskip("dlib", reason="the `landmarks` extra (dlib-bin, face_recognition_models) is not installed")
    from stccl_diffusers.data.face_align import DlibLandmarkDetector

    small = np.ascontiguousarray(cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA))  # a 45-px face
    assert DlibLandmarkDetector(upsample=0)(small) is None  # dlib's HOG window is 80 px
    lm = DlibLandmarkDetector()(small)  # default: as it is, then once upsampled
    assert lm is not None and lm.points68.shape == (68, 2) and 35 < lm.box[2] < 60
