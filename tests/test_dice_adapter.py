"""The real-DICE-Talk adapter against a stand-in checkout with DICE-Talk's call signatures.

The test writes a temporary "DICE-Talk checkout" (src/models/... with the same class names,
constructor arguments and forward signatures, tiny and random), checkpoints in DICE-Talk's file
names, an SVD folder (tiny AutoencoderKLTemporalDecoder + CLIPVisionModelWithProjection) and
emotion priors in DICE-Talk's `.npy` format.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from stccl_diffusers.adapters.dice import DiceTrainingConfig
from stccl_diffusers.adapters.dice.dice_talk import (
    DICE_CHECKPOINT_FILES,
    audio_windows,
    box_mask,
    build_dice_talk_adapter,
    check_dice_talk_paths,
)
from stccl_diffusers.models.reference_dice import DICE_EMOTIONS, NEUTRAL_INDEX

D = 16  # stand-in cross-attention width (1024 in DICE-Talk)

UNET_SRC = f'''
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

CALLS = []


class UNetSpatioTemporalConditionModel(ModelMixin, ConfigMixin):
    """Stand-in: DICE-Talk's forward signature, tiny maths."""

    @register_to_config
    def __init__(self, in_channels=8, out_channels=4, block_out_channels=(8, 16), cross_attention_dim={D}):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.to_q = torch.nn.Linear(block_out_channels[0], cross_attention_dim)
        self.conv_out = torch.nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, spatial_condition=None,
                cross_attention_kwargs=None, return_dict=True):
        CALLS.append(dict(sample=tuple(sample.shape), timestep=timestep.detach().clone(),
                          ehs=encoder_hidden_states, spatial=tuple(spatial_condition.shape),
                          masks=cross_attention_kwargs["ip_adapter_masks"], time_ids=added_time_ids.detach().clone()))
        b, t = sample.shape[:2]
        h = self.conv_in(sample.flatten(0, 1)) + spatial_condition.flatten(0, 1)
        img, (audio, emo) = encoder_hidden_states
        tok = torch.cat([img, audio, emo], 1).mean(1)  # (B*T, D)
        h = h + self.to_q.weight.t().matmul(tok.t()).t()[:, :, None, None] * 0.1
        out = self.conv_out(torch.nn.functional.silu(h))
        return (out.reshape(b, t, *out.shape[1:]),)


def add_ip_adapters(unet, num_adapter_embeds=[32], scale=[1.0]):
    unet.ip_adapters_added = (list(num_adapter_embeds), list(scale))
    return torch.nn.ModuleList()
'''

POSE_SRC = '''
import torch
from diffusers.models.modeling_utils import ModelMixin


class PoseGuider(ModelMixin):
    def __init__(self, conditioning_embedding_channels, conditioning_channels=3, block_out_channels=(16, 32, 96, 256)):
        super().__init__()
        self.conv = torch.nn.Conv3d(conditioning_channels, conditioning_embedding_channels, (1, 2, 2), stride=(1, 2, 2))

    def forward(self, conditioning):  # (B, C, T, H, W) -> (B, C0, T, H/2, W/2)
        return self.conv(conditioning)
'''

AUDIO_SRC = '''
import torch
from diffusers.models.modeling_utils import ModelMixin


class AudioProjModel(ModelMixin):
    def __init__(self, seq_len=5, blocks=12, channels=768, intermediate_dim=512, output_dim=768, context_tokens=32):
        super().__init__()
        self.context_tokens, self.output_dim = context_tokens, output_dim
        self.proj1 = torch.nn.Linear(seq_len * blocks * channels, 8)
        self.proj3 = torch.nn.Linear(8, context_tokens * output_dim)

    def forward(self, audio_embeds):  # (B, F, w, b, c) -> (B, F, 32, D)
        b, f = audio_embeds.shape[:2]
        x = torch.relu(self.proj1(audio_embeds.reshape(b * f, -1)))
        return self.proj3(x).reshape(b, f, self.context_tokens, self.output_dim)
'''

EMO_SRC = f'''
import torch

PRIORS_SEEN = []


class EmotionModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emo_linear = torch.nn.Linear(256, 32 * {D})

    def forward(self, emo_prompts, emo_prompt_mask=None, retrieval=True):  # (B, 1, 1, 1, 256)
        PRIORS_SEEN.append(emo_prompts.detach().clone())
        b, f = emo_prompts.shape[:2]
        return self.emo_linear(emo_prompts.reshape(b, f, 256)).reshape(b, f, 32, {D}), torch.zeros(())
'''


def _write_checkout(root: Path) -> None:
    files = {
        "src/__init__.py": "", "src/models/__init__.py": "", "src/models/base/__init__.py": "",
        "src/models/audio_adapter/__init__.py": "", "src/models/emotion_adapter/__init__.py": "",
        "src/models/base/unet_spatio_temporal_condition.py": UNET_SRC,
        "src/models/audio_adapter/pose_guider.py": POSE_SRC,
        "src/models/audio_adapter/audio_proj.py": AUDIO_SRC,
        "src/models/emotion_adapter/emo.py": EMO_SRC,
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    g = np.random.default_rng(0)
    (root / "examples/emo").mkdir(parents=True)
    for emo in DICE_EMOTIONS:
        np.save(root / "examples/emo" / f"{emo}.npy", {"mu": g.standard_normal((1, 256)).astype(np.float32)},
                allow_pickle=True)


@pytest.fixture
def dice_env(tmp_path, monkeypatch):
    """A complete stand-in DICE-Talk installation; returns a config pointing at it."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root, ckpt, svd = tmp_path / "DICE-Talk", tmp_path / "DICE-Talk/checkpoints/DICE-Talk", tmp_path / "svd"
    _write_checkout(root)
    monkeypatch.syspath_prepend(str(root))
    for m in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        monkeypatch.delitem(sys.modules, m)
    from src.models.audio_adapter.audio_proj import AudioProjModel
    from src.models.audio_adapter.pose_guider import PoseGuider
    from src.models.base.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel
    from src.models.emotion_adapter.emo import EmotionModel

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel()
    unet.save_pretrained(str(svd / "unet"))
    AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                 layers_per_block=1, latent_channels=4, sample_size=32).save_pretrained(str(svd / "vae"))
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=224, patch_size=56,
                                                   projection_dim=D)).save_pretrained(str(svd / "image_encoder"))
    ckpt.mkdir(parents=True)
    torch.save(unet.state_dict(), ckpt / "unet.pth")
    torch.save(PoseGuider(conditioning_embedding_channels=8).state_dict(), ckpt / "pose_guider.pth")
    torch.save(AudioProjModel(seq_len=10, blocks=5, channels=384, intermediate_dim=1024, output_dim=D,
                              context_tokens=32).state_dict(), ckpt / "audio_linear.pth")
    torch.save(EmotionModel().state_dict(), ckpt / "emo_model.pth")
    for m in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        del sys.modules[m]  # the adapter must import them itself
    from stccl_diffusers.training import config_from_dict

    cfg = config_from_dict(DiceTrainingConfig, dict(
        backend="dice_talk", dice_talk_root=str(root), dice_checkpoints=str(ckpt), svd_path=str(svd),
        num_frames=4, resolution=32, stccl_weight=1.0, p_mean=-3.0, p_std=0.0,  # every sample gated
        frame_subset=[0, 3], drop_reference=0.0, drop_audio=0.0, drop_emotion=0.0, num_inference_steps=2,
        anchor="current"))  # the conditioning tests train the UNet in full; the frozen anchor has its own test
    return cfg


def _metric():
    from stccl_diffusers import STCCLMetric

    torch.manual_seed(0)
    return STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False)


def _batch(B=1, T=4, H=32):
    g = torch.Generator().manual_seed(0)
    return {
        "frames": torch.rand(B, T, 3, H, H, generator=g) * 2 - 1,
        "reference": torch.rand(B, 3, H, H, generator=g) * 2 - 1,
        "audio_prompts": torch.randn(B, T, 10, 5, 384, generator=g),
        "emotion": torch.tensor([DICE_EMOTIONS.index("happy")] * B),
        "face_box": torch.tensor([[4.0, 2.0, 28.0, 30.0]] * B),
    }


def test_missing_files_are_named_before_any_model_is_built(dice_env):
    cfg = dice_env
    Path(cfg.dice_checkpoints, "pose_guider.pth").unlink()
    Path(cfg.dice_talk_root, "examples/emo/neutral.npy").unlink()
    with pytest.raises(FileNotFoundError) as err:
        build_dice_talk_adapter(cfg, metric=None)
    msg = str(err.value)
    assert "pose_guider.pth" in msg and "neutral.npy" in msg and "2 file(s) missing" in msg
    assert not any(m.startswith("src.models") for m in sys.modules)  # nothing imported, nothing built


def test_unset_paths_are_reported_by_flag():
    with pytest.raises(FileNotFoundError, match="--dice_checkpoints \\(not set\\); --svd_path \\(not set\\)"):
        check_dice_talk_paths("/x", None, None)


def test_adapter_builds_from_the_checkout_and_loads_its_weights(dice_env):
    cfg = dice_env
    adapter = build_dice_talk_adapter(cfg, metric=_metric())
    assert type(adapter.unet).__module__ == "src.models.base.unet_spatio_temporal_condition"
    assert adapter.unet.ip_adapters_added == ([32, 32], [1.0, 1.0])
    saved = torch.load(Path(cfg.dice_checkpoints) / "pose_guider.pth", weights_only=True)
    torch.testing.assert_close(adapter.pose_guider.state_dict()["conv.weight"], saved["conv.weight"])
    mu = np.load(Path(cfg.dice_talk_root) / "examples/emo/neutral.npy", allow_pickle=True).item()["mu"]
    torch.testing.assert_close(adapter.emotion_priors[NEUTRAL_INDEX], torch.from_numpy(mu[0]))
    for m in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        del sys.modules[m]


def test_gated_step_runs_the_anchor_with_the_neutral_prior_and_dice_conditioning(dice_env):
    cfg = dice_env
    adapter = build_dice_talk_adapter(cfg, metric=_metric())
    from dataclasses import replace

    from stccl_diffusers.training import configure_trainable

    configure_trainable(adapter, replace(cfg, train_mode="full", trainable_modules=["unet"]))
    unet_mod = sys.modules["src.models.base.unet_spatio_temporal_condition"]
    emo_mod = sys.modules["src.models.emotion_adapter.emo"]
    unet_mod.CALLS.clear()
    emo_mod.PRIORS_SEEN.clear()
    out = adapter.training_step(_batch(), 0, torch.Generator().manual_seed(0))
    assert len(unet_mod.CALLS) == 2  # target with grad, neutral anchor
    target, anchor = unet_mod.CALLS
    B, T = 1, 4
    assert target["sample"] == (B, T, 8, 16, 16)  # c_in x_t ⊕ reference latent
    img, (audio, emo) = target["ehs"]
    assert img.shape == (B * T, 1, D) and audio.shape == (B * T, 32, D) and emo.shape == (B * T, 32, D)
    assert target["spatial"] == (B, T, 8, 16, 16)  # PoseGuider features of the face mask
    assert len(target["masks"]) == 2 and target["masks"][0].shape == (B, 1, 32, 32)
    torch.testing.assert_close(target["time_ids"], torch.tensor([[12.5, 8.0, 16.0]]))
    torch.testing.assert_close(target["timestep"], anchor["timestep"])  # same sigma
    happy, neutral = emo_mod.PRIORS_SEEN
    torch.testing.assert_close(happy.flatten(), adapter.emotion_priors[DICE_EMOTIONS.index("happy")])
    torch.testing.assert_close(neutral.flatten(), adapter.emotion_priors[NEUTRAL_INDEX])
    assert neutral.abs().sum() > 0  # the anchor is the neutral prior, never zeros
    assert out["anchor_forward"] == 1.0 and float(out["stccl"]) > 0
    out["loss"].backward()
    assert adapter.unet.conv_in.weight.grad is not None and adapter.pose_guider.conv.weight.grad is None
    for m in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        del sys.modules[m]


def test_audio_windows_follow_dice_talk_padding():
    steps = torch.arange(12, dtype=torch.float32).view(1, 12, 1, 1).expand(1, 12, 5, 384)
    w = audio_windows(steps, num_frames=3)
    assert w.shape == (1, 3, 10, 5, 384)
    # 4 zeros of padding in front: frame 0 sees [0,0,0,0,0..5]; at 12.5 fps (step 2) frame 1 starts
    # four 50 Hz steps later, at 25 fps (step 1) two.
    assert w[0, 0, :, 0, 0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
    assert w[0, 1, :, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert audio_windows(steps, num_frames=3, step=1)[0, 1, :, 0, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="audio too short"):
        audio_windows(steps, num_frames=20)


def test_box_mask_marks_the_face_box_only():
    m = box_mask(torch.tensor([[2.0, 1.0, 5.0, 3.0]]), 4, 6)
    assert m.shape == (1, 3, 4, 6)
    assert m[0, 0].sum() == 3 * 2 and m[0, 0, 1, 2] == 1 and m[0, 0, 0, 2] == 0 and m[0, 0, 1, 5] == 0


@pytest.mark.parametrize("anchor", ["frozen", "current"])
def test_frozen_anchor_runs_dice_talk_with_lora_off_and_current_with_it_on(dice_env, anchor):
    from dataclasses import replace

    from stccl_diffusers.training import configure_trainable

    cfg = replace(dice_env, anchor=anchor, num_inference_steps=1)
    adapter = build_dice_talk_adapter(cfg, metric=_metric())
    configure_trainable(adapter, replace(cfg, train_mode="lora", rank=2, lora_target_modules=["conv_in", "conv_out"]))
    batch = _batch()
    g = torch.Generator().manual_seed(0)
    x_t, sigma = torch.randn(1, 4, 4, 16, 16, generator=g), torch.full((1,), 0.5)

    def anchor_pred():
        with torch.no_grad():
            cond = adapter.conditions(batch, adapter.neutral_prior(batch), (None, None, None))
        return adapter.anchor_denoise(x_t, sigma, cond)

    before, val_before = anchor_pred(), adapter.render_validation(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for n, p in adapter.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    after, val_after = anchor_pred(), adapter.render_validation(batch, torch.Generator().manual_seed(0))
    assert (val_after["target"] - val_before["target"]).abs().max() > 1e-4  # LoRA changes the live model
    if anchor == "frozen":
        torch.testing.assert_close(after, before, rtol=0, atol=0)
        torch.testing.assert_close(val_after["anchor"], val_before["anchor"], rtol=0, atol=0)
    else:
        assert (after - before).abs().max() > 1e-4 and (val_after["anchor"] - val_before["anchor"]).abs().max() > 1e-4
    for m in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        del sys.modules[m]
