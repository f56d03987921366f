"""train_eat_stccl.py end to end on tiny settings: media and metrics written, resume after kill."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stccl_diffusers import STCCLMetric

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("train_eat_stccl", ROOT / "train_eat_stccl.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_eat_stccl"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A metric and a synthetic-clip cache that all runs of this module share."""
    d = tmp_path_factory.mktemp("eat_shared")
    torch.manual_seed(0)
    STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, num_samples=(4, 4, 2, 2)).save_pretrained(d / "metric")
    return d


def tiny_args(out, shared, **over):
    args = {
        "output_dir": out, "data_dir": shared / "data", "stccl_metric": shared / "metric", "report_to": "none",
        "num_synthetic_pairs": 1, "resolution": 32, "num_frames": 2, "crop_size": 32,
        "num_validation_clips": 1, "validation_frames": 2, "reference_render_channels": 8,
        "train_batch_size": 1, "max_train_steps": 4, "learning_rate": 1e-3,
        "stccl_weight": 0.05, "stccl_warmup_steps": 1, "stccl_ramp_steps": 1,
        "checkpointing_steps": 2, "validation_steps": 0, "validate_at_start": "false", "seed": 3,
    }
    args.update(over)
    return [t for k, v in args.items() for t in (f"--{k}", str(v))]


def test_configs_parse_with_no_unknown_keys(script):
    from stccl_diffusers.training import parse_config

    demo = parse_config(script.EATSTCCLConfig, [], default_config=script.DEMO_CONFIG)
    assert demo.eat_root is None and demo.stccl_warmup_steps > 0 and demo.train_mode == "full"
    real = parse_config(script.EATSTCCLConfig, ["--config", str(ROOT / "configs" / "eat_stccl.yaml")])
    assert real.resolution == 256 and real.num_frames == 5 and real.data == "eat"


def test_a_wrong_eat_checkout_fails_first_naming_the_files(script, tmp_path):
    with pytest.raises(FileNotFoundError, match="modules/model_transformer.py"):
        script.main(["--eat_root", str(tmp_path), "--eat_checkpoint", str(tmp_path / "x.pth.tar"),
                     "--eat_config", "config/x.yaml", "--output_dir", str(tmp_path / "out"), "--report_to", "none"])
    assert not (tmp_path / "out").exists()  # nothing was built


def test_resume_after_kill_matches_an_uninterrupted_run(script, shared, tmp_path):
    full = script.main(tiny_args(tmp_path / "full", shared))
    assert full.global_step == 4
    # The run leaves validation media, the metrics JSON and loss curves.
    out = tmp_path / "full"
    assert (out / "validation" / "step_000004.png").is_file() and (out / "validation" / "step_000004.mp4").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["last_validation"]["step"] == 4 and "pos_sim" in metrics["last_validation"]
    assert (out / "loss_curves.png").is_file() and (out / "reference_eat" / "config.json").is_file()
    # STCCL was off at step 1 and on afterwards (warm-up 1, ramp 1).
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["stccl"] == 0.0 and all(r["stccl"] > 0 for r in log[1:])

    killed = script.main(tiny_args(tmp_path / "resumed", shared), stop_after_steps=2)
    assert killed.global_step == 2 and (tmp_path / "resumed" / "checkpoint-2").is_dir()
    resumed = script.main(tiny_args(tmp_path / "resumed", shared, resume_from_checkpoint="latest"))
    assert resumed.resumed_from.endswith("checkpoint-2") and resumed.global_step == 4

    a = load_file(str(tmp_path / "full" / "trainable_weights.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "trainable_weights.safetensors"))
    assert a.keys() == b.keys() and len(a) > 10
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    log_b = [json.loads(line) for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == [1, 2, 3, 4]
    assert [r["loss"] for r in log_b] == [r["loss"] for r in log]


def test_talking_clip_windows_audio_and_short_clips_reported():
    import numpy as np

    from stccl_diffusers.training.talking_clips import TalkingClip, TalkingClipDataset, audio_frame_features

    sr, fps = 16000, 25.0
    t = np.arange(int(sr * 0.4)) / sr
    # A tone that starts at frame 5: the log-mel energy of frames >= 5 is far above frames < 5.
    audio = np.where(t >= 5 / fps, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
    feats = audio_frame_features(audio, sr, fps, 10, n_mels=8, context=0)
    assert feats.shape == (10, 8)
    assert feats[7].mean() > feats[2].mean() + 0.5
    frames = np.zeros((10, 16, 16, 3), np.uint8)
    ref = frames[0]
    clips = [TalkingClip(frames, audio, sr, fps, "happy", ref, np.array([2, 2, 14, 14], np.float32), "long"),
             TalkingClip(frames[:2], audio[:1280], sr, fps, "sad", ref, np.array([2, 2, 14, 14], np.float32), "short")]
    with pytest.warns(UserWarning, match="short"):
        ds = TalkingClipDataset(clips, num_frames=3, n_mels=8, context=1)
    assert len(ds) == 3 and ds.skipped == ["short (2 frames < 3)"]
    item = ds[1]
    assert item["frames"].shape == (3, 3, 16, 16) and item["audio"].shape == (3, 24)
    assert item["waveform"].shape == (3 * 640,) and item["bbox"].shape == (3, 4)
    assert float(item["frames"].min()) == -1.0


def test_side_by_side_video_puts_target_left_and_anchor_right():
    from stccl_diffusers.training.side_by_side import grid_image, side_by_side_frames

    target = torch.ones(2, 3, 3, 32, 32)  # white
    anchor = -torch.ones(2, 3, 3, 32, 32)  # black
    video = side_by_side_frames(target, anchor)
    assert video.shape == (3, 2 * 128, 2 * 128, 3)  # upscaled to >= 128 px, clips stacked
    assert video[0, 100, 60].min() == 255 and video[0, 100, 200].max() == 0
    grid = grid_image(target, anchor, truth=target)
    assert grid.shape == (2 * 3 * 128, 3 * 128, 3)
