"""STCCL for EAT (Gan et al., ICCV 2023) with online pseudo-pairing (paper §8.3.2, facts §5).

Every training step renders two streams from the same batch (audio, pose, source frame and deep
prompt latent ``z_trg``): the **target** stream with the batch's emotion ``y_trg`` (with gradient)
and the **neutral anchor** stream with ``y_trg = 5`` (under ``no_grad``). Faces are cropped from
both with the batch's ``bboxs`` and STCCL pulls the target's spatial/temporal correlations onto
the anchor's:

    loss_values["stccl"] = w(step) * STCCL(anchor = crop(neutral) * 2 - 1, generated = crop(target) * 2 - 1)

with ``w(step)`` from :func:`stccl_diffusers.training.warmup.warmup_weight` (EAT has no diffusion
timestep, so there is no t < 500 gate; the term is switched on by step instead). Clips whose target
emotion is already neutral are left out of the term (target = anchor). The anchor is rendered with
the trainable weights as loaded at step 0 (``anchor="frozen"``, the default; a copy of the trainable
parameters is kept beside the model) or with the weights being trained (``anchor="current"``, the
paper's online form, which lets the anchor drift with the target).

Two backends share this code, both seen through EAT's stage-2 interface
``generator_full(x, train_with_img) -> (loss_values, generated)`` with
``generated["prediction"]`` ``(B * T, 3, H, W)`` in ``[0, 1]``:

- the **real EAT** ``GeneratorFullModelBatchDeepPromptSTEAM3D`` imported from the user's own
  checkout (:func:`load_eat_generator_full`; EAT's code is never vendored), wrapped by
  :class:`EATWithSTCCL`, which is a drop-in replacement inside EAT's own
  ``train_batch_deepprompt_eam3d_sidetuning`` loop;
- the built-in :class:`~stccl_diffusers.models.reference_eat.ReferenceEATModel` through
  :class:`ReferenceEATGeneratorFull`.

:class:`EATAdapter` plugs either into the shared training loop (``train_eat_stccl.py``).

Where things live: :mod:`.config` (``EATSTCCLConfig``, the training script's fields), :mod:`.build`
(``build_backend``, ``build_data``), :mod:`.hook` (the STCCL term and batch helpers),
:mod:`.adapter` (``EATAdapter``, ``ReferenceEATGeneratorFull``), :mod:`.checkout` (the user's EAT
checkout: model, checkpoint, data set) and :mod:`.compat` (shims EAT's source needs today).
"""

from .adapter import EATAdapter, ReferenceEATGeneratorFull
from .checkout import (
    EAT_CHECKPOINT_KEYS,
    EAT_EXPORT_NAME,
    EAT_REQUIRED_FILES,
    EAT_STAGE1_KEYS,
    EAT_SYNCNET_CHECKPOINT,
    check_eat_checkout,
    eat_validation_batch,
    load_eat_dataset,
    load_eat_generator_full,
    load_eat_state,
    set_eat_trainable,
)
from .config import EATSTCCLConfig
from .hook import (
    ANCHOR_WEIGHTS_NAME,
    EAT_EMOTION_NAMES,
    EAT_EMOTIONS,
    EMOTION_TO_EAT,
    NEUTRAL_INDEX,
    PER_FRAME_KEYS,
    EATWithSTCCL,
    check_prediction,
    crop_faces,
    eat_collate,
    eat_core,
    fresh_batch,
    losses_off,
    neutral_batch,
    stccl_on_frames,
    time_window,
)
from ..checkout import working_directory

__all__ = [
    "EATSTCCLConfig",
    "EAT_EMOTIONS",
    "NEUTRAL_INDEX",
    "EAT_REQUIRED_FILES",
    "neutral_batch",
    "check_prediction",
    "crop_faces",
    "stccl_on_frames",
    "EATWithSTCCL",
    "ReferenceEATGeneratorFull",
    "EATAdapter",
    "check_eat_checkout",
    "load_eat_generator_full",
    "load_eat_state",
    "fresh_batch",
    "losses_off",
    "eat_core",
    "working_directory",
    "set_eat_trainable",
    "EMOTION_TO_EAT",
    "EAT_EMOTION_NAMES",
    "eat_collate",
    "load_eat_dataset",
    "eat_validation_batch",
    "time_window",
    "PER_FRAME_KEYS",
    "ANCHOR_WEIGHTS_NAME",
    "EAT_CHECKPOINT_KEYS",
    "EAT_STAGE1_KEYS",
    "EAT_SYNCNET_CHECKPOINT",
    "EAT_EXPORT_NAME",
]
