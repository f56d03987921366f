import json

import numpy as np
import pytest
import torch

from stccl_diffusers.data.synthetic import EMOTIONS, make_pair, render_clip, render_face
from stccl_diffusers.eval.mouth import mouth_opening, mouth_opening_curve, mouth_preservation

torch.set_num_threads(1)


def _aligned_pair(seed, emotion, size=64):
    """(neutral frames re-indexed by the true alignment, emotional frames): paired by index."""
    p = make_pair(seed, emotion=emotion, size=size, with_audio=False)
    return p, p.neutral.frames[p.path[0]], p.emotional.frames


@pytest.mark.parametrize("size", [64, 96])
def test_detector_follows_the_generators_ground_truth_mouth_opening(size):
    # Different seeds = different identities (skin, face shape, lips) and utterances; every emotion.
    cases = [(0, "neutral"), (1, "happy"), (2, "angry"), (3, "sad"), (4, "surprised")] if size == 64 else [(5, "happy"), (6, "neutral")]
    for seed, emo in cases:
        p = make_pair(seed, emotion=None if emo == "neutral" else emo, size=size, with_audio=False)
        clip = p.neutral if emo == "neutral" else p.emotional
        curve = mouth_opening_curve(clip.frames)
        r = np.corrcoef(curve, clip.mouth_open)[0, 1]
        assert r > 0.9, f"seed {seed} {emo} {size}px: correlation with ground truth {r:.3f}"
        # Face-width units: closed mouth (just the lips) well below an open one, independent of size.
        assert 0.0 < curve.min() < 0.1 and curve.max() > 1.5 * curve.min()


def test_detector_does_not_depend_on_image_size_much():
    ident = make_pair(3, size=64, with_audio=False).identity
    small = mouth_opening(render_face(ident, "neutral", 0.8, size=64))
    large = mouth_opening(render_face(ident, "neutral", 0.8, size=128))
    assert small == pytest.approx(large, rel=0.15)
    assert mouth_opening(render_face(ident, "neutral", 0.0, size=64)) < 0.6 * small


def test_detector_rejects_frames_without_a_synthetic_face():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="synthetic face"):
        mouth_opening(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))  # no flat skin region
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        mouth_opening(np.zeros((64, 64), np.uint8))


def test_identical_clips_give_correlation_one_and_zero_error():
    _, anchor, _ = _aligned_pair(7, "happy")
    r = mouth_preservation(anchor, anchor.copy())
    assert r["mouth_corr"] == pytest.approx(1.0, abs=1e-9)
    assert r["mouth_mae"] == 0.0 and r["mouth_lag"] == 0 and r["note"] == ""


@pytest.mark.parametrize("shift", [3, -2])
def test_time_shifted_copy_reports_its_lag(shift):
    _, anchor, _ = _aligned_pair(8, "sad")
    gen = np.roll(anchor, shift, axis=0)  # generated frame t = anchor frame t - shift
    r = mouth_preservation(anchor, gen, max_lag=5)
    assert r["mouth_lag"] == shift
    assert r["mouth_lag_corr"] > 0.99 and r["mouth_corr"] < r["mouth_lag_corr"]


def test_curves_api_lag_and_length_note():
    t = np.arange(40, dtype=np.float64)
    a = np.sin(t / 3.0)
    r = mouth_preservation(a, np.concatenate([[0.0] * 4, a[:-4]]), already_curves=True, max_lag=6)
    assert r["mouth_lag"] == 4
    r = mouth_preservation(a, a[:30], already_curves=True)
    assert r["mouth_frames"] == 30 and "differ" in r["note"] and r["mouth_corr"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3"):
        mouth_preservation(a[:2], a[:2], already_curves=True)


def test_emotional_clip_aligned_to_neutral_preserves_the_mouth_and_a_frozen_mouth_does_not():
    p, anchor, emotional = _aligned_pair(9, "angry")
    good = mouth_preservation(anchor, emotional)
    assert good["mouth_corr"] > 0.85 and good["mouth_mae"] < 0.05
    # Not aligned (different tempo): the same clip read at the wrong times preserves less.
    unaligned = mouth_preservation(p.neutral.frames, emotional)
    assert unaligned["mouth_corr"] < good["mouth_corr"]
    # Frozen mouth: same face and emotion, mouth held half open in every frame.
    frozen = np.stack([render_face(p.identity, "angry", 0.5, size=64)] * len(emotional))
    bad = mouth_preservation(anchor, frozen)
    assert bad["mouth_corr"] == 0.0 and "frozen" in bad["note"]
    assert bad["mouth_mae"] > good["mouth_mae"]
    # Nearly frozen (tiny jitter of the held opening, uncorrelated with speech): low correlation.
    rng = np.random.default_rng(0)
    jitter = np.stack([render_face(p.identity, "angry", 0.5 + 0.03 * rng.standard_normal(), size=64) for _ in range(len(emotional))])
    assert abs(mouth_preservation(anchor, jitter)["mouth_corr"]) < 0.4


def test_stccl_eval_mouth_flag_adds_per_method_columns(tmp_path):
    import cv2

    from stccl_diffusers.eval.cli import main

    def write(folder, frames):
        folder.mkdir(parents=True)
        for i, f in enumerate(frames):
            cv2.imwrite(str(folder / f"{i:06d}.png"), f[..., ::-1])

    p, anchor, emotional = _aligned_pair(9, "angry", size=48)
    anchor, emotional = anchor[:30], emotional[:30]
    write(tmp_path / "real" / "c1", anchor)
    write(tmp_path / "good" / "c1", emotional)
    write(tmp_path / "frozen" / "c1", np.stack([render_face(p.identity, "angry", 0.5, size=48)] * len(anchor)))
    out = tmp_path / "out"
    main(["--reference_dir", str(tmp_path / "real"), "--generated", f"good={tmp_path / 'good'}", "--generated", f"frozen={tmp_path / 'frozen'}",
          "--metrics", "none", "--mouth", "--output_dir", str(out), "--no_progress", "--num_threads", "1"])
    res = json.loads((out / "results.json").read_text())
    good, frozen = res["methods"]["good"], res["methods"]["frozen"]
    assert good["mouth_corr"] > 0.85 and frozen["mouth_corr"] == 0.0 and frozen["mouth_mae"] > good["mouth_mae"]
    direct = mouth_preservation(anchor, emotional)
    assert good["mouth_corr"] == pytest.approx(direct["mouth_corr"]) and good["mouth_mae"] == pytest.approx(direct["mouth_mae"])
    assert any(s["method"] == "reference (real)" and "mouth" in s["reason"] for s in res["skipped"])
    assert any("frozen" in c.get("mouth_note", "") for c in res["clips"] if c["method"] == "frozen")
    md = (out / "results.md").read_text()
    assert "## Mouth" in md and "opening corr" in md and "opening MAE" in md and "--mouth" in md
    assert all(c.get("mouth_detector") == "synthetic" for c in res["clips"] if c["method"] != "reference (real)")
