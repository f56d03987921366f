"""The DICE-Talk backend against DICE-Talk's REAL source (../shared/third_party/DICE-Talk).

Tiny random weights are built from DICE-Talk's own classes and written in its real layout
(checkpoints/DICE-Talk/{unet,pose_guider,audio_linear,emo_model}.pth, an SVD folder, a whisper
folder). The sizes DICE-Talk fixes stay fixed: cross-attention 1024, AudioProjModel(10, 5, 384),
EmotionModel (1024 wide), whisper d_model 384 with 4 encoder layers (5 hidden states).
"""

from __future__ import annotations

import pickle
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stccl_diffusers.adapters.dice import DiceTrainingConfig
from stccl_diffusers.models.reference_dice import DICE_EMOTIONS, NEUTRAL_INDEX

REPO_ROOT = Path(__file__).resolve().parents[1]
DICE_ROOT = REPO_ROOT.parent / "shared" / "third_party" / "DICE-Talk"
pytestmark = pytest.mark.skipif(not (DICE_ROOT / "dice_talk.py").is_file(),
                                reason=f"DICE-Talk's source is not at {DICE_ROOT}")

RES, T = 64, 2


def _clear_src():
    for m in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        del sys.modules[m]


@pytest.fixture(scope="module")
def dice_weights(tmp_path_factory):
    """Tiny DICE-Talk weights in DICE-Talk's file layout; returns a config pointing at them."""
    from stccl_diffusers.adapters.dice.dice_talk import write_random_dice_talk_weights
    from stccl_diffusers.training import config_from_dict

    paths = write_random_dice_talk_weights(tmp_path_factory.mktemp("dice"), DICE_ROOT)
    _clear_src()
    return config_from_dict(DiceTrainingConfig, dict(
        backend="dice_talk", **paths, num_frames=T, resolution=RES, stccl_weight=1.0, p_mean=-3.0, p_std=0.0,
        frame_subset=[0, 1], drop_reference=0.0, drop_audio=0.0, drop_emotion=0.0, num_inference_steps=1))


def _metric():
    from stccl_diffusers import STCCLMetric

    torch.manual_seed(0)
    return STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False)


@pytest.fixture(scope="module")
def adapter(dice_weights):
    from stccl_diffusers.adapters.dice.dice_talk import build_dice_talk_adapter

    return build_dice_talk_adapter(dice_weights, metric=_metric())


def _batch(B=1, boxes=None):
    g = torch.Generator().manual_seed(0)
    out = {
        "frames": torch.rand(B, T, 3, RES, RES, generator=g) * 2 - 1,
        "reference": torch.rand(B, 3, RES, RES, generator=g) * 2 - 1,
        "audio_prompts": torch.randn(B, T, 10, 5, 384, generator=g),
        "emotion": torch.tensor([DICE_EMOTIONS.index("happy")] * B),
        "face_box": torch.tensor(boxes or [[8.0, 4.0, 56.0, 60.0]] * B),
    }
    return out


def test_gradient_checkpointing_reaches_dice_talks_blocks_on_this_diffusers(adapter):
    # DICE-Talk's UNet overrides the old `_set_gradient_checkpointing(module, value)`; diffusers >= 0.32
    # calls it with `enable=` and crashed.
    adapter.unet.gradient_checkpointing = False
    for m in adapter.unet.modules():
        if hasattr(m, "gradient_checkpointing"):
            m.gradient_checkpointing = False
    adapter.enable_gradient_checkpointing()
    flags = [m.gradient_checkpointing for m in adapter.unet.modules() if hasattr(m, "gradient_checkpointing")]
    assert len(flags) >= 3 and all(flags)
    calls = []
    orig = torch.utils.checkpoint.checkpoint

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    adapter.unet.train()
    torch.utils.checkpoint.checkpoint = spy
    try:
        adapter.callback = None
        from stccl_diffusers.training import configure_trainable

        configure_trainable(adapter, replace(_cfg(adapter), train_mode="lora", rank=4))
        out = adapter.training_step(_batch(), 0, torch.Generator().manual_seed(0))
        out["loss"].backward()
    finally:
        torch.utils.checkpoint.checkpoint = orig
        for m in adapter.unet.modules():
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = False
    assert calls, "DICE-Talk's blocks never checkpointed"


def _cfg(adapter):
    return adapter._test_cfg


@pytest.fixture(autouse=True)
def _attach_cfg(request, dice_weights):
    if "adapter" in request.fixturenames:
        request.getfixturevalue("adapter")._test_cfg = dice_weights
    yield


def test_batch_of_two_clips_puts_each_face_mask_on_its_own_frames(adapter):
    boxes = [[8.0, 4.0, 56.0, 60.0], [0.0, 0.0, 32.0, 32.0]]
    batch = _batch(2, boxes)
    cond = adapter.conditions(batch, adapter.target_prior(batch), (None, None, None))
    assert cond.face_mask.shape == (2 * T, 1, RES, RES)
    for b in range(2):
        for t in range(T):
            m = cond.face_mask[b * T + t, 0]
            x1, y1, x2, y2 = (int(v) for v in boxes[b])
            assert m[y1:y2, x1:x2].min() == 1 and m.sum() == (x2 - x1) * (y2 - y1)
    x = torch.randn(2, T, 4, RES // 8, RES // 8)
    v = adapter.denoise(x, torch.tensor([1.0, 1.0]), cond)  # crashed with (B, 1, H, W) masks
    assert v.shape == x.shape and torch.isfinite(v).all()
    # Each clip's output depends only on its own conditioning: clip 0 alone gives the same result.
    first = {k: v[:1] for k, v in batch.items()}
    one = adapter.conditions(first, adapter.target_prior(first), (None, None, None))
    single = adapter.denoise(x[:1], torch.tensor([1.0]), one)
    torch.testing.assert_close(v[:1], single, atol=1e-4, rtol=1e-4)


def test_emotion_tokens_use_dice_talks_inference_path_without_retrieval(adapter):
    prior = adapter.target_prior(_batch())
    cond = adapter.conditions(_batch(), prior, (None, None, None))
    expected = adapter.emo_model(prior.reshape(1, 1, 1, 1, -1), retrieval=False)[0].reshape(1, 32, 1024)
    retrieved = adapter.emo_model(prior.reshape(1, 1, 1, 1, -1), retrieval=True)[0].reshape(1, 32, 1024)
    torch.testing.assert_close(cond.emo_tokens[:1], expected)
    assert not torch.allclose(cond.emo_tokens[:1], retrieved)


def test_time_ids_are_fps_motion_bucket_and_motion_bucket_exp(adapter):
    assert adapter.time_ids == (12.5, 8.0, 16.0)


def test_dropout_matches_the_three_cfg_branches():
    from stccl_diffusers.adapters.dice.dice_talk import dice_talk_dropout

    ref, audio, emo = dice_talk_dropout(20000, (0.05, 0.1, 0.3), torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(audio, emo)  # audio and emotion always dropped together
    assert not (ref & ~audio).any()  # the reference is only dropped with everything else
    assert abs(ref.float().mean() - 0.05) < 0.01 and abs(audio.float().mean() - 0.15) < 0.01


def test_bf16_frozen_weights_cast_and_step_and_validation_run(dice_weights):
    from stccl_diffusers.adapters.dice.dice_talk import build_dice_talk_adapter
    from stccl_diffusers.training import configure_trainable

    ad = build_dice_talk_adapter(dice_weights, metric=_metric())
    configure_trainable(ad, replace(dice_weights, train_mode="lora", rank=4))
    ad.set_weight_dtype(torch.bfloat16)
    from diffusers.training_utils import cast_training_params

    cast_training_params(ad, dtype=torch.float32)
    frozen = [p.dtype for n, p in ad.unet.named_parameters() if "lora_" not in n]
    assert set(frozen) == {torch.bfloat16} and ad.vae.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in ad.unet.named_parameters() if "lora_" in n)
    assert next(ad.audio_linear.parameters()).dtype == torch.float32  # DICE-Talk keeps these fp32
    assert next(ad.emo_model.parameters()).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ad.training_step(_batch(2), 0, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["anchor_forward"] == 1.0
    assert any(p.grad is not None for n, p in ad.unet.named_parameters() if "lora_" in n)
    video = ad.render_validation(_batch(), torch.Generator().manual_seed(0))  # no autocast, as the final validation
    assert video["target"].shape == (1, T, 3, RES, RES) and torch.isfinite(video["target"]).all()


def test_validation_uses_dice_talks_three_branch_guidance(adapter):
    seen = []
    orig = adapter.denoise

    def spy(x, s, cond):
        seen.append(cond)
        return orig(x, s, cond)

    adapter.denoise = spy
    try:
        adapter.render_validation(_batch(), torch.Generator().manual_seed(0))
    finally:
        del adapter.denoise
    uncond, no_audio, cond = seen[:3]
    assert uncond.image_embeds.abs().sum() == 0 and uncond.ref_latent.abs().sum() == 0
    assert no_audio.image_embeds.abs().sum() > 0
    zero_audio = adapter.audio_linear(torch.zeros(1, T, 10, 5, 384)).flatten(0, 1)
    torch.testing.assert_close(no_audio.audio_tokens, zero_audio)
    assert not torch.allclose(cond.audio_tokens, zero_audio)
    assert adapter.guidance == (3.0, 6.0)


def test_lora_with_alpha_not_rank_saves_at_its_trained_scale(dice_weights, tmp_path):
    from safetensors.torch import load_file

    from stccl_diffusers.adapters.dice.dice_talk import build_dice_talk_adapter
    from stccl_diffusers.training import configure_trainable

    ad = build_dice_talk_adapter(dice_weights, metric=None)
    configure_trainable(ad, replace(dice_weights, train_mode="lora", rank=4, lora_alpha=8))
    with torch.no_grad():
        for n, p in ad.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ad.save_weights(tmp_path)
    sd = load_file(str(tmp_path / "pytorch_lora_weights.safetensors"))
    # merging the saved file at scale 1 (what diffusers' loaders do without alpha) gives the trained UNet
    key = next(k for k in sd if k.endswith(".lora.up.weight"))
    module = dict(ad.unet.named_modules())[key[len("unet."):-len(".lora.up.weight")]]
    trained_delta = module.lora_B["default"].weight @ module.lora_A["default"].weight * module.scaling["default"]
    torch.testing.assert_close(sd[key] @ sd[key.replace(".up.", ".down.")], trained_delta)
    # and our own resume reads it back unchanged
    before = {n: p.detach().clone() for n, p in ad.unet.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for n, p in ad.unet.named_parameters():
            if "lora_" in n:
                p.zero_()
    ad.load_weights(tmp_path)
    for n, p in ad.unet.named_parameters():
        if "lora_" in n:
            torch.testing.assert_close(p, before[n])


def test_emotion_priors_load_through_a_restricted_unpickler(tmp_path):
    from stccl_diffusers.adapters.dice.dice_talk import load_emotion_prior_file

    real = load_emotion_prior_file(DICE_ROOT / "examples/emo/happy.npy")
    ref = np.load(DICE_ROOT / "examples/emo/happy.npy", allow_pickle=True).item()["mu"]
    np.testing.assert_array_equal(real, ref)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    arr = np.empty((), dtype=object)
    arr[()] = {"mu": Evil()}
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    with pytest.raises(pickle.UnpicklingError, match="only a dict with an ndarray"):
        load_emotion_prior_file(tmp_path / "evil.npy")
    assert not marker.exists()


def test_fp16_without_cuda_is_a_clear_error(tmp_path):
    from stccl_diffusers.training import build_accelerator

    if torch.cuda.is_available():
        pytest.skip("CUDA is available: fp16 is allowed")
    cfg = replace(DiceTrainingConfig(), mixed_precision="fp16", output_dir=str(tmp_path), report_to="none")
    with pytest.raises(ValueError, match="bf16"):
        build_accelerator(cfg)


def test_svd_weights_load_from_an_fp16_only_download(dice_weights, tmp_path):
    from diffusers import AutoencoderKLTemporalDecoder

    from stccl_diffusers.adapters.dice.dice_talk import load_svd_part

    vae = AutoencoderKLTemporalDecoder.from_pretrained(dice_weights.svd_path, subfolder="vae")
    vae.to(torch.float16).save_pretrained(str(tmp_path / "vae"), variant="fp16")
    assert not (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").exists()
    loaded = load_svd_part(AutoencoderKLTemporalDecoder, tmp_path, "vae")
    assert loaded.dtype == torch.float32
    k = "encoder.conv_in.weight"
    torch.testing.assert_close(loaded.state_dict()[k], vae.state_dict()[k].half().float())
