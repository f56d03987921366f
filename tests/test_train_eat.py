"""train_eat_stccl.py end to end on tiny settings: media and metrics written, resume after kill."""

import json
from pathlib import Path

import pytest
import torch
from conftest import load_repo_module
from safetensors.torch import load_file

from stccl_diffusers import STCCLMetric

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    return load_repo_module("train_eat_stccl.py")


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A metric and a synthetic-clip cache that all runs of this module share."""
    d = tmp_path_factory.mktemp("eat_shared")
    torch.manual_seed(0)
    STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, num_samples=(4, 4, 2, 2)).save_pretrained(d / "metric")
    # The scripts synthesize only into the demo's own folders (outputs/, cache); tests bring their data.
    from stccl_diffusers.training.demo import ensure_synthetic_clips

    ensure_synthetic_clips(d / "data", 1, 1, size=64, seed=3)
    ensure_synthetic_clips(d / "data_val", 1, 1, size=64, seed=1234)
    return d


def tiny_args(out, shared, **over):
    args = {
        "output_dir": out, "data_dir": shared / "data", "metric_path": shared / "metric", "report_to": "none",
        "synth_speakers": 1, "synth_clips": 1, "windows_per_clip": 2, "resolution": 32, "num_frames": 2,
        "crop_size": 32,
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


def test_eat_collate_builds_eat_batches_from_talking_clips():
    from stccl_diffusers.adapters.eat import eat_collate

    g = torch.Generator().manual_seed(0)
    items = [{"frames": torch.rand(3, 3, 16, 16, generator=g) * 2 - 1, "reference": torch.zeros(3, 16, 16),
              "audio": torch.randn(1920, generator=g) * 0.1, "emotion": torch.tensor(e),
              "face_box": torch.tensor([1.0, 2.0, 15.0, 16.0]), "fps": torch.tensor(25.0)} for e in (4, 5)]
    batch = eat_collate(items)
    assert batch["source"].shape == (2, 3, 16, 16) and float(batch["source"].max()) == 0.5  # [-1,1] -> [0,1]
    assert torch.allclose(batch["driving"], (torch.stack([i["frames"] for i in items]) + 1) / 2)
    assert batch["audio"].shape == (2, 3, 60) and batch["y_trg"].tolist() == [4, 5]
    assert batch["bboxs"].shape == (2, 3, 4) and batch["bboxs"][1, 2].tolist() == [1.0, 2.0, 15.0, 16.0]
    items[0]["emotion"] = torch.tensor(8)
    with pytest.raises(ValueError, match=r"EAT emotion labels in \[0, 8\)"):
        eat_collate(items)


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
    assert (out / "validation" / "step-000004.png").is_file() and (out / "validation" / "step-000004.mp4").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["last_validation"]["step"] == 4 and "pos_sim" in metrics["last_validation"]
    assert metrics["first_validation"]["step"] == 4  # validate_at_start off: the end-of-run one only
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

