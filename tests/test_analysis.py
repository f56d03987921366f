import json

import cv2
import numpy as np
import pytest
import torch

from stccl_diffusers import STCCLMetric
from stccl_diffusers.analysis import analyze_main, layer_similarities, plot_similarities, untrained_like
from stccl_diffusers.data.synthetic import synthetic_batch


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
                  "--num_clips", "2", "--target", "ned", "--out", str(tmp_path / "real")])
    rep = json.loads((tmp_path / "real" / "similarities.json").read_text())
    assert rep["data"] == "real_pairs (source vs ned)"
    assert np.isfinite(rep["results"]["trained"]["gap"])
