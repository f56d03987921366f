"""EAT's own source from the user's checkout: the checkout check, the stage-2 generator-full
model, its checkpoint and trainable parameters, and EAT's data set (facts §5). EAT's code is never
vendored; it is imported through :func:`stccl_diffusers.adapters.checkout.import_from_checkout`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from ...models.reference_eat import NEUTRAL_INDEX
from ..checkout import import_from_checkout, on_path, working_directory

#: Files of the user's EAT checkout that the generator-full model is built from.
EAT_REQUIRED_FILES = (
    "modules/model_transformer.py",
    "modules/generator.py",
    "modules/discriminator.py",
    "modules/keypoint_detector.py",
    "modules/transformer.py",
    "modules/prompt.py",
    "modules/syncnet.py",
    "sync_batchnorm/__init__.py",
    "Utils/JDC/model.py",  # StarGANv2-VC's JDCNet (EAT's README: the Utils download)
    "Utils/JDC/bst.t7",  # its weights; EAT's transformer loads ./Utils/JDC/bst.t7
    "expPCAnorm_fin/U_mead.npy",  # EAT's expression PCA, read as ./expPCAnorm_fin/*.npy
    "expPCAnorm_fin/mean_mead.npy",
)
#: EAT's SyncNet checkpoint (read as ./ckpt/... when train_params.loss_weights.sync != 0).
EAT_SYNCNET_CHECKPOINT = "ckpt/checkpoint_epoch02600_testloss0.8152778898516009_testacc0.5245564512668117.pth"

#: Checkpoint entries (EAT's Logger saves one state_dict per module name). A stage-1 checkpoint
#: (EAT's README starts stage 2 from ``qvt_img_pca_sync_4_01_11_304.pth.tar``) has the first three.
EAT_CHECKPOINT_KEYS = ("generator", "kp_detector", "audio2kptransformer", "emotionprompt", "sidetuning")
EAT_STAGE1_KEYS = EAT_CHECKPOINT_KEYS[:3]
#: The file in each saved checkpoint folder that EAT's own loaders (demo.py) read.
EAT_EXPORT_NAME = "eat_checkpoint.pth.tar"


def check_eat_checkout(eat_root: Union[str, os.PathLike], eat_checkpoint: Optional[Union[str, os.PathLike]] = None,
                       eat_config: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Raise ``FileNotFoundError`` naming every missing file of the EAT checkout; return its root."""
    root = Path(eat_root)
    if not root.is_dir():
        raise FileNotFoundError(f"EAT checkout not found: --eat_root {root} is not a directory")
    missing = [str(root / f) for f in EAT_REQUIRED_FILES if not (root / f).is_file()]
    if eat_config is not None and Path(eat_config).is_file():
        import yaml

        with open(eat_config, encoding="utf-8") as f:
            weights = ((yaml.safe_load(f) or {}).get("train_params") or {}).get("loss_weights") or {}
        if weights.get("sync", 0) != 0 and not (root / EAT_SYNCNET_CHECKPOINT).is_file():
            missing.append(f"{root / EAT_SYNCNET_CHECKPOINT} (SyncNet, for loss_weights.sync)")
    for name, path in (("--eat_checkpoint", eat_checkpoint), ("--eat_config", eat_config)):
        if path is not None and not Path(path).is_file():
            missing.append(f"{path} ({name})")
    if missing:
        raise FileNotFoundError("EAT checkout is missing: " + ", ".join(missing))
    return root


def _import_from_checkout(root: Path, module: str):
    return import_from_checkout(root, module, project="the EAT checkout")


def load_eat_generator_full(
    eat_root: Union[str, os.PathLike],
    eat_checkpoint: Union[str, os.PathLike],
    eat_config: Union[str, os.PathLike],
    device: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """Build EAT's stage-2 ``GeneratorFullModelBatchDeepPromptSTEAM3D`` from the user's checkout.

    Follows EAT's ``prompt_st_dp_eam3d.py``: ``OcclusionAwareSPADEGeneratorEam``,
    ``MultiScaleDiscriminator``, ``KPDetector`` (from ``generator_params``,
    ``discriminator_params``, ``kp_detector_params`` + ``common_params``),
    ``Audio2kpTransformerBBoxQDeepPrompt(**audio2kp_params, face_ea=True)``, ``EmotionDeepPrompt()``,
    ``EmotionalDeformationTransformer(**audio2kp_params)``; weights from the checkpoint's
    per-module state_dicts (``torch.load(weights_only=True)``). EAT's config is read with
    ``yaml.safe_load``. What trains is EAT's stage-2 choice (:func:`set_eat_trainable`).
    """
    import yaml

    from .compat import apply_eat_compat

    root = check_eat_checkout(eat_root, eat_checkpoint, eat_config)
    eat_checkpoint, eat_config = Path(eat_checkpoint).absolute(), Path(eat_config).absolute()
    apply_eat_compat()
    with open(eat_config, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    try:
        mp, train_params = config["model_params"], config["train_params"]
        common = mp["common_params"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{eat_config}: expected EAT's config with model_params.common_params and train_params, "
                         f"missing {e}") from None
    state = torch.load(eat_checkpoint, map_location="cpu", weights_only=True)
    missing = [k for k in EAT_STAGE1_KEYS if k not in state]
    if missing:
        raise ValueError(f"{eat_checkpoint}: expected an EAT checkpoint with entries {list(EAT_STAGE1_KEYS)} "
                         f"(stage 1) or {list(EAT_CHECKPOINT_KEYS)} (stage 2), missing {missing} "
                         f"(found {sorted(state)[:10]})")
    # EAT reads ./Utils/JDC/bst.t7, ./expPCAnorm_fin/*.npy and ./ckpt/<SyncNet> relative to the
    # working directory: build everything inside the checkout.
    with on_path(root), working_directory(root):
        gen_mod = _import_from_checkout(root, "modules.generator")
        disc_mod = _import_from_checkout(root, "modules.discriminator")
        kp_mod = _import_from_checkout(root, "modules.keypoint_detector")
        tr_mod = _import_from_checkout(root, "modules.transformer")
        pr_mod = _import_from_checkout(root, "modules.prompt")
        mt_mod = _import_from_checkout(root, "modules.model_transformer")
        generator = gen_mod.OcclusionAwareSPADEGeneratorEam(**mp["generator_params"], **common)
        discriminator = disc_mod.MultiScaleDiscriminator(**mp["discriminator_params"], **common)
        kp_detector = kp_mod.KPDetector(**mp["kp_detector_params"], **common)
        audio2kp = tr_mod.Audio2kpTransformerBBoxQDeepPrompt(**mp["audio2kp_params"], face_ea=True)
        emotionprompt = pr_mod.EmotionDeepPrompt()
        sidetuning = pr_mod.EmotionalDeformationTransformer(**mp["audio2kp_params"])
        load_eat_state(state, generator, discriminator, kp_detector, audio2kp, emotionprompt, sidetuning)
        full = mt_mod.GeneratorFullModelBatchDeepPromptSTEAM3D(
            kp_detector, audio2kp, emotionprompt, sidetuning, generator, discriminator, train_params,
            estimate_jacobian=common.get("estimate_jacobian", True),
        )
    # EAT puts its frozen loss networks in eval mode only when CUDA is available; do it always
    # (SyncNet's BatchNorm in training mode raises on a batch of one).
    for name in ("syncnet", "vgg", "hopenet", "dan", "fan", "clip_model"):
        if isinstance(getattr(full, name, None), nn.Module):
            getattr(full, name).eval()
    set_eat_trainable(full)
    return full.to(device)


def load_eat_state(state: Dict[str, Any], generator, discriminator, kp_detector, audio2kp, emotionprompt,
                   sidetuning) -> None:
    """Load an EAT checkpoint as EAT's ``Logger.load_cpk_a2kp_prompt_sidetuning`` does for stage 2:
    generator and audio2kp with ``strict=False``, kp_detector strictly, emotion prompt and
    side-tuning when present; a stage-1 checkpoint (no ``sidetuning``) initialises side-tuning
    from audio2kp (EAT's ``init_sidetuning_weight``); the discriminator when present."""
    generator.load_state_dict(state["generator"], strict=False)
    kp_detector.load_state_dict(state["kp_detector"])
    audio2kp.load_state_dict(state["audio2kptransformer"], strict=False)
    if "emotionprompt" in state:
        emotionprompt.load_state_dict(state["emotionprompt"])
    if "sidetuning" in state:
        sidetuning.load_state_dict(state["sidetuning"])
    else:
        sidetuning.init_sidetuning_weight(state["audio2kptransformer"])
    if "discriminator" in state:
        discriminator.load_state_dict(state["discriminator"])


def set_eat_trainable(full: nn.Module) -> None:
    """EAT's stage-2 choice of what trains (its ``prompt_st_dp_eam3d.py``), parameter by parameter.

    Trainable: the renderer's emotional adaptation (``ea1``, ``ea2``, ``ea3d`` in the name), the
    audio encoder's decode norms and the ``fea`` module of ``audio2kptransformer``, all of
    ``emotionprompt`` and ``sidetuning``. Everything else (keypoint detector, perceptual nets, the
    rest of the generator and transformer) is frozen.
    """
    full.requires_grad_(False)
    for name, p in full.generator.named_parameters():
        p.requires_grad_(any(k in name for k in ("ea1", "ea2", "ea3d")))
    a2kp = full.audio2kptransformer
    if hasattr(a2kp, "audioencoder"):
        for name, p in a2kp.audioencoder.named_parameters():
            p.requires_grad_("decode" in name and "norm" in name)
    if hasattr(a2kp, "fea"):
        a2kp.fea.requires_grad_(True)
    full.emotionprompt.requires_grad_(True)
    full.sidetuning.requires_grad_(True)


def load_eat_dataset(
    eat_root: Union[str, os.PathLike],
    eat_config: Union[str, os.PathLike],
    is_train: bool = True,
    num_frames: Optional[int] = None,
    root_dir: Optional[Union[str, os.PathLike]] = None,
    mead_path: Optional[Union[str, os.PathLike]] = None,
    poseimg_path: Optional[Union[str, os.PathLike]] = None,
    vox_path: Optional[Union[str, os.PathLike]] = None,
):
    """EAT's own stage-2 data set, ``FramesWavsDatasetMEL25VoxBoxQG2ImgPrompt`` from the user's
    ``frames_dataset_transformer25.py``, built from ``dataset_params`` of ``eat_config`` as EAT's
    ``prompt_st_dp_eam3d.py`` builds it.

    ``is_train=False`` gives EAT's test split (``test/`` or its random 20 %). ``num_frames``
    replaces ``dataset_params.syncnet_T`` (frames per item; EAT: 5). ``root_dir`` replaces
    ``dataset_params.root_dir``; ``mead_path``, ``poseimg_path`` and ``vox_path`` replace the
    module constants EAT's README has users edit, on the imported module only (the checkout's
    files are not touched). The layout is checked first (:func:`~stccl_diffusers.data.eat_mead.check_eat_mead`),
    since EAT's data set loops forever over clips it cannot read.
    """
    import yaml

    from ...data.eat_mead import check_eat_mead
    from .compat import apply_eat_compat

    root = Path(eat_root)
    if not (root / "frames_dataset_transformer25.py").is_file():
        raise FileNotFoundError(f"EAT checkout is missing: {root / 'frames_dataset_transformer25.py'}")
    with open(eat_config, encoding="utf-8") as f:
        params = dict((yaml.safe_load(f) or {}).get("dataset_params") or {})
    if "root_dir" not in params and root_dir is None:
        raise ValueError(f"{eat_config}: expected EAT's config with dataset_params.root_dir (or pass root_dir)")
    apply_eat_compat()
    mod = _import_from_checkout(root, "frames_dataset_transformer25")
    # EAT formats these into f-strings ending in '/...': absolute, as strings.
    for name, value in (("mead_path", mead_path), ("poseimg_path", poseimg_path), ("vox_path", vox_path)):
        if value is not None:
            setattr(mod, name, str(Path(value).absolute()))
    if root_dir is not None:
        params["root_dir"] = str(Path(root_dir).absolute())
    if num_frames is not None:
        params["syncnet_T"] = int(num_frames)
    check_eat_mead(params["root_dir"], mod.mead_path, mod.poseimg_path, mod.vox_path,
                   min_frames=int(params.get("syncnet_T", 5)), split="train" if is_train else "test")
    with on_path(root), working_directory(root), contextlib.redirect_stdout(None):  # EAT prints split and sizes
        return mod.FramesWavsDatasetMEL25VoxBoxQG2ImgPrompt(is_train=is_train, **params)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed Python's, numpy's and torch's global RNGs for the block (EAT's data set draws from all
    three), then restore them."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def eat_validation_batch(dataset, num_clips: int, seed: int = 0) -> Dict[str, Any]:
    """A fixed validation batch from EAT's data set: its emotional clips first (a neutral clip's
    target and anchor are the same), in name order, each item drawn with ``seed`` (EAT picks the
    window, the source frame and ``z_trg`` at random), collated as EAT's DataLoader does."""
    from torch.utils.data import default_collate

    from ...data.eat_mead import eat_clip_emotion

    names = list(dataset.videos)
    order = sorted(range(len(names)), key=lambda i: (eat_clip_emotion(names[i]) == NEUTRAL_INDEX, names[i]))
    if not order:
        raise ValueError("EAT's data set has no clips for validation")
    with _seeded(seed):
        return default_collate([dataset[i] for i in order[: max(1, num_clips)]])
