"""train_eat_stccl.py on EAT's REAL code, fed by EAT's own stage-2 data set class.

The checkout is EAT's source symlinked into a temporary folder with random weights in EAT's formats
(tests/_eat_real_checkout.py). The data is a tiny prepared MEAD in exactly the layout EAT's
preprocessing writes (`images_evp_25/{train,test}`, `latent_evp_25`, `deepfeature32`, `wav_16000`,
`bboxs`, `poseimg`, `voxselect`) with synthetic content
(`stccl_diffusers.data.eat_mead.write_synthetic_eat_mead`; its DeepSpeech features are a log-mel
stand-in, since DeepSpeech needs tensorflow 1.15). EAT's `FramesWavsDatasetMEL25VoxBoxQG2ImgPrompt`
reads it, imported from the checkout.
"""

from __future__ import annotations

import json

import pytest
import torch

from _eat_real_checkout import load_with_eats_demo
from test_train_eat import load_script

pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.fixture(scope="module")
def mead(tmp_path_factory):
    from stccl_diffusers.data.eat_mead import write_synthetic_eat_mead

    return write_synthetic_eat_mead(tmp_path_factory.mktemp("data") / "mead", max_frames=8, seed=0)


@pytest.fixture(scope="module")
def metric_path(tmp_path_factory):
    from stccl_diffusers import STCCLMetric

    path = tmp_path_factory.mktemp("metric") / "metric"
    torch.manual_seed(0)
    # Spatial only: the tests train on 1-frame windows (a 256-px frame of the real model costs ~10 s
    # of CPU each way), and the temporal term needs two.
    STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, num_samples=(4, 4, 2, 2), use_tcc=False).save_pretrained(path)
    return path


def test_eats_own_dataset_reads_the_prepared_mead_layout(eat_checkout, mead):
    from stccl_diffusers.adapters.eat import load_eat_dataset

    ds = load_eat_dataset(eat_checkout["root"], eat_checkout["config_1frame"], is_train=True, num_frames=5, **mead)
    assert sorted(ds.videos) == ["S001_hap_3_002", "S001_neu_1_001"]  # EAT's train/ split
    item = ds[ds.videos.index("S001_hap_3_002")]
    assert item["y_trg"] == 4 and item["z_trg"].shape == (16,)
    assert item["driving"].shape == (5, 3, 256, 256) and item["source"].shape == (3, 256, 256)
    assert {k: tuple(v.shape) for k, v in item["he_driving"].items()} == {
        "yaw": (5, 66), "pitch": (5, 66), "roll": (5, 66), "t": (5, 3), "exp": (5, 45)}
    assert item["he_source"]["exp"].shape == (45,)
    assert item["mel"].shape == (5, 1, 80, 11) and item["deep"].shape == (5, 11, 16, 29)
    assert item["pose"].shape == (5, 11, 1, 64, 64) and item["sync_mel"].shape == (1, 80, 16)
    assert item["bboxs"].shape == (5, 4) and (item["bboxs"][:, 2:] > item["bboxs"][:, :2]).all()


def test_a_prepared_mead_eats_dataset_cannot_read_is_named_first(eat_checkout, mead, tmp_path):
    from stccl_diffusers.adapters.eat import load_eat_dataset

    # EAT's data set would raise deep in a DataLoader worker, or loop forever over unreadable clips.
    with pytest.raises(FileNotFoundError, match=r"poseimg/S001_hap_3_002\.npy\.gz"):
        load_eat_dataset(eat_checkout["root"], eat_checkout["config_1frame"], num_frames=5,
                         **{**mead, "poseimg_path": tmp_path})
    with pytest.raises(FileNotFoundError, match=r"voxselect/Angry\.txt"):
        load_eat_dataset(eat_checkout["root"], eat_checkout["config_1frame"], num_frames=5, **{**mead, "vox_path": tmp_path})
    with pytest.raises(ValueError, match=r"no clip in .*train has the 9 frames EAT's windows need: S001_hap"):
        load_eat_dataset(eat_checkout["root"], eat_checkout["config_1frame"], num_frames=9, **mead)


def test_a_clip_without_a_neutral_clip_of_its_speaker_is_named(tmp_path):
    from stccl_diffusers.data.eat_mead import check_eat_mead, write_synthetic_eat_mead

    paths = write_synthetic_eat_mead(tmp_path / "mead", train_emotions=("happy",), test_emotions=("neutral",),
                                     max_frames=5)
    with pytest.raises(ValueError, match=r"S001_hap_3_001: no neutral clip S001_neu_1_\* in .*train"):
        check_eat_mead(**paths)


def test_validation_batch_is_an_emotional_test_clip_drawn_reproducibly(eat_checkout, mead):
    from stccl_diffusers.adapters.eat import eat_validation_batch, load_eat_dataset

    held_out = load_eat_dataset(eat_checkout["root"], eat_checkout["config_1frame"], is_train=False, num_frames=4, **mead)
    a, b = eat_validation_batch(held_out, 1, seed=7), eat_validation_batch(held_out, 1, seed=7)
    assert a["name"] == ["S001_sad_3_002"] and a["y_trg"].tolist() == [6]  # not the neutral test clip
    assert torch.equal(a["z_trg"], b["z_trg"]) and torch.equal(a["driving"], b["driving"])
    assert a["driving"].shape == (1, 4, 3, 256, 256) and a["he_driving"]["yaw"].shape == (1, 4, 66)


def test_time_window_splits_eats_nested_he_driving_and_keeps_per_clip_entries(eat_checkout, mead):
    from stccl_diffusers.adapters.eat import eat_validation_batch, load_eat_dataset, time_window

    held_out = load_eat_dataset(eat_checkout["root"], eat_checkout["config_1frame"], is_train=False, num_frames=3, **mead)
    batch = eat_validation_batch(held_out, 1, seed=0)
    w = time_window(batch, 1, 3)
    for k, v in batch["he_driving"].items():
        assert torch.equal(w["he_driving"][k], v[:, 1:3])
    for k in ("driving", "mel", "pose", "deep", "bboxs"):
        assert torch.equal(w[k], batch[k][:, 1:3])
    # Per clip, even where dim 1 happens to equal the clip length (source (1, 3, H, W), he_source t (1, 3)).
    for k in ("source", "sync_mel", "z_trg", "y_trg", "name", "he_source"):
        assert w[k] is batch[k]


def test_train_eat_stccl_on_real_eat_resumes_after_a_kill_and_saves_what_eats_demo_loads(
        eat_checkout, mead, metric_path, tmp_path, monkeypatch):
    """Finding 2 (validation renders) and the long-clip window split on the real model, in the script."""
    script = load_script()
    calls = []
    import stccl_diffusers.adapters.eat.build as eat_build

    real_loader = eat_build.load_eat_generator_full

    def loader_with_spy(*args, **kwargs):
        full = real_loader(*args, **kwargs)

        def spy(module, inputs):
            x = inputs[0]
            calls.append({"frames": x["driving"].shape[1], "he_frames": x["he_driving"]["yaw"].shape[1],
                          "grad": torch.is_grad_enabled(), "y": x["y_trg"].tolist()})

        full.register_forward_pre_hook(spy)
        return full

    monkeypatch.setattr(eat_build, "load_eat_generator_full", loader_with_spy)
    out = tmp_path / "run"
    args = ["--config", "configs/eat_stccl.yaml", "--eat_root", str(eat_checkout["root"]),
            "--eat_checkpoint", str(eat_checkout["stage1"]), "--eat_config", str(eat_checkout["config_1frame"]),
            "--eat_mead_path", str(mead["mead_path"]), "--output_dir", str(out), "--metric_path", str(metric_path),
            "--report_to", "none", "--num_frames", "1", "--validation_frames", "2", "--num_validation_clips", "1",
            "--train_batch_size", "1", "--max_train_steps", "2", "--checkpointing_steps", "1",
            "--checkpoints_total_limit", "1",
            "--validation_steps", "0", "--validate_at_start", "false", "--stccl_warmup_steps", "1",
            "--stccl_ramp_steps", "0", "--crop_size", "32", "--seed", "0"]
    monkeypatch.chdir(script.Path(script.__file__).parent)  # the config path is relative to the project

    killed = script.main(args, stop_after_steps=1)
    assert killed.global_step == 1 and (out / "checkpoint-1").is_dir()
    assert not (out / "eat_checkpoint.pth.tar").exists()  # an interrupted run exports nothing

    calls.clear()
    resumed = script.main(args + ["--resume_from_checkpoint", "latest"])
    assert resumed.resumed_from.endswith("checkpoint-1") and resumed.global_step == 2
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert log[0]["stccl"] == 0.0 and log[1]["stccl"] > 0  # warm-up 1 step, then STCCL on the real model
    assert {"img_l1", "latent_emo"} <= set(log[1])  # EAT's own loss terms, logged beside it

    # Step 2: target (grad) + neutral anchor (no grad); validation: the 2-frame test clip in 1-frame
    # windows, target and anchor each, every EAT call with as many he_driving frames as frames.
    train_calls, val_calls = calls[:2], calls[2:]
    assert [c["grad"] for c in train_calls] == [True, False] and train_calls[1]["y"] == [5]
    assert len(val_calls) == 4 and not any(c["grad"] for c in val_calls)
    assert all(c["frames"] == c["he_frames"] == 1 for c in calls)
    assert [c["y"] for c in val_calls] == [[6], [5], [6], [5]]
    validation = json.loads((out / "validation_log.jsonl").read_text().splitlines()[-1])
    assert validation["step"] == 2 and validation["target_anchor_l1"] > 0
    assert (out / "validation" / "step-000002.png").is_file()

    # The saved stage-2 checkpoint is one EAT's demo.py loads (strict), holding the trained side-tuning.
    loaded = load_with_eats_demo(eat_checkout["root"], eat_checkout["config_1frame"], out / "eat_checkpoint.pth.tar",
                                 monkeypatch)
    stage1 = torch.load(eat_checkout["stage1"], weights_only=True)["audio2kptransformer"]
    side = loaded["sidetuning"].state_dict()
    shared = [k for k in side if k in stage1 and stage1[k].shape == side[k].shape]
    assert shared and any(not torch.equal(side[k], stage1[k]) for k in shared)  # moved off its stage-1 init


def test_the_real_eat_refuses_other_data_and_a_window_syncnet_cannot_take(eat_checkout, tmp_path):
    script = load_script()
    base = ["--config", str(script.Path(script.__file__).parent / "configs" / "eat_stccl.yaml"),
            "--eat_root", str(eat_checkout["root"]), "--eat_checkpoint", str(eat_checkout["stage1"]),
            "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    with pytest.raises(ValueError, match="set data: eat"):
        script.main(base + ["--eat_config", str(eat_checkout["config_1frame"]), "--data", "clips"])
    with pytest.raises(ValueError, match="SyncNet loss .* takes exactly 5 frames, got num_frames 1"):
        script.main(base + ["--eat_config", str(eat_checkout["config"]), "--num_frames", "1"])
    assert not (tmp_path / "out").exists()  # refused before anything was built or written
