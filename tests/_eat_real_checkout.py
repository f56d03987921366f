"""A user's EAT checkout for tests: EAT's REAL source (symlinked, never copied) plus random weights.

EAT's README has the user download ``ckpt/``, ``Utils/JDC/bst.t7`` and the SyncNet checkpoint;
none of that ships with the source. The tests make a checkout in a temporary folder whose code
files are symlinks into ``../shared/third_party/EAT_code`` and whose weights are random, written
in EAT's own formats (JDC ``{"net": state_dict}``, SyncNet ``{"state_dict": ...}``, EAT's Logger
``{module_name: state_dict, ..., "epoch": n}``). The stage-2 config is EAT's own with reduced
widths (what the config allows: channel counts), and the VGG perceptual loss switched off (its
ImageNet weights cannot be downloaded here; see docs/eat.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
EAT_SOURCE = REPO_ROOT.parent / "shared" / "third_party" / "EAT_code"
STAGE2_CONFIG = "config/deepprompt_eam3d_st_tanh_304_3090_all.yaml"
SYNCNET = "ckpt/checkpoint_epoch02600_testloss0.8152778898516009_testacc0.5245564512668117.pth"
LINKED = ("modules", "sync_batchnorm", "expPCAnorm_fin", "Utils/__init__.py", "Utils/JDC/__init__.py",
          "Utils/JDC/model.py", "frames_dataset_transformer25.py", "augmentation.py", "logger.py",
          "train_transformer.py", "demo.py", "prompt_st_dp_eam3d.py", STAGE2_CONFIG)


def eat_source_or_skip():
    import pytest

    if not (EAT_SOURCE / "modules" / "model_transformer.py").is_file():
        pytest.skip(f"EAT's real source not found at {EAT_SOURCE} (../shared/third_party/EAT_code)")
    return EAT_SOURCE


def reduced_config(source: Path = EAT_SOURCE) -> dict:
    with open(source / STAGE2_CONFIG, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    mp = cfg["model_params"]
    mp["kp_detector_params"].update(block_expansion=8, max_features=64, reshape_channel=64 * 16)
    # The generator's widths are fixed by EAT's code (EA3D: 32 channels; SPADEDecoder: 256 =
    # block_expansion * 4, fed by 32 * 16 = max_features): only its depth of blocks shrinks.
    mp["generator_params"].update(num_resblocks=1)
    mp["generator_params"]["dense_motion_params"].update(block_expansion=8, max_features=64)
    mp["discriminator_params"].update(block_expansion=8, max_features=32)
    tp = cfg["train_params"]
    tp["scales"] = [1]
    tp["loss_weights"]["perceptual"] = [0, 0, 0, 0, 0]
    return cfg


def make_checkout(tmp: Path, source: Path = EAT_SOURCE) -> dict:
    """Returns {"root", "config", "stage1", "stage2"} paths."""
    root = tmp / "EAT_code"
    for rel in LINKED:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source / rel, root / rel)
    cfg = reduced_config(source)
    config = root / "config" / "reduced_stage2.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")

    from stccl_diffusers.adapters.checkout import import_from_checkout, on_path
    from stccl_diffusers.adapters.eat.compat import apply_eat_compat

    apply_eat_compat()
    torch.manual_seed(0)
    with on_path(root):
        jdc = import_from_checkout(root, "Utils.JDC.model").JDCNet(num_class=1, seq_len=32)
        torch.save({"net": jdc.state_dict()}, root / "Utils/JDC/bst.t7")
        sync = import_from_checkout(root, "modules.syncnet").SyncNet_color()
        (root / "ckpt").mkdir()
        torch.save({"state_dict": sync.state_dict()}, root / SYNCNET)
        mp = cfg["model_params"]
        common = mp["common_params"]
        gen = import_from_checkout(root, "modules.generator").OcclusionAwareSPADEGeneratorEam(
            **mp["generator_params"], **common)
        kp = import_from_checkout(root, "modules.keypoint_detector").KPDetector(**mp["kp_detector_params"], **common)
        disc = import_from_checkout(root, "modules.discriminator").MultiScaleDiscriminator(
            **mp["discriminator_params"], **common)
        cwd = os.getcwd()
        os.chdir(root)  # EAT's transformer reads ./Utils/JDC/bst.t7
        try:
            a2kp = import_from_checkout(root, "modules.transformer").Audio2kpTransformerBBoxQDeepPrompt(
                **mp["audio2kp_params"], face_ea=True)
            prompt = import_from_checkout(root, "modules.prompt")
            emo, side = prompt.EmotionDeepPrompt(), prompt.EmotionalDeformationTransformer(**mp["audio2kp_params"])
        finally:
            os.chdir(cwd)
    stage1 = {"generator": gen.state_dict(), "kp_detector": kp.state_dict(), "discriminator": disc.state_dict(),
              "audio2kptransformer": a2kp.state_dict(), "epoch": 304}
    torch.save(stage1, root / "ckpt" / "stage1.pth.tar")
    stage2 = {**stage1, "emotionprompt": emo.state_dict(), "sidetuning": side.state_dict(), "epoch": 313}
    torch.save(stage2, root / "ckpt" / "stage2.pth.tar")
    return {"root": root, "config": config, "stage1": root / "ckpt" / "stage1.pth.tar",
            "stage2": root / "ckpt" / "stage2.pth.tar"}


def eat_test_checkout(tmp_path_factory) -> dict:
    """The tests' checkout (skipping without EAT's source): :func:`make_checkout` plus
    ``config_1frame`` (:func:`one_frame_config`)."""
    eat_source_or_skip()
    d = make_checkout(tmp_path_factory.mktemp("eat"))
    one_frame_config(d)
    return d


def one_frame_config(d: dict) -> Path:
    """EAT's reduced stage-2 config with the SyncNet loss off (SyncNet takes exactly 5 frames; the
    tests render 1 frame per window): written beside ``d["config"]``, stored as ``d["config_1frame"]``."""
    cfg = yaml.safe_load(d["config"].read_text())
    cfg["train_params"]["loss_weights"]["sync"] = 0
    d["config_1frame"] = d["config"].with_name("reduced_stage2_1frame.yaml")
    d["config_1frame"].write_text(yaml.safe_dump(cfg))
    return d["config_1frame"]


def load_with_eats_demo(root: Path, config: Path, checkpoint: Path, monkeypatch) -> dict:
    """Load ``checkpoint`` with EAT's own ``demo.load_ckpt`` (strict loads) into modules built as
    ``demo.py`` builds them; returns those modules by EAT's checkpoint names."""
    import sys
    import types

    from stccl_diffusers.adapters.checkout import import_from_checkout, on_path
    from stccl_diffusers.adapters.eat.compat import apply_eat_compat

    apply_eat_compat()  # demo.py imports what the training path imports (torchvision, clip, ...)
    # demo.py builds dlib's face detector at import (for aligning new portraits, not for load_ckpt);
    # dlib is not installable from wheels here, so the tests give it an inert one.
    dlib = types.ModuleType("dlib")
    dlib.get_frontal_face_detector = dlib.shape_predictor = lambda *a: None
    monkeypatch.setitem(sys.modules, "dlib", dlib)
    mp = yaml.safe_load(Path(config).read_text())["model_params"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with on_path(root):
            demo = import_from_checkout(root, "demo")
            out = {"generator": demo.OcclusionAwareSPADEGeneratorEam(**mp["generator_params"], **mp["common_params"]),
                   "kp_detector": demo.KPDetector(**mp["kp_detector_params"], **mp["common_params"]),
                   "audio2kptransformer": demo.Audio2kpTransformer(**mp["audio2kp_params"], face_ea=True),
                   "sidetuning": demo.EmotionalDeformationTransformer(**mp["audio2kp_params"]),
                   "emotionprompt": demo.EmotionDeepPrompt()}
            demo.load_ckpt(str(checkpoint), out["kp_detector"], out["generator"], out["audio2kptransformer"],
                           out["sidetuning"], out["emotionprompt"])
    finally:
        os.chdir(cwd)
    return out


def eat_batch(b: int = 1, t: int = 5, seed: int = 0) -> dict:
    """One batch in the layout of EAT's ``FramesWavsDatasetMEL25VoxBoxQG2ImgPrompt`` after its
    DataLoader (num_w = 5: 11 audio frames per video frame)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    head = lambda *s: {"yaw": r(*s, 66), "pitch": r(*s, 66), "roll": r(*s, 66), "t": r(*s, 3) * 0.1,  # noqa: E731
                       "exp": r(*s, 45) * 0.01}
    box = torch.tensor([64.0, 64.0, 192.0, 192.0])
    return {
        "y_trg": torch.tensor([0, 4, 6, 7][:b]) if b <= 4 else torch.zeros(b, dtype=torch.long),
        "z_trg": torch.randn(b, 16, generator=g),
        "sync_mel": torch.randn(b, 1, 80, 16, generator=g),
        "he_driving": head(b, t),
        "driving": r(b, t, 3, 256, 256),
        "bboxs": box.expand(b, t, 4).clone(),
        "he_source": head(b),
        "source": r(b, 3, 256, 256),
        "mel": torch.randn(b, t, 1, 80, 11, generator=g),
        "pose": r(b, t, 11, 1, 64, 64),
        "deep": torch.randn(b, t, 11, 16, 29, generator=g),
        "name": ["W015_ang_3_001"] * b,
    }
