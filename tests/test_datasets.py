import os

import cv2
import numpy as np
import pytest
import torch

from stccl_diffusers.data import synthetic as syn
from stccl_diffusers.data.datasets import PairedClipDataset
from stccl_diffusers.data.pairing import manifest_frame_paths, pair_main, read_manifest, write_manifest


def _check_item(item, T, size):
    assert set(item) == {"anchor", "target"}
    for k in ("anchor", "target"):
        assert item[k].shape == (T, 3, size, size) and item[k].dtype == torch.float32
        assert item[k].min() >= -1 and item[k].max() <= 1


def test_synthetic_items_are_deterministic_aligned_clips():
    ds = PairedClipDataset.from_synthetic(num_pairs=5, num_frames=3, size=32, seed=1)
    assert len(ds) == 5
    a, b = ds[2], ds[2]
    _check_item(a, 3, 32)
    assert torch.equal(a["anchor"], b["anchor"]) and not torch.equal(ds[2]["anchor"], ds[3]["anchor"])
    assert not torch.equal(a["anchor"], a["target"])
    with pytest.raises(IndexError):
        ds[5]


def _write_index_jpegs(files):
    # Brightness encodes the frame index, so the test can check which frame arrived where.
    for f in set(files):
        os.makedirs(os.path.dirname(f), exist_ok=True)
        cv2.imwrite(f, np.full((16, 16, 3), (int(f[-10:-4]) * 3) % 256, np.uint8))


def test_mead_align_img_layout_follows_the_manifest(tmp_path):
    path = np.array([[0, 0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 3, 4, 5]])
    write_manifest(str(tmp_path / "m.json"), {"M001": {"sad": {"001_002": path}}})
    n, e = manifest_frame_paths(str(tmp_path / "mead"), "M001", "sad", "001_002", path)
    _write_index_jpegs(n + e)
    ds = PairedClipDataset.from_mead(str(tmp_path / "mead"), str(tmp_path / "m.json"), num_frames=3, size=16, stride=2)
    assert len(ds) == 3  # starts 0, 2, 4 over 7 steps
    item = ds[1]
    _check_item(item, 3, 16)
    got_n = (item["anchor"][:, 0, 8, 8] + 1) * 127.5
    got_e = (item["target"][:, 0, 8, 8] + 1) * 127.5
    np.testing.assert_allclose(got_n.numpy(), path[0, 2:5] * 3, atol=3)
    np.testing.assert_allclose(got_e.numpy(), path[1, 2:5] * 3, atol=3)


def test_official_manifest_pairs_with_missing_frames_are_skipped_and_named(shared_data, tmp_path):
    manifest = str(shared_data / "mead_aligned_path36.json")
    man = read_manifest(manifest)
    spk = sorted(man)[0]
    key, path = sorted(man[spk]["angry"].items())[0]
    n, e = manifest_frame_paths(str(tmp_path), spk, "angry", key, path)
    _write_index_jpegs(n + e)
    ds = PairedClipDataset.from_mead(str(tmp_path), manifest, num_frames=4, size=16)
    assert len(ds.sequences) == 1 and ds.sequences[0].name == f"{spk}/angry/{key}"
    total = sum(len(ps) for es in man.values() for ps in es.values())
    assert len(ds.skipped) == total - 1 and "missing frame file" in ds.skipped[0][1]
    assert len(ds) == path.shape[1] // 4
    item = ds[len(ds) - 1]
    start = (len(ds) - 1) * 4
    np.testing.assert_allclose(((item["target"][:, 0, 8, 8] + 1) * 127.5).numpy(), (path[1, start:start + 4] * 3) % 256, atol=3)


def test_folders_of_paired_videos_with_and_without_a_manifest(tmp_path):
    root = tmp_path / "synth"
    syn.synth_main(["--out", str(root), "--speakers", "1", "--clips", "1", "--emotions", "happy", "--size", "32"])
    pair_main(["--root", str(root), "--out", str(tmp_path / "m.json")])
    with_manifest = PairedClipDataset.from_videos(str(root), str(tmp_path / "m.json"), num_frames=4, size=32)
    on_the_fly = PairedClipDataset.from_videos(str(root), None, num_frames=4, size=32)
    assert len(with_manifest) == len(on_the_fly) > 3
    _check_item(with_manifest[0], 4, 32)
    assert torch.equal(with_manifest[1]["target"], on_the_fly[1]["target"])


def test_real_pairs_tiles_are_cropped_below_the_label(shared_data):
    d = shared_data / "real_pairs"
    files = sorted(os.listdir(d))[:1]
    ds = PairedClipDataset.from_real_pairs(str(d), "ned", num_frames=2, size=64, files=files)
    vd = PairedClipDataset.from_real_pairs(str(d), "stccl_vd", num_frames=2, size=64, files=files)
    assert len(ds) > 10
    a = ds[5]
    _check_item(a, 2, 64)
    assert torch.equal(a["anchor"], vd[5]["anchor"]), "both targets share the Source anchor"
    assert not torch.equal(a["target"], vd[5]["target"])
    # Same person, same pose: the anchor is much closer to its own target than to another frame's target far away.
    assert (a["anchor"] - a["target"]).abs().mean() < 0.35
