import numpy as np
import pytest

from stccl_diffusers.eval.reconstruction import psnr_frames, reconstruction_measures, ssim_frame


def test_psnr_is_ten_log10_of_peak_over_mse():
    gt = np.full((2, 16, 16, 3), 100, np.uint8)
    gen = gt.copy()
    gen[0] += 5  # MSE 25 everywhere in frame 0
    p = psnr_frames(gen, gt)
    assert p[0] == pytest.approx(10 * np.log10(255 ** 2 / 25.0)) and np.isinf(p[1])
    r = reconstruction_measures(gen, gt)
    # The identical frame (infinite PSNR) is left out of the mean and counted, never a NaN/inf in the JSON.
    assert r["PSNR"] == pytest.approx(p[0]) and r["psnr_identical_frames"] == 1
    assert reconstruction_measures(gt, gt)["PSNR"] is None


def test_ssim_is_one_for_identical_frames_and_falls_with_noise():
    rng = np.random.default_rng(0)
    f = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert ssim_frame(f, f) == pytest.approx(1.0)
    noisy = np.clip(f + rng.normal(0, 10, f.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(f + rng.normal(0, 40, f.shape), 0, 255).astype(np.uint8)
    assert 1.0 > ssim_frame(noisy, f) > ssim_frame(noisier, f)


def test_ssim_matches_scikit_image_on_the_luma():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (48, 56, 3)).astype(np.float64)
    a = base.astype(np.uint8)
    b = np.clip(base * 0.8 + rng.normal(0, 12, base.shape) + 20, 0, 255).astype(np.uint8)
    luma = lambda x: x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # noqa: E731
    ref = metrics.structural_similarity(luma(a), luma(b), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert ssim_frame(a, b) == pytest.approx(ref, abs=1e-9)


def test_unequal_lengths_are_cut_and_said_and_wrong_shapes_refused():
    a = np.zeros((5, 16, 16, 3), np.uint8)
    r = reconstruction_measures(a[:3] + 1, a)
    assert r["reconstruction_frames"] == 3 and "differ" in r["reconstruction_note"]
    with pytest.raises(ValueError, match="equal shape"):
        psnr_frames(a, a[:, :8])
