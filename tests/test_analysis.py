import json

import cv2
import numpy as np
import pytest
import torch

from stccl_diffusers import STCCLMetric
from stccl_diffusers.analysis import analyze_main, layer_similarities, plot_similarities, untrained_like
from stccl_diffusers.data.synthetic import synthetic_batch
from stccl_diffusers.utils.safety import UsageError


def _tiny():
    torch.manual_seed(0)
    return STCCLMetric(backbone=(1, 1, 1, 1), input_size=32, layers=(1, 2, 3), num_samples=(4, 4, 2, 2), embedding_head=False)


def _batches():
    a, t = synthetic_batch(2, num_frames=2, size=32, seed=5)
    return [{"anchor": a, "target": t}]


def test_layer_similarities_report_pos_neg_and_gap_per_layer():
    r = layer_similarities(_tiny(), _batches(), seed=1)
    assert set(r["per_layer"]) == {"scc/1", "scc/2", "scc/3", "tcc/1", "tcc/2", "tcc/3"}
    for v in r["per_layer"].values():
        assert -1.0 <= v["neg_sim"] <= 1.0 and -1.0 <= v["pos_sim"] <= 1.0
        assert v["gap"] == pytest.approx(v["pos_sim"] - v["neg_sim"])
    assert r["gap"] == pytest.approx(r["pos_sim"] - r["neg_sim"])
    assert r == layer_similarities(_tiny(), _batches(), seed=1), "seeded sampling: reproducible"
    with pytest.raises(ValueError, match="at least one batch"):
        layer_similarities(_tiny(), [], seed=1)


def test_identical_clips_have_a_larger_gap_than_unrelated_clips():
    m = _tiny()
    a, t = synthetic_batch(2, num_frames=2, size=32, seed=5)
    same = layer_similarities(m, [{"anchor": a, "target": a}], seed=1)
    other = layer_similarities(m, [{"anchor": a, "target": t.flip(0)}], seed=1)
    assert same["pos_sim"] == pytest.approx(1.0, abs=1e-4)
    assert same["gap"] > other["gap"]


def test_untrained_like_has_the_config_but_fresh_weights():
    m = _tiny()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5)
    u = untrained_like(m, seed=0)
    assert dict(u.config) == dict(m.config) and not u.training
    assert any(not torch.equal(p, q) for p, q in zip(u.parameters(), m.parameters()))


def test_plot_writes_a_bar_chart_png(tmp_path):
    r = layer_similarities(_tiny(), _batches(), seed=1)
    path = tmp_path / "fig" / "sims.png"
    plot_similarities({"untrained": r, "trained": r}, str(path))
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 500
    assert img.std() > 10, "not a blank image"


def test_stccl_analyze_end_to_end_on_synthetic_pairs(tmp_path, capsys):
    _tiny().save_pretrained(str(tmp_path / "metric"))
    assert analyze_main(["--trained", str(tmp_path / "metric"), "--num_clips", "2", "--out", str(tmp_path / "out")]) == 0
    rep = json.loads((tmp_path / "out" / "similarities.json").read_text())
    assert set(rep["results"]) == {"untrained", "trained"} and rep["num_clips"] == 2
    assert (tmp_path / "out" / "similarities.png").is_file()
    assert "trained: pos" in capsys.readouterr().out


def test_stccl_analyze_on_real_tiled_pairs(shared_data, tmp_path):
    _tiny().save_pretrained(str(tmp_path / "metric"))
    analyze_main(["--trained", str(tmp_path / "metric"), "--data", "real_pairs", "--data_root", str(shared_data / "real_pairs"),
                  "--num_clips", "2", "--target", "ned", "--shifts", "", "--out", str(tmp_path / "real")])
    rep = json.loads((tmp_path / "real" / "similarities.json").read_text())
    assert rep["data"] == "real_pairs (source vs ned)"
    assert np.isfinite(rep["results"]["trained"]["gap"])
    assert not (tmp_path / "real" / "speech_timing.json").exists(), "--shifts '' skips the timing analysis"


# ---------------------------------------------------------------- speech-timing AUC

from stccl_diffusers.analysis import (  # noqa: E402
    mean_speech_timing,
    metric_window_losses,
    shifted_window_starts,
    speech_timing,
    timing_auc,
)


def _talking_clip(n=40, size=16, seed=0):
    """A clip whose content changes every frame (a random 'mouth' brightness per frame)."""
    g = torch.Generator().manual_seed(seed)
    level = torch.rand(n, generator=g) * 2 - 1
    return level[:, None, None, None].expand(n, 3, size, size).clone()


def _frame_mse(a, t):  # timing-sensitive by construction: compares frame k with frame k
    return {"overall": ((a - t) ** 2).flatten(1).mean(1), "frames": ((a - t) ** 2).flatten(1).mean(1)}


def _clip_mean_gap(a, t):  # timing-blind by construction: only the anchor window enters
    return {"overall": a.flatten(1).mean(1) * 0, "frames": a.flatten(1).abs().mean(1)}


def test_timing_auc_counts_windows_where_the_aligned_pair_scores_lower_and_ties_half():
    assert timing_auc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.5, 0.5])) == 1.0
    assert timing_auc(torch.tensor([0.5, 0.5]), torch.tensor([0.1, 0.5])) == 0.25
    with pytest.raises(ValueError, match="equal length"):
        timing_auc(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        timing_auc(torch.tensor([float("nan")]), torch.zeros(1))


def test_shifted_window_starts_keep_both_windows_inside_the_clip():
    assert shifted_window_starts(10, 2, 3).tolist() == [0, 2, 4]  # 4 + 3 + 2 <= 10
    assert shifted_window_starts(10, 2, -3).tolist() == [3, 5, 7]
    assert shifted_window_starts(4, 2, 3).size == 0


def test_a_timing_sensitive_loss_scores_auc_one_and_a_timing_blind_one_half():
    clip = _talking_clip()
    target = clip + 0.01  # same speech, slightly different appearance
    sensitive = speech_timing(_frame_mse, clip, target, num_frames=2, shifts=(1, 4))
    assert sensitive["auc"] == pytest.approx(1.0) and sensitive["per_layer"]["frames"] == pytest.approx(1.0)
    assert set(sensitive["per_shift"]) == {"1", "4"} and sensitive["per_shift"]["4"]["windows"] == 18
    blind = speech_timing(_clip_mean_gap, clip, target, num_frames=2, shifts=(1, 4))
    assert blind["auc"] == 0.5 and blind["per_layer"]["frames"] == 0.5


def test_a_target_that_does_not_move_leaves_a_loss_blind_to_timing():
    clip = _talking_clip()
    frozen = clip[:1].expand_as(clip).clone()  # a still frame: no shift changes anything
    r = speech_timing(_frame_mse, clip, frozen, num_frames=2, shifts=(2, 8))
    assert r["auc"] == 0.5


def test_speech_timing_refuses_zero_shifts_and_too_short_clips():
    clip = _talking_clip(6)
    with pytest.raises(ValueError, match="non-zero shifts"):
        speech_timing(_frame_mse, clip, clip, shifts=(0, 2))
    with pytest.raises(ValueError, match="too short"):
        speech_timing(_frame_mse, clip, clip, num_frames=2, shifts=(8,))


def test_pooled_timing_weights_each_clip_by_its_windows():
    a = {"per_shift": {"2": {"auc": 1.0, "windows": 30, "per_layer": {"scc/1": 1.0}}}}
    b = {"per_shift": {"2": {"auc": 0.0, "windows": 10, "per_layer": {"scc/1": 0.5}}}}
    r = mean_speech_timing([a, b])
    assert r["auc"] == pytest.approx(0.75) and r["per_layer"]["scc/1"] == pytest.approx(0.875)
    assert r["per_shift"]["2"]["windows"] == 40


def test_metric_window_losses_score_aligned_and_shifted_windows_on_the_same_regions():
    m = _tiny()
    a, t = synthetic_batch(3, num_frames=2, size=32, seed=5)
    losses = metric_window_losses(m, seed=4, batch_size=2)
    first, again = losses(a, t), losses(a, t)
    assert set(first) == {"overall", "scc/1", "scc/2", "scc/3", "tcc/1", "tcc/2", "tcc/3"}
    assert all(v.shape == (3,) for v in first.values())
    assert all(torch.equal(first[k], again[k]) for k in first), "region sampling restarts from the seed on every call"
    per_layer_sum = sum(first[k] for k in first if k != "overall")
    assert torch.allclose(first["overall"], per_layer_sum, atol=1e-5)


def test_stccl_metric_on_identical_talking_clips_prefers_the_aligned_window_more_often_than_chance():
    """The real metric, untrained: target = anchor makes every aligned positive exact, and only the
    mouth moves, so the shifted windows differ from the aligned ones in a few regions only."""
    from stccl_diffusers.data.synthetic import make_pair

    p = make_pair(11, emotion="happy", size=32, with_audio=False)
    from stccl_diffusers.data.datasets import frames_to_tensor

    clip = frames_to_tensor(p.neutral.frames[:40], 32)
    r = speech_timing(metric_window_losses(_tiny(), seed=0), clip, clip, num_frames=2, shifts=(4,))
    assert r["auc"] > 0.6


def test_stccl_analyze_prints_the_speech_timing_auc_untrained_vs_trained(tmp_path, capsys):
    _tiny().save_pretrained(str(tmp_path / "metric"))
    assert analyze_main(["--trained", str(tmp_path / "metric"), "--num_clips", "1", "--shifts", "2,4", "--no_progress",
                         "--out", str(tmp_path / "out")]) == 0
    rep = json.loads((tmp_path / "out" / "speech_timing.json").read_text())
    assert set(rep["results"]) == {"untrained", "trained"} and rep["shifts"] == [2, 4] and len(rep["clips"]) == 1
    for r in rep["results"].values():
        assert 0.0 <= r["auc"] <= 1.0 and set(r["per_shift"]) == {"2", "4"}
        assert set(r["per_layer"]) == {"scc/1", "scc/2", "scc/3", "tcc/1", "tcc/2", "tcc/3"}
    out = capsys.readouterr().out
    assert "untrained: speech-timing AUC" in out and "trained: speech-timing AUC" in out


def test_stccl_analyze_refuses_a_zero_shift(tmp_path):
    _tiny().save_pretrained(str(tmp_path / "metric"))
    with pytest.raises(UsageError, match="non-zero"):
        analyze_main(["--trained", str(tmp_path / "metric"), "--shifts", "0,2", "--out", str(tmp_path / "out")])


def test_stccl_analyze_on_held_out_real_clips_with_dlib_pose_alignment(shared_data, tmp_path):
    pytest.importorskip("dlib", reason="the `landmarks` extra (dlib-bin, face_recognition_models) is not installed")
    _tiny().save_pretrained(str(tmp_path / "metric"))
    analyze_main(["--trained", str(tmp_path / "metric"), "--data", "real_pairs", "--data_root", str(shared_data / "real_pairs"),
                  "--clips", "M003", "--face_align", "dlib", "--face_focus", "mouth", "--num_clips", "2", "--shifts", "8",
                  "--no_progress", "--out", str(tmp_path / "real")])
    rep = json.loads((tmp_path / "real" / "speech_timing.json").read_text())
    assert rep["clips"] == ["M003_source_sad_033.mp4"], "only the selected speaker is analysed"
    assert "dlib pose alignment (mouth)" in rep["data"]
    assert rep["results"]["trained"]["per_shift"]["8"]["windows"] > 40
