"""DICE-Talk adapters: EDM training with the STCCL reward on a neutral-anchor stream.

Two backends, one interface (:class:`~stccl_diffusers.training.adapter.TalkingHeadAdapter`):

- :class:`ReferenceDiceAdapter` wraps the built-in :class:`~stccl_diffusers.models.reference_dice.ReferenceDICE`
  (trainable on a CPU; the demo and the tests).
- :class:`DiceTalkAdapter` (in :mod:`stccl_diffusers.adapters.dice.dice_talk`) wraps the user's own
  DICE-Talk checkout and weights.

Both share :class:`DiceStepMixin`: SVD's EDM training step (ln sigma ~ N(P_mean, P_std),
v-prediction, weight (s^2+1)/s^2, condition dropout) and the STCCL term through
`STCCLRewardCallback` with the t < 500 gate: the neutral-anchor forward (same noisy latents,
sigma, reference, audio and face mask; the *neutral prior* as emotion) runs only when some
sample of the batch is gated and its target emotion is not neutral. The anchor is rendered by the
starting model (LoRA disabled, ``anchor="frozen"``, the default) or by the model being trained
(``anchor="current"``, the paper's online form).

Where things live: :mod:`.config` (``DiceTrainingConfig``, the training script's fields),
:mod:`.build` (callback, reference adapter, reference pre-training), :mod:`.adapter` (the EDM step
with the STCCL hook, the reference adapter), :mod:`.rollout` (the rollout reward mode),
:mod:`.dice_talk` (the user's DICE-Talk checkout and weights, imported through
:func:`stccl_diffusers.adapters.checkout.import_from_checkout`).
"""

from .adapter import DiceStepMixin, ReferenceDiceAdapter, check_anchor, condition_dropout, make_svd_scheduler
from .build import build_callback, build_reference_adapter, pretrain_reference_dice
from .config import DiceTrainingConfig

__all__ = [
    "DiceTrainingConfig", "DiceStepMixin", "ReferenceDiceAdapter", "build_callback", "build_reference_adapter",
    "check_anchor", "condition_dropout", "make_svd_scheduler", "pretrain_reference_dice",
]
