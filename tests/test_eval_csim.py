import sys
import types

import numpy as np
import pytest
import torch

from stccl_diffusers.eval.csim import (
    build_iresnet_encoder,
    cosine_similarity_score,
    encode_faces,
    infer_iresnet_depths,
    resolve_csim_encoder,
)
from stccl_diffusers.models.iresnet import IResNet


def test_csim_frame_mode_is_mean_cosine_of_paired_frames():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    r = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    # cosines: 1, 0, -1 -> mean 0
    assert cosine_similarity_score(g, r) == pytest.approx(0.0, abs=1e-12)
    assert cosine_similarity_score(g, g) == pytest.approx(1.0)


def test_csim_clip_mode_compares_mean_features_of_different_lengths():
    g = torch.tensor([[1.0, 0.0], [1.0, 2.0]])  # mean (1, 1)
    r = torch.tensor([[0.0, 3.0]])  # mean (0, 3)
    assert cosine_similarity_score(g, r, mode="clip") == pytest.approx(1 / np.sqrt(2))
    with pytest.raises(ValueError, match="pairs frames by index"):
        cosine_similarity_score(g, r, mode="frame")


def test_encode_faces_feeds_minus_one_to_one_rgb():
    seen = {}

    def enc(x):
        seen["x"] = x
        return x.mean(dim=(2, 3))

    faces = np.zeros((2, 112, 112, 3), np.uint8)
    faces[..., 0] = 255
    feats = encode_faces(enc, faces)
    assert seen["x"].shape == (2, 3, 112, 112)
    torch.testing.assert_close(feats, torch.tensor([[1.0, -1.0, -1.0]] * 2, dtype=torch.float64))


def test_default_encoder_requires_weights_and_names_the_flag():
    with pytest.raises(ValueError, match="--csim_weights"):
        resolve_csim_encoder(None)
    with pytest.raises(FileNotFoundError, match="--csim_weights"):
        resolve_csim_encoder("iresnet", weights="/nonexistent/expr.pth")


def test_default_encoder_loads_an_arcface_state_dict_of_any_depth(tmp_path):
    torch.manual_seed(0)
    src = IResNet((1, 2, 1, 1)).eval()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}  # DataParallel-style prefix
    path = tmp_path / "backbone.pth"
    torch.save(sd, path)
    assert infer_iresnet_depths(sd) == (1, 2, 1, 1)
    enc = resolve_csim_encoder("iresnet", weights=str(path))
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(enc(x), src(x))


def test_default_encoder_rejects_a_wrong_checkpoint(tmp_path):
    sd = IResNet((1, 1, 1, 1)).state_dict()
    sd["fc.weight"] = torch.zeros(10, 10)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="fc.weight: expected"):
        build_iresnet_encoder(str(path))


def test_encoder_from_module_path_string(tmp_path, monkeypatch):
    mod = types.ModuleType("_csim_plugin_for_test")
    calls = {}

    def factory(weights=None):
        calls["weights"] = weights
        return lambda x: x.flatten(1)[:, :4]

    mod.factory = factory
    monkeypatch.setitem(sys.modules, "_csim_plugin_for_test", mod)
    w = tmp_path / "w.bin"
    w.write_bytes(b"x")
    enc = resolve_csim_encoder("_csim_plugin_for_test:factory", weights=str(w))
    assert calls["weights"] == str(w)
    assert enc(torch.zeros(2, 3, 112, 112)).shape == (2, 4)
    with pytest.raises(ValueError, match="cannot import"):
        resolve_csim_encoder("_csim_plugin_for_test:nope")
    with pytest.raises(ValueError, match="module:factory"):
        resolve_csim_encoder("not_a_spec")
