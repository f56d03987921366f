"""Codec-stable sync (--sync_protocol reencode): one fixed encoder pass before SyncNet, both numbers
reported; SyncNet is the real architecture with random weights saved in syncnet_v2.model's layout."""

import json

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from stccl_diffusers.eval.reencode import REENCODE_PROTOCOL, reencode_frames
from stccl_diffusers.eval.reconstruction import psnr_frames
from stccl_diffusers.utils.safety import UsageError

torch.set_num_threads(1)


def _clip(seed, n=36, size=48):
    """A moving textured blob on noise: structure a codec keeps, detail it changes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    frames = []
    for t in range(n):
        cx, cy = size / 2 + 8 * np.sin(t / 4), size / 2 + 5 * np.cos(t / 3)
        blob = 200 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 60.0)
        f = blob[..., None] + rng.integers(0, 60, (size, size, 3))
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(frames)


def test_reencode_resamples_to_25_fps_keeps_the_size_and_changes_pixels():
    frames = _clip(0, n=36, size=47)[:, :, :45]  # odd height and width: padded for yuv420p, cropped back
    out = reencode_frames(frames, fps=30.0)
    assert out.shape == (30, 47, 45, 3) and out.dtype == np.uint8  # 36 frames at 30 fps -> 30 at 25 fps
    again = reencode_frames(frames, fps=30.0)
    np.testing.assert_array_equal(out, again)  # one encoder thread: the same bitstream every time
    from stccl_diffusers.eval.eval_io import nearest_frame_indices

    p = psnr_frames(out, frames[nearest_frame_indices(36, 30.0, 25.0)])
    assert np.isfinite(p).all() and 20 < p.mean() < 45  # lossy, but the same clip
    with pytest.raises(ValueError, match=r"\(T >= 1, H, W, 3\) uint8"):
        reencode_frames(frames.astype(np.float32), 25.0)


def test_reencoding_changes_the_sync_score_and_the_report_keeps_both(tmp_path):
    from test_eval_lse import _public_state_dict

    from stccl_diffusers.eval.cli import main

    weights = tmp_path / "syncnet_v2.model"
    sd = _public_state_dict(seed=3)
    g = torch.Generator().manual_seed(3)
    for k, v in sd.items():  # He-scaled random weights: O(1) features, so the offset curve is not flat
        if k.endswith("weight") and v.ndim >= 2:
            sd[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
    torch.save(sd, weights)
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(16000) * 3000).astype(np.int16)
    import cv2

    for method in ("real", "A"):
        d = tmp_path / method / "clip1"
        d.mkdir(parents=True)
        for i, f in enumerate(_clip(2, n=25)):
            cv2.imwrite(str(d / f"{i:06d}.png"), f[..., ::-1])
        wavfile.write(str(d / "audio.wav"), 16000, audio)
    out = tmp_path / "out"
    main(["--reference_dir", str(tmp_path / "real"), "--generated", f"A={tmp_path / 'A'}", "--aligned", "--metrics", "lse",
          "--syncnet_weights", str(weights), "--sync_protocol", "reencode", "--output_dir", str(out), "--no_progress",
          "--num_threads", "1", "--no_real_row", "--batch_size", "4"])
    res = json.loads((out / "results.json").read_text())
    (clip,) = res["clips"]
    assert clip["lse_windows"] == clip["lse_reencoded_windows"] == 20
    assert abs(clip["LSE-D_reencoded"] - clip["LSE-D"]) > 1e-4 and abs(clip["LSE-C_reencoded"] - clip["LSE-C"]) > 1e-6
    a = res["methods"]["A"]
    assert a["LSE-D"] == pytest.approx(clip["LSE-D"]) and a["LSE-D_reencoded"] == pytest.approx(clip["LSE-D_reencoded"])
    assert res["sync_protocol"] == {"protocol": "reencode", "reencode": REENCODE_PROTOCOL}
    assert res["aliases"]["Sync-C"] == "LSE-C" and res["aliases"]["Sync-D"] == "LSE-D"
    md = (out / "results.md").read_text()
    assert "LSE-D↓ re-enc." in md and "LSE-D↓ |" in md and "CRF 23" in md and "yuv420p" in md and "Sync-D/Sync-C" in md
    assert f"{a['LSE-D']:.3f}" in md and f"{a['LSE-D_reencoded']:.3f}" in md
    # Without the flag only the given numbers, and the report says how to get the other ones.
    out2 = tmp_path / "given"
    main(["--reference_dir", str(tmp_path / "real"), "--generated", f"A={tmp_path / 'A'}", "--aligned", "--metrics", "lse",
          "--syncnet_weights", str(weights), "--output_dir", str(out2), "--no_progress", "--num_threads", "1", "--no_real_row"])
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["clips"][0]["LSE-D"] == pytest.approx(clip["LSE-D"]) and "LSE-D_reencoded" not in res2["clips"][0]
    assert any(x["measure"] == "LSE-D/LSE-C re-encoded" for x in res2["left_out"])


def test_reencode_without_lse_is_refused(tmp_path):
    from stccl_diffusers.eval.cli import main

    (tmp_path / "r").mkdir()
    (tmp_path / "g").mkdir()
    with pytest.raises(UsageError, match="--sync_protocol reencode needs lse"):
        main(["--reference_dir", str(tmp_path / "r"), "--generated", f"A={tmp_path / 'g'}", "--metrics", "none", "--mouth",
              "--sync_protocol", "reencode", "--output_dir", str(tmp_path / "o")])
