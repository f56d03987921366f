"""`train_dice_stccl.py`'s embedded demo (reference backend, synthetic data) end to end, tiny."""

from __future__ import annotations

import json

import pytest
from conftest import load_repo_module


@pytest.fixture(scope="module")
def script():
    return load_repo_module("train_dice_stccl.py")


TINY = ["--output_dir", "outputs/run", "--data_dir", "outputs/data", "--synth_speakers", "2", "--synth_clips", "1",
        "--num_frames", "4", "--windows_per_clip", "1", "--vae_fit_steps", "2", "--base_train_steps", "2",
        "--max_train_steps", "2", "--validation_steps", "2", "--checkpointing_steps", "0", "--metric_pretrain_steps", "1",
        "--validation_num_frames", "4", "--num_inference_steps", "2", "--frame_subset", "0", "2", "--report_to", "none"]


def test_the_demo_validates_a_new_sentence_of_a_training_speaker_and_logs_the_measures(script, tmp_path, monkeypatch):
    import numpy as np
    import torch

    from stccl_diffusers.data.video_io import read_video

    monkeypatch.chdir(tmp_path)  # the demo synthesizes only under ./outputs
    seen = {}
    real = script.synthetic_validation

    def spy(*args, **kwargs):
        seen["batch"], fn, info = real(*args, **kwargs, probe_frames=120, probe_steps=5)
        return seen["batch"], fn, info

    monkeypatch.setattr(script, "synthetic_validation", spy)
    script.main(TINY + ["--validation_speaker", "1"])
    metrics = json.loads((tmp_path / "outputs/run/metrics.json").read_text())
    last = metrics["validations"][-1]
    assert last["step"] == 2 and {"effect_emotion_acc", "effect_gt_corr", "no_stccl_gt_corr"} <= set(last)
    assert (tmp_path / "outputs/run/validation/step-000002.png").is_file()
    # The reference face of the validation clip is speaker S001's (a sentence it never said in training).
    ref = (seen["batch"]["reference"][0].permute(1, 2, 0) + 1) * 127.5
    s1, s0 = (read_video(str(tmp_path / f"outputs/data/{s}/video/front/neutral/level_1/001.mp4"), with_audio=False).frames[0]
              for s in ("S001", "S000"))
    small = lambda f: torch.nn.functional.interpolate(torch.from_numpy(np.asarray(f, np.float32)).permute(2, 0, 1)[None],  # noqa: E731
                                                    size=ref.shape[:2], mode="area")[0].permute(1, 2, 0)
    assert (ref - small(s1)).abs().mean() < 0.5 * (ref - small(s0)).abs().mean()


def test_a_validation_speaker_the_data_lacks_is_named(script, tmp_path):
    from stccl_diffusers.adapters.dice import DiceTrainingConfig
    from stccl_diffusers.training.demo import ensure_synthetic_clips

    data = ensure_synthetic_clips(tmp_path / "data", speakers=1, clips=1, size=64, seed=0, emotions=["happy"])
    cfg = DiceTrainingConfig(data_dir=str(data), validation_speaker=3)
    with pytest.raises(ValueError, match=r"--validation_speaker 3.*speakers \['S000'\]"):
        script.validation_identities(cfg)
    assert script.validation_identities(DiceTrainingConfig(data_dir=str(data), validation_speaker=None)) is None
    (tmp_path / "real").mkdir()
    with pytest.raises(ValueError, match=r"--validation_speaker 0: expected a synthetic set.*ground_truth.json missing"):
        script.validation_identities(DiceTrainingConfig(data_dir=str(tmp_path / "real"), validation_speaker=0))


@pytest.mark.parametrize("backbone, expected", [(["r50"], "r50"), (["1", "1", "1", "1"], [1, 1, 1, 1])])
def test_the_documented_metric_backbone_names_reach_the_metric(script, tmp_path, monkeypatch, backbone, expected):
    """`metric_backbone: r50` (documented) once failed in this script with int('r50'); both scripts
    now read the field through one helper."""
    import stccl_diffusers.training.demo as demo

    class Reached(Exception):
        pass

    def spy(out_dir, **kwargs):
        raise Reached(kwargs["backbone"])

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "pretrain_metric_quick", spy)
    with pytest.raises(Reached) as got:
        script.main(TINY + ["--metric_backbone", *backbone])
    assert got.value.args[0] == expected
    assert demo.metric_backbone_arg(backbone) == expected
