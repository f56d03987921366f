"""The benchmark's measures (eval.effect) on held-out synthetic clips, and in demo validation."""

from __future__ import annotations

import math

import numpy as np
import torch

from stccl_diffusers.eval.effect import (
    MEASURES,
    clip_scorer,
    ensure_probe,
    eval_clips,
    score_clip,
)
from stccl_diffusers.training.validation import make_validation_fn


def _frames(clip):
    return torch.from_numpy(clip["gt_frames"]).permute(0, 3, 1, 2).float() / 127.5 - 1


def _reference_clip(clip):
    return torch.from_numpy(clip["reference"]).permute(2, 0, 1).float()[None].expand(len(clip["gt_frames"]), -1, -1, -1) / 127.5 - 1


def test_ground_truth_frames_score_better_mouth_than_a_frozen_reference(tmp_path):
    probe, info = ensure_probe(tmp_path, 32, frames=400, steps=120)
    assert (tmp_path / "probe_32px_400x120_s0.pt").is_file() and info["probe_frames"] == 400
    clip = eval_clips(1, 16, 32, emotions=("surprised",))[0]
    truth = score_clip(clip, _frames(clip), _reference_clip(clip), probe)
    frozen = score_clip(clip, _reference_clip(clip), _reference_clip(clip), probe)
    assert set(MEASURES) <= set(truth)
    assert truth["gt_corr"] > 0.5 and truth["gt_mae"] < frozen["gt_mae"]
    assert math.isnan(truth["stccl"])  # no metric given


def test_validation_logs_the_effect_measures_for_the_target_and_the_no_stccl_row(tmp_path):
    probe, _ = ensure_probe(tmp_path / "probe", 32, frames=200, steps=20)
    clips = eval_clips(2, 4, 32)

    class Renderer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def render_validation(self, batch, generator=None):
            target = torch.stack([_frames(c) for c in clips])
            return {"target": target, "anchor": torch.stack([_reference_clip(c) for c in clips])}

    fn = make_validation_fn({}, None, tmp_path, fps=25.0, emotion="happy", effect_fn=clip_scorer(clips, probe),
                            no_stccl_fn=lambda a, b, g, s, r: ("no STCCL", r["anchor"]))
    scores = fn(Renderer(), step=3)
    assert {f"effect_{k}" for k in MEASURES if k != "stccl"} <= set(scores)
    assert "effect_stccl" not in scores  # the STCCL score is `stccl` (here no metric: absent, never NaN)
    assert {"no_stccl_emotion_acc", "no_stccl_gt_corr", "no_stccl_gt_mae", "no_stccl_gt_lag"} <= set(scores)
    assert 0.0 <= scores["effect_emotion_acc"] <= 1.0
    assert (tmp_path / "validation" / "step-000003.png").is_file()


def test_the_probe_trains_the_same_whatever_the_process_drew_before(tmp_path):
    torch.manual_seed(1)
    a, _ = ensure_probe(tmp_path / "a", 32, frames=64, steps=2)
    torch.manual_seed(2)
    torch.rand(100)
    b, _ = ensure_probe(tmp_path / "b", 32, frames=64, steps=2)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_eval_clips_can_give_a_training_speaker_a_new_sentence(tmp_path):
    import numpy as np

    from stccl_diffusers.data.synthetic import speaker_identity
    from stccl_diffusers.data.video_io import read_video
    from stccl_diffusers.training.demo import ensure_synthetic_clips

    data = ensure_synthetic_clips(tmp_path / "data", speakers=2, clips=1, size=64, seed=3, emotions=["happy"])
    first = read_video(str(data / "S001" / "video" / "front" / "neutral" / "level_1" / "001.mp4"), with_audio=False).frames
    new_face = eval_clips(1, 8, 64, seed=77, emotions=("happy",))[0]
    known = eval_clips(1, 8, 64, seed=77, emotions=("happy",), identities=[speaker_identity(3, 1)])[0]
    # Same sentence (seed 77): same mouth curve; the face is speaker S001's, not the drawn one.
    np.testing.assert_allclose(known["gt_open"], new_face["gt_open"])
    frame0 = np.asarray(first[0], np.float64)
    assert np.abs(known["reference"].astype(np.float64) - frame0).mean() < 0.3 * np.abs(
        new_face["reference"].astype(np.float64) - frame0).mean()


def test_the_truth_row_pairs_each_clip_with_its_own_neutral_rendering_at_the_same_timing(tmp_path):
    from _stccl_metric_for_tests import build_metric

    from stccl_diffusers.data.synthetic import make_pair
    from stccl_diffusers.eval.effect import truth_scores

    clip = eval_clips(1, 12, 32, seed=50_001, emotions=("happy",))[0]
    pair = make_pair(50_001, emotion="happy", size=64)
    assert clip["gt_neutral_frames"].shape == clip["gt_frames"].shape
    # The emotional clip runs at its own tempo; its neutral twin must follow the same mouth curve,
    # not the paired neutral clip's (tempo 1).
    probe, _ = ensure_probe(tmp_path, 32, frames=400, steps=120)
    calm = score_clip(clip, _frames({"gt_frames": clip["gt_neutral_frames"]}), _frames(clip), probe)
    assert calm["gt_corr"] > 0.5
    assert not np.allclose(pair.neutral.mouth_open[:12], clip["gt_open"])
    # Same utterance, same face: the emotional frames differ from their neutral twin only by the emotion.
    assert 0 < np.abs(clip["gt_frames"].astype(float) - clip["gt_neutral_frames"]).mean() < 40
    truth = truth_scores([clip], probe, build_metric()[0])
    assert set(MEASURES) <= set(truth) and np.isfinite(truth["stccl"])
    assert truth["neu_corr"] > 0.5


def test_the_metric_sync_check_scores_every_anchor_and_sees_a_frozen_mouth():
    from _stccl_metric_for_tests import build_metric

    from stccl_diffusers.eval.effect import SYNC_CHECKS, metric_sync_check

    clips = eval_clips(2, 8, 32, seed=50_010)
    metric = build_metric()[0]
    sync = metric_sync_check(clips, metric)
    assert set(sync) == set(SYNC_CHECKS) and all(np.isfinite(v) for v in sync.values())
    # Against itself is the floor: every real anchor scores higher, whatever the metric learned.
    assert all(sync["itself"] < sync[k] for k in SYNC_CHECKS if k != "itself")
