"""The issue-22 world: emotional prosody and a loudness-coupled mouth with strength kappa, and
its deployment-case test set (neutral speech asked for an emotion) with an exact ground truth."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from stccl_diffusers.data import synthetic as syn
from stccl_diffusers.utils.safety import UsageError


def _fingerprint(pair) -> str:
    h = hashlib.sha256()
    for c in (pair.neutral, pair.emotional):
        h.update(c.frames.tobytes())
        h.update(np.round(c.audio.astype(np.float64) * 1e5).astype(np.int64).tobytes())
        h.update(np.round(c.mouth_open * 1e9).astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def test_kappa_zero_is_the_original_world_frame_for_frame():
    # Fingerprints of make_pair(seed, size=32) computed with the renderer of main at 63103c0, before
    # the kappa world existed: the default world and an explicit kappa = 0 must both reproduce them.
    before = {3: "c351c53052fd9b40", 12: "92918de4cdb503f7"}
    for seed, fp in before.items():
        assert _fingerprint(syn.make_pair(seed, size=32)) == fp
        cfg = syn.SyntheticFaceConfig(size=32, coupling=0.0)
        assert _fingerprint(syn.make_pair(seed, config=cfg)) == fp


def _loudness_and_opening(coupling: float, n: int = 16):
    """Per emotional clip: mean audio RMS (loudness) and mean mouth opening."""
    cfg = syn.SyntheticFaceConfig(size=16, coupling=coupling, supersample=1)
    rms, opening, dur = [], [], {}
    for seed in range(n):
        emo = syn.EMOTIONS[1 + seed % 4]
        p = syn.make_pair(seed, emotion=emo, config=cfg)
        rms.append(float(np.sqrt(np.mean(p.emotional.audio ** 2))))
        opening.append(float(p.emotional.mouth_open.mean()))
        dur.setdefault(emo, []).append(p.emotional.knots[-1] / p.utterance.duration)  # clip s per canonical s
    return np.array(rms), np.array(opening), {k: float(np.mean(v)) for k, v in dur.items()}


def test_at_kappa_one_the_mouth_opens_with_loudness_and_emotions_keep_their_tempo():
    rms0, open0, dur0 = _loudness_and_opening(0.0)
    rms1, open1, dur1 = _loudness_and_opening(1.0)
    np.testing.assert_allclose(rms0, rms1, rtol=0.5)  # the audio level is not what kappa changes
    c0, c1 = np.corrcoef(rms0, open0)[0, 1], np.corrcoef(rms1, open1)[0, 1]
    assert c1 > c0 + 0.2, (c0, c1)
    # emotional prosody: at kappa = 1 angry speech is faster (shorter) than sad speech, by the table's ratio
    assert dur1["sad"] / dur1["angry"] > 1.3
    assert syn.mouth_gain("angry", 1.0) == pytest.approx(syn.EMOTION_PARAMS["angry"].loudness)
    assert syn.mouth_gain("angry", 0.0) == 1.0 and syn.mouth_gain("neutral", 1.0) == 1.0


def test_the_mouth_gain_scales_the_opening_only():
    idn, utt = syn.sample_identity(np.random.default_rng(1)), syn.sample_utterance(np.random.default_rng(2))
    a = syn.render_clip(idn, "angry", utt, 1.0, size=32, seed=5)
    b = syn.render_clip(idn, "angry", utt, 1.0, size=32, seed=5, mouth_gain=1.35)
    np.testing.assert_allclose(b.mouth_open, 1.35 * a.mouth_open)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert not np.array_equal(a.frames, b.frames)
    with pytest.raises(ValueError, match="mouth_gain"):
        syn.render_clip(idn, "angry", utt, 1.0, size=32, mouth_gain=0.0)
    with pytest.raises(ValueError, match="coupling"):
        syn.SyntheticFaceConfig(size=16, coupling=-1.0)
    with pytest.raises(ValueError, match="coupling"):
        syn.mouth_gain("angry", float("nan"))


def test_the_deployment_ground_truth_has_the_emotional_face_and_the_neutral_audio_mouth():
    idn, utt = syn.sample_identity(np.random.default_rng(3)), syn.sample_utterance(np.random.default_rng(4))
    neutral, truth = syn.deployment_clip(idn, utt, "angry", size=32, seed=9)
    np.testing.assert_array_equal(truth.audio, neutral.audio)  # what the user brings: neutral speech
    np.testing.assert_array_equal(truth.mouth_open, neutral.mouth_open)  # the mouth that audio drives
    np.testing.assert_array_equal(truth.knots, neutral.knots)  # neutral tempo
    # the emotional face: every frame is the renderer's angry face at the neutral mouth state
    for k in (0, truth.num_frames // 2):
        face = syn.render_face(idn, "angry", neutral.mouth_open[k], neutral.mouth_width[k], size=32)
        np.testing.assert_array_equal(truth.frames[k], face)
    diff = np.abs(truth.frames.astype(int) - neutral.frames.astype(int))
    assert diff.max() > 40 and (diff.max(axis=-1) > 10).mean() > 0.01  # brows, eyes, corners differ
    # and not what the kappa = 1 training data would show for angry speech (wider mouth)
    loud = syn.render_clip(idn, "angry", utt, 1.0, size=32, seed=9, mouth_gain=syn.mouth_gain("angry", 1.0))
    assert loud.mouth_open.max() > truth.mouth_open.max() + 0.1


def test_deployment_clips_ask_each_sentence_for_every_emotion():
    from stccl_diffusers.eval.effect import EVAL_EMOTIONS, deployment_clips

    clips = deployment_clips(2, 6, 32)
    assert len(clips) == 2 * len(EVAL_EMOTIONS)
    assert [c["emotion"] for c in clips[:4]] == list(EVAL_EMOTIONS)
    first = clips[: len(EVAL_EMOTIONS)]
    for c in first:
        assert c["sentence"] == 0 and c["gt_frames"].shape == (6, 32, 32, 3)
        np.testing.assert_array_equal(c["audio"], first[0]["audio"])
        np.testing.assert_array_equal(c["gt_open"], first[0]["gt_open"])
    assert not np.array_equal(first[0]["gt_frames"], first[1]["gt_frames"])  # happy vs angry face
    assert not np.array_equal(clips[0]["audio"], clips[-1]["audio"])  # another sentence
    with pytest.raises(ValueError, match="num_frames"):
        deployment_clips(1, 2, 32)


def test_stccl_synth_writes_the_coupling_and_refuses_to_reuse_another(tmp_path):
    from stccl_diffusers.training.demo import ensure_synthetic_clips

    d = ensure_synthetic_clips(tmp_path / "k1", speakers=1, clips=1, size=32, seed=2, emotions=["angry"], coupling=1.0)
    assert json.loads((d / "ground_truth.json").read_text())["coupling"] == 1.0
    assert ensure_synthetic_clips(d, coupling=1.0) == d
    with pytest.raises(ValueError, match="kappa=0.5"):
        ensure_synthetic_clips(d, coupling=0.5)
    with pytest.raises(UsageError, match="coupling"):
        syn.synth_main(["--out", str(tmp_path / "bad"), "--coupling", "-1"])


def test_a_loudness_normalised_world_leaves_only_the_label_to_predict_the_mouth_gain():
    # Second amendment of bench_kappa.py: every clip's audio at one RMS. At kappa = 1 the angry mouth
    # still opens wider than the sad one, but the audio level no longer says so.
    raw = syn.SyntheticFaceConfig(size=16, coupling=1.0, supersample=1)
    norm = syn.SyntheticFaceConfig(size=16, coupling=1.0, supersample=1, loudness_normalised=True)
    level = lambda a: float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))  # noqa: E731
    levels = {}
    for emo in ("angry", "sad"):
        r, n = syn.make_pair(7, emotion=emo, config=raw), syn.make_pair(7, emotion=emo, config=norm)
        np.testing.assert_array_equal(r.emotional.frames, n.emotional.frames)  # the faces are the same world
        np.testing.assert_array_equal(r.emotional.mouth_open, n.emotional.mouth_open)
        # the same waveform, scaled: the loudness inside the clip (syllables, opening) stays
        k = level(n.emotional.audio) / level(r.emotional.audio)
        np.testing.assert_allclose(n.emotional.audio, np.clip(r.emotional.audio * k, -1, 1), atol=1e-6)
        assert level(n.neutral.audio) == pytest.approx(syn.LOUDNESS_RMS, rel=1e-3)
        levels[emo] = (level(r.emotional.audio), level(n.emotional.audio), r.emotional.mouth_open.mean())
    assert levels["angry"][0] > 1.5 * levels["sad"][0]  # raw: angry is louder ...
    assert levels["angry"][1] == pytest.approx(levels["sad"][1], rel=1e-3)  # normalised: not any more
    assert levels["angry"][2] > 1.5 * levels["sad"][2]  # ... and the mouth still opens wider
    assert syn.normalise_loudness(np.zeros(5, np.float32)).tolist() == [0.0] * 5
    with pytest.raises(ValueError, match="rms"):
        syn.normalise_loudness(np.ones(4, np.float32), rms=0.0)


def test_normalised_sets_record_it_and_refuse_reuse_the_other_way(tmp_path):
    from stccl_diffusers.data.clips import ensure_synthetic_clips
    from stccl_diffusers.data.video_io import read_audio

    d = ensure_synthetic_clips(tmp_path / "k1n", speakers=1, clips=1, size=32, seed=2, emotions=["angry", "sad"],
                               coupling=1.0, loudness_normalised=True)
    assert json.loads((d / "ground_truth.json").read_text())["loudness_normalised"] is True
    rms = [float(np.sqrt(np.mean(read_audio(str(d / "S000" / "video" / "front" / e / "level_1" / "001.mp4")) ** 2)))
           for e in ("neutral", "angry", "sad")]
    np.testing.assert_allclose(rms, syn.LOUDNESS_RMS, rtol=0.05)  # through the AAC round trip
    assert ensure_synthetic_clips(d, coupling=1.0, loudness_normalised=True) == d
    with pytest.raises(ValueError, match="raw"):
        ensure_synthetic_clips(d, coupling=1.0)
    raw = ensure_synthetic_clips(tmp_path / "k1", speakers=1, clips=1, size=32, seed=2, emotions=["angry"], coupling=1.0)
    assert "loudness_normalised" not in json.loads((raw / "ground_truth.json").read_text())
    with pytest.raises(ValueError, match="loudness-normalised"):
        ensure_synthetic_clips(raw, coupling=1.0, loudness_normalised=True)


def test_normalised_deployment_clips_give_the_neutral_audio_at_the_world_level():
    from stccl_diffusers.eval.effect import deployment_clips

    raw, norm = deployment_clips(1, 6, 32), deployment_clips(1, 6, 32, loudness_normalised=True)
    for r, n in zip(raw, norm):
        np.testing.assert_array_equal(r["gt_frames"], n["gt_frames"])
        np.testing.assert_array_equal(r["gt_open"], n["gt_open"])
        assert not np.array_equal(r["audio"], n["audio"])
        k = float(np.abs(n["audio"]).max() / np.abs(r["audio"]).max())
        np.testing.assert_allclose(n["audio"], r["audio"] * k, atol=1e-6)  # one gain for the whole recording
