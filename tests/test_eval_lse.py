import math

import numpy as np
import pytest
import torch

from stccl_diffusers.eval.eval_io import nearest_frame_indices
from stccl_diffusers.eval.lse import compute_lse, sync_offset_search, syncnet_features
from stccl_diffusers.eval.mfcc import mfcc
from stccl_diffusers.eval.syncnet import SYNCNET_NUM_KEYS, SyncNet, build_syncnet, load_syncnet_state_dict


def _one_hot_features(num_windows, shift, vshift):
    """Video window i = e_(i+vshift); audio window j = e_(j+shift+vshift): video i matches audio i - shift."""
    dim = num_windows + 2 * vshift + abs(shift) + 2
    eye = torch.eye(dim, dtype=torch.float64)
    video = eye[torch.arange(num_windows) + vshift]
    audio = eye[torch.arange(num_windows) + shift + vshift]
    return video, audio


def _expected_curve(num_windows, shift, vshift):
    # Independent count: same window -> 0, another real window -> sqrt(2), zero padding -> 1.
    curve = []
    for k in range(2 * vshift + 1):
        total = 0.0
        for i in range(num_windows):
            j = i + k - vshift
            if not 0 <= j < num_windows:
                total += 1.0
            elif j + shift == i:
                total += 0.0
            else:
                total += math.sqrt(2.0)
        curve.append(total / num_windows)
    return np.array(curve)


@pytest.mark.parametrize("shift", [0, 3, -5, 15])
def test_offset_search_recovers_known_offset_and_exact_d_and_c(shift):
    vshift, n = 15, 40
    video, audio = _one_hot_features(n, shift, vshift)
    out = sync_offset_search(video, audio, vshift=vshift)
    curve = _expected_curve(n, shift, vshift)
    assert out["offset"] == shift  # syncnet_python: offset = vshift - argmin
    # pairwise_distance adds eps=1e-6 to differences (as the public code does): tolerance 1e-4.
    np.testing.assert_allclose(out["mean_dists"].numpy(), curve, atol=1e-4)
    assert out["lse_d"] == pytest.approx(curve.min(), abs=1e-4)
    assert out["lse_c"] == pytest.approx(np.median(curve) - curve.min(), abs=1e-4)
    assert out["dists"].shape == (n, 2 * vshift + 1)


def test_offset_search_rejects_mismatched_features():
    with pytest.raises(ValueError, match="equal shape"):
        sync_offset_search(torch.zeros(10, 8), torch.zeros(9, 8))


def test_mfcc_equals_python_speech_features_defaults():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(0)
    t = np.arange(16000 + 123) / 16000
    audio = (3000 * np.sin(2 * np.pi * 220 * t) + 800 * rng.standard_normal(t.size)).astype(np.int16)
    audio[:500] = 0  # silent frames exercise the log(eps) branches
    ref = psf.mfcc(audio, 16000)
    ours = mfcc(audio)
    assert ours.shape == ref.shape == (100, 13)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-8)
    short = audio[:300]  # shorter than one window: one zero-padded frame
    np.testing.assert_allclose(mfcc(short), psf.mfcc(short, 16000), rtol=1e-9, atol=1e-8)


def _public_state_dict(seed=0):
    """A state_dict laid out like syncnet_v2.model, built here without our class (names/shapes from the public file)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(prefix, cin, cout, k):
        sd[f"{prefix}.weight"] = torch.randn((cout, cin) + k, generator=g) * 0.01
        sd[f"{prefix}.bias"] = torch.zeros(cout)

    def bn(prefix, c):
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = torch.ones(c), torch.zeros(c)
        sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"] = torch.zeros(c), torch.ones(c)
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0)

    for i, (cin, cout, k) in zip((0, 4, 8, 11, 14, 18), [(1, 64, (3, 3)), (64, 192, (3, 3)), (192, 384, (3, 3)), (384, 256, (3, 3)), (256, 256, (3, 3)), (256, 512, (5, 4))]):
        conv(f"netcnnaud.{i}", cin, cout, k)
        bn(f"netcnnaud.{i + 1}", cout)
    for i, (cin, cout, k) in zip((0, 4, 8, 11, 14, 18), [(3, 96, (5, 7, 7)), (96, 256, (1, 5, 5)), (256, 256, (1, 3, 3)), (256, 256, (1, 3, 3)), (256, 256, (1, 3, 3)), (256, 512, (1, 6, 6))]):
        conv(f"netcnnlip.{i}", cin, cout, k)
        bn(f"netcnnlip.{i + 1}", cout)
    for head in ("netfcaud", "netfclip"):
        sd[f"{head}.0.weight"], sd[f"{head}.0.bias"] = torch.randn(512, 512, generator=g) * 0.01, torch.zeros(512)
        bn(f"{head}.1", 512)
        sd[f"{head}.3.weight"], sd[f"{head}.3.bias"] = torch.randn(1024, 512, generator=g) * 0.01, torch.zeros(1024)
    return sd


def test_syncnet_loads_a_state_dict_in_the_public_layout(tmp_path):
    sd = _public_state_dict()
    assert len(sd) == SYNCNET_NUM_KEYS == 102
    assert sum(v.numel() for k, v in sd.items() if not k.split(".")[-1].startswith(("running", "num_"))) == 13_631_616
    path = tmp_path / "syncnet_v2.model"
    torch.save(sd, path)
    model = build_syncnet(str(path))
    assert sum(p.numel() for p in model.parameters()) == 13_631_616
    torch.testing.assert_close(model.netcnnlip[18].weight, sd["netcnnlip.18.weight"])
    torch.testing.assert_close(model.netfcaud[3].weight, sd["netfcaud.3.weight"])
    # Files from older PyTorch lack num_batches_tracked (88 keys): still accepted.
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    load_syncnet_state_dict(SyncNet(), old)


def test_syncnet_rejects_a_mismatched_state_dict_with_a_clear_message():
    sd = _public_state_dict()
    sd["netcnnaud.18.weight"] = torch.zeros(512, 256, 3, 3)  # wrong kernel
    del sd["netfclip.3.bias"]
    sd["netextra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_syncnet_state_dict(SyncNet(), sd)
    msg = str(err.value)
    assert "netfclip.3.bias" in msg and "netextra.weight" in msg
    assert "netcnnaud.18.weight: expected (512, 256, 5, 4), got (512, 256, 3, 3)" in msg


def test_build_syncnet_without_weights_names_the_flag():
    with pytest.raises(ValueError, match="--syncnet_weights"):
        build_syncnet(None)
    with pytest.raises(FileNotFoundError, match="--syncnet_weights"):
        build_syncnet("/nonexistent/syncnet_v2.model")


def test_nearest_frame_resampling_keeps_duration():
    idx = nearest_frame_indices(30, 30.0, 25.0)
    assert len(idx) == 25 and idx[0] == 0 and idx[-1] == 28
    assert np.all(np.diff(idx) >= 1)
    np.testing.assert_array_equal(nearest_frame_indices(10, 25.0, 25.0), np.arange(10))
    assert len(nearest_frame_indices(50, 50.0, 25.0)) == 25


class _TinySync(torch.nn.Module):
    """Stand-in SyncNet with the same interface (keeps the test fast): mean intensity / MFCC energy."""

    def forward_lip(self, x):
        return x.mean(dim=(1, 3, 4))  # (N, 5)

    def forward_aud(self, x):
        return x[:, 0, 0, ::4]  # (N, 5): the energy column of each 25 fps step


def test_compute_lse_windows_and_resampling_note():
    crops = np.zeros((36, 224, 224, 3), np.uint8)  # 36 frames at 30 fps -> 30 at 25 fps
    audio = (np.random.default_rng(0).standard_normal(16000 * 2) * 1000).astype(np.int16)
    res = compute_lse(_TinySync(), crops, audio, fps=30.0)
    assert res.num_windows == 30 - 5
    assert len(res.mean_dists) == 31 and -15 <= res.offset <= 15
    assert any("resampled from 30 fps to 25 fps" in n for n in res.notes)
    with pytest.raises(ValueError, match="too short"):
        syncnet_features(_TinySync(), crops[:4], audio)
