import json
import os

import numpy as np
import pytest
import torch

from stccl_diffusers.data import synthetic as syn
from stccl_diffusers.data.video_io import NoAudioError, VideoReadError, read_audio, read_frames_dir, read_video, write_frames_dir, write_video


def test_make_pair_is_deterministic_for_a_seed():
    a = syn.make_pair(7, size=48)
    b = syn.make_pair(7, size=48)
    c = syn.make_pair(8, size=48)
    np.testing.assert_array_equal(a.emotional.frames, b.emotional.frames)
    np.testing.assert_array_equal(a.neutral.audio, b.neutral.audio)
    np.testing.assert_array_equal(a.alignment, b.alignment)
    assert a.neutral.frames.shape != c.neutral.frames.shape or not np.array_equal(a.neutral.frames, c.neutral.frames)


def test_pair_shapes_and_ground_truth_lengths():
    p = syn.make_pair(0, emotion="happy", size=64)
    for clip in (p.neutral, p.emotional):
        T = clip.num_frames
        assert clip.frames.shape == (T, 64, 64, 3) and clip.frames.dtype == np.uint8
        assert clip.audio.shape == (round(T * clip.sample_rate / clip.fps),)
        assert clip.audio.dtype == np.float32 and np.abs(clip.audio).max() <= 1.0
        assert clip.mouth_open.shape == (T,) and clip.canonical_time.shape == (T,)
    assert p.emotional.emotion == "happy" and p.neutral.emotion == "neutral"
    assert p.alignment.shape == (p.emotional.num_frames,)
    assert p.path.shape == (2, p.emotional.num_frames)


def test_true_alignment_maps_emotional_frames_to_neutral_frames_saying_the_same_thing():
    p = syn.make_pair(3, size=32)
    assert np.all(np.diff(p.alignment) >= 0), "a time warp is monotone"
    assert p.alignment[0] == 0 and abs(p.alignment[-1] - (p.neutral.num_frames - 1)) <= 1.5
    # The warp is not the identity: the tempos differ.
    assert p.neutral.num_frames != p.emotional.num_frames or np.abs(p.alignment - np.arange(len(p.alignment))).max() > 1
    # Mouth opening of emotional frame j equals the neutral opening at alignment[j].
    n_open = np.interp(p.alignment, np.arange(p.neutral.num_frames), p.neutral.mouth_open)
    assert np.abs(n_open - p.emotional.mouth_open).mean() < 0.08


def test_every_emotion_renders_a_different_face_for_the_same_mouth_state():
    idn = syn.sample_identity(np.random.default_rng(0))
    faces = {e: syn.render_face(idn, e, 0.0, 1.0, size=64).astype(np.float32) for e in syn.EMOTIONS}
    assert len(syn.EMOTIONS) >= 5 and {"neutral", "happy", "angry", "sad", "surprised"} <= set(syn.EMOTIONS)
    for e in syn.EMOTIONS[1:]:
        assert np.abs(faces[e] - faces["neutral"]).mean() > 0.5, e


def test_mouth_opening_changes_the_mouth_region_only_slightly_elsewhere():
    idn = syn.sample_identity(np.random.default_rng(1))
    closed = syn.render_face(idn, "neutral", 0.0, size=64).astype(np.float32)
    opened = syn.render_face(idn, "neutral", 1.0, size=64).astype(np.float32)
    diff = np.abs(opened - closed).sum(-1)
    ys, _ = np.nonzero(diff > 30)
    assert len(ys) > 10
    assert ys.min() / 64 > idn.mouth_y - 0.12, "only the mouth moves when speaking"


def test_audio_loudness_follows_the_mouth():
    p = syn.make_pair(11, size=32)
    clip = p.neutral
    hop = int(clip.sample_rate / clip.fps)
    rms = np.array([np.sqrt(np.mean(clip.audio[i * hop:(i + 1) * hop] ** 2)) for i in range(clip.num_frames)])
    speaking = clip.mouth_open + 0.3 * (clip.mouth_open > 0)  # consonants are audible with a near-closed mouth
    assert np.corrcoef(rms[: len(speaking)], speaking)[0, 1] > 0.5


def test_synthetic_batch_is_aligned_tensors_in_range():
    anchor, target = syn.synthetic_batch(2, num_frames=3, size=32, seed=4)
    assert anchor.shape == target.shape == (2, 3, 3, 32, 32)
    assert anchor.dtype == torch.float32 and anchor.min() >= -1 and anchor.max() <= 1
    a2, t2 = syn.synthetic_batch(2, num_frames=3, size=32, seed=4)
    assert torch.equal(anchor, a2) and torch.equal(target, t2)
    assert not torch.equal(anchor, target)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="emotion"):
        syn.make_pair(0, emotion="bored")
    with pytest.raises(ValueError, match="tempo"):
        syn.render_clip(syn.Identity(), "neutral", syn.sample_utterance(np.random.default_rng(0), 3), tempo=-1.0)


def test_video_roundtrip_keeps_frames_fps_and_audio(tmp_path):
    p = syn.make_pair(2, size=48)
    path = str(tmp_path / "clip.mp4")
    write_video(path, p.emotional.frames, p.emotional.fps, p.emotional.audio, p.emotional.sample_rate)
    clip = read_video(path)
    assert clip.fps == p.emotional.fps and clip.frames.shape == p.emotional.frames.shape
    assert np.abs(clip.frames.astype(np.float32) - p.emotional.frames).mean() < 6
    n = min(len(clip.audio), len(p.emotional.audio))
    assert n > 0.95 * len(p.emotional.audio)
    assert np.corrcoef(clip.audio[:n], p.emotional.audio[:n])[0, 1] > 0.9


def test_missing_audio_and_corrupt_files_name_the_file(tmp_path):
    silent = str(tmp_path / "silent.mp4")
    write_video(silent, np.zeros((3, 16, 16, 3), np.uint8), 25)
    with pytest.raises(NoAudioError, match="silent.mp4"):
        read_audio(silent)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(VideoReadError, match="broken.mp4"):
        read_video(str(bad))


def test_frames_dir_roundtrip(tmp_path):
    frames = (np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3))).astype(np.uint8)
    d = str(tmp_path / "001")
    write_frames_dir(d, frames, np.zeros(1920, np.float32), 16000, fps=25)
    clip = read_frames_dir(d)
    np.testing.assert_array_equal(clip.frames, frames)
    assert clip.fps == 25 and clip.audio is not None and len(clip.audio) == 1920
    np.testing.assert_array_equal(read_frames_dir(d, indices=[2, 0]).frames, frames[[2, 0]])


def test_stccl_synth_writes_a_mead_layout(tmp_path):
    out = tmp_path / "synth"
    assert syn.synth_main(["--out", str(out), "--speakers", "1", "--clips", "1", "--emotions", "happy", "--size", "32"]) == 0
    for emo in ("neutral", "happy"):
        path = out / "S000" / "video" / "front" / emo / "level_1" / "001.mp4"
        assert path.is_file(), path
        clip = read_video(str(path), require_audio=True)
        assert clip.frames.shape[1:] == (32, 32, 3)
    truth = json.loads((out / "ground_truth.json").read_text())
    assert "001_001" in truth["alignment"]["S000"]["happy"]
