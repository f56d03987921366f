"""What lets the small reference models learn emotion: a neutral reference image and motion-weighted
reconstruction (see `data.clips.TalkingClipDataset(reference=...)`, `models.weighting`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stccl_diffusers import edm
from stccl_diffusers.data.video_io import write_video
from stccl_diffusers.models.reference_dice import DICE_EMOTIONS
from stccl_diffusers.models.weighting import motion_weights
from stccl_diffusers.data.clips import TalkingClipDataset


def _clip(path, value):
    frames = np.full((10, 16, 16, 3), value, np.uint8)
    write_video(str(path), frames, 25.0, np.zeros(6400, np.float32), 16000)


def _mead(root):
    for emo, level, value in (("neutral", "level_1", 40), ("happy", "level_3", 200)):
        _clip(root / "M01" / "video" / "front" / emo / level / "001.mp4", value)
    _clip(root / "M01" / "video" / "front" / "sad" / "level_1" / "002.mp4", 120)  # no neutral 002


def test_neutral_reference_is_the_speakers_neutral_recording_of_the_sentence(tmp_path):
    _mead(tmp_path)
    ds = TalkingClipDataset(tmp_path, DICE_EMOTIONS, num_frames=4, resolution=8, progress=False, reference="neutral")
    by_emotion = {DICE_EMOTIONS[int(ds[i]["emotion"])]: ds[i] for i in range(len(ds.clips))}
    neutral_value = by_emotion["neutral"]["frames"][0].mean()
    assert by_emotion["happy"]["reference"].mean() == pytest.approx(float(neutral_value), abs=0.05)
    assert by_emotion["happy"]["frames"].mean() > by_emotion["happy"]["reference"].mean() + 1.0


def test_clip_without_neutral_sibling_keeps_its_first_frame_and_is_counted(tmp_path):
    _mead(tmp_path)
    ds = TalkingClipDataset(tmp_path, DICE_EMOTIONS, num_frames=4, resolution=8, progress=False, reference="neutral")
    sad = next(ds[i] for i in range(len(ds.clips)) if DICE_EMOTIONS[int(ds[i]["emotion"])] == "sad")
    assert torch.allclose(sad["reference"], sad["frames"][0], atol=0.05)
    assert ds.reference_fallbacks == 1


def test_first_frame_reference_is_the_clips_own_first_frame(tmp_path):
    _mead(tmp_path)
    ds = TalkingClipDataset(tmp_path, DICE_EMOTIONS, num_frames=4, resolution=8, progress=False)
    happy = next(ds[i] for i in range(len(ds.clips)) if DICE_EMOTIONS[int(ds[i]["emotion"])] == "happy")
    assert torch.allclose(happy["reference"], happy["frames"][0], atol=0.05)


def test_unknown_reference_mode_is_refused(tmp_path):
    _mead(tmp_path)
    with pytest.raises(ValueError, match="expected reference in"):
        TalkingClipDataset(tmp_path, DICE_EMOTIONS, num_frames=4, resolution=8, progress=False, reference="random")


def test_motion_weights_are_larger_where_the_frame_differs_from_its_source():
    src = torch.zeros(2, 3, 32, 32)
    frames = src.clone()
    frames[0, :, 20:26, 10:22] = 1.0  # an opened mouth
    w = motion_weights(frames, src, strength=4.0)
    assert w.shape == (2, 1, 32, 32)
    assert w[0, 0, 23, 16] > 3 * w[0, 0, 2, 2]
    assert torch.allclose(w[1], torch.ones_like(w[1]))  # identical frame: plain loss
    assert w[0].mean() == pytest.approx(5.0, rel=1e-4)
    assert motion_weights(frames, src, 4.0, size=(16, 16)).shape == (2, 1, 16, 16)


def test_edm_loss_pixel_weight_scales_the_error_where_it_is_given():
    x0 = torch.zeros(1, 2, 4, 8, 8)
    x0_hat = x0.clone()
    x0_hat[..., :4, :] = 1.0
    sigma = torch.tensor([1.0])
    w = torch.ones(1, 2, 1, 8, 8)
    w[..., :4, :] = 3.0
    assert edm.edm_loss(x0_hat, x0, sigma, pixel_weight=w) == pytest.approx(3 * edm.edm_loss(x0_hat, x0, sigma))


def test_reference_dice_pretraining_trains_the_emotion_time_embedding(tmp_path):
    from stccl_diffusers.adapters.dice import DiceTrainingConfig, pretrain_reference_dice
    from stccl_diffusers.models.reference_dice import ReferenceDICE

    _mead(tmp_path / "data")
    ds = TalkingClipDataset(tmp_path / "data", DICE_EMOTIONS, num_frames=2, resolution=16, progress=False,
                            reference="neutral")
    cfg = DiceTrainingConfig(output_dir=str(tmp_path / "run"), resolution=16, num_frames=2, train_batch_size=2,
                             vae_fit_steps=1, base_train_steps=3, report_to="none", seed=0)
    model, _ = pretrain_reference_dice(cfg, ds, tmp_path / "base")
    torch.manual_seed(cfg.seed)
    fresh = ReferenceDICE(resolution=16, num_frames=2, emotion_time_embedding=True)
    assert model.emotion_embedding is not None
    assert not torch.allclose(model.emotion_embedding[2].weight, fresh.emotion_embedding[2].weight)
