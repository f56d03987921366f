"""csim_id beside csim_expr (CSIM alias), Acc_emo through a plugged-in classifier, and the
comparison section of stccl-eval, end to end on small folders."""

import json
import sys
import types

import numpy as np
import pytest
import torch

from stccl_diffusers.eval.cli import main
from stccl_diffusers.models.iresnet import IResNet

from test_eval_cli import _make_folders
from stccl_diffusers.utils.safety import UsageError


@pytest.fixture
def tiny_iresnet(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny_backbone.pth"
    torch.save(IResNet((1, 1, 1, 1)).state_dict(), path)
    return str(path)


def test_csim_id_and_csim_expr_are_named_apart_and_csim_stays_an_alias(tmp_path, tiny_iresnet):
    ref, gen_a, gen_b = _make_folders(tmp_path)
    out = tmp_path / "o"
    main(["--reference_dir", str(ref), "--generated", f"A={gen_a}", "--generated", f"B={gen_b}", "--aligned",
          "--metrics", "csim_expr,csim_id", "--csim_weights", tiny_iresnet, "--arcface_weights", tiny_iresnet,
          "--output_dir", str(out), "--no_progress", "--num_threads", "1", "--frame_stride", "3", "--bootstrap_resamples", "300"])
    res = json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    a, b = res["methods"]["A"], res["methods"]["B"]
    assert a["csim_id"] == pytest.approx(1.0, abs=1e-9) and b["csim_id"] < 0.999  # A reproduces the source
    for m in (a, b):
        assert m["CSIM"] == m["csim_expr"]  # the deprecated alias carries the same number
    assert res["aliases"]["CSIM"].startswith("csim_expr")
    assert not any(x["measure"] in ("csim_id", "CSIM (csim_expr)") for x in res["left_out"])
    assert any(x["measure"] == "FAD" for x in res["left_out"]) and any(x["measure"] == "Acc_emo" for x in res["left_out"])
    # A vs B on the one clip they share (B's clip2 is unreadable): compared, with the protocol.
    (pair,) = res["comparisons"]["pairs"]
    assert (pair["a"], pair["b"], pair["clips"]) == ("A", "B", 1)
    assert pair["measures"]["csim_id"]["wins_a"] == 1 and pair["measures"]["csim_id"]["p_sign"] == 1.0
    assert res["comparisons"]["protocol"]["bootstrap_resamples"] == 300
    md = (out / "results.md").read_text()
    assert "CSIM-id↑ (ArcFace)" in md and "CSIM↑ (expr)" in md and "## Comparisons" in md and "Left out of these tables: FAD" in md
    # The old name still selects the expression similarity.
    out2 = tmp_path / "o2"
    main(["--reference_dir", str(ref), "--generated", f"A={gen_a}", "--aligned", "--metrics", "csim", "--csim_weights", tiny_iresnet,
          "--output_dir", str(out2), "--no_progress", "--num_threads", "1", "--frame_stride", "3"])
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["methods"]["A"]["csim_expr"] == pytest.approx(a["csim_expr"]) and res2["comparisons"] is None


def test_csim_id_needs_arcface_weights(tmp_path):
    ref, gen_a, _ = _make_folders(tmp_path)
    with pytest.raises(UsageError, match="--arcface_weights"):
        main(["--reference_dir", str(ref), "--generated", f"A={gen_a}", "--aligned", "--metrics", "csim_id",
              "--output_dir", str(tmp_path / "o"), "--no_progress"])


def test_acc_emo_per_emotion_through_a_plugged_in_classifier(tmp_path, monkeypatch):
    import cv2

    mod = types.ModuleType("_emotion_plugin_for_test")

    def factory(weights=None):
        def clf(x):  # bright faces -> happy, dark -> sad
            s = torch.full((8,), -3.0)
            s[0 if x.mean() > 0.5 else 4] = 3.0
            return s
        clf.classes = ("happy", "angry", "disgusted", "fear", "sad", "neutral", "surprised", "contempt")
        return clf

    mod.factory = factory
    monkeypatch.setitem(sys.modules, "_emotion_plugin_for_test", mod)
    clips = {"M1_happy_001": 230, "M1_happy_002": 20, "M1_sad_001": 20, "x_007": 20}
    for root in ("real", "gen"):
        for name, v in clips.items():
            d = tmp_path / root / name
            d.mkdir(parents=True)
            for i in range(3):
                cv2.imwrite(str(d / f"{i:06d}.png"), np.full((32, 32, 3), v, np.uint8))
    labels = tmp_path / "labels.txt"
    labels.write_text("x_007,sad\n")
    out = tmp_path / "o"
    main(["--reference_dir", str(tmp_path / "real"), "--generated", f"G={tmp_path / 'gen'}", "--aligned", "--metrics", "none",
          "--emotion_classifier", "_emotion_plugin_for_test:factory", "--emotion_labels", str(labels),
          "--output_dir", str(out), "--no_progress", "--num_threads", "1"])
    res = json.loads((out / "results.json").read_text())
    g = res["methods"]["G"]
    assert g["acc_emo"] == pytest.approx(3 / 4)
    assert g["acc_emo_per_emotion"] == {"happy": {"correct": 1, "n": 2, "acc": 0.5}, "sad": {"correct": 2, "n": 2, "acc": 1.0}}
    md = (out / "results.md").read_text()
    assert "Acc_emo↑" in md and "0.750" in md
    assert "| G | 0.500 (1/2) | 1.000 (2/2) | 0.750 |" in md  # per emotion (happy, sad) and overall
