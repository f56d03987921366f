import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stccl_diffusers.pretrain import DEFAULT_CONFIG, EpochSampler, load_config, resolve_checkpoint, train

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "data": "synthetic",
    "synthetic_pairs": 12,
    "num_frames": 2,
    "resolution": 32,
    "input_size": 32,
    "layers": [1, 2, 3],
    "backbone": [1, 1, 1, 1],
    "num_samples": [4, 4, 2, 2],
    "train_batch_size": 2,
    "learning_rate": 1e-3,
    "val_pairs": 0,
    "report_to": "none",
    "checkpointing_steps": 2,
    "seed": 3,
}


def _cfg(tmp_path, name, **kw):
    return load_config(None, {**TINY, "output_dir": str(tmp_path / name), **kw})


def _as_the_old_pretrain_wrote_it(ckpt: Path) -> None:
    """Turn a checkpoint into the layout `stccl-pretrain` wrote before it shared the training
    scripts' checkpoint module: the same `accelerator.save_state` files, the same state
    (`global_step`, `sampler`) under the name `trainer_state.json`, no `run_config.json`, and a
    manifest over those files; its temporaries were `.tmp-checkpoint-N`."""
    from stccl_diffusers.utils.safety import write_manifest

    state = json.loads((ckpt / "training_state.json").read_text())
    assert set(state) == {"global_step", "sampler"}
    (ckpt / "training_state.json").unlink()
    (ckpt / "run_config.json").unlink()
    (ckpt / "manifest.json").unlink()
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    write_manifest(ckpt)


def test_a_run_of_the_old_pretrain_layout_resumes_to_the_uninterrupted_weights(tmp_path, caplog):
    full = train(_cfg(tmp_path, "full", max_train_steps=4, checkpointing_steps=0))
    train(_cfg(tmp_path, "old", max_train_steps=2))
    _as_the_old_pretrain_wrote_it(tmp_path / "old" / "checkpoint-2")
    os.makedirs(tmp_path / "old" / ".tmp-checkpoint-3")  # a kill mid-write, old style
    assert resolve_checkpoint(str(tmp_path / "old"), "latest").endswith("checkpoint-2")
    with caplog.at_level("WARNING", logger="stccl_diffusers.pretrain"):
        resumed = train(_cfg(tmp_path, "old", max_train_steps=4, resume_from_checkpoint="latest", checkpointing_steps=4))
    assert "stores no run_config.json" in caplog.text
    assert resumed["global_step"] == full["global_step"] == 4
    a = load_file(str(tmp_path / "full" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "old" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The new checkpoint is written in the shared layout.
    assert (tmp_path / "old" / "checkpoint-4" / "training_state.json").is_file()


def test_overwrite_output_dir_moves_the_old_run_aside_as_the_training_scripts_do(tmp_path):
    train(_cfg(tmp_path, "run", max_train_steps=2))
    train(_cfg(tmp_path, "run", max_train_steps=2, seed=5, overwrite_output_dir=True))
    assert (tmp_path / "run" / "previous-0" / "checkpoint-2" / "training_state.json").is_file()
    assert (tmp_path / "run" / "checkpoint-2").is_dir()


def test_epoch_sampler_resumes_mid_epoch():
    a = EpochSampler(7, seed=1)
    full = [a.next_batch(3) for _ in range(5)]
    b = EpochSampler(7, seed=1)
    b.next_batch(3), b.next_batch(3)
    c = EpochSampler(7, seed=1)
    c.load_state_dict(b.state_dict())
    assert [c.next_batch(3) for _ in range(3)] == full[2:]
    assert sorted(full[0] + full[1] + [full[2][0]]) == list(range(7)), "an epoch visits every item once"


def test_resume_after_kill_matches_the_uninterrupted_run(tmp_path):
    full = train(_cfg(tmp_path, "full", max_train_steps=4, checkpointing_steps=0))
    assert full["global_step"] == 4
    # "Kill" after 2 steps (the last checkpoint is checkpoint-2), plus a half-written checkpoint.
    train(_cfg(tmp_path, "resumed", max_train_steps=2))
    os.makedirs(tmp_path / "resumed" / ".tmp-checkpoint-3")
    (tmp_path / "resumed" / "checkpoint-3").mkdir()  # no trainer_state.json: incomplete, ignored
    assert resolve_checkpoint(str(tmp_path / "resumed"), "latest").endswith("checkpoint-2")
    resumed = train(_cfg(tmp_path, "resumed", max_train_steps=4, resume_from_checkpoint="latest", checkpointing_steps=4))
    assert resumed["global_step"] == 4
    a = load_file(str(tmp_path / "full" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Steps 3-4 changed the weights (otherwise equality would prove nothing).
    mid = {k.removeprefix("metric."): v for k, v in load_file(str(tmp_path / "resumed" / "checkpoint-2" / "model.safetensors")).items()}
    assert mid.keys() == a.keys()
    assert any(not torch.equal(a[k], mid[k]) for k in a if a[k].is_floating_point())
    state = json.loads((tmp_path / "resumed" / "checkpoint-4" / "training_state.json").read_text())
    assert state["global_step"] == 4 and state["sampler"]["n"] == 12


def test_final_metric_loads_frozen_and_logs_go_to_tensorboard(tmp_path):
    from stccl_diffusers import STCCLMetric

    summary = train(_cfg(tmp_path, "tb", max_train_steps=2, report_to="tensorboard", logging_steps=1, val_pairs=2, checkpointing_steps=0))
    m = STCCLMetric.from_pretrained(str(tmp_path / "tb"))
    assert not any(p.requires_grad for p in m.parameters()) and not m.training
    events = list((tmp_path / "tb" / "logs").rglob("events.out.tfevents*"))
    assert events, "tensorboard event file written"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {"train/loss", "train/pos_sim", "train/neg_sim"} <= set(acc.Tags()["scalars"])
    assert set(summary["held_out_before"]) >= {"pos_sim", "neg_sim", "gap", "per_layer"}
    assert not (tmp_path / "tb" / "checkpoint-2").exists()


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    s = train(_cfg(tmp_path, "acc", max_train_steps=2, gradient_accumulation_steps=2, checkpointing_steps=2, resolution=16, input_size=16, layers=[1, 2]))
    state = json.loads((tmp_path / "acc" / "checkpoint-2" / "training_state.json").read_text())
    # 2 optimiser steps x 2 micro-batches x 2 clips = 8 items drawn from the 12-item epoch.
    assert s["global_step"] == 2 and (state["sampler"]["epoch"], state["sampler"]["position"]) == (0, 8)


def test_fresh_pretrain_refuses_another_runs_checkpoints_and_resume_skips_a_truncated_one(tmp_path, caplog):
    train(_cfg(tmp_path, "run", max_train_steps=4))
    out = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in (out / "checkpoint-2").iterdir()}
    with pytest.raises(FileExistsError, match="checkpoint-2, checkpoint-4.*--overwrite_output_dir"):
        train(_cfg(tmp_path, "run", max_train_steps=4, seed=5))
    assert {p.name: p.read_bytes() for p in (out / "checkpoint-2").iterdir()} == before
    weights = out / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="stccl_diffusers.pretrain"):
        assert resolve_checkpoint(str(out), "latest").endswith("checkpoint-2")
    assert "checkpoint-4" in caplog.text and "model.safetensors has 100 bytes" in caplog.text
    with pytest.raises(ValueError, match="model.safetensors has 100 bytes"):
        resolve_checkpoint(str(out / "checkpoint-4"), str(out / "checkpoint-4"))


def test_face_focus_without_a_landmark_backend_is_an_error(tmp_path, shared_data):
    from stccl_diffusers.pretrain import build_dataset

    cfg = _cfg(tmp_path, "o", data="real_pairs", data_root=str(shared_data / "real_pairs"), face_focus="mouth")
    with pytest.raises(ValueError, match="face_focus='mouth' needs face_align"):
        build_dataset(cfg)


def test_holdout_leaves_speakers_out_and_synthetic_pairs_are_added(tmp_path, shared_data):
    from stccl_diffusers.pretrain import build_dataset

    cfg = _cfg(tmp_path, "o", data="real_pairs", data_root=str(shared_data / "real_pairs"), holdout=["M012", "M030", "W015"])
    real = build_dataset(cfg)
    assert [q.name for q in real.sequences] == ["M003_source_sad_033.mp4"]
    mixed = build_dataset({**cfg, "add_synthetic_pairs": 5})
    assert len(mixed) == len(real) + 5
    assert mixed[len(real)]["anchor"].shape == real[0]["anchor"].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="no clip left"):
        build_dataset({**cfg, "holdout": ["M", "W"]})


def _eye_mouth_points(detector, image):
    lm = detector(image)
    assert lm is not None, "dlib found no face in the aligned crop"
    return lm.points


def test_dlib_pose_alignment_warps_the_emotional_face_onto_the_neutral_one_on_real_frames(shared_data):
    """Paper §4.1 on a real MEAD pair: the emotional tile, rotated and shifted by a known amount,
    comes back onto the neutral face (same eye and mouth positions in the two crops)."""
    import cv2
    import numpy as np

    pytest.importorskip("dlib", reason="the `landmarks` extra (dlib-bin, face_recognition_models) is not installed")
    from stccl_diffusers.data.datasets import real_pair_sequences
    from stccl_diffusers.data.face_align import FaceAligner, make_detector

    seq = real_pair_sequences(str(shared_data / "real_pairs"), "stccl_vd", files=["W015_source_happy_037.mp4"])[0][0]
    idx = np.arange(20, 24)
    neutral, emotional = seq.read_neutral(idx), seq.read_emotional(idx)
    m = cv2.getRotationMatrix2D((98, 98), 12, 0.9)
    m[:, 2] += (10, -6)
    moved = np.stack([cv2.warpAffine(f, m, (196, 196), borderMode=cv2.BORDER_REPLICATE) for f in emotional])
    det = make_detector("dlib")

    def misfit(a, b):  # largest eye/mouth offset in inter-ocular distances of the first face
        pa, pb = _eye_mouth_points(det, a), _eye_mouth_points(det, b)
        return np.abs(pa - pb).max() / np.linalg.norm(pa[1] - pa[0])

    before = misfit(neutral[0], moved[0])
    n_crop, e_crop = FaceAligner(128, backend="dlib")(neutral, moved)
    assert n_crop.shape == e_crop.shape == (4, 128, 128, 3)
    after = misfit(n_crop[0], e_crop[0])
    assert before > 0.15 and after < 0.05, (before, after)


def test_pretrain_on_held_in_real_clips_with_dlib_pose_alignment(tmp_path, shared_data):
    pytest.importorskip("dlib", reason="the `landmarks` extra (dlib-bin, face_recognition_models) is not installed")
    cfg = _cfg(tmp_path, "real", data="real_pairs", data_root=str(shared_data / "real_pairs"), holdout=["M012", "M030", "W015"],
               face_align="dlib", face_focus="mouth", add_synthetic_pairs=4, max_train_steps=2, checkpointing_steps=0, num_threads=1)
    summary = train(cfg)
    assert summary["global_step"] == 2 and summary["skipped_nonfinite"] == 0
    assert (tmp_path / "real" / "config.json").is_file()


def test_mouth_focus_centres_the_aligned_crop_on_the_mouth_of_a_real_face(shared_data):
    import numpy as np

    pytest.importorskip("dlib", reason="the `landmarks` extra (dlib-bin, face_recognition_models) is not installed")
    from stccl_diffusers.data.datasets import real_pair_sequences
    from stccl_diffusers.data.face_align import FaceAligner, make_detector

    seq = real_pair_sequences(str(shared_data / "real_pairs"), "ned", files=["M012_source_angry_029.mp4"])[0][0]
    frames = seq.read_neutral(np.arange(30, 32))
    det = make_detector("dlib")
    face, _ = FaceAligner(128, backend="dlib", focus="face")(frames, frames)
    mouth, _ = FaceAligner(128, backend="dlib", focus="mouth")(frames, frames)
    m_face, m_mouth = det(face[0]).points[2], det(mouth[0]).points[2]
    assert np.abs(m_mouth - 64).max() < 6, m_mouth  # the mouth at the crop centre
    assert m_face[1] - 64 > 20, m_face  # the face crop has it well below the centre
