import json

import cv2
import numpy as np
import pytest
import torch

from stccl_diffusers import STCCLMetric
from stccl_diffusers.analysis import frame_pair_batches, layer_similarities, untrained_like
from stccl_diffusers.data.synthetic import make_pair
from stccl_diffusers.eval.cli import main
from stccl_diffusers.utils.safety import UsageError

torch.set_num_threads(1)


@pytest.fixture
def tiny_metric_dir(tmp_path):
    torch.manual_seed(123)  # not the --seed of the untrained copy: the two metrics differ
    m = STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False)
    d = tmp_path / "tiny_metric"
    m.save_pretrained(str(d))
    return d


def _write(folder, frames):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:06d}.png"), f[..., ::-1])


def _folders(root):
    """real = neutral frames aligned to the emotional clip; A = copies of the real clips;
    B = another person's clip (unrelated content)."""
    clips = {}
    for k, seed in enumerate((1, 2)):
        p = make_pair(seed, emotion="happy", size=48, with_audio=False)
        clips[f"clip{k}"] = p.neutral.frames[p.path[0]][:6]
    other = make_pair(3, emotion="sad", size=48, with_audio=False).emotional.frames
    for name, fr in clips.items():
        _write(root / "real" / name, fr)
        _write(root / "A" / name, fr)
        _write(root / "B" / name, other[: len(fr)])
    return clips


def test_eval_analysis_columns_match_the_shared_implementation(tmp_path, tiny_metric_dir):
    clips = _folders(tmp_path)
    out = tmp_path / "out"
    rc = main(["--reference_dir", str(tmp_path / "real"), "--generated", f"A={tmp_path / 'A'}", "--generated", f"B={tmp_path / 'B'}",
               "--metrics", "none", "--analysis_metric", str(tiny_metric_dir), "--analysis_untrained", "--output_dir", str(out),
               "--no_progress", "--num_threads", "1", "--seed", "0"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    a, b = res["methods"]["A"], res["methods"]["B"]
    # Identical clips: every positive pair is the same feature -> pos_sim 1; unrelated clips separate less.
    assert a["pos_sim"] == pytest.approx(1.0, abs=1e-4) and a["gap"] > b["gap"]
    for m in (a, b):
        assert m["gap"] == pytest.approx(m["pos_sim"] - m["neg_sim"], abs=1e-9)
        assert m["analysis_windows"] == 3.0 and m["num_clips"] == 2
        assert set(m["analysis_per_layer"]) == {"scc/1", "scc/2", "scc/3", "scc/4", "tcc/1", "tcc/2", "tcc/3", "tcc/4"}
        assert set(m["untrained_analysis_per_layer"]) == set(m["analysis_per_layer"])
    assert a["untrained_neg_sim"] != pytest.approx(a["neg_sim"], abs=1e-6), "untrained copy is a different init"
    # The numbers are exactly those of stccl-analyze's layer_similarities on the index-paired windows.
    metric = STCCLMetric.from_pretrained(str(tiny_metric_dir))
    real = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted((tmp_path / "real" / "clip1").glob("*.png"))])
    gen = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted((tmp_path / "B" / "clip1").glob("*.png"))])
    direct = layer_similarities(metric, frame_pair_batches(real, gen, 64, 2, 32), seed=0)
    rec = next(c for c in res["clips"] if c["method"] == "B" and c["clip"] == "clip1")
    assert rec["pos_sim"] == pytest.approx(direct["pos_sim"], abs=1e-6) and rec["neg_sim"] == pytest.approx(direct["neg_sim"], abs=1e-6)
    assert rec["analysis_per_layer"]["tcc/2"]["gap"] == pytest.approx(direct["per_layer"]["tcc/2"]["gap"], abs=1e-6)
    unt = layer_similarities(untrained_like(metric, 0), frame_pair_batches(real, gen, 64, 2, 32), seed=0)
    assert rec["untrained_gap"] == pytest.approx(unt["gap"], abs=1e-6)
    # Per-method layer means are the means over clips.
    recs = [c for c in res["clips"] if c["method"] == "B"]
    assert b["analysis_per_layer"]["scc/1"]["pos_sim"] == pytest.approx(np.mean([c["analysis_per_layer"]["scc/1"]["pos_sim"] for c in recs]))
    # Real rows are not compared with themselves; columns reach the Markdown, the plot is written.
    assert any(s["method"] == "reference (real)" and "correlation analysis" in s["reason"] for s in res["skipped"])
    md = (out / "results.md").read_text()
    assert "## Further measures" in md and "untrained_gap" in md and "pos_sim" in md
    assert (out / "correlation_analysis.png").stat().st_size > 1000


def test_eval_analysis_flag_errors(tmp_path, tiny_metric_dir):
    _folders(tmp_path)
    base = ["--reference_dir", str(tmp_path / "real"), "--generated", f"A={tmp_path / 'A'}", "--output_dir", str(tmp_path / "o"), "--no_progress"]
    with pytest.raises(UsageError, match="--analysis_metric"):
        main(base + ["--metrics", "none", "--analysis_metric", str(tmp_path / "nope")])
    with pytest.raises(UsageError, match="--analysis_frames: expected >= 2"):
        main(base + ["--metrics", "none", "--analysis_metric", str(tiny_metric_dir), "--analysis_frames", "1"])
    with pytest.raises(UsageError, match="--analysis_untrained needs --analysis_metric"):
        main(base + ["--metrics", "none", "--analysis_untrained"])
    with pytest.raises(UsageError, match="--metrics"):
        main(base + ["--metrics", "none"])  # nothing to compute
    with pytest.raises(ValueError, match="at least num_frames=4"):
        frame_pair_batches(np.zeros((3, 8, 8, 3), np.uint8), np.zeros((5, 8, 8, 3), np.uint8), 8, num_frames=4)


def test_eval_analysis_reports_the_speech_timing_auc_of_the_shared_implementation(tmp_path, tiny_metric_dir):
    from stccl_diffusers.analysis import metric_window_losses, speech_timing
    from stccl_diffusers.data.datasets import frames_to_tensor

    _folders(tmp_path)
    out = tmp_path / "out"
    assert main(["--reference_dir", str(tmp_path / "real"), "--generated", f"B={tmp_path / 'B'}", "--metrics", "none",
                 "--analysis_metric", str(tiny_metric_dir), "--analysis_untrained", "--analysis_shifts", "1,2",
                 "--output_dir", str(out), "--no_progress", "--num_threads", "1", "--seed", "0"]) == 0
    res = json.loads((out / "results.json").read_text())
    metric = STCCLMetric.from_pretrained(str(tiny_metric_dir))
    real = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted((tmp_path / "real" / "clip0").glob("*.png"))])
    gen = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted((tmp_path / "B" / "clip0").glob("*.png"))])
    direct = speech_timing(metric_window_losses(metric, 0, 32), frames_to_tensor(real, 64), frames_to_tensor(gen, 64), 2, (1, 2))
    rec = next(c for c in res["clips"] if c["method"] == "B" and c["clip"] == "clip0")
    assert rec["timing_auc"] == pytest.approx(direct["auc"]) and 0.0 <= rec["untrained_timing_auc"] <= 1.0
    assert rec["timing_auc_per_layer"]["tcc/3"] == pytest.approx(direct["per_layer"]["tcc/3"])
    pooled = res["methods"]["B"]["speech_timing"]
    assert set(pooled["per_shift"]) == {"1", "2"} and pooled["per_shift"]["2"]["windows"] == 2 * 2  # 2 clips x 2 windows
    assert "untrained_speech_timing" in res["methods"]["B"]
    assert any("speech-timing AUC" in n for n in res["notes"])


def test_eval_analysis_shifts_flag_errors(tmp_path, tiny_metric_dir):
    _folders(tmp_path)
    base = ["--reference_dir", str(tmp_path / "real"), "--generated", f"A={tmp_path / 'A'}", "--output_dir", str(tmp_path / "o"), "--no_progress"]
    with pytest.raises(UsageError, match="--analysis_shifts: expected"):
        main(base + ["--metrics", "none", "--analysis_metric", str(tiny_metric_dir), "--analysis_shifts", "0"])
    with pytest.raises(UsageError, match="--analysis_shifts needs --analysis_metric"):
        main(base + ["--metrics", "lse", "--analysis_shifts", "2"])
