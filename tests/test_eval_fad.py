import numpy as np
import pytest
import torch

from stccl_diffusers.eval.fad import arcface_embeddings, fad_from_embeddings, frechet_distance, gaussian_stats
from stccl_diffusers.eval.faces import ARCFACE_TEMPLATE_112, align_face_112, umeyama_similarity
from stccl_diffusers.models.iresnet import IResNet


def _two_sets(seed=0, n=300, d=16):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((n + 50, d)) @ rng.standard_normal((d, d)) * 0.5 + 1.0
    return x, y


def test_fad_of_a_set_with_itself_is_zero():
    x, _ = _two_sets()
    assert abs(fad_from_embeddings(x, x).fad) < 1e-6
    # Also with fewer samples than dimensions (singular covariance, eps path).
    small = np.random.default_rng(1).standard_normal((20, 64))
    res = fad_from_embeddings(small, small)
    assert abs(res.fad) < 1e-6 and res.eps > 0 and "fewer frames than dimensions" in res.note


def test_fad_is_symmetric_and_positive_for_different_sets():
    x, y = _two_sets()
    a, b = fad_from_embeddings(x, y).fad, fad_from_embeddings(y, x).fad
    assert a > 1.0
    assert a == pytest.approx(b, rel=1e-9)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    # For diagonal covariances: ||mu1-mu2||^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2.
    rng = np.random.default_rng(2)
    d = 32
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    for method in ("eigh", "scipy"):
        got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_frechet_distance_matches_closed_form_for_commuting_full_covariances():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: Tr term = sum (sqrt a - sqrt b)^2.
    rng = np.random.default_rng(3)
    d = 24
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.2, 2.0, d), rng.uniform(0.2, 2.0, d)
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    expected = d * 0.25 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_fad_from_samples_approaches_population_value():
    rng = np.random.default_rng(4)
    d, n = 4, 200000
    x = rng.standard_normal((n, d)) * np.sqrt([1.0, 2.0, 0.5, 1.0])
    y = rng.standard_normal((n, d)) * np.sqrt([2.0, 1.0, 0.5, 4.0]) + [1.0, 0.0, 0.0, 0.0]
    expected = 1.0 + (1 - np.sqrt(2)) ** 2 * 2 + 0 + (1 - 2) ** 2
    assert fad_from_embeddings(x, y).fad == pytest.approx(expected, abs=0.05)


def test_fad_rejects_mismatched_dims_and_nan():
    x, y = _two_sets()
    with pytest.raises(ValueError, match="equal D"):
        fad_from_embeddings(x, y[:, :8])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(bad)


def test_alignment_maps_landmarks_onto_the_arcface_template():
    # A known similarity (scale 2.5, 20 degrees, shift) applied to the template must be undone.
    ang = np.deg2rad(20)
    rot = 2.5 * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    lmk = ARCFACE_TEMPLATE_112 @ rot.T + [60.0, 30.0]
    m = umeyama_similarity(lmk, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(lmk @ m[:, :2].T + m[:, 2], ARCFACE_TEMPLATE_112, atol=1e-9)
    img = np.zeros((400, 400, 3), np.uint8)
    x, y = lmk[2].round().astype(int)  # a white dot on the nose lands on the template's nose
    img[y - 3:y + 4, x - 3:x + 4] = 255
    out = align_face_112(img, lmk)
    ys, xs = np.nonzero(out[..., 0] > 128)
    assert out.shape == (112, 112, 3)
    assert abs(xs.mean() - ARCFACE_TEMPLATE_112[2, 0]) < 1.0 and abs(ys.mean() - ARCFACE_TEMPLATE_112[2, 1]) < 1.0


def test_arcface_embeddings_use_insightface_normalisation():
    torch.manual_seed(0)
    model = IResNet((1, 1, 1, 1)).eval()
    faces = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    emb = arcface_embeddings(model, faces, batch_size=2)
    x = (torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        ref = model(x).double().numpy()
    assert emb.shape == (3, 512) and emb.dtype == np.float64
    # Loose tolerance: batch size changes float32 conv round-off; a wrong normalisation is far off.
    np.testing.assert_allclose(emb, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    with pytest.raises(ValueError, match="112, 112, 3"):
        arcface_embeddings(model, faces[:, :100])


def test_tile_label_mask_covers_the_green_label_only():
    from stccl_diffusers.eval.faces import find_label_mask, mask_tile_label

    tile = np.zeros((256, 256, 3), np.uint8)
    tile[...] = (39, 59, 42)  # greyish-green studio background (RGB)
    tile[32:54, 30:130] = (0, 62, 0)  # dark pure-green label box
    tile[38:48, 40:120:6] = 255  # white "text"
    mask = find_label_mask(tile)
    ys, xs = np.nonzero(mask)
    assert ys.min() <= 32 and ys.max() >= 53 and xs.min() <= 30 and xs.max() >= 129
    assert mask[100:].sum() == 0 and mask[:, 140:].sum() == 0  # background and below y=60 untouched
    clean = mask_tile_label(tile, mask)
    assert np.array_equal(clean[mask == 0], tile[mask == 0])
    assert np.abs(clean[40:46, 60:100].astype(int) - [39, 59, 42]).max() < 25  # label replaced by background


def test_syncnet_crop_follows_the_public_geometry():
    from stccl_diffusers.eval.faces import syncnet_crop

    img = np.zeros((300, 300, 3), np.uint8)
    img[:, 150:] = 200  # a vertical edge through the box centre
    crop = syncnet_crop(img, (100, 100, 100, 100))  # s = 50: columns 150 +- 70, rows 100 .. 240
    assert crop.shape == (224, 224, 3)
    edge = np.argmax(crop[112, :, 0] > 100)
    assert abs(edge - 112) <= 2  # the box centre column stays in the middle
