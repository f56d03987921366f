"""Mouth measures on real faces (``stccl-eval --mouth``): M-LMD, F-LMD, the inner-lip opening
curve and the no-face accounting, first on synthetic 68-point faces with a known ground truth,
then with the dlib backend on real MEAD frames (skipped without the `landmarks` extra or
../shared/data)."""

import json

import cv2
import numpy as np
import pytest

from stccl_diffusers.data.face_align import LandmarkTrack
from stccl_diffusers.eval.mouth import (
    MOUTH_POINTS,
    STABLE_POINTS,
    landmark_distances,
    lip_opening_curve,
    real_mouth_measures,
)
from stccl_diffusers.utils.safety import UsageError


def face68(opening: float, iod: float = 80.0, centre=(128.0, 140.0)) -> np.ndarray:
    """A synthetic iBUG-68 face: a fixed layout with the inner lips (60-67) opened by ``opening``
    pixels and the outer eye corners (36, 45) ``iod`` pixels apart."""
    rng = np.random.default_rng(0)  # the same layout for every call
    p = rng.uniform(-0.6, 0.6, (68, 2)) * iod
    p[36], p[45] = (-iod / 2, -0.4 * iod), (iod / 2, -0.4 * iod)
    for up, low, x in ((61, 67, -0.1), (62, 66, 0.0), (63, 65, 0.1)):
        p[up] = (x * iod, 0.5 * iod - opening / 2)
        p[low] = (x * iod, 0.5 * iod + opening / 2)
    return (p + np.asarray(centre)).astype(np.float64)


def similarity(points: np.ndarray, angle_deg: float, scale: float, shift) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return points @ r.T + np.asarray(shift)


def track(points68: np.ndarray) -> LandmarkTrack:
    found = np.isfinite(points68).all(axis=(1, 2))
    return LandmarkTrack(found, np.zeros((len(found), 4)), points68.astype(np.float32), None, "synthetic")


def test_lip_opening_is_the_inner_lip_gap_over_the_outer_eye_corner_distance():
    openings = np.array([0.0, 4.0, 12.0, 20.0])
    pts = np.stack([similarity(face68(o, iod=80.0), 17.0, 1.3, (5, -9)) for o in openings])
    # Rotation, scale and shift of the whole face do not change a ratio of distances.
    np.testing.assert_allclose(lip_opening_curve(pts), openings / 80.0, atol=1e-9)


def test_lmd_ignores_head_motion_and_reports_the_mouth_displacement_at_256_px():
    anchor = np.stack([face68(6.0), face68(10.0)])
    moved = anchor.copy()
    moved[:, MOUTH_POINTS, 1] += 3.0  # the generated mouth sits 3 px lower in a 512-px frame
    generated = np.stack([similarity(f, 8.0, 1.1, (12, -4)) for f in moved])  # plus head motion
    r = landmark_distances(anchor, generated, frame_height=512)
    assert r["M-LMD"] == pytest.approx(1.5, abs=1e-6)  # 3 px at 512 -> 1.5 px at 256
    assert r["F-LMD"] == pytest.approx(1.5 * len(MOUTH_POINTS) / 68, abs=1e-6)
    raw = landmark_distances(anchor, generated, frame_height=512, align="none")
    assert raw["F-LMD"] > 5 * r["F-LMD"]  # without the alignment the head motion counts


def test_stable_points_exclude_the_mouth_and_jaw():
    assert not set(STABLE_POINTS) & set(range(0, 17)) and not set(STABLE_POINTS) & set(MOUTH_POINTS.tolist())


@pytest.mark.parametrize("shift", [3, -2])
def test_a_shifted_clip_reports_its_lag(shift):
    rng = np.random.default_rng(1)
    n = 60
    opening = np.convolve(rng.uniform(0, 20, n + 20), np.ones(3) / 3, "same")
    anchor = np.stack([face68(o) for o in opening[10:10 + n]])
    generated = np.stack([face68(o) for o in opening[10 - shift:10 - shift + n]])  # g_t = a_{t - shift}
    r = real_mouth_measures(track(anchor), track(generated), frame_height=256)
    assert r["mouth_lag"] == shift
    assert r["mouth_lag_corr"] == pytest.approx(1.0, abs=1e-9)
    assert r["mouth_corr"] < 0.9


def test_identical_clips_give_zero_lmd_and_full_correlation():
    opening = np.linspace(0, 15, 12) % 7
    pts = np.stack([face68(o) for o in opening])
    r = real_mouth_measures(track(pts), track(pts.copy()), frame_height=256)
    assert r["M-LMD"] == pytest.approx(0.0, abs=1e-6) and r["F-LMD"] == pytest.approx(0.0, abs=1e-6)
    assert r["mouth_corr"] == pytest.approx(1.0) and r["mouth_mae"] == pytest.approx(0.0) and r["mouth_lag"] == 0


def test_frames_without_a_face_are_counted_and_left_out_not_dropped_silently():
    opening = np.linspace(0, 15, 20) % 9
    anchor = np.stack([face68(o) for o in opening])
    generated = anchor.copy()
    generated[:, MOUTH_POINTS, 1] += 2.0
    anchor[[3, 4]] = np.nan  # no face in anchor frames 3, 4
    generated[[4, 10, 11]] = np.nan  # nor in generated frames 4, 10, 11
    r = real_mouth_measures(track(anchor), track(generated), frame_height=256)
    assert r["faceless_anchor"] == 2 and r["faceless_generated"] == 3
    assert r["paired_frames"] == 20 and r["lmd_frames"] == 16 and r["mouth_frames"] == 16
    assert r["landmark_coverage"] == pytest.approx(16 / 20)
    assert "4 of 20 paired frames without a face" in r["mouth_note"]
    assert r["M-LMD"] == pytest.approx(2.0, abs=1e-6)  # the faceless frames do not pull it to 0 or NaN
    assert r["anchor_curve"][3] is None and r["generated_curve"][10] is None


def test_a_clip_with_almost_no_face_reports_why_the_opening_is_not_compared():
    pts = np.stack([face68(o) for o in (1.0, 5.0, 3.0, 8.0)])
    gen = pts.copy()
    gen[1:] = np.nan
    r = real_mouth_measures(track(pts), track(gen), frame_height=256)
    assert "mouth_corr" not in r and "only 1 of 4 paired frames" in r["mouth_note"]


def test_backends_without_68_points_refuse_real_mouth_measures_by_name():
    t = LandmarkTrack(np.ones(5, bool), np.zeros((5, 4)), None, None, "haar")
    with pytest.raises(ValueError, match="68-point landmarks.*'haar'.*landmarks` extra"):
        real_mouth_measures(t, t, frame_height=256)


def test_opening_curves_with_gaps_keep_their_lag():
    from stccl_diffusers.eval.mouth import mouth_preservation

    a = np.sin(np.arange(40) / 2.5)
    g = np.roll(a, 2)
    g[:2] = np.nan
    a_gap = a.copy()
    a_gap[[15, 16]] = np.nan
    r = mouth_preservation(a_gap, g, already_curves=True)
    assert r["mouth_lag"] == 2 and r["mouth_missing"] == 4 and r["mouth_frames"] == 36


# ----------------------------------------------------------------------------- real frames (dlib)


@pytest.fixture(scope="module")
def real_source_tile():
    """40 frames of the Source tile of a real_pairs clip, labels inpainted (as stccl-eval does)."""
    pytest.importorskip("dlib", reason="the `landmarks` extra (dlib-bin, face_recognition_models) is not installed")
    from conftest import SHARED_DATA

    from stccl_diffusers.eval.eval_io import read_video
    from stccl_diffusers.eval.faces import find_label_mask, mask_tile_label

    clips = sorted((SHARED_DATA / "real_pairs").glob("*.mp4"))
    if not clips:
        pytest.skip(f"no real_pairs clips under {SHARED_DATA}")
    frames, _ = read_video(clips[0], max_frames=40)
    tile = frames[:, :, :256]
    mask = find_label_mask(tile[0])
    return np.stack([mask_tile_label(f, mask) for f in tile]), clips[0]


@pytest.fixture(scope="module")
def dlib_detector():
    from stccl_diffusers.data.face_align import make_detector

    pytest.importorskip("dlib", reason="the `landmarks` extra (dlib-bin, face_recognition_models) is not installed")
    return make_detector("dlib")


def test_dlib_track_on_real_frames_gives_68_and_5_points_per_frame(real_source_tile, dlib_detector):
    from stccl_diffusers.data.face_align import landmark_track

    frames, _ = real_source_tile
    t = landmark_track(frames, dlib_detector)
    assert t.backend == "dlib" and t.points68.shape == (40, 68, 2) and t.points5.shape == (40, 5, 2)
    assert t.found.mean() >= 0.9, f"faces in {t.found.sum()} of 40 real frames"
    ok = t.found
    # 5 points in insightface's order: left eye left of right eye, nose between them, mouth below.
    p5 = t.points5[ok]
    assert (p5[:, 0, 0] < p5[:, 2, 0]).all() and (p5[:, 2, 0] < p5[:, 1, 0]).all()
    assert (p5[:, 3:, 1].mean(1) > p5[:, 2, 1]).all()
    assert np.isnan(t.points68[~ok]).all()


def test_real_face_lmd_is_small_under_a_known_head_motion_and_the_mouth_curve_survives(real_source_tile, dlib_detector):
    from stccl_diffusers.data.face_align import landmark_track

    frames, _ = real_source_tile
    m = cv2.getRotationMatrix2D((128, 128), 6.0, 1.06)
    m[:, 2] += (5, -4)
    moved = np.stack([cv2.warpAffine(f, m, (256, 256), borderMode=cv2.BORDER_REPLICATE) for f in frames])
    a, g = landmark_track(frames, dlib_detector), landmark_track(moved, dlib_detector)
    r = real_mouth_measures(a, g, frame_height=256)
    raw = landmark_distances(a.points68, g.points68, 256, align="none")
    # Same face, same mouth: only detector noise remains once the head motion is aligned away.
    assert r["M-LMD"] < 2.0 and raw["F-LMD"] > 3 * r["F-LMD"]
    assert r["mouth_corr"] > 0.8 and r["mouth_lag"] == 0


def test_fad_csim_alignment_uses_landmarks_and_undoes_a_head_roll(real_source_tile, dlib_detector):
    from stccl_diffusers.data.face_align import landmark_track
    from stccl_diffusers.eval.runner import EvalConfig, prepare_faces

    frames, _ = real_source_tile
    frames = frames[:6]
    m = cv2.getRotationMatrix2D((128, 128), 12.0, 1.0)
    rolled = np.stack([cv2.warpAffine(f, m, (256, 256), borderMode=cv2.BORDER_REPLICATE) for f in frames])
    cfg = EvalConfig(metrics=("fad",))
    base = prepare_faces(frames, 30.0, cfg, landmark_track(frames, dlib_detector)).aligned112.astype(int)
    lmk = prepare_faces(rolled, 30.0, cfg, landmark_track(rolled, dlib_detector)).aligned112.astype(int)
    box = prepare_faces(rolled, 30.0, cfg).aligned112.astype(int)  # Haar box placement: no rotation
    assert np.abs(lmk - base).mean() < 0.5 * np.abs(box - base).mean()


def test_alignment_fallback_to_the_haar_box_is_reported(real_source_tile):
    from stccl_diffusers.eval.runner import EvalConfig, prepare_faces

    frames, _ = real_source_tile
    frames = frames[:4]
    none_found = LandmarkTrack(np.zeros(4, bool), np.full((4, 4), np.nan), np.full((4, 68, 2), np.nan, np.float32),
                               np.full((4, 5, 2), np.nan, np.float32), "dlib")
    crops = prepare_faces(frames, 30.0, EvalConfig(metrics=("fad",)), none_found)
    assert crops.aligned112.shape == (4, 112, 112, 3)
    assert any("no dlib landmarks in any frame; fell back" in n for n in crops.notes)


def test_stccl_eval_mouth_on_a_real_comparison_video(real_source_tile, tmp_path):
    from stccl_diffusers.eval.cli import main

    _, clip = real_source_tile
    out = tmp_path / "eval"
    assert main(["--tiled", str(clip), "--metrics", "none", "--mouth", "--max_frames", "30", "--output_dir", str(out), "--no_progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    for method in ("STCCL_VD", "NED"):
        agg = res["methods"][method]
        for key in ("M-LMD", "F-LMD", "mouth_corr", "mouth_lag", "mouth_lag_median", "landmark_coverage_total"):
            assert agg.get(key) is not None, f"{method} has no {key}"
        assert agg["paired_frames_total"] == 30 and 0.8 <= agg["landmark_coverage_total"] <= 1.0
        assert 0 < agg["M-LMD"] < 30
    assert not res["unreadable"]
    md = (out / "results.md").read_text()
    assert "## Mouth" in md and "M-LMD" in md and "landmark coverage" in md
    assert (out / "mouth_curves.png").is_file()


def test_haar_backend_reports_that_real_mouths_need_landmarks(shared_data, tmp_path):
    from stccl_diffusers.eval.cli import main

    clip = sorted((shared_data / "real_pairs").glob("*.mp4"))[0]
    out = tmp_path / "eval"
    main(["--tiled", str(clip), "--metrics", "none", "--mouth", "--face_backend", "haar", "--max_frames", "6",
          "--output_dir", str(out), "--no_progress"])
    res = json.loads((out / "results.json").read_text())
    assert any("Haar backend (--face_backend haar)" in n for n in res["notes"])
    failed = [u for u in res["unreadable"] if u.get("metric") == "mouth_pair_metric"]
    assert {u["method"] for u in failed} == {"STCCL_VD", "NED"}
    assert all("68-point landmarks" in u["reason"] for u in failed)
    assert "M-LMD" not in res["methods"]["STCCL_VD"]


def test_insightface_backend_without_a_pack_folder_is_a_one_line_error(tmp_path):
    from stccl_diffusers.eval.cli import main

    with pytest.raises(UsageError, match="--face_backend insightface: .*needs insightface_root"):
        main(["--reference_dir", str(tmp_path), "--generated", f"x={tmp_path}", "--metrics", "none", "--mouth",
              "--face_backend", "insightface", "--output_dir", str(tmp_path / "out")])


def test_mouth_without_weights_suggests_metrics_none(tmp_path):
    from stccl_diffusers.eval.cli import main

    with pytest.raises(UsageError, match="needs weights.*add --metrics none to run only --mouth"):
        main(["--reference_dir", str(tmp_path), "--generated", f"x={tmp_path}", "--mouth", "--output_dir", str(tmp_path / "out")])
