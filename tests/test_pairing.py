import json

import cv2
import numpy as np
import pytest

from stccl_diffusers.data import synthetic as syn
from stccl_diffusers.data.pairing import (
    audio_rate_for_fps,
    discover_pairs,
    dtw_align,
    manifest_frame_paths,
    mel_features,
    pair_main,
    path_to_alignment,
    read_manifest,
    write_manifest,
)
from stccl_diffusers.data.video_io import read_frames_dir, write_video


def _recovered(pair):
    n, e = pair.neutral, pair.emotional
    Fn = mel_features(n.audio, n.sample_rate, n.fps, n.num_frames)
    Fe = mel_features(e.audio, e.sample_rate, e.fps, e.num_frames)
    return dtw_align(Fn, Fe)


def test_mel_features_have_one_column_per_video_frame():
    p = syn.make_pair(0, size=16)
    F = mel_features(p.neutral.audio, 16000, 25.0, p.neutral.num_frames, n_mels=32)
    assert F.shape == (32, p.neutral.num_frames) and np.isfinite(F).all()
    assert audio_rate_for_fps(30) == 15990 and 15990 % 30 == 0 and audio_rate_for_fps(25) == 16000
    with pytest.raises(ValueError, match="integer hop"):
        mel_features(p.neutral.audio, 16000, 30.0)


def test_dtw_path_runs_forward_from_start_to_end():
    p = syn.make_pair(1, size=16)
    path = _recovered(p)
    assert path.shape[0] == 2
    assert tuple(path[:, 0]) == (0, 0)
    assert tuple(path[:, -1]) == (p.neutral.num_frames - 1, p.emotional.num_frames - 1)
    assert np.all(np.diff(path, axis=1) >= 0), "librosa's reversed path must be flipped"


@pytest.mark.parametrize("seed", [0, 5, 9])
def test_dtw_recovers_the_known_time_warp_within_one_frame(seed):
    p = syn.make_pair(seed, size=16)
    est = path_to_alignment(_recovered(p), p.emotional.num_frames)
    err = np.abs(est - p.alignment)
    assert np.median(err) <= 1.0, f"median error {np.median(err):.2f}"
    # A warp-blind guess (the diagonal) is much worse, so the test has teeth.
    diag = np.arange(p.emotional.num_frames) * (p.neutral.num_frames - 1) / (p.emotional.num_frames - 1)
    assert np.median(err) < np.median(np.abs(diag - p.alignment))


def test_manifest_roundtrip_and_malformed_entries(tmp_path):
    m = {"S1": {"happy": {"001_001": np.array([[0, 0, 1], [0, 1, 2]])}}}
    f = str(tmp_path / "m.json")
    write_manifest(f, m)
    back = read_manifest(f)
    np.testing.assert_array_equal(back["S1"]["happy"]["001_001"], m["S1"]["happy"]["001_001"])
    (tmp_path / "bad.json").write_text(json.dumps({"S1": {"sad": {"002_002": [[0, 1], [0]]}}}))
    with pytest.raises(ValueError, match="S1/sad/002_002"):
        read_manifest(str(tmp_path / "bad.json"))


def test_official_manifest_reads_and_points_at_align_img_frames(shared_data, tmp_path):
    man = read_manifest(str(shared_data / "mead_aligned_path36.json"))
    assert len(man) == 36
    assert all(len(es) == 6 for es in man.values())
    for es in man.values():
        for ps in es.values():
            for path in ps.values():
                assert path.shape[0] == 2 and np.all(np.diff(path, axis=1) >= 0)
    spk = sorted(man)[0]
    emo = "happy"
    key, path = sorted(man[spk][emo].items())[0]
    n_files, e_files = manifest_frame_paths(str(tmp_path), spk, emo, key, path)
    # Write JPEGs whose brightness encodes their own index, then read them back through the manifest.
    for f in set(n_files) | set(e_files):
        idx = int(f[-10:-4])
        import os

        os.makedirs(os.path.dirname(f), exist_ok=True)
        cv2.imwrite(f, np.full((8, 8, 3), (idx * 2) % 256, np.uint8))
    assert n_files[0].endswith(f"{spk}/align_img/neutral/{key.split('_')[0]}/{path[0][0]:06d}.jpg")
    clip = read_frames_dir(n_files[0].rsplit("/", 1)[0], indices=path[0], with_audio=False)
    np.testing.assert_allclose(clip.frames[:, 4, 4, 0], (path[0] * 2) % 256, atol=3)


def _write_clip(path, frames, audio, fps=25.0):
    write_video(str(path), frames, fps, audio, 16000)


def test_stccl_pair_skips_bad_clips_by_name_and_counts_them(tmp_path, capsys):
    root = tmp_path / "clips"
    (root / "spk").mkdir(parents=True)
    good = syn.make_pair(2, emotion="sad", size=32)
    _write_clip(root / "spk" / "neutral_001.mp4", good.neutral.frames, good.neutral.audio)
    _write_clip(root / "spk" / "sad_001.mp4", good.emotional.frames, good.emotional.audio)
    # No audio in the emotional clip.
    _write_clip(root / "spk" / "neutral_002.mp4", good.neutral.frames, good.neutral.audio)
    write_video(str(root / "spk" / "happy_002.mp4"), good.emotional.frames, 25.0)
    # Unreadable emotional clip.
    _write_clip(root / "spk" / "neutral_003.mp4", good.neutral.frames, good.neutral.audio)
    (root / "spk" / "angry_003.mp4").write_bytes(b"\x00garbage")
    # Very different durations.
    _write_clip(root / "spk" / "neutral_004.mp4", good.neutral.frames[:6], good.neutral.audio[: 6 * 640])
    _write_clip(root / "spk" / "surprised_004.mp4", good.emotional.frames, good.emotional.audio)

    assert len(discover_pairs(str(root))) == 4
    out = tmp_path / "manifest.json"
    assert pair_main(["--root", str(root), "--out", str(out)]) == 0
    text = capsys.readouterr()
    log = text.out + text.err
    assert "skipped 3" in log
    for name in ("happy_002.mp4", "angry_003.mp4", "surprised_004.mp4"):
        assert name in log
    man = read_manifest(str(out))
    assert list(man["spk"]) == ["sad"] and list(man["spk"]["sad"]) == ["neutral_001_sad_001"]
    est = path_to_alignment(man["spk"]["sad"]["neutral_001_sad_001"], good.emotional.num_frames)
    assert np.median(np.abs(est - good.alignment)) <= 1.0, "alignment survives the AAC round trip"


def test_stccl_pair_reads_the_mead_layout_written_by_stccl_synth(tmp_path, capsys):
    root = tmp_path / "mead"
    syn.synth_main(["--out", str(root), "--speakers", "1", "--clips", "1", "--emotions", "angry", "--size", "32", "--format", "frames"])
    pairs = discover_pairs(str(root), layout="mead")
    assert [(p.speaker, p.emotion, p.key) for p in pairs] == [("S000", "angry", "001_001")]
    out = tmp_path / "m.json"
    pair_main(["--root", str(root), "--out", str(out)])
    log = capsys.readouterr().out
    assert "wrote 1 pairs" in log and "median |alignment error|" in log
    err = float(log.split("ground truth ")[1].split()[0])
    assert err <= 1.0
