"""`DiceTrainingConfig`: the fields of `train_dice_stccl.py` (its YAML keys and flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...training.config import TalkingClipsConfig, shape


@dataclass
class DiceTrainingConfig(TalkingClipsConfig):
    """`train_dice_stccl.py` options on top of the shared ones (see configs/dice_stccl*.yaml)."""

    backend: str = shape("reference")
    """`reference` (built-in ReferenceDICE) or `dice_talk` (your DICE-Talk checkout and weights)."""
    # -- data (fields shared with EAT live in TalkingClipsConfig) --
    data_dir: str = "outputs/dice_demo_data"
    validation_emotion: str = "happy"
    validation_num_frames: int = 24
    """Frames of the validation clip (longer than training windows, so the video shows speech)."""
    validation_speaker: Optional[int] = None
    """Synthetic demo data: the validation clip is a new sentence (never trained on) said by this
    training speaker (0 = S000). None: a face training never saw. The demo's tiny model learns 3
    faces and cannot draw a new one (it draws one of its training faces instead)."""
    # -- reward (stccl_weight: TalkingClipsConfig) --
    gate_timestep: float = 500
    frame_subset: Optional[list] = None
    decode_chunk_size: Optional[int] = None
    use_face_boxes: bool = True
    # -- EDM --
    p_mean: float = 0.7
    p_std: float = 1.6
    drop_reference: float = 0.05
    drop_audio: float = 0.05
    drop_emotion: float = 0.05
    num_inference_steps: int = 10
    guidance_scale: float = 1.0
    # -- reward mode (issue 22; reference backend; see stccl_diffusers/adapters/dice/rollout.py) --
    reward_mode: str = "single_step"
    """`single_step` (the paper's: x0-hat of a noised training clip, gated t < 500) or `rollout`
    (DRaFT-K style: target and anchor sampled from one noise with the validation sampler and
    guidance, gradient through the target's last `rollout_grad_steps` steps only)."""
    rollout_every: int = 1
    """rollout: the reward runs on every k-th step (the others train the EDM loss alone)."""
    rollout_grad_steps: int = 5
    """rollout: K, the last denoising steps of the target that keep their graph (1..num_inference_steps).
    Under EDM preconditioning a step at sigma moves x0-hat by c_out(sigma) ~ sigma for small sigma: with
    10 Karras steps the last step (sigma 0.002) passes ~0.2 % of the gradient, K = 1 barely trains (the
    quick benchmark's rollout arm equalled the without arm to 3 decimals). K = 5 reaches sigma 1.5."""
    rollout_audio: str = "neutral"
    """rollout: audio of the sampled pair: `neutral` (the same sentence's neutral recording, the
    deployment case; needs reference: neutral) or `clip` (the training clip's own audio)."""
    # -- reference model --
    pretrained_model_name_or_path: Optional[str] = shape(None)
    """A saved ReferenceDICE (`save_pretrained` folder); None: build one and pre-train it here."""
    vae_fit_steps: int = 160
    base_train_steps: int = 300
    base_learning_rate: float = 2e-3
    emotion_time_embedding: bool = True
    """Reference model: the emotion prior also shifts the UNet's time embedding (FiLM on every
    ResNet block), not only the cross-attention tokens; without it the small model renders
    emotion from the voice and barely changes with the label (the neutral anchor = the target)."""
    motion_weight: float = 0.0
    """Reference model: extra EDM-loss weight where a frame differs from its reference (mouth,
    brows, eyes; `models.weighting.motion_weights`). 0 is the plain EDM loss."""
    # -- real DICE-Talk --
    dice_talk_root: Optional[str] = None
    dice_checkpoints: Optional[str] = None
    svd_path: Optional[str] = None
    whisper_path: Optional[str] = None
    appearance_guidance_scale: float = 3.0
    audio_guidance_scale: float = 6.0
    """dice_talk validation: DICE-Talk's three-branch CFG scales (its inference config: 3.0 and 6.0)."""
    motion_bucket_id_exp: float = 16.0
    """dice_talk: third added_time_id, as DICE-Talk's inference config."""
    dice_fps: float = 12.5
    """dice_talk: frames are resampled to this rate from each clip's real fps (DICE-Talk generates at
    12.5 fps, `step: 2`, and doubles the rate with RIFE afterwards)."""
    emotion_retrieval: bool = False
    """dice_talk: EmotionModel(retrieval=...); False is what DICE-Talk's inference uses."""
